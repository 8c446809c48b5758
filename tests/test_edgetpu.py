"""The Coral Edge TPU backend, on its emulated device (the int8 TFLite on the real
LiteRT CPU interpreter) and, where hardware matters, on the real failure paths
of libedgetpu being absent. No Edge TPU is attached here; see
docs/backends/edgetpu.md for what that leaves unverified."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys

import numpy as np
import pytest

import hal
from hal import DeviceUnavailableError, UnsupportedError, UsageError

pytest.importorskip("ai_edge_litert",
                    reason="ai-edge-litert (the Edge TPU backend's runtime) is not installed")

from hal_backends.edgetpu import backend as etb  # noqa: E402
from hal_backends.edgetpu import compiler, devices, graph  # noqa: E402
from hal_backends.edgetpu.executable import Artifacts, EdgeTpuExecutable, EdgeTpuOptions  # noqa: E402

EMU = "edgetpu:emulated"


def _hardware_present() -> bool:
    return bool(devices.discover().found)


needs_no_edgetpu = pytest.mark.skipif(_hardware_present(), reason="a real Edge TPU is attached here")


@pytest.fixture(scope="module")
def calib():
    rng = np.random.default_rng(1)
    return [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(24)]


@pytest.fixture(scope="module")
def torch_exe(small_cnn, calib):
    pytest.importorskip("litert_torch", reason="litert-torch (torch → TFLite) is not installed")
    return hal.compile(small_cnn, EMU, precision="int8", calibration=calib, cache=False)


# --- plugin and devices ---------------------------------------------------------------
def test_plugin_import_and_probe_import_no_framework():
    code = ("import sys, hal, hal_backends.edgetpu; hal.devices(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'tensorflow', 'keras', "
            "'litert_torch', 'jax', 'onnx', 'openvino'}))")
    env = dict(os.environ, HAL_PLUGINS="edgetpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_devices_list_emulator_and_absent_hardware_with_reason():
    devs = {d.id: d for d in hal.devices() if d.backend == "edgetpu"}
    emu = devs["emulated"]
    assert emu.kind == "emulated" and emu.available and emu.precisions == ("int8",)
    hw = [d for d in devs.values() if d.kind == "hardware"]
    assert hw, "hardware devices are listed even when absent"
    if not any(d.available for d in hw):
        assert all(d.reason for d in hw)


@needs_no_edgetpu
def test_bare_target_never_picks_the_emulator(small_cnn, x16):
    with pytest.raises(DeviceUnavailableError) as e:
        hal.compile(small_cnn, "edgetpu", precision="int8", calibration=[x16], cache=False)
    assert "edgetpu:emulated" in str(e.value) and "libedgetpu" in str(e.value)


def test_float_precision_refused(small_cnn, x16):
    for p in ("fp32", "fp16", "int8-dynamic"):
        with pytest.raises(UnsupportedError, match="only fully int8"):
            hal.compile(small_cnn, EMU, precision=p, example_input=(x16,), cache=False)


def test_unknown_option_refused(small_cnn, x16):
    with pytest.raises(UsageError, match="has no option"):
        hal.compile(small_cnn, EMU, precision="int8", calibration=[x16], options={"rawio": True}, cache=False)


def test_calibration_of_another_shape_refused(small_cnn, x16):
    bad = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(UsageError, match="calibration sample 1"):
        hal.compile(small_cnn, EMU, precision="int8", example_input=(x16,), calibration=[x16, bad], cache=False)


# --- torch → full int8 → emulated Edge TPU --------------------------------------------
def test_torch_cnn_int8_matches_float_model(torch_exe, small_cnn):
    import torch

    info = torch_exe.info
    assert info.precision == "int8" and info.device_kind == "emulated"
    assert [s.dtype for s in info.inputs] == ["float32"] and info.inputs[0].shape == (1, 3, 16, 16)
    assert any("PT2E" in step for step in info.conversion_path)
    mapping = info.extra["edgetpu_mapping"]
    assert mapping["fully_int8"] and mapping["ops_on_cpu"] == 0
    assert mapping["input_types"] == ["INT8"] and mapping["output_types"] == ["INT8"]
    if compiler.path() is None:
        assert any("compile step was not done" in n for n in info.notes)
    xs = np.random.default_rng(7).standard_normal((32, 1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = np.concatenate([small_cnn(torch.from_numpy(x)).numpy() for x in xs])
    got = np.concatenate([torch_exe(x) for x in xs])
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.9
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()


def test_raw_int8_io(torch_exe, x16, calib):
    # raw_io takes int8 in: calibration samples are checked against that dtype (and not used)
    with pytest.raises(hal.InvalidInputError, match="float32.*int8"):
        hal.compile(torch_exe.runner.files.int8, EMU, precision="int8", calibration=calib,
                    options={"raw_io": True}, cache=False)
    s, z = torch_exe.runner._it.get_input_details()[0]["quantization"]
    q_calib = [np.clip(np.rint(c / s) + z, -128, 127).astype(np.int8) for c in calib[:2]]
    raw = hal.compile(torch_exe.runner.files.int8, EMU, precision="int8", calibration=q_calib,
                      options={"raw_io": True}, cache=False)
    assert [s.dtype for s in raw.info.inputs + raw.info.outputs] == ["int8", "int8"]
    d_in = raw.runner._it.get_input_details()[0]
    d_out = raw.runner._it.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = d_in["quantization"], d_out["quantization"]
    q = np.clip(np.rint(x16 / s_in) + z_in, -128, 127).astype(np.int8)
    out = raw(q)
    assert out.dtype == np.int8
    np.testing.assert_allclose((out.astype(np.float32) - z_out) * s_out, torch_exe(x16),
                               rtol=0, atol=1e-6)
    with pytest.raises(hal.InvalidInputError, match="int8"):
        raw(x16)


def test_a_given_tflite_takes_its_own_dtypes(torch_exe, x16, calib):
    """The I/O contract: a model's own dtypes hold on every backend. A given int8-I/O TFLite
    takes and returns int8 by default, as on openvino; raw_io=False asks hal to quantize
    around the call (float32, as the torch model it came from). A model hal quantizes itself
    keeps its float32 interface (torch_exe)."""
    data = torch_exe.runner.files.int8
    own = hal.compile(data, EMU, precision="int8", cache=False)  # pre-quantized: no calibration
    assert [s.dtype for s in own.info.inputs + own.info.outputs] == ["int8", "int8"]
    assert [s.dtype for s in torch_exe.info.inputs + torch_exe.info.outputs] == ["float32"] * 2
    with pytest.raises(hal.InvalidInputError, match="float32.*int8"):  # calibration of its dtype
        hal.compile(data, EMU, precision="int8", calibration=calib[:2], cache=False)
    floats = hal.compile(data, EMU, precision="int8", calibration=calib[:2],
                         options={"raw_io": False}, cache=False)
    assert [s.dtype for s in floats.info.inputs + floats.info.outputs] == ["float32", "float32"]
    np.testing.assert_array_equal(floats(x16), torch_exe(x16))
    (s_in, z_in), (s_out, z_out) = (own.runner._it.get_input_details()[0]["quantization"],
                                    own.runner._it.get_output_details()[0]["quantization"])
    q = np.clip(np.rint(x16 / s_in) + z_in, -128, 127).astype(np.int8)
    np.testing.assert_array_equal((own(q).astype(np.float32) - z_out) * s_out, floats(x16))


def test_save_load_roundtrip(torch_exe, x16, tmp_path):
    path = torch_exe.save(tmp_path / "cnn.hal")
    back = hal.load(path)
    assert back.info.target == EMU and back.info.precision == "int8"
    np.testing.assert_array_equal(back(x16), torch_exe(x16))
    assert back.info.extra["edgetpu_mapping"]["ops_on_edgetpu"] > 0


def test_profile_reports_latency_and_what_is_unavailable(torch_exe, x16):
    p = torch_exe.profile(x16, iterations=20, warmup=2)
    assert p.latency_ms["p50"] > 0 and p.device_kind == "emulated"
    assert "per-op profiler" in p.unavailable["layers"]
    assert "edgetpu_temperature_c" in p.unavailable


# --- TensorFlow / Keras --------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_model():
    pytest.importorskip("tensorflow", reason="tensorflow (TFLiteConverter) is not installed")
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(5, activation="softmax")(x))


def test_keras_full_int8_via_tflite_converter(keras_model):
    rng = np.random.default_rng(2)
    calib = [rng.standard_normal((4, 8, 8, 3)).astype(np.float32) for _ in range(4)]
    exe = hal.compile(keras_model, EMU, precision="int8", calibration=calib, cache=False)
    assert any("TFLITE_BUILTINS_INT8" in s for s in exe.info.conversion_path)
    assert exe.info.inputs[0].shape == (1, 8, 8, 3)  # frozen batch: the Edge TPU needs static shapes
    g = graph.read_graph(exe.runner.files.int8)
    assert g.io_types() == (["INT8"], ["INT8"]) and not g.float_tensors()
    xs = rng.standard_normal((16, 1, 8, 8, 3)).astype(np.float32)
    ref = np.concatenate([keras_model(x).numpy() for x in xs])
    got = np.concatenate([exe(x) for x in xs])
    assert np.abs(got - ref).max() < 0.03


def test_float_tflite_refused_and_its_float_tensors_reported(keras_model):
    import tensorflow as tf

    float_tflite = tf.lite.TFLiteConverter.from_keras_model(keras_model).convert()
    report = graph.mapping_report(float_tflite)
    assert not report.fully_int8 and report.on_tpu == 0
    assert any("FLOAT32" in t for t in report.float_tensors)
    assert report.dynamic_tensors  # Keras leaves the batch dimension dynamic
    assert all(any("float32" in r for r in o.reasons) for o in report.cpu_ops())
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 3)).astype(np.float32)
    with pytest.raises(UnsupportedError, match="only full-int8") as e:
        hal.compile(float_tflite, EMU, precision="int8", calibration=[x], cache=False)
    assert "allow_host_ops=True" in str(e.value) and "CONV_2D" in str(e.value)
    exe = hal.compile(float_tflite, EMU, precision="int8", calibration=[x], cache=False,
                      allow_host_ops=True)
    assert any("not fully int8" in n for n in exe.info.notes) and exe.info.allow_host_ops
    np.testing.assert_allclose(exe(x), keras_model(x).numpy(), atol=1e-5)
    # the old backend-specific switch is a deprecated alias of allow_host_ops
    old = hal.compile(float_tflite, EMU, precision="int8", calibration=[x], cache=False,
                      options={"allow_float_ops": True})
    assert old.info.allow_host_ops and any("deprecated" in n for n in old.info.notes)


def _full_int8_tflite(keras_model, int8_io: bool) -> bytes:
    """TFLiteConverter full-int8 (TFLITE_BUILTINS_INT8) at batch 1; without ``int8_io`` the
    converter's default float input and output (a QUANTIZE first, a DEQUANTIZE last)."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    conv = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf.function(keras_model).get_concrete_function(tf.TensorSpec((1, 8, 8, 3), tf.float32))])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.standard_normal((1, 8, 8, 3)).astype(np.float32)]
                                           for _ in range(16))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        conv.inference_input_type = conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def _litert(data: bytes, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


def test_float_io_full_int8_tflite_runs_whole_on_the_edge_tpu(keras_model, tmp_path):
    """TFLiteConverter's default float I/O around a full-int8 graph: edgetpu_compiler maps
    every op but the edge QUANTIZE and DEQUANTIZE, which convert the model's own float I/O
    on the host as hal does for an int8-I/O model. So it compiles without allow_host_ops,
    takes and returns float32 as the model does, and answers as LiteRT's own run."""
    data = _full_int8_tflite(keras_model, int8_io=False)
    report = graph.mapping_report(data)
    assert report.fully_int8 and report.float_tensors == [] and len(report.io_float_tensors) == 2
    assert [(o.op, o.io_conversion) for o in report.io_ops()] == [("QUANTIZE", True),
                                                                   ("DEQUANTIZE", True)]
    assert report.on_cpu == 0 and report.on_tpu == len(report.ops) - 2
    exe = hal.compile(data, EMU, precision="int8", cache=False)
    assert not exe.info.allow_host_ops
    assert [s.dtype for s in exe.info.inputs + exe.info.outputs] == ["float32", "float32"]
    p = exe.placement
    assert p.host_ops == [] and [o.op for o in p.io_ops] == ["QUANTIZE", "DEQUANTIZE"]
    assert all(not o.on_device and o.unit == "CPU" for o in p.io_ops)
    assert all(o.on_device for o in p.ops if not o.io_conversion)
    assert exe.info.placement["io_ops"] == 2 and exe.info.placement["host_ops"] == 0
    for seed in range(4):
        x = np.random.default_rng(seed).standard_normal((1, 8, 8, 3)).astype(np.float32)
        got = exe(x)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, _litert(data, x))
    back = hal.load(exe.save(tmp_path / "fio.hal"))  # load checks it the same way
    assert back.info.placement == exe.info.placement


