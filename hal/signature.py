"""The I/O contract: one model has the same names and output structure on every backend.

A backend sees the model after conversion (a traced graph, an IR, a TFLite
flatbuffer), where names are whatever the converter made of them (``input_0``,
``x.1``, ``serving_default_x:0``) and a dict of outputs is a flat list. So the
core reads the contract from the model the user gave — a torch module's
``forward`` parameters and the structure it returns, an exported program's
signature, an ONNX graph's inputs and outputs — and stamps it on whatever the
backend built: :class:`Signature` → ``ExecutableInfo.inputs``/``outputs`` names
and ``ExecutableInfo.output_tree``. ``exe(x)`` then gives the model's own
structure back (a dict stays a dict, a tuple a tuple), identically on every device.

The tree is plain JSON, because it travels in ``hal.json`` (untrusted):
``null`` is one array; ``["tuple", [children]]``, ``["list", [children]]`` and
``["dict", [keys], [children]]`` are containers, leaves in depth-first order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

#: containers the tree knows
KINDS = ("tuple", "list", "dict")
#: bounds on a tree read from a file
MAX_DEPTH = 32
MAX_NODES = 10_000


@dataclass
class Signature:
    """What the source model says: input names in order, output names in order
    (default: named after the tree's keys and positions), and the output tree
    (``None``: one array alone, several as a tuple). ``None`` names: the backend's stand."""

    inputs: list[str] | None = None
    outputs: list[str] | None = None
    tree: Any = None
    #: each input's shape as the model declares it (``None`` for a free dimension),
    #: where the format declares shapes (an exported program, ONNX); None elsewhere
    shapes: list[tuple] | None = None

    def output_names(self) -> list[str] | None:
        if self.outputs is not None:
            return unique(self.outputs)
        return None if self.tree is None else leaf_names(self.tree)


def leaves(tree: Any) -> int:
    if tree is None:
        return 1
    return sum(leaves(c) for c in tree[-1])


def leaf_names(tree: Any) -> list[str]:
    """A name per leaf: dict keys joined with '.', positions as ``output_<i>`` at
    the top and ``<parent>.<i>`` below; a lone array is ``output_0``."""
    if tree is None:
        return ["output_0"]
    out: list[str] = []

    def walk(t: Any, prefix: str | None) -> None:
        if t is None:
            out.append(prefix or "output_0")
            return
        keys = t[1] if t[0] == "dict" else [str(i) for i in range(len(t[-1]))]
        for k, c in zip(keys, t[-1]):
            walk(c, (f"{prefix}.{k}" if prefix else (k if t[0] == "dict" else f"output_{k}")))

    walk(tree, None)
    return unique(out)


def unique(names: Sequence[str]) -> list[str]:
    """Names made distinct (a repeat gets ``_<n>``): every name addresses one array."""
    seen: set[str] = set()
    out = []
    for n in names:
        m, i = n, 1
        while m in seen:
            m, i = f"{n}_{i}", i + 1
        seen.add(m)
        out.append(m)
    return out


def unflatten(tree: Any, arrays: Sequence[Any]) -> Any:
    """The model's output structure around ``arrays`` (a ``None`` tree: one
    array alone, several as a tuple — what hal always returned)."""
    if tree is None:
        return arrays[0] if len(arrays) == 1 else tuple(arrays)
    it = iter(arrays)

    def build(t: Any) -> Any:
        if t is None:
            return next(it)
        kids = [build(c) for c in t[-1]]
        if t[0] == "dict":
            return dict(zip(t[1], kids))
        return tuple(kids) if t[0] == "tuple" else kids

    return build(tree)


def why_invalid(tree: Any, n_outputs: int) -> str | None:
    """Why a tree from a file is not one hal wrote for ``n_outputs`` arrays, or None."""
    nodes = [0]

    def ok(t: Any, depth: int) -> str | None:
        nodes[0] += 1
        if nodes[0] > MAX_NODES or depth > MAX_DEPTH:
            return f"is larger than {MAX_NODES} nodes or deeper than {MAX_DEPTH}"
        if t is None:
            return None
        if not isinstance(t, list) or not t or t[0] not in KINDS or len(t) != (3 if t[0] == "dict" else 2) \
                or not isinstance(t[-1], list):
            return "has a node that is not null, [kind, children] or ['dict', keys, children]"
        if t[0] == "dict" and not (isinstance(t[1], list) and len(t[1]) == len(t[2])
                                   and all(isinstance(k, str) and len(k) <= 200 for k in t[1])
                                   and len(set(t[1])) == len(t[1])):
            return "has a dict node whose keys are not distinct strings, one per child"
        for c in t[-1]:
            why = ok(c, depth + 1)
            if why:
                return why
        return None

    why = ok(tree, 0)
    if why is None and leaves(tree) != n_outputs:
        return f"has {leaves(tree)} leaves for {n_outputs} outputs"
    return why


def stamp(info: Any, sig: Signature | None, keep_free: Any = None) -> None:
    """Give ``info`` (an ``ExecutableInfo``) the source model's names and output
    tree. A backend whose executable has another number of inputs or outputs
    than the model keeps its own names, with a note saying so. ``keep_free(i)``:
    the backends that keep a free dimension ``i`` free, named in the note on one
    this executable fixed."""
    if sig is None:
        return
    from dataclasses import replace

    for kind, names in (("inputs", sig.inputs), ("outputs", sig.output_names())):
        specs = getattr(info, kind)
        if names is None:
            continue
        if len(names) != len(specs):
            info.notes.append(f"the model has {len(names)} {kind} {names[:6]}, the {info.backend} "
                              f"executable {len(specs)}: its own {kind[:-1]} names are kept")
            if kind == "outputs":
                return
            continue
        setattr(info, kind, [replace(s, name=n) for s, n in zip(specs, unique(names))])
    if sig.tree is not None and leaves(sig.tree) == len(info.outputs):
        info.output_tree = sig.tree
    if sig.shapes is not None and len(sig.shapes) == len(info.inputs):
        for spec, declared in zip(info.inputs, sig.shapes):
            if len(declared) != len(spec.shape):
                continue
            for i, (d, got) in enumerate(zip(declared, spec.shape)):
                if d != got:
                    fixed = d is None and got is not None
                    others = ", ".join(keep_free(i)) if fixed and keep_free else ""
                    info.notes.append(
                        f"input {spec.name!r} dimension {i}: the model declares "
                        f"{'a free size' if d is None else d}, the {info.target} executable takes "
                        f"{'any size' if got is None else got}"
                        + ("; other sizes are refused: compile with an example of the size you "
                           "will run, or use a target that keeps it free"
                           + (f" ({others})" if others else "") if fixed else ""))
