"""The OpenVINO backend plugin: registration only.

Importing this module imports no framework and not OpenVINO; the runtime is
imported when devices are probed or a model is compiled.
"""

from hal.plugin import Converter, Format, hookimpl

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


@hookimpl
def register_formats(register):
    from . import convert

    register(Format("openvino.model", "in-memory openvino.Model", detect=convert.is_ov_model,
                    fingerprint=convert.fingerprint, requires=("openvino",), extra="openvino",
                    quantized=convert.prequantized))


@hookimpl
def register_converters(register):
    from . import convert, torch_import

    def ov(source, fn, *requires, name="ov.convert_model"):
        register(Converter(name, source, "openvino.model", fn,
                           requires=("openvino", *requires), extra="openvino"))

    # torch.export first (it refuses data-dependent branches); a checked trace only if it fails
    ov("torch.nn", torch_import.from_torch, "torch", name="torch.export.export + ov.convert_model")
    ov("torch.export", convert.from_exported, "torch")
    register(Converter("Core.read_model", "onnx", "openvino.model", convert.from_onnx,
                       requires=("openvino", "onnx"), extra="openvino"))
    ov("tflite", convert.from_tflite)
    ov("savedmodel", convert.from_saved_model)
    register(Converter("Core.read_model", "openvino.ir", "openvino.model", convert.from_ir,
                       requires=("openvino",), extra="openvino"))


@hookimpl
def register_backends(register):
    from .backend import OpenVINOBackend

    register(OpenVINOBackend())
