"""The fp64 ONNX oracle: corrected onnx.reference operators, fp64, cross-checked
against onnxruntime; and the real CNNs in the onnx wheel against OpenVINO."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hal

onnx = pytest.importorskip("onnx", reason="onnx is not installed")
pytest.importorskip("torch", reason="torch (the reference backend's runtime) is not installed")
from onnx import TensorProto, helper  # noqa: E402

from hal_backends.reference import onnx_oracle as oo  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, opset: int, inits=(), ir: int = 10):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


def stock(m, feeds):
    """onnx.reference as shipped, to show what the oracle corrects."""
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(m).run(None, feeds)[0]


# --- the corrected operators -------------------------------------------------------
def test_lrn_normalises_over_channels_not_batch():
    m = model([helper.make_node("LRN", ["x"], ["y"], size=3, alpha=1e-1, beta=0.75, bias=1.0)],
              [vi("x", [2, 5, 3, 3])], [vi("y", [2, 5, 3, 3])], 9)
    x = np.random.default_rng(0).standard_normal((2, 5, 3, 3)).astype(np.float32)
    sq = np.pad(x.astype(np.float64) ** 2, [(0, 0), (1, 1), (0, 0), (0, 0)])
    want = x / (1.0 + 0.1 / 3 * (sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:])) ** 0.75
    got = oo.evaluator(m).run(None, {"x": x.astype(np.float64)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-7)  # alpha is a float32 attribute
    assert np.abs(stock(m, {"x": x}) - want).max() > 1e-3  # the shipped evaluator is wrong


def test_batchnorm_opset9_uses_running_statistics():
    rng = np.random.default_rng(1)
    s, b, mu, var = (rng.random(4).astype(np.float32) + 0.5 for _ in range(4))
    inits = [helper.make_tensor(n, F, [4], v) for n, v in zip("sbmv", (s, b, mu, var))]
    m = model([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
              [vi("x", [2, 4, 3, 3])], [vi("y", [2, 4, 3, 3])], 9, inits)
    x = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    r = (-1, 1, 1)
    want = (x - mu.reshape(r)) / np.sqrt(var.reshape(r) + 1e-5) * s.reshape(r) + b.reshape(r)
    run = oo.OnnxOracle(m).run([x])
    assert run.verdict == "agree", run.detail
    np.testing.assert_allclose(run.outputs[0], want, rtol=1e-5)
    assert np.abs(stock(m, {"x": x}) - want).max() > 1e-2


def test_gather_elements_with_indices_smaller_than_data():
    """The spec lets indices be smaller than data off the axis (torch.onnx gathers a
    position-id buffer of 64 by a sequence of 12); the shipped evaluator raises."""
    data = np.arange(2 * 70, dtype=np.float32).reshape(2, 70)
    idx = np.array([[69, 0, -1, 3]], np.int64)
    m = model([helper.make_node("GatherElements", ["d", "i"], ["y"], axis=1)],
              [vi("d", [2, 70]), vi("i", [1, 4], TensorProto.INT64)], [vi("y", [1, 4])], 13, ir=8)
    want = np.array([[69, 0, 69, 3]], np.float32)
    np.testing.assert_array_equal(oo.evaluator(m, double=False).run(None, {"d": data, "i": idx})[0], want)
    run = oo.OnnxOracle(m).run([data, idx])
    assert run.verdict == "agree", run.detail
    with pytest.raises(ValueError):
        stock(m, {"d": data, "i": idx})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
def test_softmax_family_below_opset13_coerces_to_2d(op):
    m = model([helper.make_node(op, ["x"], ["y"])], [vi("x", [2, 3, 2, 2])],
              [vi("y", [2, 3, 2, 2])], 11)
    x = np.random.default_rng(2).standard_normal((2, 3, 2, 2)).astype(np.float32)
    run = oo.OnnxOracle(m).run([x])
    assert run.verdict == "agree", run.detail
    flat = x.reshape(2, -1).astype(np.float64)
    e = np.exp(flat - flat.max(1, keepdims=True))
    want = {"Softmax": e / e.sum(1, keepdims=True),
            "LogSoftmax": np.log(e / e.sum(1, keepdims=True)),
            "Hardmax": np.eye(12)[flat.argmax(1)]}[op].reshape(x.shape)
    np.testing.assert_allclose(run.outputs[0], want, rtol=1e-9, atol=1e-12)


def test_fast_conv_and_pooling_match_onnx_node_cases():
    """ONNX's own node cases for the replaced operators, at fp32 and at fp64."""
    from onnx.backend.test.loader import load_model_tests
    from onnx.backend.test.runner import Runner

    names = ("test_conv_", "test_maxpool_", "test_averagepool_", "test_lrn", "test_batchnorm_",
             "test_softmax_", "test_logsoftmax_", "test_hardmax_")
    cases = [c for c in load_model_tests(kind="node") if c.name.startswith(names)]
    assert len(cases) > 80
    for c in cases:
        feeds_names = oo._real_inputs(c.model)
        for double in (False, True):
            ev = oo.evaluator(c.model, double=double)
            for ins, outs in c.data_sets:
                feeds = {n: v.astype(np.float64) if double and v.dtype == np.float32 else v
                         for n, v in zip(feeds_names, ins)}
                got = [np.asarray(g).astype(o.dtype) for g, o in zip(ev.run(None, feeds), outs)]
                Runner.assert_similar_outputs(outs, got, rtol=c.rtol, atol=c.atol)


