"""``torch.export`` at the example inputs' shapes, for converters and backends
(re-exported by :mod:`hal.plugin`). Importing it imports no framework."""

from __future__ import annotations

import functools

import numpy as np

from ..errors import CompileError, UsageError, brief
from . import Model


def torch_example_args(model: Model) -> tuple:
    """``model.example_input`` as torch tensors (what ``torch.export`` and a module's
    ``forward`` take), or one UsageError when the caller gave none."""
    import torch

    if not model.example_input:
        raise UsageError("converting a torch module needs example inputs",
                         "pass example_input=(x,) to hal.compile")
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_input)


def export_static(module, args: tuple):
    """``torch.export.export`` at the given shapes; a failure is one CompileError."""
    import torch

    try:
        return torch.export.export(module, args)
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"torch.export failed: {brief(e)}",
                           "make the model export-friendly (no data-dependent control flow)") from None


def example_leaves(program) -> tuple:
    """An exported program's example inputs, one per user input (keyword inputs included),
    in the program's order; ``()`` when it kept none."""
    import torch

    return (tuple(torch.utils._pytree.tree_leaves(program.example_inputs))
            if program.example_inputs else ())


@functools.cache
def _positional_class():
    """:class:`Positional`'s class, made at first use: it subclasses ``torch.nn.Module``,
    and importing this module imports no framework."""
    import torch

    class Positional(torch.nn.Module):
        """An exported program's module called with one tensor per user input, in order,
        as every backend calls a model: a program exported with keyword inputs
        (``torch.export.export(m, (), kwargs={"input_ids": ..., "attention_mask": ...})``)
        gets them back by keyword. ``module`` stays the program's own GraphModule."""

        def __init__(self, module, in_spec):
            super().__init__()
            self.module = module
            self.in_spec = in_spec

        def forward(self, *flat):
            args, kwargs = self.in_spec.unflatten(list(flat))
            return self.module(*args, **kwargs)

    return Positional


def positional(program, module):
    """``module`` (``program.module()`` or a transform of it), callable with one tensor per
    user input, by position: wrapped when the program takes keyword inputs (how
    transformers models are exported), else returned as it is."""
    spec = getattr(program.call_spec, "in_spec", None)
    if spec is None or spec.num_children != 2:
        return module
    kwargs = spec.child(1) if hasattr(spec, "child") else spec.children_specs[1]  # torch < 2.10
    if kwargs.num_leaves == 0:
        return module
    return _positional_class()(module, spec)


def program_module(program, **kw):
    """``program.module(**kw)``, callable with one tensor per user input (:func:`positional`)."""
    return positional(program, program.module(**kw))
