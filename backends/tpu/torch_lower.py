"""torch → StableHLO, one static-shape module per batch bucket.

``torch.export`` captures the model; litert-torch's StableHLO lowering
(``litert_torch.backend.export.exported_program_to_mlir``, the lowering its
TFLite converter is built on) turns the ExportedProgram into a StableHLO
module whose weights stay function arguments. TensorFlow then calls that
module through XLA's call-module op (see :mod:`.programs`). Imports torch and
litert-torch; loaded only when a torch model is compiled.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
from typing import Any

import numpy as np
import torch

from hal import CompileError, UnsupportedError
from hal.plugin import Model, brief, export_static

from .. import torch_common as tc
from .. import mlir_guard
from .artifact import Lowered

#: MLIR dialects XLA's call-module op accepts; anything else cannot run on XLA.
XLA_DIALECTS = ("builtin", "func", "stablehlo", "chlo", "sdy", "shardy")
#: ops whose fp32 accuracy depends on the platform's default matmul precision
#: (a TPU's default uses bf16 passes); fp32 programs ask for HIGHEST explicitly.
PRECISION_OPS = ("stablehlo.dot_general", "stablehlo.dot", "stablehlo.convolution")


class _Flat(torch.nn.Module):
    """Flattens outputs to a tuple; for bf16 it casts weights and float inputs to
    bfloat16 inside the program and float outputs back to float32, so callers
    keep float32 at the edges while the TPU computes in its native type."""

    def __init__(self, module: torch.nn.Module, bf16: bool):
        super().__init__()
        self.m = module.to(torch.bfloat16) if bf16 else module
        self.bf16 = bf16

    def forward(self, *xs):
        if self.bf16:
            xs = tuple(x.to(torch.bfloat16) if x.is_floating_point() else x for x in xs)
        outs = tc.flatten(self.m(*xs))
        if self.bf16:
            outs = [o.float() if o.is_floating_point() else o for o in outs]
        return tuple(outs)


def np_dtype(t: torch.dtype) -> str:
    return str(t).removeprefix("torch.")


@contextlib.contextmanager
def _quiet_litert():
    """litert-torch prints a progress line per step; keep hal's output clean."""
    old = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old


def _lowering_error(e: BaseException) -> Exception:
    msg = str(e)
    first = brief(e)
    node = re.search(r"While executing %(\S+) : .*?target=([\w.]+)", msg)
    where = f" (at node %{node.group(1)}, {node.group(2)})" if node else ""
    missing = re.search(r"Lowering not found: (\S+)", msg)
    if missing:
        return UnsupportedError(
            f"litert-torch has no StableHLO lowering for op {missing.group(1)}{where}, so this "
            f"model cannot run on XLA/TPU",
            "replace that op with supported ones, or compile a Keras/SavedModel version of the model")
    return CompileError(f"litert-torch could not lower the model to StableHLO{where}: "
                        f"{type(e).__name__}: {first}",
                        "simplify the failing op, or compile a Keras/SavedModel version of the model")


def _walk(op, fn, func: str = "") -> None:
    """``fn(op, name of the function holding it)`` for every op nested in ``op``."""
    from litert_converter.mlir import ir

    for region in op.regions:
        for block in region.blocks:
            for inner in block.operations:
                inner = inner.operation
                name = func
                if inner.name == "func.func":
                    name = ir.StringAttr(inner.attributes["sym_name"]).value
                fn(inner, name)
                _walk(inner, fn, name)


def _torch_op(loc: str, func: str) -> str:
    """The torch op a lowered op came from, as litert-torch records it: the FX
    node in the location (``loc("<module path>;"("multinomial"(...)))``), else
    the name of the helper function holding it (``@_aten_gelu_5_3002edd5``)."""
    names = re.findall(r'"([^"]*)"\(', loc)
    if len(names) >= 2:
        return f"{names[1]!r} (in {names[0].rstrip(';').rsplit('/', 1)[-1]})"
    m = re.match(r"_?aten_(\w+?)_\d+_[0-9a-f]+$", func)
    return f"aten.{m.group(1)}" if m else f"lowered as @{func}"


