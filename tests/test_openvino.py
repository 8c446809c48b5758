"""The OpenVINO backend on this machine's real CPU plugin (skipped without openvino)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'hal-accel[openvino]')")
torch = pytest.importorskip("torch")

import hal  # noqa: E402
import hal.plugin  # noqa: E402
from hal_backends.openvino import compat  # noqa: E402

SHAPE = (1, 3, 32, 32)


class SmallCNN(torch.nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, classes))

    def forward(self, x):
        return self.f(x)


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        bn = m.f[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(96)]


@pytest.fixture(scope="module")
def ov_model(cnn, data):
    """Converted once; handing hal an openvino.Model skips re-tracing in every test."""
    return ov.convert_model(cnn, example_input=torch.from_numpy(data[0]))


@pytest.fixture(scope="module")
def fp32(cnn, data):
    return hal.compile(cnn, target="openvino:CPU", example_input=(data[0],), cache=False)


@pytest.fixture(scope="module")
def cpu():
    return next(d for d in hal.devices() if d.target == "openvino:CPU")


def torch_out(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


# --- devices ------------------------------------------------------------------------
def test_devices_listed_with_full_names(cpu):
    core = ov.Core()
    devs = {d.id: d for d in hal.devices() if d.backend == "openvino"}
    for dev_id in core.available_devices:
        full = core.get_property(dev_id, "FULL_DEVICE_NAME")  # a CPU without VNNI says so after it
        assert devs[dev_id].available and devs[dev_id].name in (full, f"{full} (no VNNI)")
    assert cpu.kind == "hardware" and cpu.rank > 0 and "fp32" in cpu.precisions
    assert devs["AUTO"].available
    mov = [d for d in devs.values() if "movidius" in d.aliases]
    assert [d.id for d in mov] == [compat.api().movidius_device]
    if not mov[0].available:
        assert "2022.3" in mov[0].reason and mov[0].reason


def test_auto_target_prefers_openvino_cpu_over_reference(cnn, cpu):
    ref = next(d for d in hal.devices() if d.target == "reference:cpu")
    assert cpu.rank > ref.rank
    model = hal.formats.identify(cnn, hal.plugin.registry().formats)
    _, dev, why = hal.api.select(model, "fp32", hal.Requirements())
    higher = [d for d in hal.devices() if d.available and d.kind == "hardware" and d.rank > cpu.rank
              and "fp32" in d.precisions]
    if not higher:
        assert dev.target == "openvino:CPU", why


def test_movidius_target_names_npu_or_myriad():
    o = compat.api()
    if any(d.startswith(o.movidius_device) for d in ov.Core().available_devices):
        _, dev = hal.plugin.resolve("movidius")
        assert dev.id.startswith(o.movidius_device)
    else:
        with pytest.raises(hal.DeviceUnavailableError, match="MYRIAD|NPU"):
            hal.plugin.resolve("movidius")


# --- precision ----------------------------------------------------------------------
def test_fp32_matches_torch_and_really_runs_fp32(cnn, data, fp32):
    for x in data[:4]:
        ref = torch_out(cnn, x)
        assert np.abs(fp32(x) - ref).max() / np.abs(ref).max() < 1e-5
    assert fp32.info.extra["inference_precision_hint"] == "f32"
    assert not {"bf16", "f16"} & set(fp32.info.extra["runtime_precisions"])
    assert fp32.info.device_kind == "hardware" and fp32.info.precision == "fp32"


@pytest.mark.parametrize("precision,tag", [("bf16", "bf16"), ("fp16", "f16")])
def test_low_precision_via_hint_or_refused(ov_model, data, cpu, precision, tag):
    if precision not in cpu.precisions:
        with pytest.raises(hal.UnsupportedError, match="OPTIMIZATION_CAPABILITIES"):
            hal.compile(ov_model, target="openvino:CPU", precision=precision, cache=False)
        return
    exe = hal.compile(ov_model, target="openvino:CPU", precision=precision, cache=False)
    assert tag in exe.info.extra["runtime_precisions"]
    assert exe.info.extra["inference_precision_hint"] == tag


def test_int8_nncf_top1_agreement(cnn, ov_model, data, tmp_path):
    q = hal.compile(ov_model, target="openvino:CPU", precision="int8", calibration=data[:32], cache=False)
    assert any("nncf.quantize" in s for s in q.info.conversion_path)
    assert {"Convolution"} <= set(q.info.extra["int8_layer_types"])
    agree = np.mean([q(x).argmax() == torch_out(cnn, x).argmax() for x in data[32:]])
    assert agree >= 0.9, agree
    back = hal.load(q.save(tmp_path / "int8.hal"))  # the quantized IR/blob round-trips
    assert back.info.precision == "int8" and back.info.extra["int8_layer_types"]
    np.testing.assert_array_equal(back(data[40]), q(data[40]))


def test_int8_dynamic_is_real_or_refused(cnn, ov_model, data, cpu):
    if "int8-dynamic" not in cpu.precisions:
        with pytest.raises(hal.UnsupportedError):
            hal.compile(ov_model, target="openvino:CPU", precision="int8-dynamic", cache=False)
        return
    q = hal.compile(ov_model, target="openvino:CPU", precision="int8-dynamic", cache=False)
    assert q.info.extra["int8_layer_types"] == ["FullyConnected"]
    assert q.info.extra["dynamic_quantization_group_size"] > 0
    agree = np.mean([q(x).argmax() == torch_out(cnn, x).argmax() for x in data[32:64]])
    assert agree >= 0.9


def test_unsupported_precisions_refused(ov_model):
    with pytest.raises(hal.UnsupportedError, match="at most fp32"):
        hal.compile(ov_model, target="openvino:CPU", precision="fp64", cache=False)
    with pytest.raises(hal.UnsupportedError, match="int8-dynamic"):
        hal.compile(ov_model, target="openvino:AUTO", precision="int8-dynamic", cache=False)


@pytest.mark.filterwarnings("ignore:invalid value encountered in dot")
def test_lean_run_path_keeps_the_core_checks(fp32, cnn, data):
    y1 = fp32(data[5])
    y2 = fp32(data[6])
    np.testing.assert_array_equal(y1, fp32(data[5]))  # outputs are copies, not views
    assert not np.array_equal(y1, y2)
    np.testing.assert_allclose(fp32(torch.from_numpy(data[6])), y2)
    bad = data[7].copy()
    bad[0, 1, 2, 3] = np.inf
    with pytest.raises(hal.InvalidInputError, match="NaN or Inf"):
        fp32(bad)
    with pytest.raises(hal.InvalidInputError, match="dtype float64"):
        fp32(data[7].astype(np.float64))
    with pytest.raises(hal.InvalidInputError, match="shape"):
        fp32(data[7][:, :, :16])
    view = np.asfortranarray(data[8])  # not C-contiguous: copied in
    np.testing.assert_array_equal(fp32(view), fp32(data[8]))


# --- profile ------------------------------------------------------------------------
def test_profile_has_per_layer_times(fp32, data):
    p = fp32.profile(data[0], iterations=20, warmup=2)
    assert p.layers and all(l.time_ms >= 0 for l in p.layers)
    assert any(l.type.startswith("Convolution") for l in p.layers)
    assert p.latency_ms["p50"] > 0 and "layers" not in p.unavailable


def test_throughput_mode_uses_async_queue(fp32, data):
    p = fp32.profile(data[0], mode="throughput", iterations=200)
    assert p.throughput_per_s > 0 and p.iterations >= 200
    assert p.extra["infer_requests"] >= 1 and p.extra["streams"] >= 1
    assert p.timer == "backend throughput mode"


# --- artifact -----------------------------------------------------------------------
def _without(src: Path, dst: Path, member: str) -> Path:
    """The artifact minus one file, its hal.json digest list updated to match
    (hal refuses a .hal whose files differ from what hal.json lists)."""
    import json

    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        meta = json.loads(zi.read("hal.json"))
        meta["files"] = {n: d for n, d in meta["files"].items() if not n.endswith(member)}
        zo.writestr("hal.json", json.dumps(meta))
        for n in zi.namelist():
            if n != "hal.json" and not n.endswith(member):
                zo.writestr(n, zi.read(n))
    return dst


def test_save_load_blob_and_ir(fp32, data, tmp_path):
    path = fp32.save(tmp_path / "m.hal")
    names = zipfile.ZipFile(path).namelist()
    assert {"artifact/model.xml", "artifact/model.bin", "artifact/compiled.blob"} <= set(names)
    want = fp32(data[1])
    blob = hal.load(path)
    assert blob.info.extra["loaded_from"] == "compiled blob"
    assert blob.info.extra["inference_precision_hint"] == "f32"  # the hint survives import
    np.testing.assert_array_equal(blob(data[1]), want)
    ir = hal.load(_without(path, tmp_path / "ir.hal", "compiled.blob"))
    assert ir.info.extra["loaded_from"] == "ir"
    np.testing.assert_array_equal(ir(data[1]), want)


def test_compile_from_ir_and_onnx_files(fp32, ov_model, data, tmp_path):
    ov.save_model(ov_model, str(tmp_path / "m.xml"), compress_to_fp16=False)
    exe = hal.compile(tmp_path / "m.xml", target="openvino:CPU", cache=False)
    np.testing.assert_allclose(exe(data[2]), fp32(data[2]), rtol=1e-6, atol=1e-6)
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(SHAPE))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    conv = hal.compile(proto, target="openvino:CPU", cache=False)
    ref = torch.nn.functional.conv2d(torch.from_numpy(data[3]), torch.from_numpy(w), padding=1).numpy()
    np.testing.assert_allclose(conv(data[3]), ref, rtol=1e-4, atol=1e-5)


def test_openvino_cache_dir_is_under_hal_cache(ov_model, data, tmp_path, monkeypatch):
    monkeypatch.setenv("HAL_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.delenv("HAL_NO_CACHE", raising=False)
    a = hal.compile(ov_model, target="openvino:CPU")
    assert list((tmp_path / "c" / "openvino").rglob("*.blob"))  # OpenVINO's own model cache
    b = hal.compile(ov_model, target="openvino:CPU")
    assert b.info.cache_hit and b.info.extra["loaded_from"] == "compiled blob"
    np.testing.assert_array_equal(a(data[0]), b(data[0]))
    if "fp16" in hal.plugin.resolve("openvino:CPU")[1].precisions:
        # OpenVINO's cache key ignores the precision hint: hal keys the cache dir by
        # the properties, so fp32 after fp16 of the same model still runs at f32
        opts = {"config": {"NUM_STREAMS": "1"}}
        hal.compile(ov_model, target="openvino:CPU", precision="fp16", options=opts, cache=False)
        c = hal.compile(ov_model, target="openvino:CPU", options=opts, cache=False)
        assert not {"bf16", "f16"} & set(c.info.extra["runtime_precisions"])


# --- bad input ----------------------------------------------------------------------
def test_unknown_device_name(ov_model):
    with pytest.raises(hal.UsageError, match="no device 'FOO'"):
        hal.compile(ov_model, target="openvino:FOO", cache=False)


def test_device_vanished_maps_to_device_unavailable(fp32, ov_model, tmp_path):
    from hal_backends.openvino.executable import runtime_error, vanished

    core = ov.Core()
    assert not vanished(core, "CPU")
    gone = hal.Device("openvino", "GPU.7", "a GPU that was unplugged")
    err = runtime_error(core, gone, RuntimeError("Exception from plugin:\ndevice lost"), "inference")
    assert isinstance(err, hal.DeviceUnavailableError) and "vanished" in str(err)
    # a real OpenVINO runtime failure on a present device is not blamed on the device
    dynamic = hal.compile(ov_model, target="openvino:CPU", cache=False)  # [?,3,?,?]
    assert dynamic.info.inputs[0].shape == (None, 3, None, None)
    with pytest.raises(hal.HalError, match="inference failed") as e:
        dynamic.runner.infer([np.zeros((1, 5, 8, 8), np.float32)])  # bypasses hal's checks on purpose
    assert not isinstance(e.value, hal.DeviceUnavailableError)
    # an artifact for a device that is no longer there
    path = fp32.save(tmp_path / "m.hal")
    moved = tmp_path / "gpu.hal"
    with zipfile.ZipFile(path) as zi, zipfile.ZipFile(moved, "w") as zo:
        for n in zi.namelist():
            body = zi.read(n)
            if n == "hal.json":
                meta = json.loads(body)
                meta["info"]["target"] = "openvino:GPU"
                body = json.dumps(meta).encode()
            zo.writestr(n, body)
    if "GPU" not in core.available_devices:
        with pytest.raises(hal.DeviceUnavailableError, match="GPU"):
            hal.load(moved)


def test_ir_with_missing_or_truncated_bin(ov_model, tmp_path):
    ov.save_model(ov_model, str(tmp_path / "m.xml"), compress_to_fp16=False)
    data = (tmp_path / "m.bin").read_bytes()
    (tmp_path / "m.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(hal.ModelFormatError, match="truncated"):
        hal.compile(tmp_path / "m.xml", target="openvino:CPU", cache=False)
    (tmp_path / "m.bin").unlink()
    with pytest.raises(hal.ModelFormatError, match="m.bin is missing"):
        hal.compile(tmp_path / "m.xml", target="openvino:CPU", cache=False)


def test_bad_options_refused(ov_model):
    with pytest.raises(hal.UsageError, match="hal controls"):
        hal.compile(ov_model, target="openvino:CPU", options={"config": {"INFERENCE_PRECISION_HINT": "bf16"}},
                    cache=False)
    with pytest.raises(hal.UsageError, match="backend openvino has no option"):
        hal.compile(ov_model, target="openvino:CPU", options={"streams": 3}, cache=False)


def test_plugin_registers_without_importing_openvino():
    code = ("import sys, hal, hal.plugin; r = hal.plugin.discover(); assert 'openvino' in r.backends, r.plugins; "
            "assert 'openvino.model' in r.formats; "
            "assert any(c.target == 'openvino.model' for c in r.converters); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('openvino', 'nncf', 'torch', 'onnx')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "HAL_PLUGINS": "openvino"})


def test_auto_takes_the_batches_the_chosen_target_takes(cnn):
    """`target="auto"` must not change which batch sizes an executable takes: it is the
    same compile as naming the device it picked (issue #14)."""
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16), dtype=np.float32)
    auto = hal.compile(cnn, target="auto", example_input=(x,), cache=False)
    named = hal.compile(cnn, target=auto.info.target, example_input=(x,), cache=False)
    assert [s.shape for s in auto.info.inputs] == [s.shape for s in named.info.inputs]


