"""The OpenVINO backend: Intel CPU, GPU, NPU (and MYRIAD on legacy OpenVINO)."""

from __future__ import annotations

import functools
from pathlib import Path

from hal import ArtifactError, CompileError, Device, DeviceUnavailableError, UnsupportedError, UsageError
from hal.plugin import (Backend, CompileOptions, ExecutableInfo, Model, Runner, TensorSpec,
                        read_json_object, runtime_cache_dir, stage)

from . import bitview, compat, devices, pipeline
from .convert import read_ir, short, take_notes


class OpenVINOBackend(Backend):
    name = devices.NAME
    description = "Intel OpenVINO runtime: CPU, GPU, NPU (Movidius' successor), AUTO; MYRIAD on OpenVINO ≤ 2022.3"
    formats = ("openvino.model",)
    dynamic_batch = True
    dynamic_dims = True
    precisions = devices.ALL
    aliases = ("movidius", "npu")
    requires = ("openvino",)
    extra = "openvino-runtime"  # loading and running; compiling adds hal-accel[openvino]
    options = pipeline.OPTIONS

    def version(self) -> str:
        o = compat.api()
        return f"openvino {o.version}" + (" (legacy openvino.runtime API)" if o.legacy else "")

    def probe(self) -> list[Device]:
        why = self.missing_runtime()
        return devices.unavailable(why) if why else devices.probe()

    def refuse_precision(self, precision: str, device: Device, why: str = "") -> UnsupportedError:
        return super().refuse_precision(precision, device, why or devices.why_not(precision, device))

    # --- compile ----------------------------------------------------------------------
    def compile(self, model: Model, device: Device, options: CompileOptions) -> Runner:
        self.require_runtime()
        pipeline.check_options(options.backend_options)
        core = _core()
        precision = options.precision
        notes = take_notes(model.value)  # what a converter had to say (a fallback, a kept input)
        ov_model = _static_shapes(model.value, options.example_input, copy=not model.converted)
        bitview.check_ports(ov_model)
        path = []
        with stage("quantize"):
            pre = pipeline.check_prequantized(ov_model, precision, device)
            if precision in ("int8", "int8-dynamic") and not pre:
                devices.require_quantizer(precision)
            if pre:  # QDQ ONNX, int8 TFLite, an IR with FakeQuantize: never quantized twice
                path.append(f"already quantized ({pre}): run as given, not quantized again")
                if options.calibration:
                    pipeline.check_calibration(ov_model, options.calibration)
                    notes.append("calibration data not used: the model carries its own quantization")
            elif precision == "int8":
                ov_model, step = pipeline.quantize_int8(ov_model, options.calibration or [],
                                                        options.backend_options, device)
                path.append(step)
            elif precision == "int8-dynamic":
                ov_model, step = pipeline.compress_int8(ov_model, options.backend_options)
                path.append(step)
        config = pipeline.config_for(precision, device, options.backend_options)
        compiled = _compile(core, ov_model, device, config, options.cache_dir)
        facts = pipeline.verify(compiled, precision, device, config, model=ov_model)
        path.append(f"Core.compile_model({device.id}, "
                    + ", ".join(f"{k}={v}" for k, v in config.items()) + ")")
        ins, outs = _specs(compiled)
        info = self.executable_info(device, precision,
                              ins, outs, conversion_path=path, backend_options=dict(options.backend_options),
                              extra={"config": config, **facts,
                                     "execution_devices": _exec_devices(compiled)})
        info.notes.extend(notes)
        if facts.get("weights_stored"):
            info.notes.append("the model stores its weights in f16 (ov.save_model's default "
                              "compress_to_fp16=True); OpenVINO decompresses them and computes in f32")
        if precision == "int8-dynamic":
            info.notes.append("int8-dynamic: weights are stored int8; FullyConnected activations are "
                              "quantized per call by the CPU plugin; convolutions compute in fp32 "
                              "from the int8 weights")
        return _executable(info, device, core, ov_model, compiled, config)

    # --- load -------------------------------------------------------------------------
    def load(self, artifact: Path, info: ExecutableInfo, device: Device) -> Runner:
        self.require_runtime()
        o = compat.api()
        meta = read_json_object(artifact / "openvino.json", self.name)
        ov_model = read_ir(artifact / "model.xml", error=ArtifactError)
        if info.precision not in self.precisions_for(device):
            raise self.refuse_precision(info.precision, device)
        core = o.core()
        # derived from the precision, never copied from the (untrusted) openvino.json
        pipeline.check_options(info.backend_options)
        config = pipeline.config_for(info.precision, device, info.backend_options)
        compiled, source = None, "ir"
        blob = artifact / "compiled.blob"
        same = (meta.get("blob") and blob.exists() and device.id == meta.get("device_id")
                and device.name == meta.get("device_name") and o.version == meta.get("openvino"))
        if same:
            try:
                compiled = o.import_blob(core, blob.read_bytes(), device.id, config)
                source = "compiled blob"
            except RuntimeError as e:
                info.notes.append(f"compiled blob not importable ({short(e)}); recompiled from IR")
        if compiled is None:
            compiled = _compile(core, ov_model, device, config, runtime_cache_dir())
        facts = pipeline.verify(compiled, info.precision, device, config, model=ov_model)
        real = [[(s.shape, s.dtype) for s in specs] for specs in _specs(compiled)]
        claimed = [[(s.shape, s.dtype) for s in specs] for specs in (info.inputs, info.outputs)]
        if real != claimed:  # hal.json is untrusted: the compiled model decides
            raise ArtifactError(f"hal.json's inputs/outputs {claimed} are not the model's {real}",
                                "re-create the artifact with hal; do not edit .hal files")
        info.extra.update(facts, loaded_from=source, config=config,
                          execution_devices=_exec_devices(compiled))
        return _executable(info, device, core, ov_model, compiled, config)


