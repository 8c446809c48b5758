"""A torch module into OpenVINO, without baking in a branch silently.

``ov.convert_model(module)`` traces TorchScript: a data-dependent branch
(``if x.sum() > 0``) is frozen at the side the example input took, with no
warning, and some models that ``torch.export`` takes (GPT-2's None constants)
are refused. So a module goes through ``torch.export`` first, whose guards
refuse data-dependent control flow, and OpenVINO reads the ExportedProgram.
Only when that fails is the module traced, and then the traced model must
agree with eager PyTorch on a second, different input before it is used (a
note says so); otherwise one error names every path tried and why.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from hal import CompileError, HalError
from hal.plugin import Model, brief, stage, torch_example_args

from . import compat

#: the traced model must give eager's answer to this relative error (fp32 rounding only)
AGREE_REL = 1e-4
EXPORTED = "torch.export.export → ov.convert_model(ExportedProgram)"
TRACED = "ov.convert_model(nn.Module) (TorchScript trace)"


def from_torch(model: Model, options) -> Any:
    """torch.nn → openvino.model: torch.export first, a checked trace second."""
    import torch
    from hal_backends import torch_common as tc

    from .convert import add_note, from_exported, short

    args = torch_example_args(model)
    m = model.value
    training = m.training
    m.eval()
    tried: list[str] = []
    try:
        with torch.no_grad():
            try:
                with stage("export"):  # the batch stays free where the module allows it, as on reference
                    ep, _ = tc.export(m, args)
            except CompileError as e:
                bad = tc.non_tensor_output(m, args)  # no converter can pass it back either
                if bad is not None:
                    raise CompileError(*bad) from None
                tried.append(f"{EXPORTED}: {e.what}")
            else:
                try:
                    with stage("convert"):
                        return from_exported(Model("torch.export", ep, example_input=model.example_input,
                                                   converted=True), options)
                except HalError as e:
                    tried.append(f"{EXPORTED}: {e.what}")
            with stage("convert"):
                try:
                    with warnings.catch_warnings():  # TracerWarnings: the check below decides
                        warnings.simplefilter("ignore")
                        traced = compat.api().convert(m, example_input=args[0] if len(args) == 1 else args)
                except HalError:
                    raise
                except Exception as e:  # noqa: BLE001 - the frontend's own failure
                    tried.append(f"{TRACED}: {short(e)}")
                    raise _refused(tried) from None
                err = _check_against_eager(traced, m, model.example_input)
                if err is not None:
                    tried.append(f"{TRACED}: {err}")
                    raise _refused(tried)
            add_note(traced, f"torch.export refused the module ({tried[0].split(': ', 1)[1][:200]}); "
                             "converted by TorchScript tracing instead, which bakes in every branch taken "
                             "on the example input: hal checked the traced model against eager PyTorch "
                             "on a second, different input and they agree")
            return traced
    finally:
        m.train(training)


def _refused(tried: list[str]) -> CompileError:
    return CompileError("OpenVINO could not convert the torch module; paths tried: " + " | ".join(tried),
                        "make the model torch.export-able (no data-dependent Python branches: use "
                        "torch.cond or torch.where), export it to ONNX and pass that, or run it on "
                        "target 'cpu' (eager PyTorch)")


def second_input(example: tuple[np.ndarray, ...], seed: int = 1) -> tuple[np.ndarray, ...]:
    """An input of the example's shapes and dtypes whose values differ: floats
    negated (a sign test flips) plus noise, integers permuted (ids stay valid
    ids), booleans inverted."""
    rng = np.random.default_rng(seed)
    out = []
    for a in example:
        if a.dtype.kind == "f":
            scale = float(np.abs(a).max()) if a.size else 1.0
            b = -a + rng.standard_normal(a.shape) * (0.5 * scale or 1.0)
        elif a.dtype.kind == "b":
            b = ~a
        elif a.size > 1:
            b = rng.permutation(a.reshape(-1)).reshape(a.shape)
            if np.array_equal(b, a):
                b = a.reshape(-1)[::-1].reshape(a.shape)
        else:
            b = a
        out.append(np.ascontiguousarray(b.astype(a.dtype)))
    return tuple(out)


def _check_against_eager(ov_model, module, example) -> str | None:
    """None when the traced model gives eager's answer on a second input, else why not."""
    import torch

    from hal_backends import torch_common as tc

    x = second_input(example)
    try:
        with torch.inference_mode():
            want = [t.numpy() for t in tc.flatten(module(*[torch.from_numpy(a) for a in x]))]
    except Exception as e:  # noqa: BLE001 - eager itself fails on the probe: nothing to compare
        return f"not checked against eager PyTorch, which fails on a second input ({brief(e, 120)})"
    o = compat.api()
    try:  # on the host CPU at f32 whatever the target: the question is the graph, not the device
        shaped = ov_model.clone()
        shaped.reshape({i: o.ov.PartialShape(list(a.shape)) for i, a in enumerate(x)})
        compiled = o.core().compile_model(shaped, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = list(compiled(list(x)).values())
    except Exception as e:  # noqa: BLE001 - unchecked is refused, never assumed right
        from .convert import short

        return f"the traced model could not be checked on OpenVINO's CPU plugin ({short(e)[:160]})"
    if len(got) != len(want):
        return f"the traced model has {len(got)} output(s), eager PyTorch {len(want)}"
    for i, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g)
        if g.shape != w.shape:
            return f"output {i} is {g.shape} traced, {w.shape} in eager PyTorch on a second input"
        if w.dtype.kind in "fc":
            scale = float(np.nanmax(np.abs(w))) if w.size else 0.0
            bad = np.abs(g.astype(np.float64) - w) > AGREE_REL * max(scale, 1e-30)
            bad &= ~(np.isnan(g) & np.isnan(w))
        else:
            bad = g != w
        if bad.any():
            return (f"the traced model disagrees with eager PyTorch on a second input (output {i}, "
                    f"{int(bad.sum())} of {w.size} values): a branch or value was baked in at trace time")
    return None
