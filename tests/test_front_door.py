"""The front door (#21): models nobody here wrote, each compiled by hal and compared with
its native runtime called directly on the same input — or refused with a message that is
true. Conversion that bakes in a branch, precision labels that are not what runs, f16-stored
IR weights, ONNX files the checker dislikes, and raw exceptions are each checked here on
real runtimes (tiny models; the whole file is meant to stay near a minute)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hal  # noqa: E402
from hal import CompileError, InvalidInputError, UnsupportedError  # noqa: E402

# the native trace is called directly here on purpose; its warnings are the point, not noise
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def first(out):
    """The first array of an executable's outputs, whatever structure it returns."""
    if isinstance(out, dict):
        return first(next(iter(out.values())))
    if isinstance(out, (list, tuple)):
        return first(out[0])
    return np.asarray(out)


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def ov_direct(model, x, hint="f32"):
    """OpenVINO called directly: read/convert, compile for CPU at ``hint``, infer."""
    ov = pytest.importorskip("openvino")
    core = ov.Core()
    m = core.read_model(str(model)) if str(model).endswith((".onnx", ".xml")) else ov.convert_model(model)
    return first(list(core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": hint})(list(x)).values()))


def ort_unfused(path, x):
    """ONNX Runtime without graph fusion: a QDQ model's QuantizeLinear/DequantizeLinear run as written."""
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def litert_direct(path, x):
    """LiteRT's interpreter on an int8-I/O TFLite, quantizing ``x`` and dequantizing the output
    with the model's own parameters (what hal's float interface does)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    (si, zi), (so, zo) = i["quantization"], o["quantization"]
    it.set_tensor(i["index"], np.clip(np.round(x / si) + zi, -128, 127).astype(np.int8))
    it.invoke()
    return (it.get_tensor(o["index"]).astype(np.float32) - zo) * so


# --- 1. control flow and conversion paths on OpenVINO ------------------------------------
class Branch(torch.nn.Module):
    """A data-dependent Python branch: a TorchScript trace freezes one side."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 10


class Guarded(torch.nn.Module):
    """A data-dependent branch that no ordinary input takes: export refuses it, a trace
    is right on every input the check tries."""

    def forward(self, x):
        if x.abs().max() > 1e6:
            x = x / 1e6
        return torch.tanh(x) * 3


def test_openvino_refuses_a_branch_the_trace_would_bake_in():
    ov = pytest.importorskip("openvino")
    x = np.ones((2, 3), np.float32)
    m = Branch().eval()
    # the native converter, called directly, answers the other branch's input wrongly
    traced = ov.Core().compile_model(ov.convert_model(m, example_input=torch.from_numpy(x)), "CPU")
    wrong = first(list(traced([-x]).values()))
    want = m(torch.from_numpy(-x)).numpy()
    assert np.abs(wrong - want).max() > 1  # the hazard is real
    with pytest.raises(CompileError) as e:
        hal.compile(m, "openvino:CPU", example_input=(x,), cache=False)
    msg = str(e.value)
    assert "torch.export.export" in msg and "TorchScript trace" in msg and "disagrees" in msg
    assert "torch.cond" in msg  # the fix names a way out
    # the reference backend runs it eagerly: both branches right
    exe = hal.compile(m, "cpu", example_input=(x,), cache=False)
    np.testing.assert_array_equal(first(exe(-x)), want)


def test_openvino_trace_fallback_is_checked_and_said():
    pytest.importorskip("openvino")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    m = Guarded().eval()
    exe = hal.compile(m, "openvino:CPU", example_input=(x,), cache=False)
    assert any("TorchScript tracing" in n and "second, different input" in n for n in exe.info.notes)
    for probe in (x, -2 * x):
        assert rel(first(exe(probe)), m(torch.from_numpy(probe)).numpy()) < 1e-5


@pytest.fixture(scope="module")
def gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, use_cache=False,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


class WithMask(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).logits


IDS = np.array([[1, 5, 7, 9, 11, 3]], np.int64)
MASK = np.array([[1, 1, 1, 1, 0, 0]], np.int64)


def test_gpt2_module_on_openvino(gpt2):
    """ov.convert_model's trace refuses GPT-2 ('None constant cannot be converted');
    hal goes through torch.export and matches transformers."""
    ov = pytest.importorskip("openvino")
    with pytest.raises(Exception, match="None constant|fully converted"):
        ov.convert_model(gpt2, example_input=(torch.from_numpy(IDS),))
    with torch.no_grad():
        want = gpt2(torch.from_numpy(IDS)).logits.numpy()
    exe = hal.compile(gpt2, "openvino:CPU", example_input=(IDS,), cache=False)
    assert "torch.export.export" in " ".join(exe.info.conversion_path)
    assert rel(first(exe(IDS)), want) < 1e-5

    masked = WithMask(gpt2).eval()
    with torch.no_grad():
        want = masked(torch.from_numpy(IDS), torch.from_numpy(MASK)).numpy()
    exe = hal.compile(masked, "openvino:CPU", example_input=(IDS, MASK), cache=False)
    assert rel(first(exe(IDS, MASK)), want) < 1e-5


def test_a_program_exported_with_keyword_inputs(gpt2):
    """torch.export.export(m, (), kwargs={...}), the way transformers models are exported:
    every torch backend calls the program with one array per user input, by position."""
    masked = WithMask(gpt2).eval()
    ids2, mask2 = np.repeat(IDS, 2, 0), np.repeat(MASK, 2, 0)
    ep = torch.export.export(masked, (), kwargs={"attention_mask": torch.from_numpy(mask2),
                                                 "input_ids": torch.from_numpy(ids2)})
    with torch.no_grad():
        want = masked(torch.from_numpy(ids2), torch.from_numpy(mask2)).numpy()
    targets = ["cpu"] + (["openvino:CPU"] if _has("openvino") else [])
    for target in targets:
        exe = hal.compile(ep, target, cache=False)  # the program's own example inputs
        assert [i.name for i in exe.info.inputs] == ["attention_mask", "input_ids"], target
        assert rel(first(exe(attention_mask=mask2, input_ids=ids2)), want) < 1e-5, target
        assert rel(first(exe(mask2, ids2)), want) < 1e-5, target
    exe = hal.compile(ep, "cpu", precision="int8-dynamic", cache=False)
    assert rel(first(exe(mask2, ids2)), want) < 5e-2


def test_example_inputs_by_name_bind_by_name(gpt2):
    """GPT2LMHeadModel.forward(input_ids, past_key_values, attention_mask, ...): the mask
    passed second by position lands on past_key_values, and the error says so; passed by
    name (a tokenizer's dict) it binds to attention_mask on every backend, batch free."""
    with pytest.raises(InvalidInputError, match="bound by position to input_ids, past_key_values"):
        hal.compile(gpt2, "cpu", example_input=(IDS, MASK), cache=False)
    with torch.no_grad():
        want = gpt2(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK)).logits
    named = {"input_ids": IDS, "attention_mask": MASK}
    for target in ["cpu"] + (["openvino:CPU"] if _has("openvino") else []):
        exe = hal.compile(gpt2, target, example_input=named, cache=False)
        assert [(i.name, i.shape[0]) for i in exe.info.inputs] == [
            ("input_ids", None), ("attention_mask", None)], target
        assert rel(first(exe(**named)), want.numpy()) < 1e-5, target
        two = exe(np.repeat(IDS, 2, 0), np.repeat(MASK, 2, 0))
        assert rel(first(two)[1:], want.numpy()) < 1e-5, target
    with pytest.raises(hal.UsageError, match=r"\['mask'\] are not parameters of forward"):
        hal.compile(gpt2, "cpu", example_input={"input_ids": IDS, "mask": MASK}, cache=False)


def test_example_inputs_by_name_order_a_file_model(tmp_path):
    """A model whose inputs are named in the file (ONNX) takes a dict in any key order."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Sub", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ab"],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "sub.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    a, b = np.array([5, 7], np.float32), np.array([1, 2], np.float32)
    exe = hal.compile(path, "cpu", example_input={"b": b, "a": a}, cache=False)
    np.testing.assert_array_equal(exe(a, b), a - b)
    with pytest.raises(hal.UsageError, match=r"names \['a', 'c'\] are not the model's inputs"):
        hal.compile(path, "cpu", example_input={"a": a, "c": b}, cache=False)


def test_profile_without_inputs_on_int64_ids(gpt2):
    """Random int64 inputs must be valid ids: 0/1 fit every vocabulary."""
    exe = hal.compile(gpt2, "cpu", example_input=(IDS,), cache=False)
    p = exe.profile(iterations=3, warmup=1, extras=False)
    assert p.iterations == 3 and p.latency_ms["p50"] > 0


def test_dynamic_cache_gets_one_right_fix():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=100, bos_token_id=0, eos_token_id=0)).eval()
    with torch.no_grad():  # what the native model returns: a cache besides the logits
        assert "Cache" in type(m(torch.from_numpy(IDS)).past_key_values).__name__
    targets = ["cpu"] + (["openvino:CPU"] if _has("openvino") else [])
    for target in targets:
        with pytest.raises(CompileError) as e:
            hal.compile(m, target, example_input=(IDS,), cache=False)
        assert str(e.value).count("Fix:") == 1 and "use_cache=False" in e.value.fix, target


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# --- 2/3. pre-quantized models: labelled by what runs, never quantized twice -------------
@pytest.fixture(scope="module")
def qdq_onnx(tmp_path_factory):
    """A Conv-ReLU-Gemm ONNX model (opset 17) made QDQ int8 by ONNX Runtime's quantize_static."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w")
    b = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b")
    fc = numpy_helper.from_array(rng.standard_normal((8 * 6 * 6, 10)).astype(np.float32) * 0.05, "fc")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, b, fc])
    d = tmp_path_factory.mktemp("qdq")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              d / "fp32.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = iter([{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
                              for _ in range(16)])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(d / "fp32.onnx"), str(d / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    return d / "qdq.onnx"


X8 = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)


