"""Every built-in backend (and the example plugin) reports where its ops run, read from
its runtime's own record (#25): a small torch CNN compiled for each available device
here reports ops, on the units that runtime names; the Edge TPU emulation names exactly
the ops the compiler's rules leave on the CPU. Devices and runtimes that are absent are
skipped with the reason."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hal
from hal.plugin import CompileOptions, Model, Placement

torch = pytest.importorskip("torch", reason="torch (the test model's framework) is not installed")

PLUGIN = Path(__file__).parent / "plugins" / "hal-example-backend" / "hal_example_backend"
X = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
CALIB = [np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)
         for i in range(1, 5)]


@pytest.fixture(scope="module")
def cnn():
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(16 * 4 * 4, 10)).eval()


_DEVICES = {d.target: d for d in hal.devices()}


def _device(target: str):
    d = _DEVICES.get(target)
    if d is None:
        pytest.skip(f"{target} is not a device here (its backend is not installed)")
    if not d.available:
        pytest.skip(f"{target}: {d.reason}")
    return d


_BUILT: dict[str, hal.Executable] = {}


def _compiled(target: str, cnn) -> hal.Executable:
    _device(target)
    if target not in _BUILT:
        int8 = target.startswith("edgetpu")
        _BUILT[target] = hal.compile(cnn, target=target, precision="int8" if int8 else "fp32",
                                     example_input=(X,), calibration=CALIB if int8 else None,
                                     cache=False)
    return _BUILT[target]


def _check(exe: hal.Executable, units: set[str], emulated: bool) -> Placement:
    p = exe.placement
    assert isinstance(p, Placement) and p is exe.runner.placement()  # computed once, kept
    assert len(p.ops) > 0 and p.source
    assert {o.unit for o in p.ops} == units, (p.source, {o.unit for o in p.ops})
    assert p.emulated is emulated
    assert exe.info.placement == p.summary()
    return p


# --- reference: torch and onnx.reference on the host CPU -----------------------------------
def test_reference_torch(cnn):
    exe = _compiled("reference:cpu", cnn)
    p = _check(exe, {"cpu"}, emulated=False)
    graph = [n for n in exe.runner.program.graph.nodes if n.op == "call_function"]
    assert [o.name for o in p.ops] == [n.name for n in graph]  # every op of the exported graph
    assert {str(n.meta["val"].device) for n in graph} == {"cpu"}
    assert not p.host_ops and "aten.conv2d.default" in {o.op for o in p.ops}


def _onnx_cnn():
    onnx = pytest.importorskip("onnx", reason="onnx is not installed")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W"),
            numpy_helper.from_array(np.zeros(8, np.float32), "B"),
            numpy_helper.from_array(rng.standard_normal((10, 512)).astype(np.float32), "W2")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W2"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_reference_onnx(precision, tmp_path):
    _device("reference:cpu")
    pytest.importorskip("onnxruntime", reason="the fp64 ONNX oracle cross-checks on onnxruntime")
    model = _onnx_cnn()
    path = tmp_path / "cnn.onnx"
    path.write_bytes(model.SerializeToString())
    exe = hal.compile(str(path), target="reference:cpu", precision=precision, cache=False)
    p = _check(exe, {"CPU"}, emulated=False)
    assert [(o.name, o.op) for o in p.ops] == [(n.name, n.op_type) for n in model.graph.node]
    assert all(o.on_device for o in p.ops)


# --- OpenVINO: the runtime model of each compiled model -----------------------------------
@pytest.mark.parametrize("target", ["openvino:CPU", "openvino:AUTO", "openvino:GPU", "openvino:NPU"])
def test_openvino(target, cnn):
    exe = _compiled(target, cnn)
    compiled = exe.runner.compiled
    execs = {str(d) for d in compiled.get_property("EXECUTION_DEVICES")}
    p = _check(exe, execs, emulated=False)
    layers = [op.get_friendly_name() for op in compiled.get_runtime_model().get_ordered_ops()
              if op.get_rt_info()["layerType"].astype(str) not in ("Input", "Output", "Const")]
    assert [o.name for o in p.ops] == layers
    assert all(o.on_device for o in p.ops)  # one plugin runs the whole graph
    assert any("runtime precision" in n for n in p.notes)


# --- Edge TPU emulation: the compiler's documented rules ----------------------------------
def test_edgetpu_full_int8_cnn_has_no_host_ops(cnn):
    exe = _compiled("edgetpu:emulated", cnn)
    p = _check(exe, {"EdgeTPU"}, emulated=True)
    # one entry per op of the int8 TFLite LiteRT runs (nodes past them are its CPU delegate's)
    it = exe.runner._it
    n = len(p.ops)
    assert [o.op for o in p.ops] == [d["op_name"] for d in it._get_ops_details()[:n]]
    assert all(d["op_name"] == "DELEGATE" for d in it._get_ops_details()[n:])
    assert p.host_ops == []


def _float_op_tflite(int8_io: bool = True) -> bytes:
    """conv → max-pool → sin → matmul, int8 where TFLite has an int8 kernel; SIN has none,
    so it stays float between a DEQUANTIZE and a QUANTIZE. ``int8_io=False`` keeps
    TFLiteConverter's default float input and output (a QUANTIZE first, a DEQUANTIZE last)."""
    tf = pytest.importorskip("tensorflow", reason="TFLiteConverter builds the float-op model")
    rng = np.random.default_rng(0)
    w = tf.constant(rng.standard_normal((3, 3, 3, 8)).astype(np.float32) * 0.3)
    w2 = tf.constant(rng.standard_normal((8 * 8 * 8, 10)).astype(np.float32) * 0.1)

    @tf.function(input_signature=[tf.TensorSpec([1, 16, 16, 3], tf.float32)])
    def f(x):
        y = tf.nn.max_pool2d(tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME")), 2, 2, "VALID")
        return tf.matmul(tf.reshape(tf.sin(y), [1, -1]), w2)

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.standard_normal((1, 16, 16, 3)).astype(np.float32)]
                                           for _ in range(8))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    if int8_io:
        conv.inference_input_type = conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def _left_on_cpu(data: bytes) -> list[tuple[str, str]]:
    """(output tensor, op) the compiler would leave on the CPU, worked out here from
    LiteRT's own op and tensor lists: from the first op that is not an Edge TPU op or
    touches a float tensor, every op (the compiler partitions the graph once)."""
    from ai_edge_litert.interpreter import Interpreter

    from hal_backends.edgetpu.graph import EDGETPU_OPS

    it = Interpreter(model_content=data)
    dtype = {d["index"]: np.dtype(d["dtype"]) for d in it.get_tensor_details()}
    name = {d["index"]: d["name"] for d in it.get_tensor_details()}
    ops = [d for d in it._get_ops_details() if d["op_name"] != "DELEGATE"]
    first = next(i for i, d in enumerate(ops) if d["op_name"] not in EDGETPU_OPS or any(
        dtype[t].kind == "f" for t in list(d["inputs"]) + list(d["outputs"]) if t >= 0))
    return [(name[d["outputs"][0]], d["op_name"]) for d in ops[first:]]


