"""Every kind of bad input gets one clear hal error naming the problem and the fix."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

import hal
from hal.errors import (ArtifactError, DeviceUnavailableError, InvalidInputError, ModelFormatError,
                        NoConversionPath, UnsupportedError, UsageError)

torch = pytest.importorskip("torch", reason="torch is not installed")


@pytest.fixture(scope="module")
def exe(small_cnn, x16):
    return hal.compile(small_cnn, target="cpu", example_input=(x16,), cache=False)


def fix_of(err) -> str:
    return err.value.fix or ""


def test_wrong_input_count(exe, x16):
    with pytest.raises(InvalidInputError, match="expected 1 input"):
        exe(x16, x16)


def test_wrong_shape(exe):
    with pytest.raises(InvalidInputError, match=r"shape \(1, 3, 8, 8\).*\(\?, 3, 16, 16\)") as e:
        exe(np.zeros((1, 3, 8, 8), np.float32))
    assert "reshape" in fix_of(e)


def test_wrong_dtype(exe, x16):
    with pytest.raises(InvalidInputError, match="dtype float64, the model takes float32") as e:
        exe(x16.astype(np.float64))
    assert "astype" in fix_of(e)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_rejected_by_default(exe, x16, bad):
    x = x16.copy()
    x[0, 0, 0, 0] = bad
    with pytest.raises(InvalidInputError, match="NaN or Inf") as e:
        exe(x)
    assert "check_finite=False" in fix_of(e)


def test_non_finite_passthrough_when_asked(small_cnn, x16):
    e = hal.compile(small_cnn, target="cpu", example_input=(x16,), cache=False, check_finite=False)
    x = x16.copy()
    x[0, 0, 0, 0] = np.nan
    assert np.isnan(e(x)).any()  # documented: NaN propagates, nothing is hidden


def test_not_an_array(exe):
    with pytest.raises(InvalidInputError, match="list, not an array"):
        exe([[1.0, 2.0]])


def test_run_with_wrong_names(exe, x16):
    with pytest.raises(InvalidInputError, match="missing"):
        exe.run({"nope": x16})


def test_unknown_target(small_cnn, x16):
    with pytest.raises(UsageError, match="unknown target 'warp-drive'") as e:
        hal.compile(small_cnn, target="warp-drive", example_input=(x16,))
    assert "hal devices" in fix_of(e)


def test_unknown_device_of_a_backend(small_cnn, x16):
    with pytest.raises(UsageError, match="no device 'gpu7'"):
        hal.compile(small_cnn, target="reference:gpu7", example_input=(x16,))


def test_unknown_precision(small_cnn, x16):
    with pytest.raises(UsageError, match="unknown precision 'int4'"):
        hal.compile(small_cnn, target="cpu", precision="int4", example_input=(x16,))


def test_precision_not_honoured_is_refused_not_replaced(small_cnn, x16):
    with pytest.raises(UnsupportedError, match="cannot run precision fp16") as e:
        hal.compile(small_cnn, target="cpu", precision="fp16", example_input=(x16,))
    assert "fp32" in fix_of(e)


def test_int8_needs_calibration(small_cnn, x16):
    with pytest.raises(UsageError, match="needs calibration data"):
        hal.compile(small_cnn, target="cpu", precision="int8", example_input=(x16,))


def test_nan_in_calibration(small_cnn, x16):
    bad = x16.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        hal.compile(small_cnn, target="cpu", precision="int8", example_input=(x16,),
                    calibration=[x16, bad])


def test_torch_module_without_example_inputs(small_cnn):
    with pytest.raises(UsageError, match="example inputs"):
        hal.compile(small_cnn, target="cpu", cache=False)


def test_unknown_model_object():
    with pytest.raises(ModelFormatError, match="does not know models of type builtins.dict"):
        hal.compile({"not": "a model"}, target="cpu")


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="does not exist"):
        hal.compile(tmp_path / "nope.onnx", target="cpu")


def test_empty_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ModelFormatError, match="is empty"):
        hal.compile(tmp_path / "m.onnx", target="cpu")


def test_non_model_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelFormatError, match="not a model format hal recognises"):
        hal.compile(tmp_path / "notes.txt", target="cpu")


def test_truncated_onnx(small_cnn, x16, tmp_path):
    pytest.importorskip("onnxscript")
    good = tmp_path / "m.onnx"
    torch.onnx.export(small_cnn, (torch.from_numpy(x16),), str(good), dynamo=True,
                      external_data=False, verbose=False)
    bad = tmp_path / "t.onnx"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFormatError, match="not a valid ONNX model"):
        hal.compile(bad, target="cpu")


def test_garbage_onnx(tmp_path):
    (tmp_path / "g.onnx").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelFormatError, match="not a valid ONNX model"):
        hal.compile(tmp_path / "g.onnx", target="cpu")


def test_truncated_pt2(small_cnn, x16, tmp_path):
    good = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(small_cnn, (torch.from_numpy(x16),)), str(good))
    bad = tmp_path / "t.pt2"
    bad.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(ModelFormatError, match="not a .pt2 archive"):
        hal.compile(bad, target="cpu")


@pytest.mark.parametrize("name", ["weights.pt", "model.pth", "model.pkl"])
def test_pickles_are_never_loaded(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"\x80\x04K\x01.")  # a valid pickle of the int 1
    with pytest.raises(ModelFormatError, match="pickle; hal never unpickles") as e:
        hal.compile(p, target="cpu")
    assert "safetensors" in fix_of(e)


def test_pt2_carrying_a_pickled_object_is_refused(small_cnn, x16, tmp_path):
    import argparse
    import io

    good = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(small_cnn, (torch.from_numpy(x16),)), str(good))
    evil = tmp_path / "evil.pt2"
    buf = io.BytesIO()
    torch.save(argparse.Namespace(payload="would run on unpickle"), buf)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = buf.getvalue() if item.filename.endswith("sample_inputs/model.pt") else src.read(item)
            dst.writestr(item, data)
    with pytest.raises(ModelFormatError, match="holds pickled objects"):
        hal.compile(evil, target="cpu")


def test_format_without_conversion_path(tmp_path):
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 120)
    with pytest.raises(NoConversionPath, match="no converter chain turns a tflite model"):
        hal.compile(tfl, target="cpu")


def test_truncated_or_foreign_hal_artifact(exe, tmp_path):
    path = exe.save(tmp_path / "m.hal")
    cut = tmp_path / "cut.hal"
    cut.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ArtifactError, match="not a .hal artifact"):
        hal.load(cut)
    (tmp_path / "empty.hal").write_bytes(b"")
    with pytest.raises(ArtifactError, match="is empty"):
        hal.load(tmp_path / "empty.hal")
    foreign = tmp_path / "foreign.hal"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "hal.json":
                data = data.replace(b'"backend": "reference"', b'"backend": "quantum-npu"')
            dst.writestr(item, data)
    with pytest.raises(ArtifactError, match="backend 'quantum-npu', which is not installed"):
        hal.load(foreign)


def test_save_is_atomic(exe, tmp_path, monkeypatch):
    target = tmp_path / "m.hal"

    def boom(directory):
        raise OSError("disk full")

    monkeypatch.setattr(exe.runner, "write_artifact", boom)
    with pytest.raises(OSError):
        exe.save(target)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_emulated_or_absent_devices_are_never_auto(small_cnn, x16):
    exe = hal.compile(small_cnn, target="auto", example_input=(x16,), cache=False)
    assert exe.info.device_kind == "hardware"
    assert any(n.startswith("auto:") for n in exe.info.notes)


def test_auto_with_impossible_requirements(small_cnn, x16):
    with pytest.raises(DeviceUnavailableError, match="no available hardware device"):
        hal.compile(small_cnn, target="auto", example_input=(x16,),
                    requirements=hal.Requirements(max_power_w=0.001))