# --- models compiled by edgetpu_compiler, runtime versions, delegates ----------------
def _edgetpu_compiled_tflite(min_runtime: int, compiler_version: str) -> bytes:
    """A TFLite graph shaped like edgetpu_compiler's output: one ``edgetpu-custom-op``
    whose flexbuffer options hold (key "4") a DarwiNN ``Package`` with the
    runtime it needs, per libedgetpu's custom_op_data.cc and executable.fbs.
    Built here because no edgetpu_compiler is installed; the executable inside
    is empty."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb
    from flatbuffers import flexbuffers

    b = flatbuffers.Builder(64)
    cv = b.CreateString(compiler_version)
    b.StartObject(9)
    b.PrependInt32Slot(0, min_runtime, 0)
    b.PrependUOffsetTRelativeSlot(4, cv, 0)
    b.Finish(b.EndObject(), file_identifier=b"DWN1")
    package = bytes(b.Output())
    assert max(package) < 0x80  # so a flexbuffer string holds it byte for byte, as libedgetpu writes it
    options = flexbuffers.Dumps({"1": 1, "4": package.decode("ascii"), "5": 0})

    def tensor(name: str) -> fb.TensorT:
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, [1, 4], fb.TensorType.INT8, 0
        t.quantization = fb.QuantizationParametersT()
        t.quantization.scale, t.quantization.zeroPoint = [0.1], [0]
        return t

    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.CUSTOM
    code.customCode = graph.EDGETPU_CUSTOM_OP
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs, op.customOptions = 0, [0], [1], list(options)
    sg = fb.SubGraphT()
    sg.tensors, sg.operators, sg.inputs, sg.outputs = [tensor("in"), tensor("out")], [op], [0], [1]
    m = fb.ModelT()
    m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, [code], [sg], [fb.BufferT()]
    mb = flatbuffers.Builder(256)
    mb.Finish(m.Pack(mb), file_identifier=b"TFL3")
    return bytes(mb.Output())


def test_compiled_model_version_is_read_and_checked():
    data = _edgetpu_compiled_tflite(14, "16.0.384591198")
    g = graph.read_graph(data)
    assert [o.name for o in g.ops] == [graph.EDGETPU_CUSTOM_OP]
    assert graph.compiled_packages(g) == [graph.CompiledPackage(14, "16.0.384591198")]
    assert graph.mapping_report(g).already_compiled
    old = hal.Device("edgetpu", "usb:0", "Coral", properties={
        "runtime_version": "BuildLabel(COMPILER=6.3.0,DATE=x,TIME=x), RuntimeVersion(13)"})
    with pytest.raises(UnsupportedError, match=r"runtime 14 .*runtime 13") as e:
        etb.EdgeTpuBackend()._check_precompiled(g, old)
    assert "edgetpu_compiler -m 13" in str(e.value)
    new = hal.Device("edgetpu", "usb:0", "Coral", properties={"runtime_version": "RuntimeVersion(14)"})
    etb.EdgeTpuBackend()._check_precompiled(g, new)  # same version: accepted


def test_compiled_model_refused_by_the_emulator():
    data = _edgetpu_compiled_tflite(14, "16.0")
    with pytest.raises(UnsupportedError, match="edgetpu-custom-op"):
        hal.compile(data, EMU, precision="int8", calibration=[np.zeros((1, 4), np.float32)], cache=False)


@needs_no_edgetpu
def test_delegate_failure_is_one_clear_error(torch_exe, monkeypatch):
    dev = hal.Device("edgetpu", "usb:0", "Coral Edge TPU USB Accelerator")
    files = Artifacts(None, torch_exe.runner.files.int8)
    with pytest.raises(DeviceUnavailableError, match=r"delegate \(libedgetpu.so.1, device usb:0\)"):
        EdgeTpuExecutable(torch_exe.info, dev, files, EdgeTpuOptions())
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to stand in for a library that is not a delegate")
    monkeypatch.setenv(devices.LIB_ENV, libm)
    with pytest.raises(DeviceUnavailableError, match="tflite_plugin_create_delegate"):
        EdgeTpuExecutable(torch_exe.info, dev, files, EdgeTpuOptions())
    found = devices.discover()  # libm has no edgetpu_list_devices: probing falls back to the delegate
    assert not found.found and "tflite_plugin_create_delegate" in found.why_not["usb"]


def test_hardware_compile_without_edgetpu_compiler_is_refused(torch_exe):
    if compiler.path() is not None:
        pytest.skip("edgetpu_compiler is installed here")
    dev = hal.Device("edgetpu", "usb:0", "Coral", precisions=("int8",))
    from hal.plugin import CompileOptions, Model

    with pytest.raises(hal.CompileError, match="nothing would run on the Edge TPU"):
        etb.EdgeTpuBackend().compile(Model("tflite", torch_exe.runner.files.int8), dev,
                                     CompileOptions(precision="int8"))


def test_compiler_summary_parser():
    # the layout `edgetpu_compiler -s` prints (Coral's compiler docs); no compiler here to run
    text = """Edge TPU Compiler version 16.0.384591198