def test_qdq_onnx_on_openvino_is_int8(qdq_onnx):
    pytest.importorskip("openvino")
    with pytest.raises(UnsupportedError, match=r"already quantized.*precision='int8'"):
        hal.compile(qdq_onnx, "openvino:CPU", precision="fp32", cache=False)
    exe = hal.compile(qdq_onnx, "openvino:CPU", precision="int8", calibration=[X8], cache=False)
    assert exe.info.precision == "int8"
    assert not any("nncf" in s for s in exe.info.conversion_path)  # never quantized twice
    assert any("calibration data not used" in n for n in exe.info.notes)
    assert exe.info.extra["int8_layer_types"]  # OpenVINO's runtime graph computes at int8
    assert rel(first(exe(X8)), ov_direct(qdq_onnx, (X8,))) < 1e-6


def test_ir_with_fakequantize_is_int8(qdq_onnx, tmp_path):
    ov = pytest.importorskip("openvino")
    ov.save_model(ov.Core().read_model(str(qdq_onnx)), str(tmp_path / "q.xml"), compress_to_fp16=False)
    assert "FakeQuantize" in (tmp_path / "q.xml").read_text()
    with pytest.raises(UnsupportedError, match=r"FakeQuantize.*precision='int8'"):
        hal.compile(tmp_path / "q.xml", "openvino:CPU", precision="fp32", cache=False)
    with pytest.raises(UnsupportedError, match="already quantized"):
        hal.compile(tmp_path / "q.xml", "openvino:CPU", precision="int8-dynamic", cache=False)
    exe = hal.compile(tmp_path / "q.xml", "openvino:CPU", precision="int8", calibration=[X8], cache=False)
    assert exe.info.precision == "int8" and exe.info.extra["int8_layer_types"]
    assert rel(first(exe(X8)), ov_direct(tmp_path / "q.xml", (X8,))) < 1e-6