# --- cross-checking ----------------------------------------------------------------------
def cancellation_model():
    """(x + 1e8) - 1e8: exact in fp64, all-but-destroyed in fp32."""
    big = helper.make_tensor("big", F, [1], [1e8])
    return model([helper.make_node("Add", ["x", "big"], ["t"]),
                  helper.make_node("Sub", ["t", "big"], ["y"])],
                 [vi("x", [4])], [vi("y", [4])], 13, [big])


def test_disagreeing_implementations_judge_nothing():
    pytest.importorskip("onnxruntime", reason="onnxruntime (the second implementation) is not installed")
    x = np.array([0.1, 1.3, 2.7, 3.3], dtype=np.float32)
    run = oo.OnnxOracle(cancellation_model()).run([x])
    assert run.verdict == "disagree" and "max|diff|" in run.detail
    exe = hal.compile(cancellation_model(), target="reference:cpu", precision="fp64", cache=False)
    with pytest.raises(oo.OracleDisagreement, match="disagree"):
        exe(x)


def test_an_oracle_that_cannot_be_cross_checked_answers_nothing():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    newest = onnx.IR_VERSION
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [3])], [vi("y", [3])], 13,
              ir=newest)
    try:
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        pytest.skip(f"onnxruntime {ort.__version__} reads IR version {newest}: nothing it refuses")
    except Exception:  # noqa: BLE001 - the refusal is what this test needs
        pass
    run = oo.OnnxOracle(m).run([np.ones(3, np.float32)])
    assert run.verdict == "unchecked" and "onnxruntime" in run.detail
    exe = hal.compile(m, target="reference:cpu", precision="fp64", cache=False)
    with pytest.raises(oo.OracleDisagreement, match="cross-checked"):
        exe(np.ones(3, np.float32))


def test_fp64_executable_is_thread_safe():
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    w = helper.make_tensor("w", F, [8, 3, 3, 3], np.random.default_rng(3).standard_normal(216))
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
               helper.make_node("Relu", ["c"], ["y"])],
              [vi("x", [1, 3, 8, 8])], [vi("y", [1, 8, 8, 8])], 13, [w])
    exe = hal.compile(m, target="reference:cpu", precision="fp64", cache=False)
    xs = [np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32) for i in range(8)]
    want = [exe(x) for x in xs]
    got: dict[int, list] = {i: [] for i in range(8)}

    def work(i):
        for _ in range(5):
            got[i].append(exe(xs[i]))

    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(np.array_equal(y, want[i]) for i in got for y in got[i])
    assert sum(len(v) for v in got.values()) == 40


# --- the real CNNs in the onnx wheel -------------------------------------------------------
def light_models() -> list[Path]:
    return sorted(LIGHT.glob("light_*.onnx")) if LIGHT.is_dir() else []


#: the slowest light CNN (its fp64 oracle alone takes ~15 s here) computes with the same ops as
#: AlexNet and ZFNet (conv, ReLU, max-pool, Gemm): it runs with ``--full``
LIGHT_FULL = ("light_vgg19",)


@pytest.mark.skipif(not light_models(), reason=f"the onnx wheel ships no light models ({LIGHT})")
@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem,
                                               marks=pytest.mark.full if p.stem in LIGHT_FULL else ())
                                  for p in light_models()])
def test_light_cnns_oracle_agrees_with_openvino_fp32(path):
    """Pre-softmax logits within 1e-4·max|logit| of OpenVINO fp32 on every
    light_* CNN (one item each); the error and time per call are printed (pytest -s)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime (the second implementation) is not installed")
    if "openvino" not in {b.name for b in hal.backends() if b.missing_runtime is None}:
        pytest.skip("the openvino backend's runtime is not installed")
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    m = oo.logits(onnx.load(str(path)))
    oracle = hal.compile(m, target="reference:cpu", precision="fp64", cache=False)
    t0 = time.perf_counter()
    ref = oracle(x)
    per_call = time.perf_counter() - t0
    ov = hal.compile(m, target="openvino:CPU", precision="fp32", cache=False)(x)
    why, rel = oo.compare(ref, ov, 1e-4)
    assert why is None, f"{path.stem}: {why}"
    print(f"{path.stem:24s} max|oracle-openvino|/max|logit| {rel:.1e}  oracle {per_call:.2f} s/call")


def test_conformance_cells_are_not_judged_where_the_oracle_disagrees(tmp_path):
    """A model whose oracle disagreed gets 'oracle-disagreement' cells: no
    backend runs, nothing passes, JUnit marks them skipped with the reason."""
    from hal_conformance.policy import ORACLE_DISAGREEMENT
    from hal_conformance.report import summary_line, write_junit
    from hal_conformance.options import Options
    from hal_conformance.runner import CellSpec, Suite

    suite = Suite(Options(models=["mlp"], backends=["reference"], workdir=tmp_path / "w"))
    try:
        suite._refs_done = True  # the oracle ran: its implementations disagreed on mlp
        suite.disagreed["mlp"] = "OracleDisagreement: max|diff| 0.3 = 1e-2·max|out| > 0.0001"
        dev = {"target": "reference:cpu", "name": "cpu", "kind": "hardware"}
        cell = suite.run_cell(CellSpec("reference", dev, "mlp", "fp32"))
        assert cell.result == ORACLE_DISAGREEMENT and "not judged" in cell.message
        assert cell.max_abs_err is None and not suite.runs  # no backend was asked to run
        assert not suite.report.passed and "1 oracle-disagreement" in summary_line(suite.report)
        write_junit(suite.report, tmp_path / "j.xml")
        assert "<skipped" in (tmp_path / "j.xml").read_text()
    finally:
        suite.close()