# --- helpers ------------------------------------------------------------------------------
def _executable(info: ExecutableInfo, device: Device, core, ov_model, compiled, config):
    from .bitview import BitViewExecutable, has_bit_ports
    from .executable import OpenVINOExecutable

    cls = BitViewExecutable if has_bit_ports(info) else OpenVINOExecutable
    return cls(info, device, core, ov_model, compiled, config)


@functools.lru_cache(maxsize=1)
def _core():
    """One Core per process: a fresh one loads every device plugin again on its
    first query (0.2 s per compile here); Core's compile_model is thread-safe."""
    return compat.api().core()


def _compile(core, ov_model, device: Device, config: dict[str, str], cache_dir):
    from .executable import runtime_error, vanished

    if vanished(core, device.id):
        raise DeviceUnavailableError(f"{device.target} ({device.name}) is no longer available",
                                     "reconnect the device, or choose another target")
    try:
        return core.compile_model(ov_model, device.id, pipeline.with_cache(config, cache_dir))
    except RuntimeError as e:
        err = runtime_error(core, device, e, "compile")
        if isinstance(err, DeviceUnavailableError):
            raise err from None
        raise CompileError(f"OpenVINO could not compile the model for {device.target}: {short(e)}",
                           "check the model's ops are supported by this device's plugin"
                           + ("" if device.id == "CPU" else ", or target openvino:CPU")) from None


def _static_shapes(ov_model, example_input, copy: bool):
    """Check the example inputs against the model's declared shapes. The dimensions
    the model leaves free (an ONNX symbolic dimension, a torch.export ``Dim``, a Keras
    ``None``, a torch module's batch where torch.export frees it) stay free, as on
    every backend that can run them (docs/architecture.md, "Shapes"); an example
    only fixes what the model itself does not say."""
    if not example_input:
        return ov_model
    if len(example_input) != len(ov_model.inputs):
        raise UsageError(f"{len(example_input)} example input(s) for a model with "
                         f"{len(ov_model.inputs)} input(s)", "pass one example array per input")
    for i, (port, a) in enumerate(zip(ov_model.inputs, example_input)):
        ps = port.get_partial_shape()
        if ps.rank.is_static and (ps.rank.get_length() != a.ndim or any(
                d.is_static and d.get_length() != n for d, n in zip(ps, a.shape))):
            raise UsageError(f"example input {i} has shape {tuple(a.shape)}, the model takes {ps}",
                             "pass example inputs of the model's input shape")
    if all(p.get_partial_shape().rank.is_static for p in ov_model.inputs):
        return ov_model
    # only a dynamic *rank* (a frontend that read no shapes at all) takes the example's
    m = ov_model.clone() if copy else ov_model
    o = compat.api()
    m.reshape({m.inputs[i]: o.ov.PartialShape(list(a.shape)) for i, a in enumerate(example_input)
               if not m.inputs[i].get_partial_shape().rank.is_static})
    return m


def _names(ports, prefix: str) -> list[str]:
    out = []
    for i, p in enumerate(ports):
        try:
            n = p.get_any_name()
        except RuntimeError:
            n = ""
        out.append(n if n and n not in out else f"{prefix}_{i}")
    return out


def _specs(compiled) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def spec(name, port) -> TensorSpec:
        ps = port.get_partial_shape()
        shape = tuple(None if d.is_dynamic else d.get_length() for d in ps)
        return TensorSpec(name, shape, compat.to_numpy_dtype(port.get_element_type()))

    return ([spec(n, p) for n, p in zip(_names(compiled.inputs, "input"), compiled.inputs)],
            [spec(n, p) for n, p in zip(_names(compiled.outputs, "output"), compiled.outputs)])


def _exec_devices(compiled) -> list[str]:
    try:
        return [str(d) for d in compiled.get_property("EXECUTION_DEVICES")]
    except Exception:  # noqa: BLE001 - legacy plugins lack the property
        return []