def test_qdq_onnx_on_reference_is_int8(qdq_onnx):
    with pytest.raises(UnsupportedError, match=r"already quantized.*precision='int8'"):
        hal.compile(qdq_onnx, "cpu", precision="fp32", cache=False)
    exe = hal.compile(qdq_onnx, "cpu", precision="int8", calibration=[X8], cache=False)
    assert exe.info.precision == "int8"
    assert rel(first(exe(X8)), ort_unfused(qdq_onnx, X8)) < 1e-6
    with pytest.raises(InvalidInputError, match="float64.*float32"):
        hal.compile(qdq_onnx, "cpu", precision="int8", calibration=[X8.astype(np.float64)], cache=False)


@pytest.fixture(scope="module")
def int8_tflite(tmp_path_factory):
    """A full-int8 TFLite (TFLITE_BUILTINS_INT8, int8 input and output) from a tiny Keras model."""
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((8, 8, 3), batch_size=1)
    y = tf.keras.layers.Conv2D(8, 3, activation="relu")(inp)
    y = tf.keras.layers.Dense(10)(tf.keras.layers.Flatten()(y))
    conv = tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, y))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.standard_normal((1, 8, 8, 3)).astype(np.float32)]
                                           for _ in range(16))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = conv.convert()
    path = tmp_path_factory.mktemp("tfl") / "int8.tflite"
    path.write_bytes(data)
    return path


