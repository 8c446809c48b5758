"""The tpu artifact's files, read as untrusted data.

* ``tpu.json``: what load needs (kind, input names/shapes/dtypes, batch
  buckets; for torch the call layout of each bucket's StableHLO module). Every
  field is type-checked here and checked against ``hal.json``'s inputs, so a
  damaged or lying file is one ArtifactError, never a KeyError or TypeError.
* torch: ``weights.npz`` (numpy arrays, read without pickle) and
  ``program/b<n>.stablehlo.mlir``: parsed and checked by :mod:`hal_backends.mlir_guard`,
  whose re-print is rebuilt into XLA's call-module op.
* Keras and SavedModel: ``saved_model/``, checked by
  :mod:`hal_backends.tf_graph_guard` before TensorFlow loads it.

Pure Python and numpy: no framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hal import ArtifactError
from hal.plugin import ExecutableInfo, load_npz, read_json_object

META = "tpu.json"
SAVED = "saved_model"
PROGRAM_DIR = "program"
WEIGHTS = "weights.npz"
KINDS = ("torch", "keras", "savedmodel")
#: TensorFlow dtype names a weight may have (bfloat16 is stored as float32).
WEIGHT_DTYPES = ("float32", "bfloat16", "float16", "float64", "int8", "int16", "int32", "int64",
                 "uint8", "bool")
FIX = "re-create the artifact with hal compile (it was damaged or not written by hal)"


@dataclass
class Lowered:
    """One bucket's StableHLO module and how to call it. The text is always
    one that :func:`hal_backends.mlir_guard.check` parsed and re-printed: custom-call
    free, so it runs on the TPU and on XLA:CPU alike."""

    text: str
    #: the call-module arguments in order: ("param", state name) or ("input", index)
    args: list[tuple[str, Any]]
    out_shapes: list[tuple[int, ...]]
    out_dtypes: list[str]

    def to_dict(self) -> dict[str, Any]:
        # "portable" (no custom calls) is always true now; older hal versions read it
        return {"args": [list(a) for a in self.args], "out_shapes": [list(s) for s in self.out_shapes],
                "out_dtypes": self.out_dtypes, "portable": True}

    @classmethod
    def from_dict(cls, d: dict[str, Any], text: str) -> Lowered:
        return cls(text, [tuple(a) for a in d["args"]], [tuple(s) for s in d["out_shapes"]],
                   list(d["out_dtypes"]))


def bad(what: str) -> ArtifactError:
    return ArtifactError(f"the tpu artifact's {what}", FIX)


def _need(d: dict, key: str, types: type | tuple[type, ...], where: str = META) -> Any:
    if key not in d:
        raise bad(f"{where} lacks {key!r}")
    v, allowed = d[key], types if isinstance(types, tuple) else (types,)
    if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
        raise bad(f"{where} field {key!r} is a {type(v).__name__}")
    return v


def _ints(v: Any, where: str, lo: int = 0) -> list[int]:
    if not isinstance(v, list) or not all(type(x) is int and x >= lo for x in v):
        raise bad(f"{META} field {where} is not a list of integers ≥ {lo}")
    return v


def _strs(v: Any, where: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise bad(f"{META} field {where} is not a list of strings")
    return v


def _dtype(name: Any, where: str) -> str:
    if name == "bfloat16":
        return name
    try:
        dt = np.dtype(name if isinstance(name, str) else "?invalid")
    except TypeError:
        raise bad(f"{META} field {where} has an unknown dtype {str(name)[:30]!r}") from None
    if dt.kind not in "biuf" or dt.name != name:
        raise bad(f"{META} field {where} has dtype {str(name)[:30]!r}, not a tensor dtype")
    return name


def read_meta(artifact: Path, info: ExecutableInfo) -> dict[str, Any]:
    """``tpu.json``, every field checked, and consistent with ``info``."""
    d = read_json_object(artifact / META, "tpu")
    kind = _need(d, "kind", str)
    if kind not in KINDS:
        raise bad(f"{META} has kind {kind[:30]!r}, not one of {', '.join(KINDS)}")
    b = _need(d, "buckets", dict)
    sizes = _ints(_need(b, "sizes", list, f"{META} buckets"), "buckets.sizes")
    _need(b, "batched", bool, f"{META} buckets")
    if not sizes or sizes != sorted(set(sizes)) or len(sizes) > 64 or sizes[-1] > 1 << 20:
        raise bad(f"{META} has batch buckets {str(sizes)[:60]} (want a short increasing list)")
    names = _strs(_need(d, "in_names", list), "in_names")
    shapes = _need(d, "in_shapes", list)
    dtypes = [_dtype(x, "in_dtypes") for x in _strs(_need(d, "in_dtypes", list), "in_dtypes")]
    for i, s in enumerate(shapes):
        _ints(s, f"in_shapes[{i}]")
    if not (len(names) == len(shapes) == len(dtypes) == len(info.inputs)):
        raise bad(f"{META} describes {len(names)} input(s), hal.json {len(info.inputs)}")
    for spec, shape, dt in zip(info.inputs, shapes, dtypes):
        if spec.dtype != dt or len(spec.shape) != len(shape) or \
                any(x is not None and x != y for x, y in zip(spec.shape, shape)):
            raise bad(f"{META} input {spec.name!r} ({dt} {shape}) disagrees with hal.json "
                      f"({spec.dtype} {list(spec.shape)})")
    if kind == "torch":
        _check_torch(d, sizes, len(names))
    elif kind == "savedmodel":
        _need(d, "signature", str)
        _strs(_need(d, "out_keys", list), "out_keys")
    return d


def _check_torch(d: dict[str, Any], sizes: list[int], n_inputs: int) -> None:
    params = _strs(_need(d, "param_names", list), "param_names")
    pdt = _strs(_need(d, "param_dtypes", list), "param_dtypes")
    if len(pdt) != len(params) or any(x not in WEIGHT_DTYPES for x in pdt):
        raise bad(f"{META} field param_dtypes does not give one weight dtype per parameter")
    if _need(d, "platform", str) not in ("TPU", "CPU"):
        raise bad(f"{META} names platform {d['platform'][:20]!r}")
    lowered = _need(d, "lowered", dict)
    if set(lowered) != {str(n) for n in sizes}:
        raise bad(f"{META} has StableHLO call layouts for buckets {sorted(lowered)[:8]}, "
                  f"not {sizes}")
    known = set(params)
    for n, low in lowered.items():
        where = f"lowered[{n}]"
        if not isinstance(low, dict):
            raise bad(f"{META} field {where} is not an object")
        args = _need(low, "args", list, where)
        for a in args:
            ok = isinstance(a, list) and len(a) == 2 and (
                (a[0] == "input" and type(a[1]) is int and 0 <= a[1] < n_inputs)
                or (a[0] == "param" and isinstance(a[1], str) and a[1] in known))
            if not ok:
                raise bad(f"{META} field {where}.args holds {str(a)[:40]}, not an input index or "
                          "a known parameter")
        outs = _need(low, "out_shapes", list, where)
        for i, s in enumerate(outs):
            _ints(s, f"{where}.out_shapes[{i}]")
        odt = _strs(_need(low, "out_dtypes", list, where), f"{where}.out_dtypes")
        if len(odt) != len(outs) or any(x not in WEIGHT_DTYPES for x in odt):
            raise bad(f"{META} field {where}.out_dtypes does not give one dtype per output")
        _need(low, "portable", bool, where)  # read by older hal; the parsed program decides


def check_call_layout(n: int, low: Lowered, sig: list[tuple[tuple[int, ...], str]] | None,
                      weights: dict[str, tuple[np.ndarray, str]],
                      inputs: list[tuple[tuple[int, ...], str]]) -> None:
    """Each argument the call-module op passes (weight or input) must have the
    shape and dtype of ``sig``, the parsed ``@main``'s arguments (see
    :mod:`hal_backends.mlir_guard`); XLA would otherwise fail at the first call, not at load."""
    if sig is None or len(sig) != len(low.args):
        raise bad(f"StableHLO of batch bucket {n} does not declare the {len(low.args)} static "
                  "argument(s) tpu.json lists")
    for (kind, v), (shape, dtype) in zip(low.args, sig):
        got = ((tuple(weights[v][0].shape), weights[v][1]) if kind == "param" else inputs[v])
        if got != (shape, dtype):
            raise bad(f"{kind} {v!r} of batch bucket {n} is {got[1]} {list(got[0])}, its StableHLO "
                      f"takes {dtype} {list(shape)}")


def write_weights(path: Path, arrays: list[np.ndarray]) -> None:
    np.savez(path, **{f"p{i}": a for i, a in enumerate(arrays)})


def read_weights(path: Path, meta: dict[str, Any]) -> dict[str, tuple[np.ndarray, str]]:
    """The weights by parameter name, with their TensorFlow dtype, read by
    :func:`hal.npyfile.load_npz`: an object array is refused, not run, and a
    declared size the file does not store is refused before anything is allocated."""
    names, dtypes = meta["param_names"], meta["param_dtypes"]
    want = {f"p{i}" for i in range(len(names))}
    try:
        z = load_npz(path, f"the tpu artifact's {WEIGHTS}", ArtifactError)
    except OSError as e:
        raise bad(f"{WEIGHTS} is missing or unreadable ({type(e).__name__})") from None
    if set(z) != want:
        raise bad(f"{WEIGHTS} holds {len(z)} array(s), {META} lists {len(names)}")
    arrays = [z[f"p{i}"] for i in range(len(names))]
    out = {}
    for name, dt, a in zip(names, dtypes, arrays):
        stored = "float32" if dt == "bfloat16" else dt
        if a.dtype.name != stored:
            raise bad(f"{WEIGHTS} stores {name!r} as {a.dtype.name}, {META} says {dt}")
        out[name] = (a, dt)
    return out


def read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise bad(f"{what} is missing or not text ({type(e).__name__})") from None
