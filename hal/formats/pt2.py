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

Sizes are claims too: a weight may declare ``[2**40]`` with stride 0 over 4
stored bytes (or over an empty record, which torch fills with ``zeros(sizes)``).
Before torch reads anything, the declared bytes of every weight, constant and
(after the load, which builds fake tensors only) example and graph input are
checked against :func:`memory_budget`, so no step of a compile allocates from
a size it did not check.
"""

from __future__ import annotations

import io
import math
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


def memory_budget() -> int:
    """hal's budget for declared sizes (:func:`hal.npyfile.memory_budget`), or the
    process's address-space limit when that is lower."""
    from ..npyfile import memory_budget as host_budget

    budget = host_budget()
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            budget = min(budget, soft)
    except (ImportError, OSError, ValueError):
        pass
    return budget


def _gb(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _ints(values, what: str) -> list[int]:
    if not isinstance(values, list) or not all(
            isinstance(v, dict) and isinstance(v.get("as_int"), int) and v["as_int"] >= 0 for v in values):
        raise ValueError(f"{what} is not a list of non-negative integers")
    return [v["as_int"] for v in values]


def declared_bytes(z, names: list[str]) -> tuple[int, str]:
    """Bytes the weights and constants of the checked archive ``z`` would take
    once loaded (size × element size, whatever the strides), and the largest."""
    from torch._export.serde.serialize import deserialize_scalar_type

    total, largest, worst = 0, -1, ""
    for n in names:
        if not (n.endswith("_config.json") and ("/data/weights/" in n or "/data/constants/" in n)):
            continue
        for fqn, meta in safezip.strict_json(z.read(n))["config"].items():
            tm = meta.get("tensor_meta")
            if not isinstance(tm, dict):
                raise ValueError(f"{fqn} has no tensor_meta")
            sizes = _ints(tm.get("sizes"), f"{fqn}'s sizes")
            _ints(tm.get("strides"), f"{fqn}'s strides")
            _ints([tm.get("storage_offset")], f"{fqn}'s storage offset")
            try:
                itemsize = deserialize_scalar_type(tm.get("dtype")).itemsize
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{fqn} has an unknown dtype {tm.get('dtype')!r}") from None
            nbytes = math.prod(sizes) * itemsize
            total += nbytes
            if nbytes > largest:
                largest, worst = nbytes, f"{fqn} {sizes}"
    return total, worst


def _check_loaded(ep, path: Path, budget: int) -> None:
    """Example inputs and the graph's declared input shapes, checked against the
    budget before anything (hal's profiler, a backend) makes arrays of them."""
    import torch

    total, worst = 0, ""
    vals = [node.meta.get("val") for node in ep.graph.nodes if node.op == "placeholder"]
    for t in [*torch.utils._pytree.tree_leaves(ep.example_inputs or ()), *vals]:
        if isinstance(t, torch.Tensor):
            dims = [d if isinstance(d, int) else 1 for d in t.shape]
            n = math.prod(dims) * t.element_size()
            total += n
            worst = worst or (f"an input of shape {dims}" if n > budget else "")
    if total > budget:
        raise ModelFormatError(
            f"{path} declares inputs of {_gb(total)} ({worst or 'in all'}), more than hal's "
            f"memory budget of {_gb(budget)}", FIX)


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
        budget = memory_budget()
        try:
            total, worst = declared_bytes(z, z.namelist())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFormatError(f"{path} has an unreadable tensor description ({brief(e)})", FIX) from None
        if total > budget:
            raise ModelFormatError(
                f"{path} declares weights of {_gb(total)} (largest: {worst}) in a file of "
                f"{_gb(path.stat().st_size)}, more than hal's memory budget of {_gb(budget)}", FIX)
        clean = safezip.rewrite(z, Path(tmp) / "model.pt2")
        try:
            ep = torch.export.load(str(clean))
        except Exception as e:  # noqa: BLE001 - any failure here (MemoryError too) is a bad file
            raise ModelFormatError(f"{path} could not be read as an ExportedProgram ({brief(e)})",
                                   "re-export it with torch.export.save") from None
        _check_loaded(ep, path, budget)
        return ep