XI8 = np.random.default_rng(2).integers(-128, 128, (1, 8, 8, 3)).astype(np.int8)


def test_int8_tflite_on_openvino_is_int8(int8_tflite):
    pytest.importorskip("openvino")
    with pytest.raises(UnsupportedError, match=r"already quantized.*precision='int8'"):
        hal.compile(int8_tflite, "openvino:CPU", precision="fp32", cache=False)
    # calibration must be of the model's input dtype: float32 samples for int8 inputs are refused
    with pytest.raises(InvalidInputError, match="float32.*int8"):
        hal.compile(int8_tflite, "openvino:CPU", precision="int8",
                    calibration=[XI8.astype(np.float32)], cache=False)
    exe = hal.compile(int8_tflite, "openvino:CPU", precision="int8", calibration=[XI8], cache=False)
    assert exe.info.precision == "int8" and exe.info.extra["int8_layer_types"]
    assert not any("nncf" in s for s in exe.info.conversion_path)
    got, want = first(exe(XI8)), ov_direct(int8_tflite, (XI8,))
    assert np.abs(got.astype(np.int32) - want.astype(np.int32)).max() == 0


def litert_int8(path, q):
    """LiteRT's interpreter on an int8-I/O TFLite, int8 in and out as the model takes them."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], q)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_int8_tflite_on_edgetpu_matches_litert(int8_tflite):
    """The model's own dtypes, as on openvino (the I/O contract): int8 in and out, and
    calibration data of that dtype; options={'raw_io': False} asks hal for its float
    interface (hal quantizes with the model's own input scale)."""
    pytest.importorskip("ai_edge_litert")
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 3)).astype(np.float32)
    with pytest.raises(InvalidInputError, match="float32.*int8"):  # the model takes int8
        hal.compile(int8_tflite, "edgetpu:emulated", precision="int8", calibration=[x], cache=False)
    exe = hal.compile(int8_tflite, "edgetpu:emulated", precision="int8", calibration=[XI8], cache=False)
    assert any("calibration data not used" in n for n in exe.info.notes)
    assert [s.dtype for s in exe.info.inputs + exe.info.outputs] == ["int8", "int8"]
    assert np.array_equal(first(exe(XI8)), litert_int8(int8_tflite, XI8))
    floats = hal.compile(int8_tflite, "edgetpu:emulated", precision="int8",
                         options={"raw_io": False}, cache=False)
    assert np.abs(first(floats(x)) - litert_direct(int8_tflite, x)).max() <= 1e-6


