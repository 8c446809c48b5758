"""Reference CPU backend: PyTorch eager (fp64 oracle, fp32, int8 PT2E, int8-dynamic)
and ONNX through ``onnx.reference``."""

from __future__ import annotations

import os
import platform
import warnings
from pathlib import Path

import numpy as np

from hal import Device, UnsupportedError
from hal.plugin import (Backend, CompileOptions, ExecutableInfo, Model, Runner, TensorSpec, host_memory_bytes,
                        onnx_quantized_ops)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class ReferenceBackend(Backend):
    name = "reference"
    description = "PyTorch eager on the host CPU; fp64 mode is the conformance oracle"
    formats = ("torch.nn", "torch.export", "onnx")
    dynamic_batch = True
    dynamic_dims = True
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
                       memory_bytes=host_memory_bytes(), aliases=("cpu",), precisions=self.precisions, rank=0,
                       host_cpu=True,
                       properties={"threads": os.cpu_count(), "machine": platform.machine()})]

    def compile(self, model: Model, device: Device, options: CompileOptions) -> Runner:
        if model.format == "onnx":
            return _compile_onnx(self, model, device, options)
        from . import pipeline

        return pipeline.compile(self, model, device, options)

    def load(self, artifact: Path, info: ExecutableInfo, device: Device) -> Runner:
        if (artifact / "model.onnx").exists():
            return _load_onnx(self, artifact / "model.onnx", info, device)
        from . import pipeline

        return pipeline.load(artifact, info, device)


class OnnxReferenceExecutable(Runner):
    """ONNX at fp32 on ``onnx.reference`` with its faulty operators corrected
    and Conv/pooling on torch kernels (see :mod:`.onnx_oracle`)."""
    thread_safe = True  # infer takes its own lock around the evaluator

    def __init__(self, info: ExecutableInfo, device: Device, proto):
        super().__init__(info, device)
        import threading

        from .onnx_oracle import evaluator

        self.proto = proto
        self.session = evaluator(proto, double=False)
        self.names = [s.name for s in info.inputs]
        self._lock = threading.Lock()  # the evaluator's Python operators keep per-node state

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            outs = self.session.run(None, dict(zip(self.names, inputs)))
        # ONNX STRING tensors are numpy object arrays (onnxruntime's and the declared
        # dtype); onnx.reference gives some as fixed-width unicode: the same strings
        return [o.astype(object) if o.dtype.kind in "US" and s.dtype == "object" else o
                for o, s in zip(map(np.asarray, outs), self.info.outputs)]

    def write_artifact(self, directory: Path) -> None:
        import onnx

        onnx.save(self.proto, str(directory / "model.onnx"))

    def placement(self):
        """Every node of the onnx.reference evaluator, on the host CPU (:mod:`.placement`)."""
        from ..placement_once import once
        from .placement import onnx_placement

        return once(self, lambda: onnx_placement(self))


class OnnxOracleExecutable(OnnxReferenceExecutable):
    """fp64: the corrected evaluator on the model rewritten to double, checked
    on every call against onnxruntime running the original model. An answer
    the two do not agree on is never returned (:class:`OracleDisagreement`)."""

    thread_safe = False  # the oracle's evaluators keep per-node state: the core serializes calls

    def __init__(self, info: ExecutableInfo, device: Device, proto):
        Runner.__init__(self, info, device)
        from .onnx_oracle import OnnxOracle

        self.proto = proto
        self.oracle = OnnxOracle(proto)

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        from .onnx_oracle import OracleDisagreement

        r = self.oracle.run(inputs)
        if r.verdict == "disagree":
            raise OracleDisagreement(
                f"the fp64 ONNX oracle and onnxruntime disagree on this input ({r.detail})",
                "no trustworthy answer exists here: one of onnx.reference or onnxruntime is "
                "wrong on this model; report it with the model attached")
        if r.verdict != "agree":
            raise OracleDisagreement(
                f"the fp64 ONNX oracle could not be cross-checked ({r.detail})",
                "install onnxruntime (pip install onnxruntime); for an unchecked answer "
                "compile at precision='fp32'")
        return r.outputs


def onnx_specs(proto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from onnx import helper

    init = {i.name for i in proto.graph.initializer}

    def spec(v) -> TensorSpec:
        if v.type.WhichOneof("value") != "tensor_type":
            raise UnsupportedError(f"ONNX value {v.name!r} is a {v.type.WhichOneof('value')}; "
                                   "hal passes tensors only",
                                   "give the model tensor inputs and outputs")
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        return TensorSpec(v.name, dims, str(np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))))

    return ([spec(v) for v in proto.graph.input if v.name not in init],
            [spec(v) for v in proto.graph.output])


