"""Issue #22: a TFLite model whose control flow calls back into its caller (a
subgraph-call cycle) segfaults LiteRT. The attack is built as an attacker would
(TFLiteConverter, then one index in the WHILE op's options rewritten with the
flatbuffer object API), shown to crash LiteRT in a subprocess, then shown to be
refused by hal before any interpreter sees it: at edgetpu compile, at edgetpu
.hal load, through the CLI, and at openvino's TFLite import.
docs/backends/edgetpu.md ("What hal checks before loading") says what is checked."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hal
from hal import ArtifactError, HalError, ModelFormatError

tf = pytest.importorskip("tensorflow", reason="the attack files are made with TFLiteConverter")
pytest.importorskip("ai_edge_litert", reason="the edgetpu backend's runtime is not installed")
import craft  # noqa: E402  (tests/craft.py)
import flatbuffers  # noqa: E402  (ai-edge-litert's dependency)
from ai_edge_litert import schema_py_generated as fb  # noqa: E402
from hal_backends import tflite_guard as guard  # noqa: E402
from hal_backends.edgetpu import graph  # noqa: E402

ETPU = "edgetpu:emulated"
I, X = np.array(0, np.int32), np.ones((1, 4), np.float32)
Y = np.full((1, 4), 1.875, np.float32)  # three turns of x / 2 + 1 from 1
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
#: prepare (and, with "invoke", run) a model in plain LiteRT; exit 0 when it worked
LITERT = """import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1])
try:
    it.allocate_tensors()
    for d in it.get_input_details():
        it.set_tensor(d["index"], np.ones(d["shape"], d["dtype"]))
    it.invoke()
except RuntimeError as e:  # LiteRT refused the model cleanly
    print("refused:", str(e).splitlines()[0]); sys.exit(3)