def test_static_pt2_profiles_at_another_batch(tmp_path):
    """`hal profile model.pt2 --batch-size 8` on a static export: OpenVINO re-batches the
    program (checked row by row) instead of failing at the first reshape."""
    torch = pytest.importorskip("torch")
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(4 * 6 * 6, 5)).eval()
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(m, (torch.randn(1, 3, 8, 8),)), str(path))
    exe = hal.compile(str(path), target="openvino:CPU", cache=False)
    assert [s.shape for s in exe.info.inputs] == [(1, 3, 8, 8)]  # what the program takes
    x8 = np.random.default_rng(1).standard_normal((8, 3, 8, 8), dtype=np.float32)
    exe8 = hal.compile(str(path), target="openvino:CPU", example_input=(x8,), cache=False)
    want = m(torch.from_numpy(x8)).detach().numpy()
    np.testing.assert_allclose(exe8(x8), want, rtol=1e-4, atol=1e-5)


def test_int8_overflow_fix_follows_the_host_cpu():
    """Without VNNI the CPU plugin's u8×s8 kernels add pairs of products in int16, which
    saturates; NNCF's default overflow fix covers the first layer only. hal turns it on
    for every layer on such a CPU (the device's name says "no VNNI", which keys the
    cache), and options={'nncf': {'overflow_fix': ...}} overrides it. conformance's
    linear.basic on this AVX2-only host: 14.5 dB without the fix, 27 dB with it."""
    from hal_backends.openvino.devices import host_vnni
    from hal_conformance.cases import build, data, inputs_of

    d = data("linear.basic")
    xs, cal = inputs_of(d, "eval"), inputs_of(d, "calib")
    calib = [tuple(a[i:i + 1] for a in cal) for i in range(len(cal[0]))]
    model = build("linear.basic")
    want = model(*[torch.from_numpy(a) for a in xs]).detach().numpy().astype(np.float64)

    def snr(opts):
        exe = hal.compile(model, target="openvino:CPU", precision="int8", calibration=calib,
                          example_input=tuple(a[:1] for a in xs), options=opts, cache=False)
        got = np.concatenate([exe(*[a[i:i + 1] for a in xs]) for i in range(len(xs[0]))])
        err = ((got - want) ** 2).sum()
        return 10 * np.log10((want ** 2).sum() / err), exe.info.conversion_path

    default, path = snr({})
    off, off_path = snr({"nncf": {"overflow_fix": "disable"}})
    assert any("overflow_fix=disable" in s for s in off_path), off_path
    cpu = next(d for d in hal.devices() if d.target == "openvino:CPU")
    if host_vnni() is not False:
        assert not any("overflow_fix" in s for s in path), path
        pytest.skip("this CPU has VNNI (or does not say): nothing saturates to measure")
    assert cpu.name.endswith("(no VNNI)")
    assert any("overflow_fix=enable: this CPU has no VNNI" in s for s in path), path
    assert default > off + 6, (default, off)  # a loss of 6 dB is the saturation, not noise
