"""Refuse TFLite models whose subgraph calls would crash the runtime that reads them.

Control-flow ops (``WHILE``, ``IF``, ``CALL_ONCE``, ``CALL`` and the StableHLO
ops: ``STABLEHLO_WHILE``, ``STABLEHLO_CASE``, ``STABLEHLO_COMPOSITE``,
``STABLEHLO_REDUCE``, ...) name other subgraphs by index in their builtin
options. LiteRT prepares a callee while preparing its caller, recursively and
without a visited set: a body that calls back into its own caller (a cycle) or
a long enough chain of nested calls overflows the C++ stack and kills the
process (ai-edge-litert 2.3 segfaults at ``allocate_tensors`` on a cycle and on
a chain 20 000 deep; 5 000 still prepared). A missing options table is read as
index 0, the main subgraph, so it is a cycle too.

Which options tables name subgraphs is read from the schema ai-edge-litert
ships, not listed by hand, so a newer schema's new control-flow op is checked
as soon as it is installed. Importing this module imports no framework.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from hal import HalError

#: the deepest chain of nested subgraph calls hal lets a runtime see. Real
#: models nest control flow a few levels; LiteRT recurses once per level.
MAX_CALL_DEPTH = 32
#: accessors of an options table whose value is a subgraph index (or a vector of them)
_SUBGRAPH_FIELD = re.compile(r"\w*(Subgraph|Computation)\w*")
_NOT_A_FIELD = re.compile(r"\w*(AsNumpy|Length|IsNone)")


@dataclass(frozen=True)
class CallSpec:
    """An options table that names subgraphs: the union it sits in and its fields."""

    table: str  # class name in the schema, e.g. "WhileOptions"
    union: int  # 1: builtin_options, 2: builtin_options_2
    type_id: int  # its member id in that union
    scalars: tuple[str, ...]  # accessors of one subgraph index (default 0)
    vectors: tuple[str, ...]  # accessors of a vector of subgraph indices (default empty)


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


@functools.cache
def call_options(fb) -> dict[int, CallSpec]:
    """Builtin operator code → the options table it reads subgraph indices from,
    for every options table of the schema ``fb`` with a subgraph-index field."""
    ops = {_norm(k): v for k, v in vars(fb.BuiltinOperator).items()
           if not k.startswith("_") and isinstance(v, int)}
    out: dict[int, CallSpec] = {}
    for union, enum in ((1, fb.BuiltinOptions), (2, getattr(fb, "BuiltinOptions2", None))):
        for name, type_id in vars(enum or object).items():
            cls = getattr(fb, name, None) if isinstance(type_id, int) else None
            if cls is None or name.startswith("_"):
                continue
            fields = sorted(m for m in vars(cls) if _SUBGRAPH_FIELD.fullmatch(m)
                            and not _NOT_A_FIELD.fullmatch(m))
            if not fields:
                continue
            code = ops.get(_norm(name.removesuffix("Options")))
            if code is None:  # a table no op reads: nothing calls through it
                continue
            out[code] = CallSpec(name, union, type_id,
                                    tuple(f for f in fields if not hasattr(cls, f + "Length")),
                                    tuple(f for f in fields if hasattr(cls, f + "Length")))
    return out


def _callees(op, spec: CallSpec, fb) -> list[tuple[str, int]]:
    """(field, subgraph index) pairs that ``op`` calls, read as LiteRT reads them:
    options of another type than the op's own count as absent (defaults)."""
    kind = op.BuiltinOptionsType() if spec.union == 1 else op.BuiltinOptions2Type()
    table = (op.BuiltinOptions() if spec.union == 1 else op.BuiltinOptions2()) \
        if kind == spec.type_id else None
    if table is None:
        return [(f"{f} (no {spec.table}: default)", 0) for f in spec.scalars]
    opts = getattr(fb, spec.table)()
    opts.Init(table.Bytes, table.Pos)
    out = [(f, int(getattr(opts, f)())) for f in spec.scalars]
    for f in spec.vectors:
        out += [(f"{f}[{k}]", int(getattr(opts, f)(k))) for k in range(getattr(opts, f + "Length")())]
    return out


