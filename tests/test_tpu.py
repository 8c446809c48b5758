"""Cloud TPU backend, checked on its emulated device (XLA:CPU, real TensorFlow).

The TPU itself is absent here; tpu:xla-cpu runs the very SavedModel / StableHLO
program that tpu:0 would run. TensorFlow imports slowly, so every model is
compiled once per module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import hal
from hal import DeviceUnavailableError, InvalidInputError, UnsupportedError, UsageError

torch = pytest.importorskip("torch")
pytest.importorskip("tensorflow", reason="the tpu backend runs on TensorFlow/XLA")

EMU = "tpu:xla-cpu"
FP32_REL = 1e-5   # fp32 vs torch eager, relative to max|ref|
BF16_REL = 5e-2   # bfloat16 keeps 8 mantissa bits


def rel_err(out, ref) -> float:
    return float(np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max())


class SmallCNN(torch.nn.Module):
    """Conv + BatchNorm + pooling + linear: the ops a CNN needs, logits out."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        y = torch.nn.functional.adaptive_avg_pool2d(y, 4)
        return self.fc(torch.flatten(y, 1))


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def eager(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).double().numpy()


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def cnn_fp32(cnn):
    pytest.importorskip("litert_torch", reason="torch reaches XLA through litert-torch's StableHLO")
    return hal.compile(cnn, EMU, example_input=(batch(2),), options={"max_batch": 2}, cache=False)


@pytest.fixture(scope="module")
def cnn_bf16(cnn):
    pytest.importorskip("litert_torch", reason="torch reaches XLA through litert-torch's StableHLO")
    return hal.compile(cnn, EMU, precision="bf16", example_input=(batch(2),), cache=False)


@pytest.fixture(scope="module")
def keras_model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="img")
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    return keras.Model(inp, keras.layers.Dense(3)(y))


def kbatch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 8, 8, 3)).astype(np.float32)


