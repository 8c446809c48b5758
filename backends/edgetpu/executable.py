"""An int8 TFLite bound to an Edge TPU (libedgetpu delegate) or to its emulator
(the same int8 model on the LiteRT CPU interpreter).

A LiteRT interpreter serves one call at a time (it refuses ``invoke`` while
another thread is inside it, and its tensors are shared state), so the emulator
keeps a pool of interpreters, one more made whenever every one is busy; on
hardware the one interpreter over the device's delegate takes calls in turn.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hal import (ArtifactError, Device, DeviceUnavailableError, HalError, UnsupportedError,
                 UsageError)
from hal.plugin import (ExecutableInfo, Option, Runner, TensorSpec, check_options, host_cores,
                        read_json_object)

from . import devices

INT8_FILE = "model_int8.tflite"
COMPILED_FILE = "model_edgetpu.tflite"
LOG_FILE = "edgetpu_compiler.log"
META_FILE = "edgetpu.json"


_NONE = type(None)
#: ``options=`` keys the backend understands; the same declaration checks a caller's
#: options and an artifact's ``edgetpu.json`` (threads bounded by this host's cores)
OPTIONS = {
    "raw_io": Option("the 8-bit I/O as it is, no (de)quantization by hal (bool; True: int8 in and "
                     "out; False: float32, hal quantizes; unset: the model's own dtypes, a given "
                     "TFLite's I/O as it is, float32 for a model hal quantizes)", (bool, _NONE)),
    "num_threads": Option("LiteRT CPU threads (emulator, and CPU ops on hardware), up to the "
                          "host's cores", (int, _NONE), min=1, max=host_cores),
    "allow_float_ops": Option("deprecated: hal.compile(allow_host_ops=True) instead; accept float "
                              "ops that would run on the host CPU (bool)", bool),
    "min_runtime_version": Option("edgetpu_compiler -m: the oldest Edge TPU runtime to target",
                                  (int, _NONE), min=0, max=1000),
}


@dataclass
class EdgeTpuOptions:
    """``options=`` keys the backend understands (all shape the artifact or its I/O)."""

    #: int8 in / int8 out, no (de)quantization by hal; None (unset): the model's own dtypes,
    #: which compile settles (a given TFLite: True; a model hal quantizes: False)
    raw_io: bool | None = None
    num_threads: int | None = None  # LiteRT CPU threads (emulator, and CPU ops on hardware)
    #: the artifact's float ops may run on the host CPU: the compile's allow_host_ops (this
    #: key, the old switch, is its deprecated alias), recorded in edgetpu.json
    allow_float_ops: bool = False
    min_runtime_version: int | None = None  # edgetpu_compiler -m

    @classmethod
    def parse(cls, options: dict[str, Any]) -> EdgeTpuOptions:
        check_options("edgetpu", OPTIONS, options)
        return cls(**options)


@dataclass
class Artifacts:
    int8: bytes | None  # what edgetpu_compiler takes (and the emulator runs)
    compiled: bytes | None  # edgetpu_compiler's output (what the Edge TPU runs)
    compiler_log: str | None = None


def _quantizer(scale: float, zp: int, dtype: np.dtype):
    """round(x / scale) + zero_point, saturated, as TFLite's QUANTIZE. Works in
    buffers kept between calls: a fresh array of an image's size costs more in
    page faults than the arithmetic (set_tensor copies, so reuse is safe). The
    buffers are state: each interpreter slot has its own quantizer."""
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    bufs: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def q(a: np.ndarray) -> np.ndarray:
        b = bufs.get(a.shape)
        if b is None:
            b = bufs[a.shape] = (np.empty(a.shape, np.float32), np.empty(a.shape, dtype))
        x, out = b
        np.divide(a, scale, out=x, dtype=np.float32)
        np.rint(x, out=x)
        x += zp
        np.clip(x, lo, hi, out=x)
        np.copyto(out, x, casting="unsafe")
        return out
    return q


def _dequantizer(scale: float, zp: int):
    s, z = np.float32(scale), np.float32(zp)

    def dq(a: np.ndarray) -> np.ndarray:
        x = a.astype(np.float32)
        x -= z
        x *= s
        return x
    return dq


def _affine(detail: dict) -> tuple[float, int] | None:
    """Per-tensor scale / zero point of an 8-bit I/O tensor, else ``None``."""
    if np.dtype(detail["dtype"]).kind not in "iu" or np.dtype(detail["dtype"]).itemsize != 1:
        return None
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", []))
    if scales.size == 0:
        scale, zp = detail.get("quantization", (0.0, 0))
        return (float(scale), int(zp)) if scale else None
    if scales.size != 1:
        raise UnsupportedError(f"model I/O tensor {detail['name']!r} is quantized per channel",
                               "compile with options={'raw_io': True} and quantize it yourself")
    return float(scales[0]), int(np.asarray(qp.get("zero_points", [0]))[0])


@dataclass
class _Slot:
    """One interpreter and its input (index, quantizer) / output (index,
    dequantizer) pairs; serves one call at a time."""

    it: Any
    ins: list
    outs: list


class EdgeTpuExecutable(Runner):
    thread_safe = True  # one interpreter per concurrent call; one lock on hardware

    def __init__(self, info: ExecutableInfo, device: Device, files: Artifacts, opts: EdgeTpuOptions):
        super().__init__(info, device)
        self.files, self.opts = files, opts
        from ai_edge_litert.interpreter import Interpreter

        hardware = device.kind == "hardware"
        model = files.compiled if hardware else files.int8
        if model is None:
            raise UnsupportedError(
                f"this executable has no {'edgetpu_compiler output' if hardware else 'int8 TFLite'} "
                f"to run on {device.target}",
                "recompile on a machine with edgetpu_compiler" if hardware
                else "emulate the int8 TFLite from before edgetpu_compiler")
        self._model = model  # the interpreters read this buffer in place
        self._delegate = self._open_delegate() if hardware else None
        self._interpreter = Interpreter
        first = self._slot()
        self._it = first.it  # for inspection (details, ops); runs go through the pool
        ins, outs = [], []
        for d in first.it.get_input_details():
            qp = None if opts.raw_io else _affine(d)
            ins.append(TensorSpec(d["name"], tuple(int(x) for x in d["shape"]),
                                  "float32" if qp else np.dtype(d["dtype"]).name))
        for d in first.it.get_output_details():
            qp = None if opts.raw_io else _affine(d)
            outs.append(TensorSpec(d["name"], tuple(int(x) for x in d["shape"]),
                                   "float32" if qp else np.dtype(d["dtype"]).name))
        info.inputs, info.outputs = ins, outs
        # idle slots (list.pop/append are atomic); on hardware one slot behind a lock
        self._idle: list[_Slot] = [first]
        self._hw_lock = threading.Lock() if hardware else None

    @property
    def concurrency(self) -> int:
        """Interpreters that run at once behind ``Executable.submit``: one Edge TPU
        takes one call at a time; the emulation runs one interpreter per share of
        the host's cores (``num_threads`` each)."""
        if self._hw_lock is not None:
            return 1
        return max(1, host_cores() // (self.opts.num_threads or 1))

    def _slot(self) -> _Slot:
        """A new interpreter with its own (de)quantizers."""
        try:
            it = self._interpreter(model_content=self._model, num_threads=self.opts.num_threads,
                                   experimental_delegates=[self._delegate] if self._delegate
                                   else None)
            it.allocate_tensors()
        except Exception as e:  # noqa: BLE001 - libedgetpu reports version/device errors here
            raise self._failure(e, "prepare the model") from None
        raw = self.opts.raw_io
        ins, outs = [], []
        for d in it.get_input_details():
            qp = None if raw else _affine(d)
            ins.append((d["index"], _quantizer(*qp, np.dtype(d["dtype"])) if qp else None))
        for d in it.get_output_details():
            qp = None if raw else _affine(d)
            outs.append((d["index"], _dequantizer(*qp) if qp else None))
        return _Slot(it, ins, outs)

    def _open_delegate(self):
        try:
            return devices.open_delegate(self.device.id)
        except Exception as e:  # noqa: BLE001 - ValueError/OSError/AttributeError from ctypes
            raise DeviceUnavailableError(
                f"the Edge TPU delegate ({devices.library()}, device {self.device.id}) failed to "
                f"load: {devices.short(e)}",
                "check the Edge TPU is attached and libedgetpu is installed (libedgetpu1-std); "
                f"set ${devices.LIB_ENV} if it lives elsewhere") from None

    def _failure(self, e: BaseException, doing: str):
        msg = devices.short(e)
        if "runtime version" in msg.lower():
            return UnsupportedError(f"the Edge TPU runtime refused the model: {msg}",
                                    "recompile with edgetpu_compiler -m <this runtime's version> "
                                    "(options={'min_runtime_version': N}) or upgrade libedgetpu")
        if self.device.kind == "hardware":
            gone = devices.device_present(self.device.id) is False
            return DeviceUnavailableError(
                f"{self.device.target} failed to {doing}" + (" (its device node is gone)" if gone
                                                              else "") + f": {msg}",
                "reconnect the Edge TPU, then hal.load / hal.compile the model again")
        if doing == "run":  # the model was accepted: a failure now is not "unsupported"
            return HalError(f"LiteRT failed to run the model on the CPU: {msg}",
                            "check the model runs with ai_edge_litert.interpreter")
        return UnsupportedError(f"LiteRT could not {doing} on the CPU: {msg}",
                                "check the model runs with ai_edge_litert.interpreter")

    # --- running ---------------------------------------------------------------------
    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self._hw_lock is not None:  # one Edge TPU: calls take turns on its interpreter
            with self._hw_lock:
                return self._run(self._idle[0], inputs)
        try:
            slot = self._idle.pop()
        except IndexError:  # every interpreter is busy in another thread: one more
            slot = self._slot()
        try:
            return self._run(slot, inputs)
        finally:
            self._idle.append(slot)

    def _run(self, slot: _Slot, inputs: list[np.ndarray]) -> list[np.ndarray]:
        it = slot.it
        for (index, q), a in zip(slot.ins, inputs):
            it.set_tensor(index, q(a) if q is not None else a)  # set_tensor copies
        try:
            it.invoke()
        except Exception as e:  # noqa: BLE001 - e.g. a USB stick unplugged between runs
            raise self._failure(e, "run") from None
        # get_tensor returns a copy: the caller owns every output; a 0-d tensor comes back
        # as a numpy scalar, which asarray makes the 0-d array the core requires (no copy)
        return [dq(np.asarray(it.get_tensor(i))) if dq is not None else np.asarray(it.get_tensor(i))
                for i, dq in slot.outs]

    def profile_extras(self, inputs: list[np.ndarray]) -> dict[str, Any]:
        un = {
            "layers": "LiteRT's Python interpreter exposes no per-op profiler (only the C++ "
                      "benchmark_model --enable_op_profiling does)"
                      + ("; on the Edge TPU the compiled part is one edgetpu-custom-op"
                         if self.device.kind == "hardware" else ""),
            "peak_memory_bytes": "LiteRT exposes no per-model memory counter",
            "energy_j_per_inference": "Coral Edge TPUs expose no power telemetry",
        }
        out: dict[str, Any] = {"unavailable": un, "tflite_ops": len(self._it._get_ops_details())}
        temp = devices.temperature_c(self.device.id) if self.device.kind == "hardware" else None
        if temp is not None:
            out["edgetpu_temperature_c"] = temp
        else:
            un["edgetpu_temperature_c"] = (
                "emulated device: no Edge TPU" if self.device.kind == "emulated" else
                f"no /sys/class/apex/apex_N/temp for {self.device.id} (the USB Accelerator has none)")
        mapping = self.info.extra.get("edgetpu_mapping") or {}
        if mapping:
            out["ops_predicted_on_edgetpu"] = mapping.get("ops_on_edgetpu")
        return out

    # --- placement -------------------------------------------------------------------
    def placement(self):
        """Which ops run on the Edge TPU and which on the CPU (:mod:`.placement`)."""
        from ..placement_once import once
        from .placement import placement

        return once(self, lambda: placement(self))

    # --- saving ----------------------------------------------------------------------
    def write_artifact(self, directory: Path) -> None:
        if self.files.int8 is not None:
            (directory / INT8_FILE).write_bytes(self.files.int8)
        if self.files.compiled is not None:
            (directory / COMPILED_FILE).write_bytes(self.files.compiled)
        if self.files.compiler_log:
            (directory / LOG_FILE).write_text(self.files.compiler_log)
        (directory / META_FILE).write_text(json.dumps({"options": asdict(self.opts)}))


def read_artifacts(directory: Path) -> tuple[Artifacts, EdgeTpuOptions]:
    """The artifact's files; ``edgetpu.json`` is untrusted, so every field is
    checked and a bad one is an ArtifactError, never a KeyError or TypeError."""
    def read(name: str) -> bytes | None:
        p = directory / name
        return p.read_bytes() if p.is_file() else None

    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"the edgetpu artifact's {META_FILE} {what}",
                             "recompile the model (the artifact was damaged or not written by hal)")

    meta = read_json_object(directory / META_FILE, "edgetpu")
    if not isinstance(meta.get("options"), dict):
        raise bad("has no 'options' object")
    try:
        opts = EdgeTpuOptions.parse(meta["options"])
    except UsageError as e:
        raise bad(f"records options this backend does not admit: {e.what}") from None
    log = directory / LOG_FILE
    return (Artifacts(read(INT8_FILE), read(COMPILED_FILE), log.read_text() if log.is_file() else None),
            opts)
