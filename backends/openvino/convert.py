"""Model import into OpenVINO: ``ov.convert_model`` for framework models and
``Core.read_model`` for IR, plus the in-memory ``openvino.model`` format.

Nothing here imports openvino (or any framework) at module import; the plugin
module registers these functions and they import lazily when called.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hal import CompileError, HalError, ModelFormatError
from hal.plugin import Model, program_dim, scratch_dir

from . import compat


def short(e: BaseException) -> str:
    """OpenVINO errors carry a C++ trace; keep the informative lines, without
    a plugin library's long install path."""
    lines = [l.strip() for l in str(e).splitlines()
             if l.strip() and not l.strip().startswith("Exception from")]
    text = re.sub(r'Cannot load library "[^"]*/([^"/]+)"', r"cannot load \1", " ".join(lines))
    return text[:300] or type(e).__name__


# --- the in-memory format ------------------------------------------------------------
def is_ov_model(obj: Any) -> bool:
    """An ``openvino.Model`` (current or legacy API), told apart by type name
    so that recognising it never imports openvino."""
    for c in type(obj).__mro__:
        if c.__module__.startswith("openvino") and c.__qualname__ == "Model":
            return True
    return False


def fingerprint(ov_model) -> bytes:
    """Hash of the serialized IR: changes whenever graph or weights change."""
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory(prefix="hal-ov-fp-") as d:
        xml = Path(d) / "m.xml"
        compat.api().save_model(ov_model, xml)
        h.update(xml.read_bytes())
        with open(xml.with_suffix(".bin"), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.digest()


# --- converters -> openvino.model ----------------------------------------------------
def _convert(source: Any, what: str, fix: str | None = None, **kwargs) -> Any:
    o = compat.api()
    try:
        return o.convert(source, **kwargs)
    except HalError:
        raise
    except Exception as e:  # noqa: BLE001 - the converter's own failure
        raise CompileError(f"ov.convert_model could not convert the {what}: {short(e)}",
                           fix or "check that every op is supported by OpenVINO's frontend, or "
                           "export the model to ONNX and pass that") from None


#: where a conversion leaves notes for ``ExecutableInfo.notes`` (model rt_info)
NOTES = "hal_notes"


def add_note(ov_model, text: str) -> None:
    n = len(take_notes(ov_model, keep=True))
    ov_model.set_rt_info(text, [NOTES, str(n)])


def take_notes(ov_model, keep: bool = False) -> list[str]:
    """The notes a converter attached to the model (removed unless ``keep``)."""
    rt = ov_model.get_rt_info()
    if NOTES not in list(rt.keys()):
        return []
    out, i = [], 0
    while ov_model.has_rt_info([NOTES, str(i)]):
        out.append(ov_model.get_rt_info([NOTES, str(i)]).astype(str))
        i += 1
    if not keep:
        del rt[NOTES]
    return out


def from_exported(model: Model, options) -> Any:
    """A static program asked for another batch converts re-batched (checked row by row,
    as the reference backend does), so `hal profile model.pt2 --batch-size 8` works here too."""
    ep = model.value
    if model.example_input:
        from hal_backends import torch_common as tc

        module = tc.rebatched_for(model)
        if module is not None:  # re-export at the asked batch: OpenVINO reads programs
            ep = tc.export_static(module, tc.example_tensors(model))
    return _keep_program_shapes(_convert(ep, "ExportedProgram"), ep)


def _keep_program_shapes(ov_model, ep):
    """The frontend leaves every input dimension dynamic; the program knows which are
    static (ints) and which are torch.export Dims (symbols). Give OpenVINO exactly
    that, so the executable's input specs say what the program takes."""
    names = set(ep.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder" and n.name in names]
    if len(vals) != len(ov_model.inputs) or any(v is None or not hasattr(v, "shape") for v in vals):
        return ov_model
    o = compat.api()
    shaped = ov_model.clone()  # a failed reshape may leave a model half-reshaped
    try:
        shaped.reshape({i: o.ov.PartialShape([-1 if (d := program_dim(x)) is None else d for x in v.shape])
                        for i, v in enumerate(vals)})
        return shaped
    except Exception as e:  # noqa: BLE001 - OpenVINO's shape inference refusing concrete shapes
        add_note(ov_model, f"OpenVINO could not apply the program's static input shapes "
                           f"({short(e)}); its inputs stay as the frontend left them")
        return ov_model


_ONNX_FIX = ("OpenVINO's ONNX frontend does not support an op or attribute in this model: check "
             "OpenVINO's supported-ONNX-operator list, or run it on another target (e.g. 'cpu')")


def from_onnx(model: Model, options) -> Any:
    """``Core.read_model`` on the file, as OpenVINO's own users load ONNX: it
    reads models ``ov.convert_model`` refuses (Col2Im), is 0.4 s faster per
    model, and sends no telemetry (ovc posts usage events to Google Analytics
    and writes ~/intel unless the user opted out). ``ov.convert_model`` is
    the fallback, said in notes. The source graph's inputs are kept: a
    frontend that drops an input the model does not need (an empty ``axes``)
    would otherwise change its arity."""
    path = model.path
    if path is None:  # a file keeps external-data files next to the .onnx
        import onnx

        path = scratch_dir("hal-ov-onnx-") / "model.onnx"
        onnx.save(model.value, str(path))
    try:
        ov_model = compat.api().core().read_model(str(path))
    except Exception as e:  # noqa: BLE001 - the frontend's own failure
        first = short(e)
        try:
            ov_model = _convert(str(path), "ONNX model", _ONNX_FIX)
        except CompileError:
            raise CompileError(f"OpenVINO could not read the ONNX model: {first}", _ONNX_FIX) from None
        add_note(ov_model, f"Core.read_model refused the model ({first}); ov.convert_model read it")
    return keep_source_inputs(ov_model, model.value)


def keep_source_inputs(ov_model, proto) -> Any:
    """Give ``ov_model`` the ONNX graph's inputs, in the graph's order: an input
    the frontend dropped comes back as an unused Parameter of its declared
    type and shape, so inputs map by position exactly as in the source."""
    o = compat.api()
    init = {i.name for i in proto.graph.initializer}
    source = [v for v in proto.graph.input if v.name not in init]
    have = list(ov_model.get_parameters())
    index = {n: i for i, p in enumerate(have) for n in p.output(0).get_names()}
    where = [index.get(v.name) for v in source]
    if where == list(range(len(have))):
        return ov_model
    found = [i for i in where if i is not None]
    if sorted(found) != list(range(len(have))) or \
            any(i is None and v.type.WhichOneof("value") != "tensor_type" for i, v in zip(where, source)):
        return ov_model  # not a plain rename-free case: keep OpenVINO's own interface
    from onnx import helper

    ordered, added = [], []
    for i, v in zip(where, source):
        if i is not None:
            ordered.append(have[i])
            continue
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        et = _ov_type(o, helper, t.elem_type)
        if et is None:
            return ov_model  # a type OpenVINO's Python API cannot name: leave its interface
        p = o.ov.op.Parameter(et, o.ov.PartialShape(dims))
        p.set_friendly_name(v.name)
        p.output(0).get_tensor().set_names({v.name})
        ordered.append(p)
        added.append(v.name)
    notes = take_notes(ov_model)
    new = o.ov.Model(ov_model.get_results(), ordered, ov_model.get_friendly_name())
    for n in notes:
        add_note(new, n)
    if added:
        add_note(new, f"input(s) {added} are not used by the converted model; they are kept, "
                      "and ignored, so inputs map by position as in the ONNX graph")
    return new


#: ONNX element types numpy cannot name (OpenVINO's Python API takes no ml_dtypes)
_OV_NAMES = {16: "bf16", 17: "f8e4m3", 19: "f8e5m2", 21: "u4", 22: "i4", 23: "f4e2m1"}


def _ov_type(o, helper, elem_type: int):
    try:
        if elem_type in _OV_NAMES:
            return getattr(o.ov.Type, _OV_NAMES[elem_type])
        return o.ov.Type(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except (AttributeError, RuntimeError, TypeError, KeyError, ValueError):
        return None


def prequantized(ov_model) -> str | None:
    """What makes ``ov_model`` already int8, or None: OpenVINO's frontends turn a QDQ
    ONNX model's QuantizeLinear/DequantizeLinear pairs and an int8 TFLite's quantized
    tensors into FakeQuantize, as NNCF does; an IR may carry them itself."""
    n = sum(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ordered_ops())
    return f"{n} FakeQuantize op(s)" if n else None


def from_tflite(model: Model, options) -> Any:
    """The subgraph-call check of the edgetpu backend (``tflite_guard``) runs
    here too, so a file is refused alike whichever backend reads it; OpenVINO
    then reads the very bytes that were checked."""
    from .. import tflite_guard

    data = bytes(model.value)
    checked = tflite_guard.check_calls(data, ModelFormatError, "the TFLite model")
    path = scratch_dir("hal-ov-tflite-") / "model.tflite"
    path.write_bytes(data)
    ov_model = _convert(str(path), "TFLite model")
    if prequantized(ov_model):
        # measured on front_door's tflite-int8-fio (50 inputs): LiteRT 37-44 dB from the float
        # Keras model, OpenVINO 24-35 dB; OpenVINO called directly gives hal's answer exactly
        add_note(ov_model, "OpenVINO runs this TFLite's int8 quantization as FakeQuantize "
                           "around its own kernels (u8 activations, its own requantization), "
                           "not TFLite's integer kernels: its answers differ from LiteRT's by "
                           "more than rounding (24-35 dB SNR on hal's front-door corpus). For "
                           "LiteRT's arithmetic, compile the file for a LiteRT backend")
    if not checked:
        add_note(ov_model, "the TFLite model's subgraph calls were not checked by hal "
                           "(ai-edge-litert, whose schema it reads with, is not installed)")
    return ov_model


def from_saved_model(model: Model, options) -> Any:
    return _convert(str(model.path or model.value), "SavedModel")


def read_ir(xml: Path, error=ModelFormatError) -> Any:
    """``Core.read_model`` on an IR, with a missing or truncated ``.bin`` named
    as such (OpenVINO reports it as 'Incorrect weights in bin file')."""
    xml = Path(xml)
    bin_ = xml.with_suffix(".bin")
    if not bin_.exists():
        raise error(f"{xml}'s weights file {bin_.name} is missing",
                    "keep the IR's .xml and .bin side by side (re-run ov.save_model)")
    try:
        return compat.api().core().read_model(str(xml), str(bin_))
    except RuntimeError as e:
        msg = short(e)
        if "weights" in msg.lower() or "bin" in msg.lower():
            raise error(f"{bin_} is truncated or does not belong to {xml.name} "
                        f"({bin_.stat().st_size} bytes; OpenVINO: {msg})",
                        "re-export the IR so that the .xml and its .bin match "
                        "(ov.save_model writes both)") from None
        raise error(f"{xml} is not a readable OpenVINO IR ({msg})",
                    "re-export it with ov.save_model") from None


def from_ir(model: Model, options) -> Any:
    return read_ir(Path(model.value))
