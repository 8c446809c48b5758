"""Reading a ``.pt2`` (``torch.export.save``) without ever unpickling.

``torch.export.load`` unpickles with ``weights_only=False`` whenever the
archive asks for it (``use_pickle`` weights or constants, custom and opaque
objects, the legacy ``.pt`` weight files, sample inputs that fail the
weights-only loader) and loads AOTInductor shared libraries it finds. hal
refuses every archive that asks for any of that, and checks the archive with a
strict zip reader first: the copy torch reads is a fresh archive rebuilt from
exactly the members that were checked, so the two readers cannot disagree
(e.g. over a name stored twice, where Python's zipfile takes the last copy and
torch's C++ reader the first).
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from .. import safezip
from ..errors import ModelFormatError, brief

FIX = "re-export it with torch.export.save from a module with plain tensor weights"
#: members torch would execute or unpickle: refused wherever they sit
_CODE_PARTS = ("/data/aotinductor/", "/custom_obj", "/opaque_obj")
_CODE_SUFFIXES = (".so", ".dll", ".dylib", ".cpp", ".o", ".pyd", ".pkl", ".pickle")


def _check_config(z, name: str, names: set[str], root: str) -> list[str]:
    """Why the weights/constants config ``name`` would unpickle, if it would."""
    cfg = safezip.strict_json(z.read(name))
    entries = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(entries, dict):
        return [f"{name}: not a payload config"]
    folder = name.rsplit("/", 1)[0] + "/"
    bad = []
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            bad.append(f"{name}:{fqn} (pickled)")
            continue
        file = meta.get("path_name")
        if not isinstance(file, str) or "/" in file or "\\" in file or folder + file not in names:
            bad.append(f"{name}:{fqn} (payload {file!r} is not a member)")
        elif "/constants/" in folder and not file.startswith("tensor_"):
            bad.append(f"{name}:{fqn} ({file} is an object, not a tensor)")
    return bad


def unsafe_members(z) -> list[str]:
    """Every reason the checked archive ``z`` would make torch run code."""
    import torch

    names = z.namelist()
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        return ["members outside one top-level folder"]
    root = roots.pop()
    present = set(names)
    bad = [n for n in names if any(p in "/" + n for p in _CODE_PARTS)
           or n.lower().endswith(_CODE_SUFFIXES)]
    for n in names:
        rel = n[len(root) + 1:]
        if rel.startswith(("data/weights/", "data/constants/")) and n.endswith("_config.json"):
            bad += _check_config(z, n, present, root)
        elif rel.startswith(("data/weights/", "data/constants/")) and n.endswith(".pt"):
            bad.append(f"{n} (legacy pickled weights)")
        elif n.endswith(".pt"):
            # sample inputs: torch retries with a full unpickle when weights_only fails
            try:
                torch.load(io.BytesIO(z.read(n)), weights_only=True)
            except Exception:  # noqa: BLE001 - any failure means torch would unpickle it
                bad.append(f"{n} (not loadable with weights_only=True)")
    return bad


def read(path: Path):
    """``torch.export.load`` of a ``.pt2`` that was proven to unpickle nothing."""
    import torch

    try:
        z = safezip.open_strict(path)
    except safezip.UnsafeArchive as e:
        raise ModelFormatError(f"{path} is not a .pt2 archive hal can read safely: {e}", FIX) from None
    with z, tempfile.TemporaryDirectory(prefix="hal-pt2-") as tmp:
        try:
            unsafe = unsafe_members(z)
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            raise ModelFormatError(f"{path} has an unreadable payload config ({brief(e)})", FIX) from None
        if unsafe:
            raise ModelFormatError(
                f"{path} holds pickled objects or code ({unsafe[0]}); hal never unpickles "
                "model files", FIX)
        clean = safezip.rewrite(z, Path(tmp) / "model.pt2")
        try:
            return torch.export.load(str(clean))
        except Exception as e:  # noqa: BLE001 - any failure here is a bad file
            raise ModelFormatError(f"{path} could not be read as an ExportedProgram ({brief(e)})",
                                   "re-export it with torch.export.save") from None
