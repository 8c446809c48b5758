"""Goldens: the evaluation inputs and the oracle's outputs, on disk.

``--export-goldens DIR`` writes, per zoo model, ``<model>.npz`` (``x_eval``,
``y_eval``, ``x_calib``, ``reference``), ``<model>.onnx`` (the same model via
torch.onnx, for a host without torch) and ``manifest.json``. ``--goldens DIR``
judges against those outputs, so a device host needs no reference stack:
no torch on the reference side, no scikit-learn, and with
``HAL_CONFORMANCE_SOURCE=onnx`` (automatic when torch is missing) no torch at all.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .models import MODELS, weights_digest
from .policy import FLOWS, POLICY

FORMAT = "hal-conformance-goldens"
VERSION = 1


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_goldens(directory: Path, models: list[str] | None = None, onnx: bool = True,
                   on_note: Callable[[str], None] | None = None,
                   timeout_s: float = 300.0) -> dict[str, Any]:
    """Run the oracle on the zoo and write the goldens; returns the manifest."""
    from hal import HalError

    from .runner import Options, Suite

    note = on_note or (lambda s: None)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suite = Suite(Options(models=models, backends=[], timeout_s=timeout_s,
                          startup_timeout_s=timeout_s), on_note=note)
    try:
        refs = suite.references()
        if suite.report.errors:
            raise HalError("; ".join(suite.report.errors), "fix the oracle backend and export again")
        oracle = suite.report.oracle
        run = suite.runs[oracle["backend"]]
        manifest: dict[str, Any] = {
            "format": FORMAT, "version": VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hal_version": suite.hal.__version__, "oracle": oracle,
            "policy": {p: POLICY[p].to_dict() for p in FLOWS}, "models": {}}
        for name, ref in refs.items():
            d = np.load(ref.data_path, allow_pickle=False)
            npz = directory / f"{name}.npz"
            np.savez_compressed(npz, x_eval=d["x_eval"], y_eval=d["y_eval"], x_calib=d["x_calib"],
                                reference=ref.outputs)
            entry = {"file": npz.name, "sha256": _sha256(npz), "weights_sha256": weights_digest(name),
                     "input_shape": list(MODELS[name].input_shape), "eval_samples": len(ref.labels),
                     "reference_accuracy": ref.accuracy, "onnx": None}
            if onnx:
                path = directory / f"{name}.onnx"
                done = run.request({"op": "export_onnx", "id": name, "model": name,
                                    "data": str(ref.data_path), "path": str(path)}, timeout_s)
                if done.get("status") == "ran":
                    entry["onnx"], entry["onnx_sha256"] = path.name, _sha256(path)
                else:
                    note(f"{name}: no ONNX in the goldens ({done.get('message')})")
            manifest["models"][name] = entry
            note(f"goldens: {name} ({len(ref.labels)} samples, reference accuracy "
                 f"{ref.accuracy:.2%})")
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return manifest
    finally:
        for run in suite.runs.values():
            run.close()
        if suite._own_workdir:
            import shutil

            shutil.rmtree(suite.workdir, ignore_errors=True)


def load_goldens(directory: Path, models: list[str]):
    """References from a goldens folder: ({model: Reference}, oracle record)."""
    from hal import UsageError

    from .runner import Reference

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
        if entry["weights_sha256"] != weights_digest(name):
            raise UsageError(f"the goldens for {name} were made with other zoo weights",
                             "export the goldens again from this version of hal")
        npz = Path(directory) / entry["file"]
        if not npz.is_file() or _sha256(npz) != entry["sha256"]:
            raise UsageError(f"{npz} is missing or does not match its manifest checksum",
                             "copy the goldens folder again")
        d = np.load(npz, allow_pickle=False)
        onnx = Path(directory) / entry["onnx"] if entry.get("onnx") else None
        if onnx is not None and (not onnx.is_file() or _sha256(onnx) != entry.get("onnx_sha256")):
            raise UsageError(f"{onnx} is missing or does not match its manifest checksum",
                             "copy the goldens folder again")
        out, labels = d["reference"], d["y_eval"]
        refs[name] = Reference(name, out, labels, float((out.argmax(-1) == labels).mean()), npz,
                               onnx_path=onnx)
    oracle = dict(manifest.get("oracle", {}))
    oracle["source"] = f"goldens {directory} ({manifest.get('created')})"
    return refs, oracle
