"""CUDA GPU backend: PyTorch on NVIDIA GPUs (eager, ``torch.compile``, CUDA graphs),
one GPU or a batch split across all of them (``cuda:*``).

Importing this module imports no framework; torch is imported inside
``probe``/``compile``/``load``/``probe_gemm``.
"""

from __future__ import annotations

from pathlib import Path

from hal import Device, UnsupportedError
from hal.plugin import Backend, CompileOptions, ExecutableInfo, Model, Runner

from . import options as _options
from .devices import ALL

_WHY_NOT = {
    "int8": ("the CUDA backend has no verified GPU int8 path: the real one (torchao int8 kernels "
             "under torch.compile) has not been run on a GPU by this backend yet, and hal never "
             "runs int8 in a higher precision instead"),
    "int8-dynamic": ("the CUDA backend has no verified GPU int8 path (torchao int8 kernels have not "
                     "been run on a GPU by this backend), and PyTorch's quantized dynamic Linear "
                     "runs on the CPU only"),
    "fp64": ("fp64 is hal's oracle precision and is served by the reference backend (target "
             "'cpu'); the CUDA backend compiles fp32, fp16 and bf16"),
}


class CudaBackend(Backend):
    name = "cuda"
    description = "PyTorch on NVIDIA CUDA GPUs: eager, torch.compile or CUDA graphs; cuda:* splits a batch"
    formats = ("torch.nn", "torch.export")
    dynamic_batch = True
    precisions = _options.PRECISIONS
    aliases = ("cuda", "gpu")
    requires = ("torch",)
    extra = "cuda"
    options = _options.OPTIONS

    def version(self) -> str:
        import torch

        return f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"

    def probe(self) -> list[Device]:
        from . import devices

        return devices.probe(self.name, self.missing_runtime())

    def refuse_precision(self, precision: str, device: Device, why: str = "") -> UnsupportedError:
        if not why and precision == "bf16":
            why = (f"bf16 needs compute capability 8.0 or newer (Ampere); {device.name} is "
                   f"{device.properties.get('compute_capability', 'older')}")
        return super().refuse_precision(precision, device, why or _WHY_NOT.get(precision, ""))

    def _recipe(self, precision: str, device: Device, opts: dict) -> _options.Recipe:
        # checked before the device so that a bad request is named even without a GPU
        if precision not in self.precisions_for(device):
            raise self.refuse_precision(precision, device)
        return _options.parse(precision, opts)

    def compile(self, model: Model, device: Device, options: CompileOptions) -> Runner:
        recipe = self._recipe(options.precision, device, options.backend_options)
        self.require_runtime()
        from . import pipeline

        return pipeline.build(self, model, device, options, recipe)

    def load(self, artifact: Path, info: ExecutableInfo, device: Device) -> Runner:
        self.require_runtime()
        from . import pipeline

        return pipeline.load(self, artifact, info, device)

    def probe_gemm(self, device: Device | str | int, dtype: str = "fp32", n: int = 10000) -> float:
        """Peak matmul throughput of one GPU in TFLOP/s: an ``n``×``n`` by ``n``×``n``
        product timed with CUDA events (``hal profile --probe gemm``)."""
        self.require_runtime()
        from . import probe

        return probe.probe_gemm(self._one_gpu(device), n=n, dtype=dtype)

    def _one_gpu(self, device: Device | str | int) -> Device:
        from hal import UsageError

        if isinstance(device, Device):
            dev = device
        else:
            want = str(device).removeprefix(f"{self.name}:")
            devs = self.probe()
            match = [d for d in devs if d.id == want or want in d.aliases or d.target == str(device)]
            if not match:
                raise UsageError(f"the cuda backend has no device {device!r}",
                                 f"use one of {', '.join(d.target for d in devs)}")
            dev = match[0]
        if dev.id == ALL:
            members = ", ".join(f"cuda:{m}" for m in dev.properties.get("members", [])) or "cuda:0"
            raise UsageError("the GEMM probe measures one GPU at a time, not cuda:*",
                             f"probe each GPU: {members}")
        return dev
