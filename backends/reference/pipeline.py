"""The torch side of the reference backend (imports torch; loaded on demand)."""

from __future__ import annotations

from dataclasses import replace

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from hal import (ArtifactError, CompileError, Device, InvalidInputError,
                 UnsupportedError)
from hal.plugin import (CompileOptions, ExecutableInfo, Model, Runner, batch_is_free, brief,
                        read_json_object, stage)

from .. import torch_common as tc


class TorchExecutable(Runner):
    """Runs a module in eager mode on the CPU under ``inference_mode``."""
    thread_safe = True  # eval-mode torch modules under inference_mode keep no per-call state

    def __init__(self, info: ExecutableInfo, device: Device, module: torch.nn.Module,
                 program=None, recipe: dict | None = None):
        super().__init__(info, device)
        self.module = module
        self.program = program  # ExportedProgram written by write_artifact
        self.recipe = recipe or {}
        self.cast = tc.DTYPES["fp64"] if info.precision == "fp64" else None

    #: whether the module writes into its inputs (x.sub_(), ReLU(inplace=True) first):
    #: None until the first call, which runs on copies and reads the version counters
    _writes_inputs: bool | None = None

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        # Inputs are the caller's memory, maybe read-only (hal.executable.conform): a
        # module that writes into them gets copies. A write first seen later (data-
        # dependent) switches to copies from the next call on.
        known = self._writes_inputs
        src = [torch.from_numpy(a if known is False and a.flags.writeable else a.copy())
               for a in inputs]
        args = src if self.cast is None else [
            a.to(self.cast) if a.is_floating_point() else a for a in src]
        with torch.inference_mode():
            out = self.module(*args)
        if known is not True:
            for t in src:
                if t._version or known is None:
                    self._writes_inputs = any(t._version for t in src)
                    break
        # fresh results are inference tensors; anything else (an input passed through,
        # a view of one, a weight) is copied so that the caller owns what it gets
        if isinstance(out, torch.Tensor):
            return [out.numpy() if out.is_inference() else out.detach().clone().numpy()]
        return [t.numpy() if t.is_inference() else t.detach().clone().numpy()
                for t in tc.flatten(out)]

    def write_artifact(self, directory: Path) -> None:
        if self.program is None:
            raise CompileError("this model could not be exported, so it cannot be saved",
                               "make it torch.export-able to save or cache it")
        tc.save_program(self.program, directory)
        (directory / "recipe.json").write_text(json.dumps(self.recipe))

    def placement(self):
        """Every op of the graph torch runs, on the host CPU (:mod:`.placement`)."""
        from ..placement_once import once
        from .placement import torch_placement

        return once(self, lambda: torch_placement(self))

    def profile_extras(self, inputs):
        return {"unavailable": {
            "layers": "PyTorch eager has no per-layer timer here; use torch.profiler directly",
            "peak_memory_bytes": "host allocations are not tracked per model on the CPU",
            "energy_j_per_inference": "no CPU energy telemetry is exposed to hal",
        }}


def dynamic_int8(gm: torch.fx.GraphModule) -> tuple[torch.fx.GraphModule, int, int]:
    """``quantize_dynamic``'s recipe (qint8 per-tensor symmetric weights, activations
    quantized per call) applied to every ``aten.linear`` of an exported graph, so the
    saved fp32 program reloads to the very same int8 model. Returns the module and
    the fp32 / int8 weight sizes in bytes."""

    fp32 = sum(p.numel() * p.element_size() for p in gm.state_dict().values())
    with warnings.catch_warnings():  # quantized-tensor deprecation; ScriptObject get_attr
        warnings.simplefilter("ignore")
        saved = _swap_linears(gm)
    if not saved:
        raise UnsupportedError("int8-dynamic quantizes Linear layers (quantize_dynamic's recipe) "
                               "and this model has none, so the reference backend cannot honour it",
                               "use precision='int8' with calibration data, or fp32")
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, fp32, fp32 - saved


def _swap_linears(gm: torch.fx.GraphModule) -> int:
    from torch.ao.quantization.observer import default_weight_observer

    saved = 0
    for i, node in enumerate(list(gm.graph.nodes)):
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        x, w = node.args[0], node.args[1]
        b = node.args[2] if len(node.args) > 2 else None
        if w.op != "get_attr" or (b is not None and b.op != "get_attr"):
            continue
        state = gm.state_dict()
        weight, bias = state[w.target], None if b is None else state[b.target]
        obs = default_weight_observer()
        obs(weight.detach())
        scale, zp = obs.calculate_qparams()
        qw = torch.quantize_per_tensor(weight.detach().float(), float(scale), int(zp), torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())
        name = f"_hal_dynamic_linear_{i}"
        setattr(gm, name, packed)
        with gm.graph.inserting_before(node):
            p = gm.graph.get_attr(name)
            q = gm.graph.call_function(torch.ops.quantized.linear_dynamic.default, (x, p, True))
        node.replace_all_uses_with(q)
        gm.graph.erase_node(node)
        saved += weight.numel() * (weight.element_size() - 1) - 8
    return saved


def _check_calibration(args, calibration) -> None:
    """Each sample must look like the example inputs (any batch size): torch
    would otherwise fail deep inside the observers with an AssertionError."""
    for n, sample in enumerate(calibration):
        if len(sample) != len(args):
            raise InvalidInputError(f"calibration sample {n} has {len(sample)} array(s), the model "
                                    f"takes {len(args)}", "pass one array per model input")
        for i, (a, t) in enumerate(zip(sample, args)):
            want = str(t.dtype).removeprefix("torch.")
            if a.dtype.name != want or a.ndim != t.ndim or tuple(a.shape[1:]) != tuple(t.shape[1:]):
                raise InvalidInputError(
                    f"calibration sample {n} input {i} is {a.dtype.name}{tuple(a.shape)}, the "
                    f"example input is {want}{tuple(t.shape)}",
                    "pass calibration arrays shaped and typed like the example inputs")