print("ran")
"""


# --- the attack files ------------------------------------------------------------------------
def _convert(fn) -> bytes:
    return tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()]).convert()


@pytest.fixture(scope="module")
def loop() -> bytes:
    """main(i, x) = while i < 3: (i + 1, x / 2 + 1). Subgraphs: 0 main (the
    WHILE), 1 cond, 2 body; main takes and returns what the body does, so a body
    index of 0 makes LiteRT prepare main inside main."""
    @tf.function(input_signature=[tf.TensorSpec([], tf.int32), tf.TensorSpec([1, 4], tf.float32)])
    def f(i, x):
        return tf.while_loop(lambda i, v: i < 3, lambda i, v: (i + 1, v * 0.5 + 1.0), (i, x))
    return _convert(f)


@pytest.fixture(scope="module")
def nested() -> bytes:
    """A loop in a loop: 0 main WHILE(3, 4); 4 the outer body [ADD, WHILE(1, 2)]."""
    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def f(x):
        def outer(i, v):
            _, v = tf.while_loop(lambda j, w: j < 2, lambda j, w: (j + 1, w * 0.5 + 1.0),
                                 (tf.constant(0), v))
            return i + 1, v
        return tf.while_loop(lambda i, v: i < 3, outer, (tf.constant(0), x))[1]
    data = _convert(f)
    assert _whiles(data) == {(0, 0): (3, 4), (4, 1): (1, 2)}, "the converter's layout changed"
    return data


def _whiles(data: bytes) -> dict[tuple[int, int], tuple[int, int]]:
    m = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    return {(s, j): (op.builtinOptions.condSubgraphIndex, op.builtinOptions.bodySubgraphIndex)
            for s, sg in enumerate(m.subgraphs) for j, op in enumerate(sg.operators)
            if isinstance(op.builtinOptions, fb.WhileOptionsT)}


def _pack(m) -> bytes:
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def patch(data: bytes, where: tuple[int, int], **fields) -> bytes:
    """Set fields of the options of op ``where`` = (subgraph, op); options=None drops them."""
    m = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    op = m.subgraphs[where[0]].operators[where[1]]
    if fields.pop("options", True) is None:
        op.builtinOptionsType, op.builtinOptions = 0, None
    elif op.builtinOptions is None:  # LiteRT's defaults, written out
        op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.WhileOptions, fb.WhileOptionsT()
    for k, v in fields.items():
        setattr(op.builtinOptions, k, v)
    return _pack(m)


def chain(nested_: bytes, n: int) -> bytes:
    """n copies of the outer body, each one's inner WHILE calling the next: an
    acyclic chain of subgraph calls n + 2 deep from main."""
    m = fb.ModelT.InitFromObj(fb.Model.GetRootAs(nested_, 0))
    pristine, prev = copy.deepcopy(m.subgraphs[4]), m.subgraphs[4]
    for _ in range(n):
        prev.operators[1].builtinOptions.bodySubgraphIndex = len(m.subgraphs)
        prev = copy.deepcopy(pristine)
        m.subgraphs.append(prev)
    return _pack(m)


def litert(path: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-c", LITERT, str(path)], capture_output=True,
                              text=True, timeout=timeout, env=ENV)
    except subprocess.TimeoutExpired as e:  # a hang is as bad as a crash: report it as one
        return subprocess.CompletedProcess(e.cmd, -9, "", "timed out")


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


@pytest.fixture(scope="module")
def evil(loop, nested) -> dict[str, tuple[bytes, str]]:
    """name → (file, what hal's error must say)."""
    return {
        "cycle through main": (patch(loop, (0, 0), bodySubgraphIndex=0),
                               r"op 0 \(WHILE\) of subgraph 0 calls subgraph 0, the main subgraph"),
        "self-loop": (patch(nested, (4, 1), bodySubgraphIndex=4), r"cycle \(4 → 4\)"),
        "two-subgraph cycle": (patch(chain(nested, 1), (5, 1), bodySubgraphIndex=4),
                               r"cycle \(4 → 5 → 4\)"),
        "out of range": (patch(loop, (0, 0), bodySubgraphIndex=99), r"calls subgraph 99 .* has 3"),
        "negative": (patch(loop, (0, 0), condSubgraphIndex=-5), r"calls subgraph -5"),
        "no options": (patch(loop, (0, 0), options=None), r"no WhileOptions: default"),
        "too deep": (chain(nested, guard.MAX_CALL_DEPTH - 1), r"nest 33 deep .* allows 32"),
    }


# --- the attack is real ------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["cycle through main", "self-loop"])
def test_plain_litert_crashes_on_a_cycle(evil, loop, tmp_path, case):
    (tmp_path / "good.tflite").write_bytes(loop)
    assert litert(tmp_path / "good.tflite").returncode == 0  # the honest model runs
    (tmp_path / "evil.tflite").write_bytes(evil[case][0])
    p = litert(tmp_path / "evil.tflite")
    assert p.returncode < 0, f"LiteRT should crash (or hang) on it: rc {p.returncode} {p.stdout}"


def test_a_chain_at_the_bound_prepares_in_litert_and_passes(nested, tmp_path):
    """The depth bound refuses nothing LiteRT can take: a chain exactly
    MAX_CALL_DEPTH deep is accepted by hal and prepares in plain LiteRT."""
    data = chain(nested, guard.MAX_CALL_DEPTH - 2)
    graph.check_model(data, ModelFormatError, "the chain")
    (tmp_path / "deep.tflite").write_bytes(data)
    p = subprocess.run([sys.executable, "-c", "import sys; from ai_edge_litert.interpreter import "
                        "Interpreter; Interpreter(model_path=sys.argv[1]).allocate_tensors()",
                        str(tmp_path / "deep.tflite")], capture_output=True, timeout=120, env=ENV)
    assert p.returncode == 0, p.stderr[-1000:]


# --- hal refuses them before any interpreter ----------------------------------------------------
CASES = ["cycle through main", "self-loop", "two-subgraph cycle", "out of range", "negative",
         "no options", "too deep"]


@pytest.mark.parametrize("case", CASES)
def test_edgetpu_compile_refuses(evil, loop, tmp_path, case):
    data, why = evil[case]
    path = tmp_path / "evil.tflite"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match=why) as e:
        hal.compile(path, target=ETPU, precision="int8", calibration=[(I, X)], cache=False,
                    options={"allow_float_ops": True})
    one_line(e)
    exe = hal.compile(loop, target=ETPU, precision="int8", calibration=[(I, X)], cache=False,
                      options={"allow_float_ops": True})  # and the honest one runs
    np.testing.assert_allclose(exe(I, X)[1], Y)


