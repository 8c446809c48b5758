"""Read a TFLite flatbuffer and predict what would run on the Edge TPU.

Reads the graph with the flatbuffer schema that ai-edge-litert ships, so it
works before any device or interpreter is involved and on graphs that hold an
``edgetpu-custom-op`` (which the CPU interpreter cannot even allocate). The
prediction follows Coral's published rules (supported-op table, 8-bit tensors,
static shapes, at most three dimensions above 1, one partition); when
``edgetpu_compiler`` runs, its own log is the authority and is kept beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from hal import HalError, ModelFormatError

from .. import tflite_guard

#: ops the Edge TPU executes (coral.ai/docs/edgetpu/models-intro, "Supported operations").
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE",
    "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUEEZE",
    "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
#: custom ops hal lets an interpreter see: the Edge TPU's own, and SSD
#: post-processing, which LiteRT's built-in resolver implements (pure arithmetic;
#: Coral's detection models end in it). Flex ops (TensorFlow ops inside TFLite)
#: and every other custom op are refused before any interpreter is built.
CUSTOM_OPS_OK = frozenset({EDGETPU_CUSTOM_OP, "TFLite_Detection_PostProcess"})
FLOAT_TYPES = frozenset({"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"})
EIGHT_BIT = frozenset({"INT8", "UINT8"})


@dataclass
class TensorInfo:
    index: int
    name: str
    type: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    constant: bool
    scales: int  # number of quantization scales (0: not quantized)


@dataclass
class OpInfo:
    index: int
    name: str  # builtin name, or the custom code
    inputs: list[int]
    outputs: list[int]
    custom_options: bytes | None = None


@dataclass
class Graph:
    tensors: list[TensorInfo]
    ops: list[OpInfo]
    inputs: list[int]
    outputs: list[int]
    subgraphs: int

    @property
    def edgetpu_ops(self) -> list[OpInfo]:
        return [o for o in self.ops if o.name == EDGETPU_CUSTOM_OP]

    def float_tensors(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.type in FLOAT_TYPES]

    def io_types(self) -> tuple[list[str], list[str]]:
        return ([self.tensors[i].type for i in self.inputs],
                [self.tensors[i].type for i in self.outputs])


def _names(enum_cls) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def read_graph(data: bytes) -> Graph:
    """Parse the main subgraph of a TFLite flatbuffer (no interpreter)."""
    from ai_edge_litert import schema_py_generated as fb

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError("the model is not a TFLite flatbuffer (no TFL3 identifier)",
                               "pass a .tflite file")
    try:
        model = fb.Model.GetRootAs(data, 0)
        if model.SubgraphsLength() < 1:
            raise ModelFormatError("the TFLite model has no subgraph", "re-convert it")
        ttypes, builtins = _names(fb.TensorType), _names(fb.BuiltinOperator)
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
            name = builtins.get(code, f"BUILTIN_{code}")
            if name == "CUSTOM":
                name = (oc.CustomCode() or b"").decode("utf-8", "replace")
            codes.append(name)
        sg = model.Subgraphs(0)

        def has_data(buf_index: int) -> bool:
            if buf_index <= 0 or buf_index >= model.BuffersLength():
                return False
            b = model.Buffers(buf_index)
            return b.DataLength() > 0 or b.Offset() > 1

        tensors = []
        for i in range(sg.TensorsLength()):
            t = sg.Tensors(i)
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            sig = tuple(int(d) for d in t.ShapeSignatureAsNumpy()) if t.ShapeSignatureLength() else shape
            q = t.Quantization()
            tensors.append(TensorInfo(i, (t.Name() or b"").decode("utf-8", "replace"),
                                      ttypes.get(t.Type(), str(t.Type())), shape, sig,
                                      has_data(t.Buffer()), q.ScaleLength() if q is not None else 0))
        ops = []
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            custom = bytes(op.CustomOptionsAsNumpy().tobytes()) if op.CustomOptionsLength() else None
            if custom is None and op.LargeCustomOptionsSize() > 0:
                off, size = op.LargeCustomOptionsOffset(), op.LargeCustomOptionsSize()
                custom = bytes(data[off:off + size])
            ops.append(OpInfo(i, codes[op.OpcodeIndex()],
                              [int(x) for x in op.InputsAsNumpy()] if op.InputsLength() else [],
                              [int(x) for x in op.OutputsAsNumpy()] if op.OutputsLength() else [],
                              custom))
        ins = [int(x) for x in sg.InputsAsNumpy()] if sg.InputsLength() else []
        outs = [int(x) for x in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
    except ModelFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - a corrupt flatbuffer fails anywhere
        raise ModelFormatError(f"the TFLite flatbuffer could not be read ({type(e).__name__}: {e})",
                               "re-convert the model; the file may be truncated") from None
    return Graph(tensors, ops, ins, outs, model.SubgraphsLength())


def check_model(data: bytes, error: type[HalError], what: str) -> None:
    """Refuse, before any interpreter sees it, a TFLite model that names a Flex
    op (``SELECT_TF_OPS``: a TensorFlow op such as ``WriteFile`` run by
    TensorFlow inside TFLite) or a custom op outside :data:`CUSTOM_OPS_OK`, in
    any subgraph (a custom op is whatever code a runtime registered under its
    name), whose indices or names are out of range or not UTF-8 (LiteRT's
    Python layer would raise IndexError/UnicodeDecodeError on them), or whose
    subgraph calls LiteRT would follow into a crash (a cycle, the main subgraph
    called, nesting too deep: :mod:`hal_backends.tflite_guard`)."""
    from ai_edge_litert import schema_py_generated as fb

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise error(f"{what} is not a TFLite flatbuffer (no TFL3 identifier)", "pass a .tflite file")
    try:
        model = fb.Model.GetRootAs(data, 0)
        names = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            if max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()) == fb.BuiltinOperator.CUSTOM:
                names.append((oc.CustomCode() or b"").decode("utf-8"))
        damage = _damage(model, fb)
        calls = None if damage else tflite_guard.call_problem(model, fb)
    except Exception as e:  # noqa: BLE001 - a corrupt flatbuffer fails anywhere
        raise error(f"{what}: the TFLite flatbuffer could not be read ({type(e).__name__})",
                    "re-convert the model; the file may be truncated") from None
    if damage:
        raise error(f"{what} is damaged: {damage}", "re-convert the model")
    if calls:
        raise error(f"{what} is refused: {calls}", tflite_guard.FIX)
    flex = sorted({n for n in names if n.startswith("Flex")})
    if flex:
        raise error(f"{what} holds TensorFlow (Flex) op(s) {', '.join(flex[:4])}: TensorFlow code "
                    "inside TFLite, which hal never runs",
                    "convert with TFLITE_BUILTINS(_INT8) only, without SELECT_TF_OPS")
    other = sorted({n for n in names if n not in CUSTOM_OPS_OK})
    if other:
        raise error(f"{what} holds custom op(s) {', '.join(repr(n[:40]) for n in other[:4])}; hal "
                    f"runs only builtin ops and {', '.join(sorted(CUSTOM_OPS_OK))}",
                    "convert the model with builtin TFLite ops only")


def _damage(model, fb) -> str | None:
    """The first out-of-range index or undecodable name, in any subgraph."""
    n_codes, n_buffers = model.OperatorCodesLength(), model.BuffersLength()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        n = sg.TensorsLength()
        for i in range(n):
            t = sg.Tensors(i)
            (t.Name() or b"").decode("utf-8")
            if not 0 <= t.Buffer() < max(n_buffers, 1):
                return f"tensor {i} of subgraph {s} names buffer {t.Buffer()}"
        for what, idx in (("input", sg.InputsAsNumpy() if sg.InputsLength() else []),
                          ("output", sg.OutputsAsNumpy() if sg.OutputsLength() else [])):
            if any(not 0 <= int(x) < n for x in idx):
                return f"a subgraph {s} {what} names a tensor outside its {n}"
        for j in range(sg.OperatorsLength()):
            op = sg.Operators(j)
            if not 0 <= op.OpcodeIndex() < n_codes:
                return f"op {j} of subgraph {s} names operator code {op.OpcodeIndex()}"
            for arr, length in ((op.InputsAsNumpy, op.InputsLength), (op.OutputsAsNumpy, op.OutputsLength)):
                if length() and any(not -1 <= int(x) < n for x in arr()):
                    return f"op {j} of subgraph {s} names a tensor outside its {n}"
    return None


# --- the mapping report ---------------------------------------------------------------
@dataclass
class OpMapping:
    index: int
    op: str
    where: str  # "edgetpu" or "cpu"
    reasons: list[str] = field(default_factory=list)
    #: an edge conversion of the model's float I/O (:func:`edge_conversions`): on the CPU,
    #: but not a fallback, and it does not cut the Edge TPU partition
    io_conversion: bool = False


@dataclass
class MappingReport:
    """What the graph itself says about Edge TPU placement, before any compiler."""

    ops: list[OpMapping]
    float_tensors: list[str]
    dynamic_tensors: list[str]
    input_types: list[str]
    output_types: list[str]
    first_cpu_op: int | None
    already_compiled: bool
    notes: list[str] = field(default_factory=list)
    #: the model's float inputs and outputs that only its edge conversions touch; not in
    #: ``float_tensors``: every op between those conversions is int8
    io_float_tensors: list[str] = field(default_factory=list)

    @property
    def on_tpu(self) -> int:
        return sum(o.where == "edgetpu" for o in self.ops)

    @property
    def on_cpu(self) -> int:
        """Ops left on the CPU by the compiler's rules (the edge I/O conversions apart)."""
        return len(self.cpu_ops())

    @property
    def fully_int8(self) -> bool:
        """Every op is int8, the edge conversions of float model I/O apart."""
        return not self.float_tensors

    def cpu_ops(self) -> list[OpMapping]:
        """The ops the Edge TPU would hand back to the CPU: not the edge I/O conversions."""
        return [o for o in self.ops if o.where == "cpu" and not o.io_conversion]

    def io_ops(self) -> list[OpMapping]:
        """The edge conversions of the model's float inputs and outputs (on the CPU)."""
        return [o for o in self.ops if o.io_conversion]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ops_on_edgetpu=self.on_tpu, ops_on_cpu=self.on_cpu,
                 io_conversion_ops=len(self.io_ops()), fully_int8=self.fully_int8,
                 source="predicted from the TFLite graph (Coral's supported-op rules)")
        return d

    def summary(self) -> str:
        if self.already_compiled:
            return "already compiled by edgetpu_compiler"
        cpu, io = self.cpu_ops(), self.io_ops()
        head = f"{self.on_tpu}/{len(self.ops)} ops predicted on the Edge TPU"
        if io:
            head += (f"; {len(io)} convert the model's float I/O at the graph's edges on the CPU "
                     f"({', '.join(f'{o.op} {o.index}' for o in io[:4])})")
        if not cpu:
            return head
        first = cpu[0]
        return (f"{head}; {len(cpu)} on the CPU, from op {first.index} {first.op} "
                f"({'; '.join(first.reasons)})")


