"""``torch.export`` at the example inputs' shapes, for converters and backends
(re-exported by :mod:`hal.plugin`). Importing it imports no framework."""

from __future__ import annotations

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
