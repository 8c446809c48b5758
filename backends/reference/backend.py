"""Reference CPU backend: PyTorch eager (fp64 oracle, fp32, int8 PT2E, int8-dynamic)
and ONNX through ``onnx.reference``."""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import numpy as np

from hal import (Backend, CompileOptions, Device, Executable, ExecutableInfo, TensorSpec,
                 UnsupportedError)
from hal.formats import Model


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class ReferenceBackend(Backend):
    name = "reference"
    description = "PyTorch eager on the host CPU; fp64 mode is the conformance oracle"
    formats = ("torch.nn", "torch.export", "onnx")
    precisions = ("fp64", "fp32", "int8", "int8-dynamic")
    aliases = ("cpu",)
    requires = ("torch",)
    extra = "cpu"

    def version(self) -> str:
        from importlib.metadata import version

        return f"torch {version('torch')}"  # without importing torch: probing stays cheap

    def probe(self) -> list[Device]:
        why = self.missing_runtime()
        return [Device(self.name, "cpu", f"{_cpu_name()} ({os.cpu_count()} cores, PyTorch eager)",
                       kind="hardware", available=why is None, reason=why or "",
                       memory_bytes=_ram(), aliases=("cpu",), precisions=self.precisions, rank=0,
                       properties={"threads": os.cpu_count(), "machine": platform.machine()})]

    def compile(self, model: Model, device: Device, options: CompileOptions) -> Executable:
        if model.format == "onnx":
            return _compile_onnx(self, model, device, options)
        from . import torch_flow

        return torch_flow.compile(self, model, device, options)

    def load(self, artifact: Path, info: ExecutableInfo, device: Device) -> Executable:
        if (artifact / "model.onnx").exists():
            import onnx

            return OnnxReferenceExecutable(info, device, onnx.load(str(artifact / "model.onnx")))
        from . import torch_flow

        return torch_flow.load(artifact, info, device)


class OnnxReferenceExecutable(Executable):
    """ONNX run by ``onnx.reference`` (numpy): slow, but an independent oracle."""

    def __init__(self, info: ExecutableInfo, device: Device, proto):
        super().__init__(info, device)
        from onnx.reference import ReferenceEvaluator

        self.proto = proto
        self.session = ReferenceEvaluator(proto)
        self.names = [s.name for s in info.inputs]

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, dict(zip(self.names, inputs)))]

    def write_artifact(self, directory: Path) -> None:
        import onnx

        onnx.save(self.proto, str(directory / "model.onnx"))


def onnx_specs(proto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from onnx import helper

    init = {i.name for i in proto.graph.initializer}

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return TensorSpec(v.name, dims, str(np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))))

    return ([spec(v) for v in proto.graph.input if v.name not in init],
            [spec(v) for v in proto.graph.output])


def _compile_onnx(b: ReferenceBackend, model: Model, device: Device, options: CompileOptions):
    if options.precision != "fp32":
        raise UnsupportedError(
            f"the reference backend runs ONNX models at fp32 only, not {options.precision}",
            "pass the torch model for fp64/int8 on the reference backend, or use precision='fp32'")
    ins, outs = onnx_specs(model.value)
    info = ExecutableInfo(b.name, b.version(), device.target, device.kind, "fp32", ins, outs,
                          conversion_path=["onnx.reference.ReferenceEvaluator"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OnnxReferenceExecutable(info, device, model.value)