def test_a_full_int8_tflite_compiles_as_int8_without_calibration(int8_tflite):
    """The core knows a TFLite with int8 activations is already int8, as it knows a QDQ
    ONNX: int8 needs no calibration data and fp32 is refused before any backend runs."""
    pytest.importorskip("ai_edge_litert")
    for target, mod in (("edgetpu:emulated", "ai_edge_litert"), ("openvino:CPU", "openvino")):
        if not _has(mod):
            continue
        exe = hal.compile(int8_tflite, target, precision="int8", cache=False)
        assert exe.info.precision == "int8", target
        assert [s.dtype for s in exe.info.inputs] == ["int8"], target  # the model's own
        want = litert_int8(int8_tflite, XI8) if target == "edgetpu:emulated" else \
            ov_direct(int8_tflite, (XI8,))
        assert np.array_equal(first(exe(XI8)), want), target
        # OpenVINO's FakeQuantize arithmetic is not LiteRT's: the executable says so
        assert any("not TFLite's integer kernels" in n for n in exe.info.notes) == \
            (target == "openvino:CPU"), (target, exe.info.notes)
        with pytest.raises(UnsupportedError, match=r"already quantized \(\d+ int8 activation"):
            hal.compile(int8_tflite, target, precision="fp32", cache=False)


# --- 4. an IR saved with ov.save_model's defaults (f16-stored weights) -------------------
def test_ir_with_f16_weights_runs_fp32(qdq_onnx, tmp_path):
    ov = pytest.importorskip("openvino")
    m = ov.Core().read_model(str(qdq_onnx.parent / "fp32.onnx"))
    ov.save_model(m, str(tmp_path / "m.xml"))  # compress_to_fp16=True by default
    exe = hal.compile(tmp_path / "m.xml", "openvino:CPU", precision="fp32", cache=False)
    assert exe.info.precision == "fp32"
    assert any("weights in f16" in n and "computes in f32" in n for n in exe.info.notes)
    assert rel(first(exe(X8)), ov_direct(tmp_path / "m.xml", (X8,))) < 1e-6


def test_ir_with_an_f16_embedding_table_runs_fp32(tmp_path):
    """The CPU plugin gathers rows of an f16-stored table straight into f32 (a Gather
    whose kernel is ref_any_f16): nothing is computed at f16, so fp32 is honoured."""
    ov = pytest.importorskip("openvino")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    table = numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "table")
    w = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])],
        "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 3])], [table, w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              tmp_path / "emb.onnx")
    ov.save_model(ov.Core().read_model(str(tmp_path / "emb.onnx")), str(tmp_path / "emb.xml"))
    ids = rng.integers(0, 50, (1, 6)).astype(np.int64)
    exe = hal.compile(tmp_path / "emb.xml", "openvino:CPU", precision="fp32", cache=False)
    assert exe.info.precision == "fp32"
    assert rel(first(exe(ids)), ov_direct(tmp_path / "emb.xml", (ids,))) < 1e-6