def _pt2e_int8(module: torch.nn.Module, args, calibration) -> torch.nn.Module:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    _check_calibration(args, calibration)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    ep, _ = tc.export(module, args)
    prepared = prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():
        for n, sample in enumerate(calibration):
            try:
                prepared(*[torch.from_numpy(np.ascontiguousarray(a)) for a in sample])
            except Exception as e:  # noqa: BLE001 - the caller's data, not hal's bug
                raise InvalidInputError(f"the model fails on calibration sample {n}: {brief(e)}",
                                        "pass calibration data the model runs on") from None
    quantized = convert_pt2e(prepared)
    if not any(n.op == "call_function" and "quantize_per" in str(n.target)
               for n in quantized.graph.nodes):
        raise UnsupportedError("torchao PT2E (X86InductorQuantizer) quantized no operator of this "
                               "model, so the reference backend cannot honour int8 for it",
                               "use fp32, or a backend that quantizes these operators")
    return quantized


def compile(backend, model: Model, device: Device, options: CompileOptions) -> Runner:
    precision = options.precision
    args = tc.example_tensors(model)
    module = tc.eval_copy(model)
    path: list[str] = []
    extra: dict = {}
    recipe: dict = {}
    if precision == "fp64":
        module = module.double()
        path.append("module.double()")
    elif precision == "int8":
        with stage("quantize"):
            module = _pt2e_int8(module, args, options.calibration)
        path.append("torchao PT2E (X86InductorQuantizer, static int8)")
    program, dynamic = None, False
    try:
        ex_args = tuple(a.double() if precision == "fp64" and a.is_floating_point() else a
                        for a in args)
        if model.format == "torch.export" and precision in ("fp32", "int8-dynamic") \
                and any(None in sh for sh, _ in tc.program_shapes(model.value)[0]):
            # the caller's own Dims (a sequence, a batch range): re-exporting would keep a batch Dim at most
            program, dynamic = model.value, batch_is_free(model.value)
        else:
            program, dynamic = tc.export(module, ex_args)
        if model.format == "torch.export" and precision != "int8":
            module = tc.fast_module(program)  # the caller's program may carry static-shape guards
        if precision == "int8-dynamic":
            with stage("quantize"):
                module, fp32, q = dynamic_int8(program.module())
                module = tc.fast_module(program, module)
            recipe = {"dynamic_int8_linear": True}
            extra.update(model_size_bytes=q, fp32_size_bytes=fp32, compression_ratio=fp32 / q)
            path.append("torch.export → dynamic int8 Linear (quantize_dynamic's qint8 recipe)")
    except CompileError as e:
        extra["not_saveable"] = str(e)
    outs = tc.run_example(module, [a.double() if precision == "fp64" and a.is_floating_point()
                                   else a for a in args])
    ins, outs_spec = tc.specs(args, outs, dynamic)
    if program is not None:  # the program's own dims: a sequence Dim stays free, a fixed batch fixed
        p_ins, p_outs = tc.program_shapes(program)
        if len(p_ins) == len(ins) and len(p_outs) == len(outs_spec):
            ins = [replace(s, shape=sh) for s, (sh, _) in zip(ins, p_ins)]
            outs_spec = [replace(s, shape=sh) for s, (sh, _) in zip(outs_spec, p_outs)]
    info = backend.executable_info(device, precision,
                          ins, outs_spec, conversion_path=path, extra=extra)
    return TorchExecutable(info, device, module, program, recipe)


def _claims(program, recipe: dict) -> tuple[str, list[tuple[tuple, str]]]:
    """What the saved program really is: its precision and its user inputs'
    (shape, dtype), read from the graph, not from ``hal.json``."""
    quantized = any(n.op == "call_function" and "quantize_per" in str(n.target)
                    for n in program.graph.nodes)
    ins = tc.program_shapes(program)[0]
    dtypes = {t.dtype for t in program.state_dict.values() if t.is_floating_point()}
    dtypes |= {getattr(torch, d) for _, d in ins if getattr(torch, d).is_floating_point}
    precision = ("int8-dynamic" if recipe.get("dynamic_int8_linear") is True else
                 "int8" if quantized else "fp64" if dtypes == {torch.float64} else "fp32")
    return precision, ins


def load(artifact: Path, info: ExecutableInfo, device: Device) -> Runner:
    program = tc.load_program(artifact, error=ArtifactError)
    recipe = read_json_object(artifact / "recipe.json", "reference")
    precision, ins = _claims(program, recipe)
    if precision != info.precision:
        raise ArtifactError(f"hal.json says {info.precision}, but the program is {precision}",
                            "re-create the artifact with hal; do not edit .hal files")
    claimed = [(tuple(s.shape), s.dtype) for s in info.inputs]
    if ins and claimed != ins:
        raise ArtifactError(f"hal.json's inputs {claimed} are not the program's {ins}",
                            "re-create the artifact with hal; do not edit .hal files")
    module = program.module()
    if recipe.get("dynamic_int8_linear"):
        module = dynamic_int8(module)[0]
    return TorchExecutable(info, device, tc.fast_module(program, module), program, recipe)