def _finish(lowered, fp32: bool) -> str:
    """Set HIGHEST precision on fp32 dots/convolutions, refuse ops outside
    XLA's dialects and custom calls (naming them and the torch op), and
    return the module text."""
    from litert_converter.mlir import ir

    foreign: set[str] = set()
    custom: list[tuple[str, str, str]] = []  # target, location, function
    calls: dict[str, str] = {}  # callee → location of its call site
    with lowered.ctx, ir.Location.unknown():
        highest = ir.Attribute.parse("[#stablehlo<precision HIGHEST>, #stablehlo<precision HIGHEST>]")

        def visit(op, func: str) -> None:
            name = op.name
            if name in PRECISION_OPS and fp32:
                op.attributes["precision_config"] = highest
            if name == "func.call":
                calls[ir.FlatSymbolRefAttr(op.attributes["callee"]).value] = str(op.location)
            if name == "stablehlo.custom_call":
                custom.append((ir.StringAttr(op.attributes["call_target_name"]).value,
                               str(op.location), func))
            dialect = name.split(".", 1)[0]
            if dialect not in XLA_DIALECTS and name != "arith.constant":
                foreign.add(name)

        _walk(lowered.module.operation, visit)
    if custom:  # hal's own lowerings make none; torch.multinomial makes 'tfl.multinomial'
        target, loc, func = custom[0]
        torch_op = _torch_op(loc if '"(' in loc else calls.get(func, ""), func)
        raise UnsupportedError(
            f"litert-torch lowers torch op {torch_op} to XLA custom call {target!r}: native code "
            f"found by name, which hal does not run (nor load from an artifact)",
            "replace that torch op, or compile a Keras/SavedModel version of the model")
    if foreign:
        raise UnsupportedError(
            f"the StableHLO lowering left op(s) {', '.join(sorted(foreign))} that XLA cannot run",
            "replace the torch op(s) that produce them, or compile a Keras/SavedModel version")
    # arith.constant has stablehlo.constant's syntax and meaning for tensors; XLA's
    # call-module op does not load the arith dialect (litert-torch's TF bridge does the same).
    text = lowered.module.operation.get_asm(large_elements_limit=1 << 62)
    return text.replace("arith.constant", "stablehlo.constant")


def prepare(model: Model, precision: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A private eval-mode copy wrapped for ``precision``, and the example tensors."""
    module = tc.eval_copy(model)
    if model.format == "torch.export":  # .module() shares the caller's tensors
        module = copy.deepcopy(module)
    return _Flat(module, precision == "bf16").eval(), tc.example_tensors(model)


def lower(module: torch.nn.Module, args: tuple[torch.Tensor, ...], precision: str,
          sizes: tuple[int, ...], state: dict[str, torch.Tensor], example: int
          ) -> dict[int, Lowered]:
    """Export and lower ``module`` once per batch size: the example arguments
    for ``example``, else their first row repeated to that size. Weights are
    added to ``state`` by name."""
    from litert_torch.backend import export as lexp

    out: dict[int, Lowered] = {}
    for n in sizes:
        bargs = args if n == example else \
            tuple(a[:1].expand(n, *a.shape[1:]).contiguous() for a in args)
        try:
            ep = export_static(module, bargs)
        except CompileError as e:
            if precision != "bf16":
                raise
            raise CompileError(e.what, "a torch.export program keeps the dtypes it was traced "
                               "with (a float32 mask, a cast), which bf16 cannot change: pass the "
                               "nn.Module for bf16 (hal casts it before tracing), or use fp32") from None
        try:
            with _quiet_litert(), torch.no_grad():
                low = lexp.exported_program_to_mlir(ep, inline_constants=False)
        except Exception as e:  # noqa: BLE001 - the lowering raises whatever the op raised
            raise _lowering_error(e) from None
        # the check load applies, so that every artifact compile writes also loads; XLA
        # runs the re-print, as it will after a load
        text = mlir_guard.check(_finish(low, precision == "fp32"), lambda why: UnsupportedError(
            f"the StableHLO lowering {why}", "replace the torch op that produces it, or compile "
            "a Keras/SavedModel version of the model")).text
        call: list[tuple[str, Any]] = []
        for sig in low.input_signature:
            if sig.input_spec.is_user_input:
                call.append(("input", sig.input_spec.i))
            else:
                call.append(("param", sig.input_spec.name))
                state.setdefault(sig.input_spec.name, low.state_dict[sig.input_spec.name])
        out[n] = Lowered(text, call, [tuple(int(d) for d in s.shape) for s in low.output_signature],
                         [np_dtype(s.dtype) for s in low.output_signature])
    return out


def to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """A weight as numpy plus the TF dtype name it must have (bf16 goes through float32)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.float().numpy(), "bfloat16"
    return t.numpy(), np_dtype(t.dtype)
