"""Built-in formats and framework-level converters (a default plugin).

Every framework import happens inside a function, so importing this module
costs nothing. Backend-specific converters (``ov.convert_model``, litert-torch
quantization, ...) live with their backends.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CompileError, ModelFormatError, brief
from ..hookspecs import hookimpl
from . import Converter, Format, Model, Unkeyable, hash_path, scratch_dir, signatures
from .pt2 import read as safe_export_read
from .torchexport import export_by_name, export_static, torch_example_args  # noqa: F401 - also hal.plugin's


def _type_names(obj: Any) -> set[str]:
    return {f"{c.__module__}.{c.__qualname__}" for c in type(obj).__mro__}


def _is_torch_module(obj: Any) -> bool:
    return "torch.nn.modules.module.Module" in _type_names(obj)


def _is_exported(obj: Any) -> bool:
    return "torch.export.exported_program.ExportedProgram" in _type_names(obj)


def _is_onnx(obj: Any) -> bool:
    return any(n.startswith("onnx.") and n.endswith("ModelProto") for n in _type_names(obj))


def _is_keras(obj: Any) -> bool:
    return any(n.startswith("keras.") and n.endswith(".Model") for n in _type_names(obj))


def _is_tflite(obj: Any) -> bool:
    return isinstance(obj, bytes) and len(obj) >= 8 and obj[4:8] == b"TFL3"


# --- fingerprints ------------------------------------------------------------------
# A key hashes what runs, never a ``repr``; a file model is keyed by its stored bytes
# (Model.digest, with Format.files below), so these see in-memory models only.
def _tensor_bytes(h, named) -> None:
    import torch

    for name, t in named:
        if not isinstance(t, torch.Tensor) or t.is_quantized or t.layout != torch.strided:
            raise Unkeyable(f"constant {name} is a {type(t).__name__}, which the cache key cannot read")
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())


def _fp_torch_module(m) -> bytes:
    from .torchkey import fingerprint

    return fingerprint(m)


def _fp_exported(ep) -> bytes:
    """The program as it runs: every graph's code (control-flow branches are
    submodules), the signature, shape constraints and call specs, and every
    parameter, buffer and constant by bytes. A non-tensor constant (a torchbind
    object) is unkeyable."""
    h = hashlib.sha256()
    for name, gm in ep.graph_module.named_modules():
        code = getattr(gm, "code", None)
        h.update(f"{name}\0{code}\0".encode())
    h.update(str(ep.graph_signature).encode())
    h.update(str(sorted((str(k), str(v)) for k, v in ep.range_constraints.items())).encode())
    h.update(str(ep.call_spec).encode())
    h.update(str(getattr(ep, "verifiers", None) or getattr(ep, "dialect", "")).encode())
    _tensor_bytes(h, ep.state_dict.items())
    _tensor_bytes(h, ep.constants.items())
    return h.digest()


def _fp_keras(m) -> bytes:
    """Config (``to_json``), every weight's bytes, and each layer's class: a custom
    layer's ``call`` is code that ``to_json`` names but does not contain."""
    from .torchkey import class_key

    try:
        h = hashlib.sha256(m.to_json().encode())
    except Exception as e:  # noqa: BLE001 - a subclassed model without get_config
        raise Unkeyable(f"the Keras model has no config to key ({brief(e, 120)})") from None
    layers = m._flatten_layers(include_self=True, recursive=True) if hasattr(m, "_flatten_layers") \
        else [m, *m.layers]
    for layer in layers:
        h.update(class_key(type(layer)))
    for w in m.weights:
        a = np.ascontiguousarray(w.numpy())
        h.update(f"{w.path if hasattr(w, 'path') else w.name}:{a.dtype}:{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.digest()


def _onnx_files(path: Path) -> list[Path]:
    """The .onnx file and every external-data file its tensors name."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    m = onnx.load(str(path), load_external_data=False)
    names = set()
    for t in _get_all_tensors(m):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            names |= {e.value for e in t.external_data if e.key == "location"}
    return [path] + [path.parent / n for n in sorted(names)]


def _onnx_quantized(proto) -> str | None:
    from .onnxcheck import quantized_ops

    ops = quantized_ops(proto)
    return ", ".join(f"{n} {op}" for op, n in sorted(ops.items())) + " op(s)" if ops else None


def _ir_quantized(path) -> str | None:
    """FakeQuantize layers in the IR's .xml (read as text: a label, not a check; the
    OpenVINO backend verifies what runs)."""
    n = Path(path).read_bytes().count(b'type="FakeQuantize"')
    return f"{n} FakeQuantize layer(s)" if n else None


def _tflite_quantized(data: bytes) -> str | None:
    """Quantized activations in a TFLite: int8/uint8 tensors with a scale that no buffer
    holds, what TFLiteConverter writes with a representative dataset (int8 or float I/O),
    so every runtime runs it at int8. Weight-only (dynamic-range) models have none and
    are not labelled. Read with the flatbuffer schema LiteRT ships; without LiteRT,
    None (the model then needs calibration data like any other)."""
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:
        return None
    eight_bit = (fb.TensorType.INT8, fb.TensorType.UINT8)
    n = 0
    try:
        model = fb.Model.GetRootAs(data, 0)
        buffers = model.BuffersLength()
        for s in range(model.SubgraphsLength()):
            sg = model.Subgraphs(s)
            for i in range(sg.TensorsLength()):
                t = sg.Tensors(i)
                q = t.Quantization()
                if t.Type() not in eight_bit or q is None or q.ScaleLength() == 0:
                    continue
                b = t.Buffer()
                if 0 < b < buffers and (model.Buffers(b).DataLength() > 0 or model.Buffers(b).Offset() > 1):
                    continue  # a constant: a weight
                n += 1
    except Exception:  # noqa: BLE001 - a damaged flatbuffer: the backend's reader says what is wrong
        return None
    return f"{n} int8 activation tensor(s)" if n else None


def _ir_files(path: Path) -> list[Path]:
    return [path, path.with_suffix(".bin")]


# --- safe loaders -------------------------------------------------------------------
def _read_onnx(path: Path):
    from .onnxcheck import read

    return read(path)


def check_tflite(data: bytes, where: str) -> bytes:
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError(f"{where} is not a TFLite flatbuffer (no TFL3 identifier)",
                               "convert the model to .tflite first")
    root = int.from_bytes(data[:4], "little")
    if root >= len(data) or len(data) < 64:
        raise ModelFormatError(f"{where} is a truncated TFLite flatbuffer", "re-convert it")
    return data


def _read_tflite(path: Path) -> bytes:
    return check_tflite(path.read_bytes(), str(path))


def _read_ir(path: Path) -> Path:
    bin_ = path.with_suffix(".bin")
    head = path.read_bytes()[:512].lstrip()
    if not head.startswith(b"<?xml") and b"<net" not in head:
        raise ModelFormatError(f"{path} is not an OpenVINO IR .xml", "pass the IR's .xml file")
    if not bin_.exists():
        raise ModelFormatError(f"{path}'s weights file {bin_.name} is missing",
                               "keep the .xml and .bin side by side")
    return path


def _read_keras(path: Path):
    import keras

    try:
        return keras.models.load_model(str(path), safe_mode=True, compile=False)
    except Exception as e:  # noqa: BLE001
        raise ModelFormatError(f"{path} is not a loadable .keras model ({e})",
                               "re-save it with model.save('x.keras')") from None


def _is_saved_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "saved_model.pb").is_file()


# --- converters ---------------------------------------------------------------------
def _torch_to_export(model: Model, options) -> Any:
    return export_static(model.value.eval(), torch_example_args(model))


def _to_onnx(model: Model, options) -> Any:
    import torch

    src = model.value
    args = torch_example_args(model) if model.example_input else ()
    if model.format == "torch.nn":
        src = src.eval()
    try:
        prog = torch.onnx.export(src, args, dynamo=True, verbose=False)
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"torch.onnx.export failed: {brief(e)}",
                           "check the model exports with torch.export first") from None
    return prog.model_proto


def _torch_to_tflite(model: Model, options) -> bytes:
    """A float TFLite flatbuffer by litert-torch (weights and compute as in the
    source, fp32 here); a backend that wants int8 quantizes on its own terms."""
    import litert_torch

    module = model.value.eval() if model.format == "torch.nn" else model.value.module()
    try:
        edge = litert_torch.convert(module, torch_example_args(model))
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"litert_torch.convert failed: {brief(e)}",
                           "check the model exports with torch.export first") from None
    return bytes(edge.model_content())


def _keras_to_tflite(model: Model, options) -> bytes:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model.value).convert()


def _saved_model_to_tflite(model: Model, options) -> bytes:
    import tensorflow as tf

    # the converter loads the SavedModel (runs its initializers): check its graph first
    from hal_backends.tf_graph_guard import check_saved_model

    check_saved_model(model.value, ModelFormatError, f"the SavedModel at {model.value}")
    return tf.lite.TFLiteConverter.from_saved_model(str(model.value)).convert()


def _keras_to_saved_model(model: Model, options) -> Path:
    out = scratch_dir("hal-savedmodel-") / "model"
    model.value.export(str(out), format="tf_saved_model", verbose=False)
    return out


@hookimpl
def register_formats(register):
    register(Format("torch.nn", "PyTorch nn.Module (+ example inputs)",
                    detect=_is_torch_module, fingerprint=_fp_torch_module, requires=("torch",),
                    signature=signatures.torch_module, bind=export_by_name))
    register(Format("torch.export", "torch.export ExportedProgram (.pt2)", suffixes=(".pt2",),
                    detect=_is_exported, read=safe_export_read, fingerprint=_fp_exported,
                    requires=("torch",), extra="cpu", signature=signatures.exported))
    register(Format("onnx", "ONNX ModelProto (.onnx)", suffixes=(".onnx",), detect=_is_onnx,
                    read=_read_onnx, fingerprint=lambda m: m.SerializeToString(deterministic=True),
                    files=_onnx_files, requires=("onnx",), extra="cpu", signature=signatures.onnx_model,
                    quantized=_onnx_quantized))
    register(Format("tflite", "TFLite flatbuffer (.tflite)", suffixes=(".tflite",),
                    detect=_is_tflite, read=_read_tflite, fingerprint=bytes,
                    quantized=_tflite_quantized))
    register(Format("keras", "Keras model (.keras)", suffixes=(".keras",), detect=_is_keras,
                    read=_read_keras, fingerprint=_fp_keras, requires=("keras",), extra="tpu",
                    signature=signatures.keras_model))
    register(Format("savedmodel", "TensorFlow SavedModel directory", sniff=_is_saved_model_dir,
                    fingerprint=lambda p: hash_path(Path(p))))
    register(Format("openvino.ir", "OpenVINO IR (.xml + .bin)", suffixes=(".xml",), read=_read_ir,
                    fingerprint=lambda p: hash_path(Path(p), _ir_files(Path(p))), files=_ir_files,
                    quantized=_ir_quantized))


@hookimpl
def register_converters(register):
    register(Converter("torch.export.export", "torch.nn", "torch.export", _torch_to_export,
                       requires=("torch",), extra="cpu"))
    register(Converter("torch.onnx.export", "torch.nn", "onnx", _to_onnx,
                       requires=("torch", "onnx", "onnxscript"), extra="cpu", cost=2))
    register(Converter("torch.onnx.export", "torch.export", "onnx", _to_onnx,
                       requires=("torch", "onnx", "onnxscript"), extra="cpu"))
    for source in ("torch.nn", "torch.export"):
        register(Converter("litert_torch.convert", source, "tflite", _torch_to_tflite,
                           requires=("torch", "litert_torch"), extra="edgetpu", cost=2))
    register(Converter("keras.export", "keras", "savedmodel", _keras_to_saved_model,
                       requires=("tensorflow",), extra="tpu"))
    register(Converter("TFLiteConverter.from_keras_model", "keras", "tflite", _keras_to_tflite,
                       requires=("tensorflow",), extra="tpu"))
    register(Converter("TFLiteConverter.from_saved_model", "savedmodel", "tflite",
                       _saved_model_to_tflite, requires=("tensorflow",), extra="tpu"))