# --- 5. files and models that raised raw exceptions ---------------------------------------
def test_onnx_initializer_not_a_graph_input(tmp_path):
    """IR 3 wanted every initializer listed as an input; onnx.checker still does, the
    runtimes do not."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)], ir_version=3),
              tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    targets = ["cpu"] + (["openvino:CPU"] if _has("openvino") else [])
    for target in targets:
        assert rel(first(hal.compile(tmp_path / "m.onnx", target, cache=False)(x)), want) < 1e-6, target


def test_keras_lambda_at_bf16_on_tpu():
    pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    y = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    y = keras.layers.Dense(4)(keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(y)))
    m = keras.Model(inp, y)
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 3)).astype(np.float32)
    exe = hal.compile(m, "tpu:xla-cpu", precision="bf16", example_input=(x,), cache=False)
    assert exe.info.precision == "bf16"
    want = np.asarray(m(x, training=False))
    err = rel(first(exe(x)), want)
    assert 1e-5 < err < 5e-2  # bf16 arithmetic: close to Keras at fp32, and not equal to it


def test_gru_on_edgetpu_names_the_gru_and_a_fix():
    pytest.importorskip("litert_torch")

    class G(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g, self.h = torch.nn.GRU(8, 16, batch_first=True), torch.nn.Linear(16, 4)

        def forward(self, x):
            y, _ = self.g(x)
            return self.h(y[:, -1])

    torch.manual_seed(0)
    m = G().eval()
    x = np.random.default_rng(0).standard_normal((1, 5, 8)).astype(np.float32)
    m(torch.from_numpy(x))  # PyTorch runs it
    with pytest.raises(CompileError) as e:
        hal.compile(m, "edgetpu:emulated", precision="int8", example_input=(x,), calibration=[x],
                    cache=False)
    assert "GRU" in e.value.what and "list index" not in e.value.fix and "h0" in e.value.fix


@pytest.mark.parametrize("target,which", [("openvino:CPU", "qdq"), ("reference:cpu", "qdq"),
                                          ("openvino:CPU", "tflite"), ("edgetpu:emulated", "tflite")])
def test_prequantized_needs_no_calibration_in_the_backend(target, which, request):
    """Each backend compiles a pre-quantized model at int8 with no calibration data (the
    core's 'int8 needs calibration' gate sits before the backend: called here directly)."""
    from hal import formats
    from hal.plugin import CompileOptions, registry

    backend, _, dev_id = target.partition(":")
    if not _has({"openvino": "openvino", "edgetpu": "ai_edge_litert", "reference": "onnx"}[backend]):
        pytest.skip(f"{backend}'s runtime is not installed")
    path = request.getfixturevalue("qdq_onnx" if which == "qdq" else "int8_tflite")
    reg = registry()
    b = reg.backends[backend]
    dev = next(d for d in b.probe() if d.id == dev_id)
    src = formats.identify(path, reg.formats)
    opts = CompileOptions(precision="int8")
    with formats.scratch_scope():
        model = formats.convert(src, formats.plan(src.format, b.formats_for(dev, "int8"),
                                                  reg.converters), opts)
        exe = b.compile(model, dev, opts)
    assert exe.info.precision == "int8"
    x = X8 if which == "qdq" else XI8  # a TFLite's own int8 input, on both backends
    got = first(exe.infer([x])).astype(np.float64)
    want = {"openvino": lambda: ov_direct(path, (x,)), "reference": lambda: ort_unfused(path, x),
            "edgetpu": lambda: litert_int8(path, x)}[backend]()
    assert np.abs(got - want).max() <= 1e-6


def test_a_prequantized_model_compiles_as_int8_without_calibration(qdq_onnx, tmp_path):
    """Through the front door: the core knows a QDQ ONNX is already int8 (Format.quantized),
    so int8 needs no calibration data and every other label is refused, on every backend."""
    for target in [t for t, mod in (("cpu", "onnx"), ("openvino:CPU", "openvino")) if _has(mod)]:
        exe = hal.compile(qdq_onnx, target, precision="int8", cache=False)
        assert exe.info.precision == "int8"
        if target == "openvino:CPU":
            assert rel(first(exe(X8)), ov_direct(qdq_onnx, (X8,))) < 1e-6
        for p in ("fp32", "int8-dynamic"):
            with pytest.raises(UnsupportedError, match="already quantized"):
                hal.compile(qdq_onnx, target, precision=p, cache=False)
    from test_security import cli

    p = cli("compile", str(qdq_onnx), "-t", "cpu", "-p", "int8", "-o", str(tmp_path / "q.hal"))
    assert p.returncode == 0 and (tmp_path / "q.hal").exists(), p.stderr
