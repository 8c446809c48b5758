"""Refuse TensorFlow SavedModels that could act when loaded or run.

A SavedModel is a program: ``tf.saved_model.load`` runs resource initializers,
and any function may read or write files (``ReadFile``, ``WriteFile``,
``Save*``), call back into Python (``PyFunc``) or print. So before any
SavedModel reachable from a file is loaded, :func:`check_saved_model` reads
``saved_model.pb`` as data (protobuf, no TensorFlow runtime) and walks every
graph node and every function of every meta graph, including functions named
in attributes. Each op must be:

* a function of the library itself (whose body is checked too), or
* registered with TensorFlow and marked non-stateful, minus :data:`DENIED`
  (the non-stateful ops that touch files, datasets, debuggers or Python), or
* one of :data:`STATEFUL_OK`, the stateful ops real models need (variables,
  calls, control flow, XLA's call-module op), or
* a checkpoint op inside the saver's own save or restore function
  (:data:`SAVE_OPS`, :data:`RESTORE_OPS`), when nothing else can reach it.

Unknown (unregistered) ops are refused. The program an ``XlaCallModule`` op
runs (its ``module`` attribute: MLIR bytecode, as jax2tf and Keras' JAX export
write it, or text) is parsed with MLIR and checked op by op by
:mod:`hal_backends.mlir_guard` (:func:`check_stablehlo`), never matched
against patterns: MLIR spells one op many ways (generic form, ``\\XX``
escapes in quoted names), and a custom call runs native code found by name.
It may hold func, stablehlo and chlo ops, and custom calls only to
:data:`CUSTOM_CALLS_OK`; text that does not parse is refused. That needs
jaxlib; without it a SavedModel with an ``XlaCallModule`` is refused. Assets
and variables must lie inside the SavedModel's directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hal import HalError
from hal.plugin import inside

#: stateful ops that models need and that cannot reach files or Python:
#: variables, calls (callees are checked), control flow, XLA's call-module op.
STATEFUL_OK = frozenset({
    "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "VarIsInitializedOp",
    "DisableCopyOnRead", "DestroyResourceOp", "VariableShape", "ResourceGather",
    "ResourceGatherNd", "VariableV2", "StatefulPartitionedCall", "If", "While", "Case",
    "XlaCallModule", "Assert", "CheckNumerics",
})
#: non-stateful ops that read or write files, run Python, or feed debuggers.
DENIED = frozenset({
    "ReadFile", "MatchingFiles", "ImmutableConst", "InitializeTableFromTextFile",
    "GenerateVocabRemapping", "DecodeProtoV2", "EncodeProto", "PyFuncStateless", "Copy",
    "CopyHost", "ShardedFilename", "ShardedFilespec",
})
#: name fragments of further denied families (datasets write caches and read
#: files, debug ops take file:// URLs, summaries and TPU ops are never needed).
DENIED_PARTS = ("Dataset", "Iterator", "Reader", "Debug", "Summary", "File", "PyFunc",
                "Print", "Save", "Restore", "Checkpoint", "TPU", "Tpu")
#: checkpoint ops allowed only inside the saver's save (resp. restore) function.
SAVE_OPS = frozenset({"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints",
                      "ShardedFilename", "ShardedFilespec"})
RESTORE_OPS = frozenset({"RestoreV2", "Restore", "RestoreSlice"})
#: custom-call targets an ``XlaCallModule`` program may name; any other target
#: is native code that XLA looks up by name (``xla_python_cpu_callback`` runs
#: Python). ``shape_assertion``: the shape checks jax2tf and Keras' JAX export
#: write for a dynamic batch (``XlaCallModule`` evaluates and removes them
#: before XLA compiles). ``Sharding`` and the ``SPMD*`` pair: partitioning
#: annotations, consumed by XLA's partitioner. ``tf.call_tf_function``: jax2tf's
#: call of a TensorFlow function from the op's ``function_list``, which this
#: guard checks like every function of the library.
CUSTOM_CALLS_OK = frozenset({"shape_assertion", "Sharding", "SPMDFullToShardShape",
                             "SPMDShardToFullShape", "tf.call_tf_function"})


@dataclass
class GraphReport:
    """What the walk saw, for callers that check claims (e.g. precision)."""

    ops: set[str] = field(default_factory=set)
    #: TensorFlow ``DataType`` enum values named by any type attribute.
    dtypes: set[int] = field(default_factory=set)


class _Refused(Exception):
    def __init__(self, what: str):
        self.what = what


def check_saved_model(path: str | Path, error: type[HalError], what: str,
                      fix: str | None = None) -> GraphReport:
    """Raise ``error`` (one line) unless the SavedModel at ``path`` is safe to
    ``tf.saved_model.load``. ``what`` names it in messages ("the SavedModel at
    x", "the tpu artifact's SavedModel")."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    fix = fix or "export the model again with TensorFlow, using only computation and variables"
    root = Path(path)
    pb = root / "saved_model.pb"
    if not pb.is_file():
        raise error(f"{what} has no saved_model.pb", fix)
    try:
        data = pb.read_bytes()
        sm = saved_model_pb2.SavedModel()
        sm.ParseFromString(data)
    except (OSError, DecodeError, RecursionError, ValueError) as e:
        raise error(f"{what}: saved_model.pb is not a SavedModel protobuf "
                    f"({type(e).__name__})", fix) from None
    if not sm.meta_graphs:
        raise error(f"{what}: saved_model.pb holds no graph", fix)
    report = GraphReport()
    try:
        for mg in sm.meta_graphs:
            _check_meta_graph(mg, report)
        _check_files(root, sm)
    except _Refused as r:
        raise error(f"{what} {r.what}", fix) from None
    return report


def load_saved_model(path: str | Path, error: type[HalError], what: str, scope=None
                     ) -> tuple[object, GraphReport]:
    """``tf.saved_model.load`` (inside ``scope``, e.g. a distribution strategy's)
    only after :func:`check_saved_model` passed; returns the loaded object and
    what the check saw. A failure of the load itself is one ``error`` too."""
    import contextlib

    import tensorflow as tf

    from hal.plugin import brief

    report = check_saved_model(path, error, what)
    try:
        with scope if scope is not None else contextlib.nullcontext():
            return tf.saved_model.load(str(path)), report
    except Exception as e:  # noqa: BLE001 - a damaged SavedModel fails in many ways
        raise error(f"{what} could not be loaded ({brief(e, 160, typed=True)})",
                    "export it again (a complete SavedModel directory, variables included)") from None


def _allowed(op: str, registry) -> str | None:
    """None when ``op`` may run anywhere, else why not."""
    if op in STATEFUL_OK:
        return None
    od = registry.get(op)
    if od is None:
        return f"uses op {op!r}, which this TensorFlow does not know"
    if op in DENIED or any(p in op for p in DENIED_PARTS) or od.is_stateful:
        return (f"uses op {op}, which is outside hal's allow-list (it can touch files, run "
                "Python or keep state beyond variables)")
    return None


def _funcs_in(attr, out: set[str], report: GraphReport, depth: int = 0) -> None:
    """Function names (and dtypes) an attribute value names, nested attrs included."""
    if depth > 32:
        raise _Refused("nests function attributes too deeply")
    kind = attr.WhichOneof("value")
    if kind == "type":
        report.dtypes.add(int(attr.type))
    elif kind == "tensor":
        report.dtypes.add(int(attr.tensor.dtype))
    elif kind == "func":
        out.add(attr.func.name)
        for a in attr.func.attr.values():
            _funcs_in(a, out, report, depth + 1)
    elif kind == "list":
        report.dtypes.update(int(t) for t in attr.list.type)
        for f in attr.list.func:
            out.add(f.name)
            for a in f.attr.values():
                _funcs_in(a, out, report, depth + 1)


def _node_name(tensor: str) -> str:
    return tensor.lstrip("^").split(":", 1)[0]


def _check_meta_graph(mg, report: GraphReport) -> None:
    from tensorflow.python.framework import op_def_registry as registry

    lib = {f.signature.name: f for f in mg.graph_def.library.function}
    if len(lib) != len(mg.graph_def.library.function):
        raise _Refused("defines a function twice")

    def callees(nodes, attrs=()) -> set[str]:
        out: set[str] = set()
        for n in nodes:
            if n.op in lib:
                out.add(n.op)
            for a in n.attr.values():
                _funcs_in(a, out, report)
        for a in attrs:
            _funcs_in(a, out, report)
        unknown = sorted(out - set(lib))
        if unknown:
            raise _Refused(f"calls function {unknown[0]!r}, which it does not define")
        return out

    calls = {name: callees(f.node_def, f.attr.values()) for name, f in lib.items()}
    nodes = {n.name: n for n in mg.graph_def.node}
    node_calls = {n.name: callees([n]) for n in mg.graph_def.node}

    def closure(node_roots: set[str], func_roots: set[str]) -> tuple[set[str], set[str]]:
        """Graph nodes (through their inputs) and functions (through calls)
        that running ``node_roots`` and ``func_roots`` can run."""
        seen_n, seen_f = set(), set()
        todo_n, todo_f = [n for n in node_roots if n in nodes], list(func_roots)
        while todo_n or todo_f:
            if todo_n:
                n = todo_n.pop()
                if n in seen_n:
                    continue
                seen_n.add(n)
                todo_n += [_node_name(i) for i in nodes[n].input if _node_name(i) in nodes]
                todo_f += node_calls[n]
            else:
                f = todo_f.pop()
                if f not in seen_f:
                    seen_f.add(f)
                    todo_f += calls[f]
        return seen_n, seen_f

    sd = mg.saver_def
    save_n, save_f = closure({_node_name(sd.save_tensor_name)} if sd.save_tensor_name else set(), set())
    rest_n, rest_f = closure({sd.restore_op_name} if sd.restore_op_name else set(), set())
    # everything else that can run: other graph nodes, signatures, init ops and
    # collections, every function the object graph names, every other function
    roots_n = set(nodes) - save_n - rest_n
    for sig in mg.signature_def.values():
        for t in list(sig.inputs.values()) + list(sig.outputs.values()):
            roots_n.update(_node_name(x) for x in (t.name, t.coo_sparse.values_tensor_name,
                                                    t.coo_sparse.indices_tensor_name,
                                                    t.coo_sparse.dense_shape_tensor_name) if x)
            roots_n.update(_node_name(c.name) for c in t.composite_tensor.components if c.name)
    for col in mg.collection_def.values():
        roots_n.update(_node_name(v) for v in col.node_list.value)
    roots_n.update(_node_name(a.tensor_info.name) for a in mg.asset_file_def if a.tensor_info.name)
    roots_f = (set(lib) - save_f - rest_f) | _object_graph_functions(mg.object_graph_def)
    for g in mg.graph_def.library.gradient:
        roots_f.update((g.function_name, g.gradient_func))
    unknown = sorted(roots_f - set(lib))
    if unknown:
        raise _Refused(f"names function {unknown[0]!r}, which it does not define")
    other_n, other_f = closure(roots_n, roots_f)

    def check(op: str, where: str, in_save: bool, in_restore: bool) -> None:
        report.ops.add(op)
        if op in lib:
            return
        if (op in SAVE_OPS and in_save and not in_restore) or \
                (op in RESTORE_OPS and in_restore and not in_save):
            return
        why = _allowed(op, registry)
        if why and op in SAVE_OPS | RESTORE_OPS:
            why = f"uses checkpoint op {op} where more than the saver's own function reaches it"
        if why:
            raise _Refused(f"{why} ({where})")

    for n in mg.graph_def.node:
        free = n.name not in other_n
        check(n.op, f"graph node {n.name!r}", free and n.name in save_n, free and n.name in rest_n)
        if n.op == "XlaCallModule":
            check_stablehlo(n.attr["module"].s, f"graph node {n.name!r}")
    for name, f in lib.items():
        free = name not in other_f
        for n in f.node_def:
            check(n.op, f"in function {name!r}", free and name in save_f, free and name in rest_f)
            if n.op == "XlaCallModule":
                check_stablehlo(n.attr["module"].s, f"in function {name!r}")


def _object_graph_functions(og) -> set[str]:
    out = set(og.concrete_functions)
    for obj in og.nodes:
        kind = obj.WhichOneof("kind")
        if kind == "function":
            out.update(obj.function.concrete_functions)
        elif kind == "bare_concrete_function":
            out.add(obj.bare_concrete_function.concrete_function_name)
    return out


def check_stablehlo(module: bytes | str, where: str) -> None:
    """Parse the program of an ``XlaCallModule`` (MLIR bytecode or text) with
    MLIR and refuse it (``_Refused``) unless every op is allowed by
    :mod:`hal_backends.mlir_guard` with custom calls to
    :data:`CUSTOM_CALLS_OK` only. ``where`` names the node ("function 'f'")."""
    try:
        import jaxlib  # noqa: F401 - the parser; imported here, never with hal
    except ImportError:
        raise _Refused(f"runs an XlaCallModule program ({where}), which hal checks with "
                       f"jaxlib's MLIR parser, and jaxlib is not installed (pip install jaxlib)"
                       ) from None
    from hal_backends import mlir_guard

    mlir_guard.check(module, lambda why: _Refused(f"has an XlaCallModule program ({where}) "
                                                  f"that {why}"), CUSTOM_CALLS_OK)


def _check_files(root: Path, sm) -> None:
    """Assets and variables must lie inside the SavedModel's directory, and a
    graph with variables must come with its checkpoint."""
    names = ["saved_model.pb", "variables", "assets", "fingerprint.pb"]
    if (root / "variables").is_dir():
        names += [f"variables/{p.name}" for p in (root / "variables").iterdir()]
    for name in names:
        p = root / name
        if (p.exists() or p.is_symlink()) and not inside(root, p):
            raise _Refused(f"has {name} pointing outside its directory")
    for mg in sm.meta_graphs:
        for a in mg.asset_file_def:
            name = a.filename
            parts = Path(name).parts
            if not name or Path(name).is_absolute() or ".." in parts or "\\" in name or \
                    not inside(root, root / "assets" / name):
                raise _Refused(f"names asset {name[:80]!r} outside its assets/ directory")
        has_vars = any(o.WhichOneof("kind") == "variable" for o in mg.object_graph_def.nodes)
        if has_vars and not (root / "variables" / "variables.index").is_file():
            raise _Refused("has variables but no variables/variables.index (an incomplete copy)")