def call_problem(model, fb) -> str | None:
    """What is wrong with the subgraph-call graph of ``model`` (a parsed
    ``fb.Model``), or None: an index out of range or naming the main subgraph 0,
    a cycle, or nesting deeper than :data:`MAX_CALL_DEPTH`."""
    specs, n = call_options(fb), model.SubgraphsLength()
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    codes = [max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
             for oc in map(model.OperatorCodes, range(model.OperatorCodesLength()))]
    for i in range(model.SignatureDefsLength()):
        k = model.SignatureDefs(i).SubgraphIndex()
        if not 0 <= k < n:
            return f"signature {i} names subgraph {k}; the model has {n}"
    calls: list[list[tuple[int, str]]] = [[] for _ in range(n)]  # callee, "op j WHILE"
    for s in range(n):
        sg = model.Subgraphs(s)
        for j in range(sg.OperatorsLength()):
            op = sg.Operators(j)
            if not 0 <= op.OpcodeIndex() < len(codes):
                return f"op {j} of subgraph {s} names operator code {op.OpcodeIndex()}"
            code = codes[op.OpcodeIndex()]
            if code not in specs:
                continue
            who = f"op {j} ({names.get(code, code)}) of subgraph {s}"
            for field, k in _callees(op, specs[code], fb):
                if k == 0:
                    return (f"{who} calls subgraph 0, the main subgraph, through {field}: a "
                            "subgraph-call cycle, which crashes LiteRT")
                if not 0 < k < n:
                    return f"{who} calls subgraph {k} through {field}; the model has {n}"
                calls[s].append((k, who))
    return _cycle_or_depth(calls)


def _cycle_or_depth(calls: list[list[tuple[int, str]]]) -> str | None:
    """Depth-first over the call graph, iteratively (a crafted chain must not
    exhaust Python's stack either): the first cycle, or a chain too deep."""
    depth = [-1] * len(calls)  # -1 unseen, -2 on the stack, else the longest chain below
    for root in range(len(calls)):
        if depth[root] != -1:
            continue
        path, stack = [root], [iter(calls[root])]
        depth[root] = -2
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                s = path.pop()
                stack.pop()
                depth[s] = max((depth[k] + 1 for k, _ in calls[s]), default=0)
                if depth[s] > MAX_CALL_DEPTH:
                    return (f"subgraph calls nest {depth[s]} deep from subgraph {s}; hal allows "
                            f"{MAX_CALL_DEPTH} (LiteRT recurses once per level, and a deep chain "
                            "overflows its stack)")
                continue
            k, who = nxt
            if depth[k] == -2:
                loop = path[path.index(k):] + [k]
                return (f"{who} calls subgraph {k}, which is on its own call path: a "
                        f"subgraph-call cycle ({' → '.join(map(str, loop))}), which crashes LiteRT")
            if depth[k] == -1:
                depth[k] = -2
                path.append(k)
                stack.append(iter(calls[k]))
    return None


def check_calls(data: bytes, error: type[HalError], what: str) -> bool:
    """Raise ``error`` for a model whose subgraph calls a runtime would follow
    into a crash. False when nothing could be checked: ai-edge-litert, whose
    schema this reads with, is not installed."""
    try:
        from ai_edge_litert import schema_py_generated as fb
    except ImportError:
        return False
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise error(f"{what} is not a TFLite flatbuffer (no TFL3 identifier)", "pass a .tflite file")
    try:
        problem = call_problem(fb.Model.GetRootAs(data, 0), fb)
    except Exception as e:  # noqa: BLE001 - a corrupt flatbuffer fails anywhere
        raise error(f"{what}: the TFLite flatbuffer could not be read ({type(e).__name__})",
                    "re-convert the model; the file may be truncated") from None
    if problem:
        raise error(f"{what} is refused: {problem}", FIX)
    return True


FIX = "re-convert the model; no converter writes such a graph"
