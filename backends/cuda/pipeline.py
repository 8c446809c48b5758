"""Compile and load for the CUDA backend (imports torch; loaded on demand).

The model is cast to its precision and exported on the host (so the artifact is
device-independent), then placed on each GPU with ``move_to_device_pass``; the
compiled executable and a reloaded one run the very same program.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from hal import ArtifactError, CompileError, Device, HalError, UnsupportedError, UsageError
from hal.plugin import CompileOptions, ExecutableInfo, Model, brief

from .. import torch_common as tc
from .devices import gpu_indices
from .executable import CudaExecutable
from .options import Recipe
from .runtime import Replica, oom_guard, runnable


def _check_compile_mode(recipe: Recipe) -> None:
    if recipe.torch_compile is None:
        return
    from torch._inductor import list_mode_options

    modes = list(list_mode_options())
    if recipe.torch_compile not in modes:
        raise UsageError(f"this torch has no torch.compile mode {recipe.torch_compile!r}",
                         f"use one of {', '.join(modes)}")


def _notes(recipe: Recipe) -> list[str]:
    notes = []
    if recipe.precision in ("fp16", "bf16"):
        notes.append(f"{recipe.precision}: inputs stay float32 for the caller and are cast on the "
                     f"GPU; {recipe.precision} outputs are widened to float32 (exactly)")
    if recipe.precision == "fp32":
        notes.append("fp32: TF32 " + ("allowed (option tf32=True)" if recipe.tf32 else
                                      "off: IEEE fp32 matmuls and convolutions"))
    return notes


def _path(recipe: Recipe, n_gpus: int, exported: bool) -> list[str]:
    path = []
    if recipe.precision != "fp32":
        path.append(f"module.to({tc.DTYPES[recipe.precision]})")
    if exported:
        path.append("torch.export (host) → move_to_device_pass")
    if recipe.torch_compile:
        path.append(f"torch.compile(mode={recipe.torch_compile!r})")
    if recipe.cuda_graphs:
        path.append("CUDA graphs (one per input shape)")
    if n_gpus > 1:
        path.append(f"replicated on {n_gpus} GPUs, batch split along dimension 0")
    return path


def _replicas(program, module, indices: list[int], recipe: Recipe) -> list[Replica]:
    out = []
    for i in indices:
        dev = torch.device("cuda", i)
        with oom_guard("placing the model", i):
            out.append(Replica(runnable(program, module, dev), dev, recipe))
    return out


def _warm(replicas: list[Replica], args: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Run every replica once (torch.compile, graph capture, cuBLAS set-up happen
    here, not in the first timed call); return the first replica's outputs on the host."""
    first = None
    for r in replicas:
        try:
            with oom_guard("the first run of the model", r.device.index):
                outs = [o.cpu() for o in r.forward([a.to(r.device) for a in args])]
        except HalError:
            raise
        except Exception as e:  # noqa: BLE001 - torch.compile, graph capture or a kernel failed
            shapes = [tuple(a.shape) for a in args]
            raise CompileError(
                f"the model fails on cuda:{r.device.index} with example inputs of shape {shapes} "
                f"({brief(e, 200, typed=True)})",
                "check that it runs on this GPU with torch directly; drop torch_compile/cuda_graphs "
                "if the failure comes from them") from None
        first = outs if first is None else first
    return first


@dataclass
class Prepared:
    """The model cast to its precision and exported, all on the host."""

    args: tuple[torch.Tensor, ...]  # example inputs in the caller's dtypes
    module: torch.nn.Module
    program: object | None  # ExportedProgram, or None when export failed
    dynamic: bool
    not_saveable: str | None = None


def prepare(model: Model, precision: str) -> Prepared:
    args = tc.example_tensors(model)
    module = tc.eval_copy(model)
    dtype = tc.DTYPES[precision]
    ex_args = args
    if dtype is not torch.float32:
        module = tc.cast_graph(module, dtype)
        ex_args = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
    try:
        program, dynamic = tc.export(module, ex_args)
    except CompileError as e:
        return Prepared(args, module, None, False, str(e))
    return Prepared(args, module, program, dynamic)


def build(backend, model: Model, device: Device, options: CompileOptions,
          recipe: Recipe) -> CudaExecutable:
    indices = gpu_indices(device)
    _check_compile_mode(recipe)
    p = prepare(model, recipe.precision)
    args, module, program, dynamic = p.args, p.module, p.program, p.dynamic
    extra: dict = {"gpus": [torch.cuda.get_device_name(i) for i in indices]}
    if p.not_saveable:
        extra["not_saveable"] = p.not_saveable
    if len(indices) > 1 and not dynamic:
        raise UnsupportedError(
            "cuda:* splits the batch across GPUs, but this model "
            + ("could not be exported" if program is None else "only exports with a fixed batch size"),
            "compile for one GPU (cuda:0), or make dimension 0 of every input a free batch dimension")
    recipe = replace(recipe, dynamic_batch=dynamic)
    replicas = _replicas(program, module, indices, recipe)
    outs = _warm(replicas, args)
    ins, outs_spec = tc.specs(args, outs, dynamic)
    extra["dynamic_batch"] = dynamic
    info = backend.executable_info(device, recipe.precision, ins, outs_spec,
                          conversion_path=_path(recipe, len(indices), program is not None),
                          backend_options=recipe.options(), notes=_notes(recipe), extra=extra)
    return CudaExecutable(info, device, replicas, program, recipe)


def load(backend, artifact: Path, info: ExecutableInfo, device: Device) -> CudaExecutable:
    try:
        recipe = Recipe.from_json((artifact / "recipe.json").read_text())
    except (OSError, ValueError, TypeError, UsageError) as e:
        raise ArtifactError(f"the CUDA artifact's recipe.json is missing or unreadable ({brief(e, 160)})",
                            "recompile the model") from None
    if recipe.precision != info.precision:
        raise ArtifactError(f"the CUDA recipe says {recipe.precision}, the artifact {info.precision}",
                            "recompile the model")
    if recipe.precision not in backend.precisions_for(device):
        raise backend.refuse_precision(recipe.precision, device)
    indices = gpu_indices(device)
    if len(indices) > 1 and not recipe.dynamic_batch:
        raise UnsupportedError("this artifact has a fixed batch size, so cuda:* cannot split it",
                               "load it on one GPU (target cuda:0)")
    _check_compile_mode(recipe)
    program = tc.load_program(artifact)
    replicas = _replicas(program, None, indices, recipe)
    args = tuple(torch.zeros(tuple(1 if d is None else d for d in s.shape), dtype=getattr(torch, s.dtype))
                 for s in info.inputs)
    _warm(replicas, args)
    info.target = device.target
    return CudaExecutable(info, device, replicas, program, recipe)