def test_edgetpu_float_op_model_names_the_ops_left_on_the_cpu():
    _device("edgetpu:emulated")
    data = _float_op_tflite()  # pre-quantized, int8 I/O: it needs no calibration data
    with pytest.raises(hal.UnsupportedError, match="SIN"):
        hal.compile(data, target="edgetpu:emulated", precision="int8", cache=False)
    exe = hal.compile(data, target="edgetpu:emulated", precision="int8", cache=False,
                      allow_host_ops=True)
    p = _check(exe, {"EdgeTPU", "CPU"}, emulated=True)
    expected = _left_on_cpu(data)
    assert [op for _, op in expected] == ["DEQUANTIZE", "SIN", "QUANTIZE", "RESHAPE",
                                          "FULLY_CONNECTED"]
    assert [(o.name, o.op) for o in p.host_ops] == expected
    assert [o.op for o in p.ops if o.on_device] == ["CONV_2D", "MAX_POOL_2D"]
    assert all(o.unit == "CPU" for o in p.host_ops)
    assert exe.info.placement["host_ops"] == 5
    assert any(n.startswith(f"allow_host_ops: 5 of {len(p.ops)} ops") for n in exe.info.notes)


def test_edgetpu_float_io_conversions_do_not_cut_but_a_mid_graph_one_does():
    """The same model with float input and output: its edge QUANTIZE and DEQUANTIZE run on
    the host as I/O conversions (listed, not refused, not cutting the partition); the
    DEQUANTIZE/QUANTIZE around SIN inside the graph are host fallback as before."""
    _device("edgetpu:emulated")
    data = _float_op_tflite(int8_io=False)
    x = np.random.default_rng(1).standard_normal((1, 16, 16, 3)).astype(np.float32)
    with pytest.raises(hal.UnsupportedError, match="SIN") as e:
        hal.compile(data, target="edgetpu:emulated", precision="int8", cache=False)
    assert "2 float tensor(s)" in e.value.what  # SIN's input and output: not the model's I/O
    exe = hal.compile(data, target="edgetpu:emulated", precision="int8", cache=False,
                      allow_host_ops=True)
    p = _check(exe, {"EdgeTPU", "CPU"}, emulated=True)
    assert [(o.op, o.unit, o.on_device, o.io_conversion) for o in p.ops] == [
        ("QUANTIZE", "CPU", False, True), ("CONV_2D", "EdgeTPU", True, False),
        ("MAX_POOL_2D", "EdgeTPU", True, False), ("DEQUANTIZE", "CPU", False, False),
        ("SIN", "CPU", False, False), ("QUANTIZE", "CPU", False, False),
        ("RESHAPE", "CPU", False, False), ("FULLY_CONNECTED", "CPU", False, False),
        ("DEQUANTIZE", "CPU", False, True)]
    assert [o.op for o in p.io_ops] == ["QUANTIZE", "DEQUANTIZE"]
    assert {k: exe.info.placement[k] for k in ("device_ops", "host_ops", "io_ops")} == {
        "device_ops": 2, "host_ops": 5, "io_ops": 2}
    assert any(n.startswith("allow_host_ops: 5 of 9 ops") for n in exe.info.notes)
    assert [s.dtype for s in exe.info.inputs + exe.info.outputs] == ["float32", "float32"]
    assert exe(x).dtype == np.float32