Number of operations that will run on Edge TPU: 9
Number of operations that will run on CPU: 1

Operator                       Count      Status

CONV_2D                        2          Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
GELU                           1          Operation not supported
"""
    r = compiler.parse_log(text, "16.0.384591198")
    assert (r.ops_on_edgetpu, r.ops_on_cpu) == (9, 1)
    assert [(o["op"], o["count"], o["where"]) for o in r.operators] == [
        ("CONV_2D", 2, "edgetpu"), ("FULLY_CONNECTED", 1, "edgetpu"), ("GELU", 1, "cpu")]


def test_a_program_exported_with_keyword_inputs_compiles_at_int8():
    """torch.export.export(m, (), kwargs={...}), the way transformers models are exported:
    the Edge TPU converter calls the program by position, in the program's input order,
    and the int8 result answers as the reference run of the same program."""
    pytest.importorskip("litert_torch", reason="litert-torch (torch → TFLite) is not installed")
    import torch

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.head = torch.nn.Linear(32, 16), torch.nn.Linear(16, 8)

        def forward(self, features, scale):
            return self.head(torch.relu(self.fc(torch.cat([features, scale], 1))))

    torch.manual_seed(0)
    m = TwoInputs().eval()
    rng = np.random.default_rng(4)
    feats, scale = (rng.standard_normal((1, 16)).astype(np.float32) for _ in range(2))
    # keyword order unlike forward's: the program's own order is the one that holds
    ep = torch.export.export(m, (), kwargs={"scale": torch.from_numpy(scale),
                                            "features": torch.from_numpy(feats)})
    calib = [tuple(rng.standard_normal((1, 16)).astype(np.float32) for _ in range(2))
             for _ in range(32)]
    exe = hal.compile(ep, EMU, precision="int8", calibration=calib, cache=False)
    ref = hal.compile(ep, "cpu", cache=False)
    assert [i.name for i in exe.info.inputs] == [i.name for i in ref.info.inputs] == ["scale", "features"]
    assert exe.info.extra["edgetpu_mapping"]["fully_int8"]
    for s, f in calib[:8]:
        want = ref(scale=s, features=f)
        got = exe(scale=s, features=f)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_integer_arithmetic_inside_the_model_is_named():
    """RoBERTa computes its position ids in the graph (``cumsum(ids != pad) * mask``, int32):
    litert-torch's PT2EQuantizer puts an observer on that int tensor, whose kernel refuses
    it ('"histogram_cpu" not implemented for 'Int''). The refusal says so and how to avoid
    it, not "make the model torch.export-able" (it exports)."""
    pytest.importorskip("litert_torch", reason="litert-torch (torch → TFLite) is not installed")
    import torch

    class Positions(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos, self.head = (torch.nn.Embedding(16, 8), torch.nn.Embedding(16, 8),
                                             torch.nn.Linear(8, 4))

        def forward(self, ids):
            mask = ids.ne(1).int()
            positions = (torch.cumsum(mask, dim=1).type_as(mask) * mask).long() + 1
            return self.head(self.tok(ids) + self.pos(positions))

    ids = np.array([[3, 5, 7, 1]], np.int64)
    torch.export.export(Positions().eval(), (torch.from_numpy(ids),))  # it exports
    calib = [np.array([[2, 4, 6, 1]], np.int64)] * 4
    with pytest.raises(hal.CompileError, match="observer on an integer tensor") as e:
        hal.compile(Positions().eval(), EMU, precision="int8", calibration=calib,
                    example_input=(ids,), cache=False)
    assert "position_ids" in e.value.fix and "torch.export-able" not in e.value.fix