@pytest.fixture(scope="module")
def loop_hal(loop, tmp_path_factory) -> Path:
    exe = hal.compile(loop, target=ETPU, precision="int8", calibration=[(I, X)], cache=False,
                      options={"allow_float_ops": True})
    return exe.save(tmp_path_factory.mktemp("tflsec") / "loop.hal")


@pytest.mark.parametrize("case", ["cycle through main", "self-loop", "too deep"])
def test_edgetpu_load_refuses_a_swapped_artifact(evil, loop_hal, tmp_path, case):
    """The artifact's model swapped for the crafted one, hal.json's SHA-256s
    recomputed (an attacker can hash too)."""
    data, why = evil[case]
    bad = craft.repack_hal(loop_hal, tmp_path / "evil.hal",
                           replace={"artifact/model_int8.tflite": data})
    with pytest.raises(ArtifactError, match=why) as e:
        hal.load(bad)
    one_line(e)
    np.testing.assert_allclose(hal.load(loop_hal)(I, X)[1], Y)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hal.cli", *args], capture_output=True, text=True,
                          timeout=300, env=ENV)


def test_cli_refuses_with_one_line(evil, loop_hal, tmp_path):
    data, why = evil["cycle through main"]
    (tmp_path / "evil.tflite").write_bytes(data)
    np.save(tmp_path / "calib.npy", X[None])
    bad = craft.repack_hal(loop_hal, tmp_path / "evil.hal",
                           replace={"artifact/model_int8.tflite": data})
    for p in (_cli("compile", str(tmp_path / "evil.tflite"), "--target", ETPU, "--precision", "int8",
                   "--calibration", str(tmp_path / "calib.npy"), "--option", "allow_float_ops=true",
                   "--no-cache", "-o", str(tmp_path / "out.hal")),
              _cli("run", str(bad))):
        lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
        assert p.returncode == 2 and len(lines) == 1 and "cycle" in lines[0], p.stderr[-2000:]
        assert "Traceback" not in p.stderr + p.stdout
    assert not (tmp_path / "out.hal").exists()


@pytest.mark.parametrize("case", ["cycle through main", "self-loop", "out of range"])
def test_openvino_tflite_import_refuses(evil, loop, tmp_path, case):
    pytest.importorskip("openvino", reason="the openvino backend is not installed")
    data, why = evil[case]
    (tmp_path / "evil.tflite").write_bytes(data)
    with pytest.raises(ModelFormatError, match=why) as e:
        hal.compile(tmp_path / "evil.tflite", target="openvino:CPU", cache=False)
    one_line(e)
    exe = hal.compile(loop, target="openvino:CPU", cache=False)
    np.testing.assert_allclose(exe(I, X)[1], Y)