def _too_many_dims(shape: tuple[int, ...]) -> bool:
    """Coral: only the 3 innermost dimensions may be larger than 1."""
    return len(shape) > 3 and any(d > 1 for d in shape[:-3])


def edge_conversions(g: Graph) -> dict[int, str]:
    """The ops that only convert the model's float I/O, by op index, each with what it
    converts: a ``QUANTIZE`` of a float graph input to 8 bits, a ``DEQUANTIZE`` of an 8-bit
    activation to a float graph output (TFLiteConverter's default float I/O around a
    full-int8 graph). edgetpu_compiler leaves exactly these on the CPU and maps the int8
    graph between them: its report counts the first QUANTIZE "otherwise supported, but not
    mapped" and the last DEQUANTIZE "working on an unsupported data type", with every other
    op "Mapped to Edge TPU" (google-coral/edgetpu#13, f0cal/google-coral#20). They are the
    conversion hal makes on the host for an int8-I/O model. A QUANTIZE or DEQUANTIZE inside
    the graph is not one: it runs on the CPU and cuts the partition like any unmapped op."""
    ins, outs = set(g.inputs), set(g.outputs)
    found: dict[int, str] = {}
    for op in g.ops:
        if len(op.inputs) != 1 or len(op.outputs) != 1 or min(op.inputs + op.outputs) < 0:
            continue
        src, dst = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
        if (op.name == "QUANTIZE" and src.index in ins and src.type in FLOAT_TYPES
                and dst.type in EIGHT_BIT):
            found[op.index] = f"converts the float model input {src.name!r} to {dst.type.lower()}"
        elif (op.name == "DEQUANTIZE" and dst.index in outs and dst.type in FLOAT_TYPES
              and src.type in EIGHT_BIT and not src.constant):
            found[op.index] = f"converts {src.type.lower()} to the float model output {dst.name!r}"
    return found


