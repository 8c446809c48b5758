"""The `hal` CLI end to end, in a real subprocess (exit codes, one-line errors, --json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")


def hal(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hal.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def files(tmp_path_factory, small_cnn, x16):
    d = tmp_path_factory.mktemp("cli")
    torch.export.save(torch.export.export(small_cnn, (torch.from_numpy(x16),)), str(d / "m.pt2"))
    np.save(d / "x.npy", x16)
    np.save(d / "calib.npy", np.random.default_rng(3).standard_normal((8, 3, 16, 16)).astype(np.float32))
    return d


def assert_one_line_error(p: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_devices_json_lists_every_backend_plugin():
    p = hal("devices", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)  # stdout is JSON only
    names = {b["name"] for b in data["backends"]}
    assert "reference" in names
    for d in data["devices"]:
        assert {"backend", "kind", "available", "target"} <= set(d)
        assert d["kind"] in ("hardware", "emulated")
    cpu = [d for d in data["devices"] if d["target"] == "reference:cpu"]
    assert cpu and cpu[0]["available"] is True


def test_plugins_json():
    p = hal("plugins", "--json")
    assert p.returncode == 0
    assert any(i["name"] == "reference" and i["loaded"] for i in json.loads(p.stdout))


def test_compile_run_profile_roundtrip(files, small_cnn, x16):
    out = files / "m.hal"
    p = hal("compile", str(files / "m.pt2"), "--target", "cpu", "-o", str(out), "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["backend"] == "reference" and info["precision"] == "fp32" and out.exists()
    p = hal("run", str(out), "--input", str(files / "x.npy"), "--json", "-o", str(files / "y.npz"))
    assert p.returncode == 0, p.stderr
    y = np.asarray(json.loads(p.stdout)["outputs"][0]["values"], np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(y, small_cnn(torch.from_numpy(x16)).numpy(), rtol=1e-5, atol=1e-6)
    with np.load(files / "y.npz") as z:
        np.testing.assert_allclose(z[z.files[0]], y, rtol=1e-6)
    p = hal("profile", str(out), "-n", "20", "--json")
    assert p.returncode == 0, p.stderr
    prof = json.loads(p.stdout)
    assert prof["iterations"] == 20 and prof["latency_ms"]["p50"] > 0
    p = hal("profile", str(out), "-n", "5")
    assert p.returncode == 0 and "p50 ms" in p.stdout


def test_int8_with_calibration_file(files):
    p = hal("compile", str(files / "m.pt2"), "-t", "cpu", "-p", "int8", "-c", str(files / "calib.npy"),
            "-o", str(files / "q.hal"), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["precision"] == "int8"


BAD_INPUT = [
    (["compile", "{d}/m.pt2", "-t", "warp", "-o", "{d}/z.hal"], 2, ["unknown target 'warp'"]),
    (["compile", "{d}/m.pt2", "-t", "cpu", "-p", "int4", "-o", "{d}/z.hal"], 2, ["unknown precision"]),
    (["compile", "{d}/m.pt2", "-t", "cpu", "-p", "fp16", "-o", "{d}/z.hal"], 1, ["cannot run precision fp16"]),
    (["compile", "{d}/m.pt2", "-t", "cpu", "-p", "int8", "-o", "{d}/z.hal"], 2, ["needs calibration data"]),
    (["run", "{d}/m.pt2", "-t", "cpu", "-i", "{d}/wrong.npy"], 2, ["only takes the input shapes it was exported with"]),
    (["run", "{d}/missing.onnx"], 2, ["does not exist"]),
    (["run", "{d}/empty.onnx"], 2, ["is empty"]),
    (["run", "{d}/w.pt"], 2, ["never unpickles"]),
    (["run", "{d}/bad.hal"], 2, ["not a .hal artifact"]),
    (["run", "{d}/m.pt2", "-t", "cpu", "-i", "{d}/obj.npy"], 2, ["holds Python objects (a pickle)"]),
]


def _bad_files(files) -> None:
    (files / "empty.onnx").write_bytes(b"")
    (files / "w.pt").write_bytes(b"\x80\x04K\x01.")
    (files / "bad.hal").write_bytes(b"not a zip at all")
    np.save(files / "wrong.npy", np.zeros((1, 3, 8, 8), np.float32))
    np.save(files / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


@pytest.mark.parametrize("args,code,needles", BAD_INPUT)
def test_bad_input_is_one_line_with_exit_code_in_process(files, args, code, needles):
    """Every bad input through the CLI's own commands and error handling, in this process
    (typer's test runner): one ``error:`` line on stderr, the exit code, nothing written.
    The test below runs the same commands as processes of their own."""
    from typer.testing import CliRunner

    from hal.cli import app

    _bad_files(files)
    r = CliRunner().invoke(app, [a.format(d=files) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert_one_line_error(subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr), code,
                          *needles)
    assert not (files / "z.hal").exists()  # nothing half-written


# each case is a process start (~5 s): the default run starts one, --full all of them
@pytest.mark.parametrize("args,code,needles", [
    pytest.param(*case, marks=() if i == 0 else pytest.mark.full) for i, case in enumerate(BAD_INPUT)])
def test_bad_input_is_one_line_with_exit_code(files, args, code, needles):
    _bad_files(files)
    p = hal(*[a.format(d=files) for a in args])
    assert_one_line_error(p, code, *needles)
    assert not (files / "z.hal").exists()  # nothing half-written


def test_debug_shows_traceback(files):
    p = hal("--debug", "compile", str(files / "m.pt2"), "-t", "warp", "-o", str(files / "z.hal"))
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_plugin_restriction_by_env():
    p = hal("plugins", "--json", env={"HAL_PLUGINS": "reference"})
    infos = {i["name"]: i for i in json.loads(p.stdout)}
    assert infos["reference"]["loaded"]
    others = [i for n, i in infos.items() if n not in ("reference", "hal.formats.builtin")]
    assert all(not i["loaded"] and "disabled" in i["error"] for i in others)


def test_runtime_log_lines_stay_off_the_cli_stderr():
    """TensorFlow 2.21 logs through absl whatever TF_CPP_MIN_LOG_LEVEL says (its oneDNN
    notice, on CPUs where it turns oneDNN on), and LiteRT prints "INFO: Created …" on fd 2:
    the CLI's filter drops the INFO/WARNING lines of those loggers, its own and a child's,
    and passes everything else, a C++ error and a crash's last words included."""
    code = "\n".join([
        "import os, subprocess, sys",
        "from hal.native_stderr import filter_native_stderr",
        "filter_native_stderr()",
        "os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')",
        "os.write(2, b'I0000 00:00:1796388115.885161   14547 port.cc:153] oneDNN custom operations are on.\\n')",
        "os.write(2, b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n')",
        "os.write(2, b'E0000 00:00:1796388115.885161   14547 x.cc:1] a runtime error\\n')",
        "subprocess.run(['sh', '-c', 'echo \"W1204 12:10:54.557000 8712 y.cc:2] chatter\" >&2; echo child >&2'])",
        "os.write(2, b'terminate called after throwing')",
        "print('error: one line', file=sys.stderr)",
    ])
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert sorted(p.stderr.splitlines()) == sorted([
        "E0000 00:00:1796388115.885161   14547 x.cc:1] a runtime error", "child",
        "terminate called after throwing", "error: one line"]), p.stderr
