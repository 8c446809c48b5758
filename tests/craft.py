"""Build the files an attacker would: re-packed .hal artifacts with recomputed
digests (an attacker can compute SHA-256 too), and .pt2 archives whose members
are replaced, duplicated or hidden. Shared by the security tests."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import Callable


def members(path: Path) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(path) as z:
        return [(i, z.read(i)) for i in z.infolist()]


def write_zip(path: Path, items: list[tuple[str, bytes]], comment: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in items:
            z.writestr(name, data)
        z.comment = comment
    return path


def repack_hal(src: Path, dst: Path, replace: dict[str, bytes] | None = None,
               meta: Callable[[dict], object] | None = None, digests: bool = True) -> Path:
    """Copy a .hal, replacing artifact members and/or editing hal.json, and
    (``digests=True``) recomputing the SHA-256 list the way an attacker would."""
    items = {i.filename: data for i, data in members(src)}
    items.update(replace or {})
    m = json.loads(items.pop("hal.json"))
    if digests:
        m["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in items.items()}
    if meta is not None:
        m = meta(m) or m
    return write_zip(dst, [("hal.json", json.dumps(m).encode())] + sorted(items.items()))


class Payload:
    """Unpickling this writes ``marker``: proof that a loader ran a pickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


def pickled_payload(marker: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(Payload(marker), buf)
    return buf.getvalue()


def duplicate_config_pt2(good: Path, evil: Path, marker: Path) -> Path:
    """The attack from issue #10: the weights config is stored twice; the
    first copy (which torch's C++ reader takes) says ``use_pickle: true`` and
    ``weight_0`` is a pickle; the last copy (which Python's zipfile takes) is
    the honest one."""
    out = []
    for info, data in members(good):
        n = info.filename
        if n.endswith("/weights/weight_0"):
            out.append((n, pickled_payload(marker)))
        elif n.endswith("weights_config.json"):
            cfg = json.loads(data)
            first = next(iter(cfg["config"]))
            lying = json.loads(data)
            lying["config"][first]["use_pickle"] = True
            out.append((n, json.dumps(lying).encode()))
            out.append((n, data))
        else:
            out.append((n, data))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the attack
        return write_zip(evil, out)


def huge_weight_pt2(good: Path, evil: Path, numel: int, empty: bool = False) -> Path:
    """Issue #22: the first weight declares ``numel`` elements with stride 0 over
    the few bytes stored (``empty``: over an empty record, which torch.export.load
    fills with ``torch.zeros(sizes)``). A file of a few KB that claims terabytes."""
    out, first = [], None
    for info, data in members(good):
        n = info.filename
        if n.endswith("weights/model_weights_config.json"):
            cfg = json.loads(data)
            first = next(iter(cfg["config"]))
            meta = cfg["config"][first]["tensor_meta"]
            meta["sizes"] = [{"as_int": 1}, {"as_int": numel}]
            meta["strides"] = [{"as_int": 0}, {"as_int": 0}]
            data = json.dumps(cfg).encode()
        out.append((n, data))
    if empty:
        cfg = json.loads(next(d for n, d in out if n.endswith("weights/model_weights_config.json")))
        record = cfg["config"][first]["path_name"]
        out = [(n, b"" if n.endswith("/weights/" + record) else d) for n, d in out]
    return write_zip(evil, out)


def constant_of_shape_onnx(path: Path) -> Path:
    """An ONNX model whose output's shape is its int64 input: given [10**6, 10**6] it asks
    for a terabyte of zeros at run time (a failing inference, made by the caller's data)."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("ConstantOfShape", ["shape"], ["y"])], "g",
                          [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path