def mapping_report(data: bytes | Graph) -> MappingReport:
    """Predict, op by op, what the Edge TPU would run and what stays on the CPU."""
    g = data if isinstance(data, Graph) else read_graph(data)
    in_types, out_types = g.io_types()
    compiled = bool(g.edgetpu_ops)
    edges = edge_conversions(g)
    users: dict[int, set[int]] = {}
    for op in g.ops:
        for ti in op.inputs + op.outputs:
            users.setdefault(ti, set()).add(op.index)
    io_only = {t.index for t in g.float_tensors()
               if (t.index in g.inputs or t.index in g.outputs) and users.get(t.index)
               and users[t.index] <= edges.keys()}
    floats = [f"{t.name} ({t.type})" for t in g.float_tensors() if t.index not in io_only]
    io_floats = [f"{t.name} ({t.type})" for t in g.float_tensors() if t.index in io_only]
    dynamic = [t.name for t in g.tensors if any(d < 0 for d in t.shape_signature)]
    ops: list[OpMapping] = []
    for op in g.ops:
        reasons = []
        if op.name == EDGETPU_CUSTOM_OP:
            ops.append(OpMapping(op.index, op.name, "edgetpu", ["compiled Edge TPU subgraph"]))
            continue
        if op.index in edges:
            ops.append(OpMapping(op.index, op.name, "cpu", [edges[op.index] + " at the graph's "
                                 "edge (the model's own I/O conversion)"], io_conversion=True))
            continue
        if op.name not in EDGETPU_OPS:
            reasons.append(f"{op.name} is not an Edge TPU op")
        for ti in op.inputs + op.outputs:
            if ti < 0:
                continue
            t = g.tensors[ti]
            if t.type in FLOAT_TYPES:
                reasons.append(f"{t.type.lower()} tensor {t.name!r}")
            elif t.type not in EIGHT_BIT and not (t.constant and t.type in ("INT32", "INT64")):
                reasons.append(f"{t.type.lower()} activation {t.name!r}")
            if any(d < 0 for d in t.shape_signature):
                reasons.append(f"dynamic shape {list(t.shape_signature)} of {t.name!r}")
            elif not t.constant and _too_many_dims(t.shape):
                reasons.append(f"{t.name!r} {list(t.shape)} has a dimension > 1 outside the "
                               "3 innermost")
        ops.append(OpMapping(op.index, op.name, "cpu" if reasons else "edgetpu",
                             sorted(set(reasons), key=reasons.index)))
    first = next((o.index for o in ops if o.where == "cpu" and not o.io_conversion), None)
    notes = []
    if first is not None and not compiled:
        # edgetpu_compiler partitions the graph once: all ops after the first
        # unsupported one stay on the CPU too (Coral's documented behaviour); the edge
        # conversions of float I/O do not cut it
        for o in ops[first + 1:]:
            if o.where == "edgetpu":
                o.where = "cpu"
                o.reasons.append(f"after the first CPU op ({first})")
        notes.append("the Edge TPU compiler partitions the graph once: every op after the "
                     "first unsupported one also runs on the CPU")
    if g.subgraphs > 1:
        notes.append(f"{g.subgraphs - 1} extra subgraph(s) (control flow) run on the CPU")
    if edges:
        notes.append(f"float model inputs/outputs: the Edge TPU takes int8, so the model's "
                     f"{len(edges)} QUANTIZE/DEQUANTIZE op(s) at the graph's edges run on the "
                     "CPU, as hal's own quantization of an int8-I/O model does; they do not "
                     "cut the Edge TPU partition")
    return MappingReport(ops, floats, dynamic, in_types, out_types, first, compiled, notes,
                         io_floats)


