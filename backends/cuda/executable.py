"""CUDA executables: one GPU, or a batch split across several (``cuda:*``).

Imports torch; loaded by the backend only inside ``compile``/``load``.

Many threads may call one executable. Launches take turns under one process-wide
lock, because what a launch touches is shared: torch's fp32/TF32 switches (which
``fp32_mode`` flips around each forward) are process-global, a CUDA-graph
replica's static input and output buffers serve every call, and ``torch.compile``
may recompile for a new shape. Graph outputs are copied on the GPU before the
lock is let go; the GPU work and the copies back to the host overlap across
threads. Each call runs on its GPUs' default streams, so that work queued from
different threads on the shared buffers runs in the order it was queued.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hal import CompileError, InvalidInputError, UnsupportedError
from hal.plugin import ExecutableInfo, TensorSpec, as_numpy, conform, Runner

from .. import torch_common as tc
from . import nvml
from .options import Recipe
from .runtime import Replica, oom_guard

TIMER_NOTE = ("device timer: CUDA events around the forward pass on inputs already on the GPU; "
              "host↔device copies are not included (exe(x) includes them)")
ENERGY_MIN_S = 0.5  # the NVML energy counter needs a window well above its update period
_LAUNCH = threading.Lock()  # see the module docstring


def _on_cuda(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_cuda


def _stage(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host array → device tensor (a copy: the model may write into it). A tensor
    already on ``device`` is copied there too, so the caller's tensor is never
    written. From pageable host memory the copy has left the array once this
    returns, so a temporary host copy may be dropped right after."""
    if isinstance(a, torch.Tensor):
        t = a.detach().to(device, non_blocking=True)
        return t.clone() if t.data_ptr() == a.data_ptr() else t
    if not (a.flags.writeable and a.flags.c_contiguous):
        a = np.array(a, order="C")  # torch.from_numpy wants writable memory
    return torch.from_numpy(a).to(device, non_blocking=True)


def _batch(inputs: list) -> int:
    return int(inputs[0].shape[0]) if inputs and len(inputs[0].shape) else 1


