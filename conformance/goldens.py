"""Goldens: the evaluation inputs and the oracle's outputs, on disk.

``--export-goldens DIR`` writes, per zoo model, ``<model>.npz`` (``x_eval_<i>``,
``y_eval`` for the zoo, ``x_calib_<i>``, ``reference``), ``<model>.onnx`` (the same model via
torch.onnx, for a host without torch) and ``manifest.json``. ``--goldens DIR``
judges against those outputs, so a device host needs no reference stack:
no torch on the reference side, no scikit-learn, and with
``HAL_CONFORMANCE_SOURCE=onnx`` (automatic when torch is missing) no torch at all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hal.npyfile import load_npz

from .models import weights_digest

FORMAT = "hal-conformance-goldens"
#: 2: inputs as x_eval_<i> / x_calib_<i> (several inputs), labels optional, any suite
VERSION = 2


@dataclass
class Reference:
    """The oracle's outputs for one model, from an oracle run or from goldens."""

    model: str
    outputs: np.ndarray
    labels: np.ndarray | None  # the zoo only
    accuracy: float | None
    data_path: Path
    onnx_path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: relative error of the model under torch autocast fp16 / bf16 (precision honesty)
    emulated: dict[str, float | None] = field(default_factory=dict)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_goldens(directory: Path, models: list[str]):
    """References from a goldens folder: ({model: Reference}, oracle record)."""
    from hal import UsageError

    mpath = Path(directory) / "manifest.json"
    if not mpath.is_file():
        raise UsageError(f"{directory} has no manifest.json",
                         "pass a folder written by `hal conformance --export-goldens DIR`")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError as e:
        raise UsageError(f"{mpath} is not JSON ({e})", "export the goldens again") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UsageError(f"{mpath} is not a version-{VERSION} goldens manifest",
                         "export the goldens again with this hal")
    refs = {}
    for name in models:
        entry = manifest["models"].get(name)
        if entry is None:
            raise UsageError(f"the goldens in {directory} have no model {name}",
                             f"export them again, or choose --model from {', '.join(manifest['models'])}")
        if entry.get("weights_sha256") and entry["weights_sha256"] != weights_digest(name):
            raise UsageError(f"the goldens for {name} were made with other zoo weights",
                             "export the goldens again from this version of hal")
        npz = Path(directory) / entry["file"]
        if not npz.is_file() or sha256(npz) != entry["sha256"]:
            raise UsageError(f"{npz} is missing or does not match its manifest checksum",
                             "copy the goldens folder again")
        d = load_npz(npz, f"golden file {npz.name}", UsageError)
        onnx = Path(directory) / entry["onnx"] if entry.get("onnx") else None
        if onnx is not None and (not onnx.is_file() or sha256(onnx) != entry.get("onnx_sha256")):
            raise UsageError(f"{onnx} is missing or does not match its manifest checksum",
                             "copy the goldens folder again")
        out = d["reference"]
        labels = d.get("y_eval")
        refs[name] = Reference(name, out, labels, None if labels is None else
                               float((out.argmax(-1) == labels).mean()), npz, onnx_path=onnx,
                               emulated=dict(entry.get("emulated_rel_err") or {}))
    oracle = dict(manifest.get("oracle", {}))
    oracle["source"] = f"goldens {directory} ({manifest.get('created')})"
    return refs, oracle