_ONNX_PATH = {"fp32": "onnx.reference.ReferenceEvaluator (corrected LRN/BatchNorm/Softmax; "
                      "torch Conv/pooling)",
              "fp64": "onnx.reference.ReferenceEvaluator at fp64 (corrected ops; torch fp64 "
                      "Conv/pooling), cross-checked against onnxruntime on every call"}


def _check_calibration_dtypes(ins: list[TensorSpec], calibration) -> None:
    from hal import InvalidInputError

    for n, sample in enumerate(calibration):
        for i, (a, spec) in enumerate(zip(sample, ins)):
            if a.dtype.name != spec.dtype:
                raise InvalidInputError(
                    f"calibration sample {n} input {i} is {a.dtype.name}, the model's input "
                    f"{spec.name!r} is {spec.dtype}", f"pass calibration arrays of dtype {spec.dtype}")


def _executable(info: ExecutableInfo, device: Device, proto) -> Runner:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if info.precision == "fp64":
                return OnnxOracleExecutable(info, device, proto)
            return OnnxReferenceExecutable(info, device, proto)
        except RuntimeError as e:  # onnx.reference: "No implementation for operator ..."
            from hal.plugin import brief

            raise UnsupportedError(f"onnx.reference cannot run this ONNX model ({brief(e, 200)})",
                                   "run it on openvino:CPU, or pass the source model (torch) "
                                   "to the reference backend") from None


_QDQ_PATH = ("onnx.reference.ReferenceEvaluator on the model's own quantization "
             "(QuantizeLinear/DequantizeLinear as written; not quantized again)")


def _compile_onnx(b: ReferenceBackend, model: Model, device: Device, options: CompileOptions):
    q = onnx_quantized_ops(model.value)
    what = ", ".join(f"{n} {k}" for k, n in q.items())
    if q and options.precision != "int8":
        raise UnsupportedError(
            f"the ONNX model is already quantized ({what}): it computes on int8 values, so it "
            f"cannot be compiled as {options.precision}",
            "use precision='int8' (no calibration needed: hal runs the model's own quantization "
            "and does not quantize it again)")
    if q:
        ins, outs = onnx_specs(model.value)
        _check_calibration_dtypes(ins, options.calibration or [])
        info = b.executable_info(device, "int8", ins, outs, conversion_path=[_QDQ_PATH],
                                 notes=["calibration data not used: the model carries its own "
                                        "quantization"] if options.calibration else [])
        return _executable(info, device, model.value)
    if options.precision not in _ONNX_PATH:
        raise UnsupportedError(
            f"the reference backend runs ONNX models at fp32 and fp64 only, not {options.precision}",
            "pass the torch model for int8 on the reference backend, or use precision='fp32'")
    ins, outs = onnx_specs(model.value)
    if options.precision == "fp64":
        from .onnx_oracle import to_double

        outs = onnx_specs(to_double(model.value))[1]
    info = b.executable_info(device, options.precision,
                          ins, outs, conversion_path=[_ONNX_PATH[options.precision]])
    return _executable(info, device, model.value)


def _load_onnx(b: ReferenceBackend, path: Path, info: ExecutableInfo, device: Device) -> Runner:
    """The saved ONNX file, refused unless it is self-contained and has the
    inputs ``hal.json`` claims (an artifact is untrusted input)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    from hal import ArtifactError

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - any failure here is a bad file
        raise ArtifactError("the artifact's model.onnx is not readable ONNX",
                            "re-create it with hal compile") from None
    if any(uses_external_data(t) for t in proto.graph.initializer):
        raise ArtifactError("the artifact's model.onnx points at external data files",
                            "re-create it with hal compile (artifacts are self-contained)")
    if (info.precision == "int8") != bool(onnx_quantized_ops(proto)) or \
            info.precision not in (*_ONNX_PATH, "int8"):
        raise ArtifactError(f"hal.json says {info.precision}; ONNX on the reference backend is "
                            "fp32 or fp64, or int8 for a pre-quantized model",
                            "re-create the artifact with hal")
    try:
        ins, _ = onnx_specs(proto)
    except UnsupportedError as e:
        raise ArtifactError(str(e), "re-create the artifact with hal") from None
    if [(s.shape, s.dtype) for s in ins] != [(tuple(s.shape), s.dtype) for s in info.inputs]:
        raise ArtifactError("hal.json's inputs are not the model's",
                            "re-create the artifact with hal; do not edit .hal files")
    return _executable(info, device, proto)