class CudaExecutable(Runner):
    """Replicas of one program: one per GPU. With several, every call splits the
    batch (dimension 0) into contiguous chunks, runs chunk i on GPU i, and
    concatenates the outputs in order."""
    thread_safe = True  # launches take _LAUNCH; copies back to the host overlap

    def __init__(self, info: ExecutableInfo, device, replicas: list[Replica], program,
                 recipe: Recipe):
        super().__init__(info, device)
        self.replicas = replicas
        self.program = program  # the ExportedProgram written by write_artifact
        self.recipe = recipe

    @property
    def multi(self) -> bool:
        return len(self.replicas) > 1

    # --- inputs -----------------------------------------------------------------------
    def device_inputs(self, inputs: tuple) -> list | None:
        """CUDA tensors are checked where they are and kept there (no round trip
        through the host); tensors on another GPU are refused. Without any, the
        core's numpy checks take the call (None)."""
        if not any(_on_cuda(x) for x in inputs) or len(inputs) != len(self.info.inputs):
            return None
        check = self.info.check_finite
        return [self._check_cuda(x, spec) if _on_cuda(x) else
                conform(as_numpy(x, f"input {spec.name!r}"), spec, check)
                for x, spec in zip(inputs, self.info.inputs)]

    def _check_cuda(self, x, spec: TensorSpec):
        """The core's dtype/shape/finiteness checks, for a CUDA tensor."""
        mine = [r.device.index for r in self.replicas]
        if x.device.index not in mine:
            here = f"cuda:{mine[0]}"
            raise InvalidInputError(
                f"input {spec.name!r} is on {x.device}, but this executable runs on {here}",
                f"move it with .to('{here}'), or compile for target 'cuda:{x.device.index}'")
        x = x.detach()
        dt = str(x.dtype).removeprefix("torch.")
        if dt != spec.dtype:
            raise InvalidInputError(f"input {spec.name!r} has dtype {dt}, the model takes {spec.dtype}",
                                    f"convert it to {spec.dtype}")
        if x.ndim != len(spec.shape) or any(d is not None and d != n
                                            for d, n in zip(spec.shape, x.shape)):
            want = "(" + ", ".join("?" if d is None else str(d) for d in spec.shape) + ")"
            raise InvalidInputError(
                f"input {spec.name!r} has shape {tuple(x.shape)}, the model takes {want}",
                "reshape the input, or recompile with example inputs of this shape")
        if self.info.check_finite and str(dt).startswith(("float", "bfloat")):
            if not bool(torch.isfinite(x).all()):
                raise InvalidInputError(f"input {spec.name!r} contains NaN or Inf",
                                        "clean the input, or compile with check_finite=False")
        return x

    # --- running ----------------------------------------------------------------------
    def _launch(self, inputs: list) -> list[list[torch.Tensor]]:
        """Queue the work on every GPU involved; returns per-GPU device outputs."""
        if not self.multi:
            r = self.replicas[0]
            return [r.forward([_stage(a, r.device) for a in inputs])]
        b = _batch(inputs)
        if any(int(a.shape[0]) != b for a in inputs if len(a.shape)):
            raise InvalidInputError(
                f"cuda:* splits every input along dimension 0, but the inputs have batch sizes "
                f"{[int(a.shape[0]) for a in inputs]}", "pass inputs with one common batch size")
        n = max(1, min(len(self.replicas), b))
        split = [np.array_split(a, n) if isinstance(a, np.ndarray) else a.tensor_split(n)
                 for a in inputs]
        return [r.forward([_stage(parts[i], r.device) for parts in split])
                for i, r in enumerate(self.replicas[:n])]

    def infer(self, inputs: list) -> list[np.ndarray]:
        with oom_guard("running the model", self.replicas[0].device.index), ExitStack() as streams:
            for r in self.replicas:
                streams.enter_context(torch.cuda.stream(torch.cuda.default_stream(r.device)))
            with _LAUNCH:
                per_gpu = self._launch(inputs)
                if self.recipe.cuda_graphs:  # the next replay overwrites the graph's outputs
                    per_gpu = [[o.clone() for o in outs] for outs in per_gpu]
            host = [[o.cpu() for o in outs] for outs in per_gpu]
        if len(host) == 1:
            return [o.numpy() for o in host[0]]
        b, n = _batch(inputs), len(host)
        sizes = [b // n + (i < b % n) for i in range(n)]  # how array_split/tensor_split cut
        for j in range(len(host[0])):
            got = [h[j].shape[0] if h[j].ndim else None for h in host]
            if got != sizes:
                raise UnsupportedError(
                    f"output {j} does not follow the batch (chunk sizes {sizes}, output sizes {got}), "
                    "so cuda:* cannot reassemble it", "run this model on one GPU (cuda:0)")
        return [torch.cat([h[j] for h in host]).numpy() for j in range(len(host[0]))]

    # --- profiling --------------------------------------------------------------------
    def _resident(self, inputs: list):
        """A zero-argument call that runs the model on inputs staged once (each
        launch under the launch lock, as in ``infer``)."""
        if self.multi:
            def run():
                with _LAUNCH:
                    return self._launch(inputs)
            return run
        r = self.replicas[0]
        xs = [_stage(a, r.device) for a in inputs]

        def run_one():
            with _LAUNCH:
                return r.forward(xs)
        return run_one

    def _sync(self) -> None:
        for r in self.replicas:
            torch.cuda.synchronize(r.device)

    def device_timer(self, inputs: list, iterations: int) -> list[float] | None:
        if self.multi:
            return None  # events on different GPUs do not share a clock: host timer
        r = self.replicas[0]
        with oom_guard("timing the model", r.device.index), torch.cuda.device(r.device):
            run = self._resident(inputs)
            run()
            stream = torch.cuda.current_stream(r.device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(iterations)]
            torch.cuda.synchronize(r.device)
            for start, end in events:
                start.record(stream)
                run()
                end.record(stream)
            torch.cuda.synchronize(r.device)
        return [s.elapsed_time(e) / 1e3 for s, e in events]

    def profile_extras(self, inputs: list) -> dict[str, Any]:
        out: dict[str, Any] = {"unavailable": {
            "layers": "hal does not attribute CUDA kernels to layers; use torch.profiler for "
                      "per-kernel times"}}
        out["notes"] = [TIMER_NOTE] if not self.multi else [
            "cuda:* is timed on the host: each call splits the batch, copies the chunks to every "
            "GPU and gathers the outputs"]
        idx = self.replicas[0].device.index
        with oom_guard("profiling the model", idx):
            run = self._resident(inputs)
            run()
            self._sync()
            for r in self.replicas:
                torch.cuda.reset_peak_memory_stats(r.device)
            run()
            self._sync()
            peak = {f"cuda:{r.device.index}": int(torch.cuda.max_memory_allocated(r.device))
                    for r in self.replicas}
            out["peak_memory_bytes"] = sum(peak.values())
            out["peak_memory_by_device"] = peak
            out["peak_reserved_bytes"] = sum(int(torch.cuda.max_memory_reserved(r.device))
                                             for r in self.replicas)
            out["notes"].append("peak memory: torch.cuda.max_memory_allocated over one inference "
                                "(weights + activations; CUDA-graph pools show in reserved)")
            self._energy(run, out)
        return out

    def _energy(self, run, out: dict[str, Any]) -> None:
        readers = []
        for r in self.replicas:
            uuid = getattr(torch.cuda.get_device_properties(r.device), "uuid", None)
            read, why = nvml.energy_counter(str(uuid) if uuid is not None else None)
            if read is None:
                out["unavailable"]["energy_j_per_inference"] = why
                return
            readers.append(read)
        self._sync()
        e0 = [read() for read in readers]
        t0 = time.perf_counter()
        n = 0
        while n < 10 or time.perf_counter() - t0 < ENERGY_MIN_S:
            run()
            n += 1
            if n % 10 == 0:
                self._sync()
        self._sync()
        dt = time.perf_counter() - t0
        mj = sum(read() - e for read, e in zip(readers, e0))
        if mj <= 0:
            out["unavailable"]["energy_j_per_inference"] = (
                f"the NVML energy counter did not advance over {n} inferences ({dt:.2f} s)")
            return
        out["energy_j_per_inference"] = mj / 1e3 / n
        out["energy_window"] = {"inferences": n, "seconds": dt, "joules": mj / 1e3}
        out["notes"].append("energy: NVML total-energy counter of the whole board over back-to-back "
                            "inferences, divided by their number (includes idle power and any "
                            "other work on the GPU)")

    def throughput(self, inputs: list, iterations: int | None,
                   duration_s: float | None) -> dict[str, Any]:
        """Back-to-back launches on device-resident inputs, one sync at the end."""
        with oom_guard("measuring throughput", self.replicas[0].device.index):
            run = self._resident(inputs)
            run()
            self._sync()
            n, t0 = 0, time.perf_counter()
            if duration_s is None:
                for _ in range(iterations or 100):
                    run()
                n = iterations or 100
            else:
                while time.perf_counter() - t0 < duration_s:
                    for _ in range(10):
                        run()
                    n += 10
                    self._sync()
            self._sync()
            dt = time.perf_counter() - t0
        bs = _batch(inputs)
        return {"throughput_per_s": n * bs / dt, "latency_ms": {"mean": dt / n * 1e3},
                "iterations": n, "notes": [
                    "throughput mode: back-to-back launches on inputs already on the GPU(s), "
                    "one synchronisation at the end; latency is the mean time per call"]}

    # --- placement ------------------------------------------------------------------
    def placement(self):
        """Every op of the graph each GPU runs, and torch.compile's graph breaks
        (:mod:`.placement`; unverified: written without a GPU)."""
        from ..placement_once import once
        from .placement import placement

        return once(self, lambda: placement(self))

    # --- artifact ---------------------------------------------------------------------
    def write_artifact(self, directory: Path) -> None:
        if self.program is None:
            raise CompileError("this model could not be exported, so it cannot be saved",
                               "make it torch.export-able to save or cache it")
        tc.save_program(self.program, directory)
        (directory / "recipe.json").write_text(self.recipe.to_json())