# --- every options table that names subgraphs is read ------------------------------------------
def _one_call(spec: guard.CallSpec, code: int, callee: int) -> bytes:
    """A model whose only op is ``code`` with its own options table naming
    ``callee`` in every subgraph field, and two empty subgraphs to call."""
    m = fb.ModelT()
    oc = fb.OperatorCodeT()
    oc.builtinCode, oc.deprecatedBuiltinCode = code, min(code, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    m.operatorCodes, m.buffers, m.version = [oc], [fb.BufferT()], 3
    opts = getattr(fb, spec.table + "T")()
    for f in spec.scalars:
        setattr(opts, f[0].lower() + f[1:], callee)
    for f in spec.vectors:
        setattr(opts, f[0].lower() + f[1:], [1, callee])
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [], []
    if spec.union == 1:
        op.builtinOptionsType, op.builtinOptions = spec.type_id, opts
    else:
        op.builtinOptions2Type, op.builtinOptions2 = spec.type_id, opts
    m.subgraphs = [fb.SubGraphT() for _ in range(3)]
    for sg in m.subgraphs:
        sg.tensors, sg.inputs, sg.outputs, sg.operators = [], [], [], []
    m.subgraphs[0].operators = [op]
    return _pack(m)


def test_the_schema_s_control_flow_ops_are_all_known():
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    found = {names[c] for c in guard.call_options(fb)}
    assert {"WHILE", "IF", "CALL_ONCE", "CALL", "STABLEHLO_WHILE", "STABLEHLO_CASE",
            "STABLEHLO_COMPOSITE", "STABLEHLO_REDUCE", "STABLEHLO_REDUCE_WINDOW", "STABLEHLO_SORT",
            "STABLEHLO_SCATTER", "STABLEHLO_CUSTOM_CALL"} <= found
    # every options table of either union with a subgraph-index field is read by some op
    tables = {s.table for s in guard.call_options(fb).values()}
    for enum in (fb.BuiltinOptions, fb.BuiltinOptions2):
        for name in vars(enum):
            cls = None if name.startswith("_") else getattr(fb, name, None)
            if cls is not None and any("Subgraph" in a for a in vars(cls)):
                assert name in tables, name


@pytest.mark.parametrize("code", sorted(guard.call_options(fb)))
def test_each_options_table_is_read(code):
    spec = guard.call_options(fb)[code]
    ok = _one_call(spec, code, 2)
    assert guard.call_problem(fb.Model.GetRootAs(ok, 0), fb) is None
    for callee, why in ((0, "the main subgraph"), (7, "calls subgraph 7")):
        with pytest.raises(ModelFormatError, match=why) as e:
            graph.check_model(_one_call(spec, code, callee), ModelFormatError, "m")
        one_line(e)


# --- property-based: mutated subgraph indices are refused or run honestly ----------------------
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("HAL_FUZZ_EXAMPLES", "25")), deadline=None,
                suppress_health_check=list(HealthCheck), derandomize=True)
#: compile and run in a fresh process: a crash there fails the test instead of pytest
HAL_RUN = """import sys, numpy as np, hal
try:
    exe = hal.compile(open(sys.argv[1], "rb").read(), target="edgetpu:emulated", precision="int8",
                      calibration=[np.ones((1, 4), np.float32)], cache=False,
                      options={"allow_float_ops": True})
    exe(np.ones((1, 4), np.float32))
except hal.HalError as e:
    assert "\\n" not in str(e); print("hal error:", e)
else:
    print("ran")
"""
_edit = st.tuples(st.sampled_from([(0, 0), (4, 1)]), st.sampled_from(["condSubgraphIndex",
                  "bodySubgraphIndex", None]), st.integers(-2, 7))


@FUZZ
@given(edits=st.lists(_edit, min_size=1, max_size=3))
def test_fuzz_subgraph_indices(nested, tmp_path_factory, edits):
    data = nested
    for where, field, value in edits:
        data = patch(data, where, options=None) if field is None else patch(data, where, **{field: value})
    try:
        graph.check_model(data, ModelFormatError, "the model")
    except ModelFormatError as e:
        assert "\n" not in str(e)
        with pytest.raises(ModelFormatError):  # and hal.compile says the same, before LiteRT
            hal.compile(data, target=ETPU, precision="int8", calibration=[(I, X)], cache=False,
                        options={"allow_float_ops": True})
        return
    path = tmp_path_factory.mktemp("fzsg") / "m.tflite"
    path.write_bytes(data)
    p = subprocess.run([sys.executable, "-c", HAL_RUN, str(path)], capture_output=True, text=True,
                       timeout=300, env=ENV)
    assert p.returncode == 0 and p.stdout.startswith(("ran", "hal error:")), \
        f"accepted by hal, then rc {p.returncode}: {p.stderr[-1500:]}"