# --- compiled models ------------------------------------------------------------------
@dataclass
class CompiledPackage:
    """What an ``edgetpu-custom-op`` says about the runtime it needs."""

    min_runtime_version: int | None
    compiler_version: str | None


def compiled_packages(g: Graph) -> list[CompiledPackage]:
    """Read each Edge TPU subgraph's DarwiNN package header.

    The custom op's options are a flexbuffer map whose key "4" holds the
    serialized ``Package`` flatbuffer (libedgetpu ``custom_op_data.cc``,
    ``executable.fbs``): field 0 ``min_runtime_version``, field 4
    ``compiler_version``."""
    from flatbuffers import flexbuffers, number_types, table

    out = []
    for op in g.edgetpu_ops:
        try:
            ref = flexbuffers.GetRoot(bytearray(op.custom_options or b"")).AsMap["4"]
            pkg = bytes(ref.AsStringBytes if ref.IsString else ref.AsBlob)
            if pkg[4:8] != b"DWN1":
                raise ValueError("no DWN1 package identifier")
            t = table.Table(bytearray(pkg), int.from_bytes(pkg[:4], "little"))
            o = t.Offset(4)
            ver = t.Get(number_types.Int32Flags, o + t.Pos) if o else 0
            o = t.Offset(12)
            comp = t.String(o + t.Pos).decode("utf-8", "replace") if o else None
            out.append(CompiledPackage(int(ver), comp))
        except Exception:  # noqa: BLE001 - unreadable header: unknown version, not a crash
            out.append(CompiledPackage(None, None))
    return out