# --- tpu: the XLA program's HLO -----------------------------------------------------------
def test_tpu_xla_cpu(cnn):
    exe = _compiled("tpu:xla-cpu", cnn)
    p = _check(exe, {"XLA:CPU"}, emulated=True)
    hlo = exe.runner.program.ir(exe.runner.buckets.sizes[0], "hlo")
    assert all(f"{o.name} = " in hlo for o in p.ops)
    assert {"convolution", "dot"} <= {o.op for o in p.ops} and not p.host_ops


def test_tpu_hlo_host_transfers_and_callbacks_are_host_ops():
    """The HLO reader on text with what would run on the host (no model here has any)."""
    from hal_backends.tpu.placement import hlo_ops

    hlo = """HloModule m
%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]{0}) parameter(0)
  %i = s32[] get-tuple-element((s32[], f32[4]{0}) %p), index=0
  %x = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %p), index=1
  %cb = f32[4]{0} custom-call(f32[4]{0} %x), custom_call_target="xla_ffi_python_cpu_callback"
  ROOT %t = (s32[], f32[4]{0}) tuple(s32[] %i, f32[4]{0} %cb)
}
%cond (q: (s32[], f32[4])) -> pred[] {
  %q = (s32[], f32[4]{0}) parameter(0)
  %j = s32[] get-tuple-element((s32[], f32[4]{0}) %q), index=0
  %k = s32[] constant(3)
  ROOT %lt = pred[] compare(s32[] %j, s32[] %k), direction=LT
}
%neg (a.1: f32[4]) -> f32[4] {
  %a.1 = f32[4]{0} parameter(0)
  ROOT %n = f32[4]{0} negate(f32[4]{0} %a.1)
}
ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %tok = token[] after-all()
  %send = (f32[4]{0}, u32[], token[]) send(f32[4]{0} %a, token[] %tok), channel_id=1, is_host_transfer=true
  %send-done = token[] send-done((f32[4]{0}, u32[], token[]) %send), channel_id=1, is_host_transfer=true
  %c = f32[4]{0} call(f32[4]{0} %a), to_apply=%neg
  %z = s32[] constant(0)
  %init = (s32[], f32[4]{0}) tuple(s32[] %z, f32[4]{0} %c)
  %w = (s32[], f32[4]{0}) while((s32[], f32[4]{0}) %init), condition=%cond, body=%body
  %r = f32[4]{0} get-tuple-element((s32[], f32[4]{0}) %w), index=1
  ROOT %out = f32[4]{0} add(f32[4]{0} %r, f32[4]{0} %a)
}
"""
    assert hlo_ops(hlo) == [
        ("send", "send", True), ("send-done", "send-done", True), ("n", "negate", False),
        ("w", "while", False), ("lt", "compare", False),
        ("cb", "custom-call xla_ffi_python_cpu_callback", True), ("out", "add", False)]


