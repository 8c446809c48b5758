"""A complete, minimal hal backend: ONNX Runtime on the host CPU.

fp32 runs the ONNX model as converted; int8-dynamic quantizes its weights with
``onnxruntime.quantization.quantize_dynamic`` (activations quantized per call).
"""

from __future__ import annotations

import importlib.metadata
import tempfile
import threading
from pathlib import Path

import numpy as np

from hal import CompileError, Device, UnsupportedError
from hal.plugin import Backend, CompileOptions, ExecutableInfo, Model, TensorSpec, Runner


class ExampleBackend(Backend):
    name = "example"
    description = "ONNX Runtime CPU execution provider (example third-party plugin)"
    formats = ("onnx",)  # hal converts torch.nn → onnx with torch.onnx.export
    precisions = ("fp32", "int8-dynamic")
    requires = ("onnxruntime", "onnx")

    def version(self) -> str:
        return f"onnxruntime {importlib.metadata.version('onnxruntime')}"

    def probe(self) -> list[Device]:
        why = self.missing_runtime()
        return [Device(self.name, "cpu", "host CPU (ONNX Runtime)", kind="hardware",
                       available=why is None, reason=why or "", precisions=self.precisions)]

    def compile(self, model: Model, device: Device, options: CompileOptions) -> Runner:
        import onnx

        proto = model.value
        path = ["onnxruntime InferenceSession (CPUExecutionProvider)"]
        if options.precision == "int8-dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with tempfile.TemporaryDirectory() as tmp:
                src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
                clean = onnx.ModelProto()
                clean.CopyFrom(proto)
                del clean.graph.value_info[:]  # the quantizer re-infers shapes; stale hints clash
                onnx.save(clean, str(src))
                try:
                    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
                except Exception as e:  # noqa: BLE001
                    raise CompileError(f"quantize_dynamic failed: {e}", "use fp32") from None
                proto = onnx.load(str(dst))
            path.insert(0, "onnxruntime.quantization.quantize_dynamic (QInt8 weights)")
        return self._executable(proto.SerializeToString(), device, options.precision, path)

    def load(self, artifact: Path, info: ExecutableInfo, device: Device) -> Runner:
        return OrtExecutable(info, device, (artifact / "model.onnx").read_bytes())

    def _executable(self, data: bytes, device: Device, precision: str, path: list[str]):
        import onnxruntime as ort

        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        ins = [_spec(i) for i in sess.get_inputs()]
        outs = [_spec(o) for o in sess.get_outputs()]
        info = self.executable_info(device, precision,
                              ins, outs, conversion_path=path)
        return OrtExecutable(info, device, data, sess)


#: ONNX Runtime's type names → numpy's; hal checks every input against the spec
_DTYPES = {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool",
           **{t: t for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")}}


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    dtype = _DTYPES.get(arg.type.removeprefix("tensor(").removesuffix(")"))
    if dtype is None:  # never guess: a wrong dtype in the spec refuses every right input
        raise UnsupportedError(f"{arg.name!r} is an ONNX Runtime {arg.type}", "use numpy-typed tensors")
    return TensorSpec(arg.name, shape, dtype)


class OrtExecutable(Runner):
    thread_safe = True  # InferenceSession.run is thread-safe

    def __init__(self, info: ExecutableInfo, device: Device, data: bytes, sess=None) -> None:
        super().__init__(info, device)
        import onnxruntime as ort

        self.data = data
        self.sess = sess or ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]
        self._where, self._where_lock = None, threading.Lock()

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(None, dict(zip(self.names, inputs)))

    def write_artifact(self, directory: Path) -> None:
        (directory / "model.onnx").write_bytes(self.data)

    def placement(self):
        """Each node's execution provider, from ONNX Runtime's profile (read once)."""
        with self._where_lock:
            if self._where is None:
                from .placement import placement

                self._where = placement(self.data, self.sess.get_providers(),
                                        [_spec(i) for i in self.sess.get_inputs()])
            return self._where
