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

from hal import CompileError, HalError, ModelFormatError
from hal.formats import Model
from hal.formats.builtin import scratch_dir, torch_example_args

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
def _convert(source: Any, what: str, **kwargs) -> Any:
    o = compat.api()
    try:
        return o.convert(source, **kwargs)
    except HalError:
        raise
    except Exception as e:  # noqa: BLE001 - the converter's own failure
        raise CompileError(f"ov.convert_model could not convert the {what}: {short(e)}",
                           "check that every op is supported by OpenVINO's frontend, or export "
                           "the model to ONNX and pass that") from None


def from_torch(model: Model, options) -> Any:
    import torch

    args = torch_example_args(model)
    m = model.value
    training = m.training
    m.eval()
    try:
        with torch.no_grad():
            return _convert(m, "torch module", example_input=args[0] if len(args) == 1 else args)
    finally:
        m.train(training)


def from_exported(model: Model, options) -> Any:
    return _convert(model.value, "ExportedProgram")


def from_onnx(model: Model, options) -> Any:
    if model.path is not None:  # keeps external-data files next to the .onnx
        return _convert(str(model.path), "ONNX model")
    import onnx

    path = scratch_dir("hal-ov-onnx-") / "model.onnx"
    onnx.save(model.value, str(path))
    return _convert(str(path), "ONNX model")


def from_tflite(model: Model, options) -> Any:
    path = model.path
    if path is None:
        path = scratch_dir("hal-ov-tflite-") / "model.tflite"
        path.write_bytes(model.value)
    return _convert(str(path), "TFLite model")


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
