"""Cloud TPU backend (TensorFlow / XLA).

Devices: ``tpu:0``, a Cloud TPU reached through TPUClusterResolver and run on
one core under TPUStrategy; and ``tpu:xla-cpu``, the same XLA program run on
XLA:CPU (emulated, never picked by ``auto``). Importing this module imports no
framework: TensorFlow loads only in compile/load, or in probe when there are
signs of a TPU.
"""

from __future__ import annotations

from hal.plugin import Backend, CompileOptions, ExecutableInfo, Model, installed_version, Runner
from pathlib import Path

from hal import Device, DeviceUnavailableError, UnsupportedError

from . import system as tpu_system
from .buckets import KNOWN_OPTIONS

PRECISIONS = ("fp32", "bf16")
REFUSED = {
    "int8": "TPUs run int8 only through quantization-aware XLA programs, which hal does not "
            "build; bf16 is the TPU's native reduced precision",
    "int8-dynamic": "TPUs run int8 only through quantization-aware XLA programs, which hal does "
                    "not build; bf16 is the TPU's native reduced precision",
    "fp16": "TPUs have no float16 arithmetic; bfloat16 is their native 16-bit type",
    "fp64": "TPUs have no float64 arithmetic",
}


class TpuBackend(Backend):
    name = "tpu"
    description = ("Cloud TPU through TensorFlow/XLA (Keras, SavedModel; torch via StableHLO and "
                   "XLA's call-module op); XLA:CPU runs the same program as an emulator")
    formats = ("torch.nn", "torch.export", "keras", "savedmodel")
    dynamic_batch = True
    precisions = PRECISIONS
    aliases = ("tpu",)
    requires = ("tensorflow",)
    extra = "tpu-runtime"  # loading and running; compiling adds hal-accel[tpu]
    options = KNOWN_OPTIONS

    def version(self) -> str:
        tf = installed_version("tensorflow", "tensorflow-cpu", "tensorflow-tpu", "tf-nightly") or "?"
        lt = installed_version("litert-torch")
        return f"tensorflow {tf}" + (f"; litert-torch {lt}" if lt else "")

    # --- devices -------------------------------------------------------------------------------
    def probe(self) -> list[Device]:
        missing = self.missing_runtime()
        return [self._hardware(missing), Device(
            self.name, "xla-cpu", "XLA:CPU running the TPU's XLA program (emulated TPU)",
            kind="emulated", available=missing is None,
            reason="" if missing is None else f"TensorFlow is not installed: {missing}",
            precisions=PRECISIONS, rank=0,
            properties={"platform": "XLA:CPU", "runs": "the same StableHLO/XLA program as tpu:0"})]

    def _hardware(self, missing: str | None) -> Device:
        def absent(reason: str) -> Device:
            return Device(self.name, "0", "Cloud TPU", kind="hardware", available=False,
                          reason=reason, aliases=("tpu",), precisions=PRECISIONS, rank=90)

        if missing is not None:
            return absent(f"TensorFlow is not installed: {missing}")
        why = tpu_system.no_tpu_reason()
        if why:
            return absent(why)
        try:
            s = tpu_system.connect()
        except DeviceUnavailableError as e:
            return absent(e.what)
        return Device(self.name, "0", s.name, kind="hardware", available=True, aliases=("tpu",),
                      precisions=PRECISIONS, rank=90, properties=dict(s.properties))

    def refuse_precision(self, precision: str, device: Device, why: str = "") -> UnsupportedError:
        return super().refuse_precision(precision, device, why or REFUSED.get(precision, ""))

    def _system(self, device: Device):
        """The initialised TPU for a hardware device; None for the emulator."""
        return tpu_system.connect() if device.kind == "hardware" else None

    # --- build / restore ---------------------------------------------------------------------
    def compile(self, model: Model, device: Device, options: CompileOptions) -> Runner:
        self.require_runtime()
        if options.precision not in PRECISIONS:
            raise self.refuse_precision(options.precision, device)
        system = self._system(device)
        from . import pipeline

        if model.format in ("torch.nn", "torch.export"):
            return pipeline.compile_torch(self, model, device, options, system)
        if model.format == "keras":
            return pipeline.compile_keras(self, model, device, options, system)
        if model.format == "savedmodel":
            return pipeline.compile_saved_model(self, model, device, options, system)
        raise UnsupportedError(f"the tpu backend cannot take a {model.format} model",
                               f"pass one of: {', '.join(self.formats)}")

    def load(self, artifact: Path, info: ExecutableInfo, device: Device) -> Runner:
        self.require_runtime()
        from .artifact import read_meta

        meta = read_meta(artifact, info)
        system = self._system(device)
        from . import pipeline

        return pipeline.load(self, artifact, info, device, meta, system)