# --- cuda: the graph each GPU runs (a GPU is needed; the logic is checked on the CPU) ------
def test_cuda(cnn):
    exe = _compiled("cuda:0", cnn)
    p = _check(exe, {"cuda:0"}, emulated=False)
    assert not p.host_ops and "aten.conv2d.default" in {o.op for o in p.ops}


def test_cuda_placement_logic_on_the_meta_device():
    """The CUDA reader, without a GPU: a program moved to the ``meta`` device as
    move_to_device_pass moves it to a GPU, and dynamo's record of a compiled module."""
    from types import SimpleNamespace

    from hal_backends.cuda.placement import dynamo_record, graph_placement
    from hal_backends.cuda.runtime import runnable

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(x).relu())

    gm = runnable(torch.export.export(Net().eval(), (torch.zeros(2, 4),)), None,
                  torch.device("meta"))  # as each GPU's replica gets it
    ops, _ = graph_placement([SimpleNamespace(module=gm, device=torch.device("meta"))])
    assert [o.op for o in ops] == ["aten.linear.default", "aten.relu.default", "aten.linear.default"]
    assert {o.unit for o in ops} == {"meta"} and all(o.on_device for o in ops)
    ops, _ = graph_placement([SimpleNamespace(module=gm, device=torch.device("cpu"))])
    assert not any(o.on_device for o in ops)  # an op off the replica's device is a host op
    assert graph_placement([SimpleNamespace(module=Net(), device=torch.device("cpu"))]) is None

    class Broken(Net):
        def forward(self, x):
            y = self.a(x)
            print(end="")  # dynamo cannot trace print: a graph break
            return self.b(y)

    m = Broken().eval()
    torch.compile(m, backend="eager")(torch.zeros(2, 4))
    assert dynamo_record(m) == (1, 2, 1)  # one cache entry, two graphs, one break


# --- the example plugin: ONNX Runtime's profile -------------------------------------------
def _example_backend():
    pytest.importorskip("onnxruntime", reason="the example plugin runs on onnxruntime")
    if "hal_example_backend" not in sys.modules:  # imported, not installed: no entry point here
        spec = importlib.util.spec_from_file_location(
            "hal_example_backend", PLUGIN / "__init__.py", submodule_search_locations=[str(PLUGIN)])
        mod = importlib.util.module_from_spec(spec)
        sys.modules["hal_example_backend"] = mod
        spec.loader.exec_module(mod)
    from hal_example_backend.backend import ExampleBackend

    return ExampleBackend()


def test_example_plugin_onnxruntime_profile():
    import onnxruntime as ort

    b = _example_backend()
    runner = b.compile(Model("onnx", _onnx_cnn()), b.probe()[0], CompileOptions())
    p = runner.placement()
    assert p is runner.placement()
    assert len(p.ops) > 0 and {o.unit for o in p.ops} == {"CPUExecutionProvider"}
    assert all(o.on_device for o in p.ops) and not p.emulated
    # ORT's fused graph: the Conv it ran carries the Relu; the Gemm keeps its node name
    assert "Conv" in {o.op for o in p.ops} and ("fc", "Gemm") in {(o.name, o.op) for o in p.ops}
    assert set(runner.sess.get_providers()) == {"CPUExecutionProvider"} and ort.get_device() == "CPU"


# --- the record is read once, whatever the threads ---------------------------------------
def test_placement_is_computed_once_across_threads():
    from hal_backends.placement_once import once

    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.05)
        return Placement([], "test")

    class R:
        pass

    r = R()
    got = []
    threads = [threading.Thread(target=lambda: got.append(once(r, compute))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and all(g is got[0] for g in got)
