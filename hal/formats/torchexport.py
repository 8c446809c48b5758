"""``torch.export`` at the example inputs' shapes, for converters and backends
(re-exported by :mod:`hal.plugin`). Importing it imports no framework."""

from __future__ import annotations

import functools
import inspect

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


def export_free_batch(module, args: tuple = (), kwargs: dict | None = None):
    """``torch.export`` with one batch ``Dim`` over every input (positional or keyword),
    where the model allows it; None where it does not (the caller exports static)."""
    import warnings

    import torch

    kwargs = kwargs or {}
    if not all(t.ndim >= 1 and t.shape[0] >= 1 for t in (*args, *kwargs.values())):
        return None

    def two(t):  # export specialises a size-1 dimension, so trace a batch of 1 as 2
        return t.expand(2, *t.shape[1:]).contiguous() if t.shape[0] == 1 else t

    trace, trace_kw = tuple(two(a) for a in args), {k: two(t) for k, t in kwargs.items()}
    # an explicit range first; then AUTO, which keeps a range the module already has
    # (a program exported with its own batch Dim re-exports only within that range)
    for dim in (torch.export.Dim("batch", min=1, max=4096), torch.export.Dim.AUTO):
        shapes = {k: {0: dim} for k in kwargs} if kwargs else tuple({0: dim} for _ in args)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = torch.export.export(module, trace, kwargs=trace_kw or None, dynamic_shapes=shapes)
        except Exception:  # noqa: BLE001 - e.g. a reshape that hard-codes the batch
            continue
        if batch_is_free(ep):
            return ep
    return None


def batch_is_free(program) -> bool:
    """Every user input of the program has a free first dimension."""
    names = set(program.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in names]
    return bool(vals) and all(v is not None and v.ndim and program_dim(v.shape[0]) is None for v in vals)


def export_by_name(module, named: dict) -> tuple:
    """An ``nn.Module`` called by keyword (``model(**tokenizer(text))``): exported with
    ``kwargs`` (how transformers models are exported), so every backend gets one program
    whose inputs are those names; a leading batch dimension stays free where the model
    allows it. Returns (program, the arrays in the program's input order)."""
    import torch

    params = inspect.signature(module.forward).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()) and set(named) - set(params):
        raise UsageError(f"example_input names {sorted(set(named) - set(params))} are not "
                         f"parameters of forward({', '.join(params)})",
                         "key example inputs by forward's parameter names")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in named.items()}
    flags = [(m, m.training) for m in module.modules()]  # the caller's module, restored after
    module.eval()
    try:  # one free batch for every input, as for positional inputs; else static
        program = (export_free_batch(module, kwargs=tensors)
                   or torch.export.export(module, (), kwargs=tensors))
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"torch.export of the model called with keywords "
                           f"{', '.join(named)} failed: {brief(e)}",
                           "make the model export-friendly (no data-dependent control flow), "
                           "or check the names against forward's parameters") from None
    finally:
        for m, f in flags:
            m.training = f
    order = [s.arg.name for s in program.graph_signature.input_specs
             if s.kind.name == "USER_INPUT"]
    users = {n.name: len(n.users) for n in program.graph.nodes if n.op == "placeholder"}
    lost = [k for k in named if k not in params and not users.get(k)]
    if lost:  # forward's **kwargs took a name it never reads: a typo, silently ignored
        raise UsageError(f"example_input names {lost} are not parameters of "
                         f"forward({', '.join(params)}) and the model never reads them",
                         "key example inputs by forward's parameter names")
    if sorted(order) != sorted(named):
        raise CompileError(f"the exported program takes {order}, not the names given {list(named)}",
                           "pass example inputs by position, in forward's order")
    return program, tuple(named[n] for n in order)


def program_dim(d) -> int | None:
    """A program's dimension as an int, or None when it is free. A size that export
    specialised (a guard pinned the Dim) is a constant ``SymInt``, not an ``int``: it is
    static, and a re-export with a batch Dim that specialised must not be called dynamic."""
    from torch.fx.experimental.symbolic_shapes import is_concrete_int

    return int(d) if is_concrete_int(d) else None


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