# --- plugin and devices -------------------------------------------------------------------
def test_plugin_import_and_probe_import_no_framework():
    code = ("import sys, hal, hal.plugin; import hal_backends.tpu; hal.plugin.discover(only=['tpu']); "
            "print([d.target for d in hal.devices()]); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'tensorflow','torch','jax','keras','litert_torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    targets, mods = out.stdout.strip().splitlines()[-2:]
    assert "tpu:xla-cpu" in targets and "tpu:0" in targets
    assert mods == "[]", f"listing tpu devices imported {mods}"


def test_devices_hardware_absent_emulator_present():
    from hal_backends.tpu import system

    devs = {d.target: d for d in hal.devices() if d.backend == "tpu"}
    emu = devs[EMU]
    assert emu.kind == "emulated" and emu.available and set(emu.precisions) == {"fp32", "bf16"}
    hw = devs["tpu:0"]
    assert hw.kind == "hardware"
    if not system.evidence():
        assert not hw.available
        assert "no TPU found" in hw.reason and "\n" not in hw.reason


def test_bare_tpu_target_refuses_the_emulator(cnn):
    from hal_backends.tpu import system

    if system.evidence():
        pytest.skip("a TPU may be attached here")
    with pytest.raises(DeviceUnavailableError) as e:
        hal.compile(cnn, "tpu", example_input=(batch(2),), cache=False)
    assert "no available hardware device" in str(e.value) and EMU in str(e.value)
    with pytest.raises(DeviceUnavailableError, match="no TPU found"):
        hal.compile(cnn, "tpu:0", example_input=(batch(2),), cache=False)


# --- torch through StableHLO ----------------------------------------------------------------
def test_torch_fp32_matches_eager(cnn, cnn_fp32):
    x = batch(2, seed=3)
    assert rel_err(cnn_fp32(x), eager(cnn, x)) < FP32_REL
    info = cnn_fp32.info
    assert info.device_kind == "emulated" and info.precision == "fp32"
    assert any("litert-torch StableHLO" in s for s in info.conversion_path)
    assert any("XlaCallModule" in s for s in info.conversion_path)
    assert "HIGHEST" in cnn_fp32.runner.stablehlo[2]  # fp32 dots/convs never use bf16 passes on a TPU


def test_torch_bf16_within_bf16_tolerance(cnn, cnn_bf16):
    x = batch(2, seed=4)
    out, ref = cnn_bf16(x), eager(cnn, x)
    assert out.dtype == np.float32  # callers keep float32 at the edges
    err = rel_err(out, ref)
    assert err < BF16_REL
    assert err > FP32_REL, "bf16 output is as exact as fp32: the program did not compute in bf16"
    assert "xbf16>" in cnn_bf16.runner.stablehlo[2] and "HIGHEST" not in cnn_bf16.runner.stablehlo[2]


def test_torch_batch_buckets(cnn, cnn_fp32):
    assert cnn_fp32.runner.buckets.sizes == (1, 2)  # one StableHLO module per bucket
    assert cnn_fp32.info.inputs[0].shape == (None, 3, 16, 16)
    for n in (1, 3):  # 3 rows: one call of bucket 2, then one of bucket 1
        x = batch(n, seed=10 + n)
        assert rel_err(cnn_fp32(x), eager(cnn, x)) < FP32_REL
    extra = cnn_fp32.profile(batch(3), iterations=2, warmup=0).extra
    assert extra["bucket_calls"] == [[2, 2], [1, 1]] and extra["padded_rows"] == 0


def test_profile_reports_xla_cost_analysis(cnn_fp32):
    pytest.importorskip("jaxlib", reason="XLA's HloCostAnalysis is reached through jaxlib")
    prof = cnn_fp32.profile(batch(2), iterations=5, warmup=1)
    cost = prof.extra["xla_cost_analysis"]
    # the 3×3 'same' conv alone: 2·N·Cout·Cin·(taps inside the 16×16 image: 46 per axis)²
    conv_flops = 2 * 2 * 8 * 3 * (16 * 3 - 2) ** 2
    assert conv_flops < cost["flops"] < 1.5 * conv_flops
    assert cost["bytes_accessed"] > batch(2).nbytes and cost["bucket"] == 2
    assert prof.latency_ms["p50"] > 0 and prof.throughput_per_s > 0
    assert "tpu_profiler_trace" in prof.unavailable


def test_save_load_roundtrip_torch_artifact_is_data(cnn_fp32, tmp_path):
    path = cnn_fp32.save(tmp_path / "cnn.hal")
    names = set(zipfile.ZipFile(path).namelist())
    # no TensorFlow graph: StableHLO text and weights, rebuilt into XlaCallModule at load
    assert not any("saved_model" in n for n in names)
    assert {f"artifact/program/b{n}.stablehlo.mlir" for n in (1, 2)} <= names
    assert {"artifact/weights.npz", "artifact/program/b2.hlo.txt"} <= names
    x = batch(2, seed=7)
    again = hal.load(path)
    assert again.device.target == EMU
    np.testing.assert_array_equal(again(x), cnn_fp32(x))
    zipfile.ZipFile(path).extractall(tmp_path / "x")
    meta = json.loads((tmp_path / "x" / "artifact" / "tpu.json").read_text())
    assert meta["kind"] == "torch" and meta["buckets"]["sizes"] == [1, 2]
    with np.load(tmp_path / "x" / "artifact" / "weights.npz", allow_pickle=False) as w:
        assert len(w.files) == len(meta["param_names"]) == len(meta["param_dtypes"])


def test_keras_artifact_is_a_checked_savedmodel(keras_fp32, tmp_path):
    import tensorflow as tf

    path = keras_fp32.save(tmp_path / "k.hal")
    x = kbatch(2, seed=8)
    np.testing.assert_array_equal(hal.load(path)(x), keras_fp32(x))
    # an ordinary SavedModel: plain TensorFlow runs it without hal
    zipfile.ZipFile(path).extractall(tmp_path / "x")
    plain = tf.saved_model.load(str(tmp_path / "x" / "artifact" / "saved_model"))
    np.testing.assert_array_equal(plain.b2(tf.constant(x))[0].numpy(), keras_fp32(x))


def test_unsupported_op_is_named():
    pytest.importorskip("litert_torch")

    class CumProd(torch.nn.Module):
        def forward(self, x):
            return torch.cumprod(x, 1)

    with pytest.raises(UnsupportedError, match=r"aten\.cumprod"):
        hal.compile(CumProd(), EMU, example_input=(np.ones((2, 4), np.float32),), cache=False)


# --- Keras and SavedModel ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_fp32(keras_model):
    return hal.compile(keras_model, EMU, example_input=(kbatch(2),), cache=False)


def test_keras_fp32(keras_model, keras_fp32):
    x = kbatch(2, seed=2)
    assert rel_err(keras_fp32(x), keras_model(x).numpy().astype(np.float64)) < FP32_REL
    assert keras_fp32.info.inputs[0].name == "img"
    assert keras_fp32.runner.buckets.sizes == (2,)


def test_padding_to_power_of_two_buckets(keras_model):
    exe = hal.compile(keras_model, EMU, example_input=(kbatch(2),), options={"max_batch": 8},
                      cache=False)
    assert exe.runner.buckets.sizes == (1, 2, 4, 8)
    for n in (1, 3, 5, 8, 19):  # 19 rows: 8 + 8 + 3 padded to 4
        x = kbatch(n, seed=20 + n)
        out = exe(x)
        assert out.shape == (n, 3)
        assert rel_err(out, keras_model(x).numpy().astype(np.float64)) < FP32_REL
    prof = exe.profile(kbatch(3), iterations=5, warmup=1)
    assert prof.extra["bucket"] == 4 and prof.extra["padded_rows"] == 1
    assert any("3 rows padded to bucket 4" in n for n in prof.notes)
    assert exe.profile(kbatch(19), iterations=2, warmup=0).extra["bucket_calls"] == \
        [[8, 8], [8, 8], [3, 4]]


def test_keras_bf16(keras_model, tmp_path):
    exe = hal.compile(keras_model, EMU, precision="bf16", example_input=(kbatch(2),), cache=False)
    x = kbatch(2, seed=5)
    ref = keras_model(x).numpy().astype(np.float64)
    assert FP32_REL < rel_err(exe(x), ref) < BF16_REL
    assert "bf16" in exe.runner.program.ir(2, "hlo")
    again = hal.load(exe.save(tmp_path / "k16.hal"))  # the bf16 claim is checked against the graph
    assert again.info.precision == "bf16"
    np.testing.assert_array_equal(again(x), exe(x))


def test_saved_model_fp32_and_reload(keras_model, keras_fp32, tmp_path):
    keras_model.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    exe = hal.compile(tmp_path / "sm", EMU, example_input=(kbatch(2),), cache=False)
    x = kbatch(2, seed=9)
    assert rel_err(exe(x), keras_model(x).numpy().astype(np.float64)) < FP32_REL
    again = hal.load(exe.save(tmp_path / "sm.hal"))
    np.testing.assert_array_equal(again(x), exe(x))
    with pytest.raises(UnsupportedError, match="fp32 only"):
        hal.compile(tmp_path / "sm", EMU, precision="bf16", cache=False)


# --- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_int8_and_fp16_refused(keras_model, precision):
    x = kbatch(2)
    with pytest.raises(UnsupportedError, match="bf16") as e:
        hal.compile(keras_model, EMU, precision=precision, example_input=(x,),
                    calibration=[x] if precision == "int8" else None, cache=False)
    assert "TPU" in str(e.value)


def test_dynamic_dims_need_examples():
    keras = pytest.importorskip("keras")
    seq = keras.Sequential([keras.Input((None, 4)), keras.layers.Dense(2)])
    with pytest.raises(InvalidInputError, match="dynamic dimension"):
        hal.compile(seq, EMU, cache=False)
    exe = hal.compile(seq, EMU, example_input=(np.ones((1, 5, 4), np.float32),), cache=False)
    assert exe.info.inputs[0].shape == (None, 5, 4)


def test_bad_options(keras_model):
    with pytest.raises(UsageError, match="has no option"):
        hal.compile(keras_model, EMU, example_input=(kbatch(2),), options={"jit": 1}, cache=False)
    with pytest.raises(UsageError, match="below the example batch"):
        hal.compile(keras_model, EMU, example_input=(kbatch(4),), options={"max_batch": 2},
                    cache=False)
