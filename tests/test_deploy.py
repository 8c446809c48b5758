"""Install like a library, deploy like a runtime (#26), for real.

hal is built into a wheel and an sdist (``python -m build``; the wheel is built
from the sdist, so both are checked), and the wheel is installed, without ``-e``,
into a fresh virtual environment with only the deploy extras
``openvino-runtime`` and ``edgetpu-runtime``: no torch, no NNCF, no converter.
There ``.hal`` files compiled here (openvino:CPU fp32 and int8, edgetpu:emulated
int8) load and run through the API and the CLI and give the outputs they gave
where they were compiled, ``hal devices`` names the extra for each missing
runtime, and the package data (the conformance weights) is installed.

pip installs with ``-c constraints.txt``, so the runtimes are the versions CI
verified (and the same as this venv's); its download cache makes this ~1 min
on a warm machine. Where a venv or pip cannot be had (no network, no venv
module) the test is skipped and says why; anything else that fails, fails.

The fresh venv costs a minute or more (pip, then four process starts in it), so its tests are
marked ``full`` (``python -m pytest --full``). The default run keeps the build and the wheel's
contents, and runs the same artifacts, the same checks of what gets imported and the same
compile errors in this venv with the frameworks and compile tools made unimportable (an
import hook that raises ``ModuleNotFoundError`` for them, as their absence would).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = "openvino-runtime,edgetpu-runtime"
#: what a deploy-only venv must not hold: frameworks and compile-time tools
ABSENT = ("torch", "nncf", "litert_torch", "onnx", "onnxscript", "tensorflow", "torchao", "jax")
#: pip output that means "no package index here", not a broken install
OFFLINE = ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution",
           "ConnectTimeout", "ProxyError", "Could not fetch URL")

torch = pytest.importorskip("torch", reason="compiling the artifacts needs torch (hal-accel[torch])")
pytest.importorskip("openvino", reason="compiling needs OpenVINO (hal-accel[openvino])")
pytest.importorskip("nncf", reason="compiling int8 needs NNCF (hal-accel[openvino])")
pytest.importorskip("litert_torch", reason="compiling for the Edge TPU needs litert-torch (hal-accel[edgetpu])")

pytestmark = pytest.mark.timeout(420)


def _run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _source_copy(dest: Path) -> Path:
    """The files a build reads, copied, so that building writes nothing into the checkout."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", "*.hal")
    for name in ("hal", "backends", "conformance"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "constraints.txt"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "docs", dest / "docs", ignore=skip)
    return dest


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """``python -m build`` (sdist, then the wheel from the sdist), with this venv's
    setuptools (``--no-isolation``: no download); ``pip wheel`` where build is absent."""
    tmp = tmp_path_factory.mktemp("dist")
    src = _source_copy(tmp / "src")
    out = tmp / "out"
    try:
        import build  # noqa: F401 - the dev extra installs it
        p = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)])
    except ImportError:
        p = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(out), str(src)])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    found = {"wheel": next(out.glob("hal_accel-*.whl"))}
    sdists = list(out.glob("hal_accel-*.tar.gz"))
    if sdists:
        found["sdist"] = sdists[0]
    return found


def test_wheel_and_sdist_hold_the_package_data(dists):
    import tarfile
    import zipfile

    names = zipfile.ZipFile(dists["wheel"]).namelist()
    weights = [n for n in names if n.startswith("hal_conformance/weights/") and n.endswith(".safetensors")]
    assert len(weights) >= 5, names
    meta = zipfile.ZipFile(dists["wheel"]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [l.split(":", 1)[1].strip() for l in meta.splitlines() if l.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert not any(r.startswith("torch") for r in base), base  # torch is an extra, never a pin
    torch_req = next(r for r in requires if r.startswith("torch") and 'extra == "torch"' in r)
    assert "==" not in torch_req.split(";")[0], torch_req
    for extra in ("openvino-runtime", "edgetpu-runtime", "tpu-runtime"):
        assert f"Provides-Extra: {extra}" in meta
    if "sdist" in dists:
        members = tarfile.open(dists["sdist"]).getnames()
        assert any(m.endswith("conformance/weights/convnet.safetensors") for m in members)
        assert any(m.endswith("/constraints.txt") for m in members)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    """Three .hal files compiled here, with the outputs they give here."""
    import hal

    d = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)).eval()
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 16, 16), dtype=np.float32)
    calib = [rng.random((1, 3, 16, 16), dtype=np.float32) for _ in range(16)]
    np.save(d / "x.npy", x)
    for name, target, precision in (("ov_fp32", "openvino:CPU", "fp32"),
                                    ("ov_int8", "openvino:CPU", "int8"),
                                    ("edgetpu_int8", "edgetpu:emulated", "int8")):
        exe = hal.compile(model, target=target, precision=precision, example_input=(x,),
                          calibration=calib if precision == "int8" else None, cache=False)
        exe.save(d / f"{name}.hal")
        np.save(d / f"{name}.expected.npy", np.asarray(exe(x)))
    return d


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory, dists) -> Path:
    """A fresh venv holding the built wheel with the deploy extras only."""
    d = tmp_path_factory.mktemp("venv") / "rt"
    try:
        p = _run([sys.executable, "-m", "venv", "--without-pip", str(d)], timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot create a venv here: {e}")
    if p.returncode != 0:
        pytest.skip(f"cannot create a venv here: {p.stderr.strip()[-300:]}")
    py = d / "bin" / "python"
    # this venv's pip installs into the new one (--python): no ensurepip, same pip config
    p = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q",
              "-c", str(ROOT / "constraints.txt"), f"{dists['wheel']}[{EXTRAS}]"], timeout=600)
    if p.returncode != 0 and any(s in p.stdout + p.stderr for s in OFFLINE):
        pytest.skip("pip cannot reach a package index here: " + p.stderr.strip()[-300:])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return d


def _in_venv(venv: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return _run([str(venv / "bin" / args[0]), *args[1:]], cwd=cwd, env=env, timeout=300)


@pytest.mark.full  # a fresh venv: the CI sample is test_deploy_only_here_without_frameworks
def test_deploy_venv_holds_no_framework_nor_compile_tool(runtime_venv):
    code = ("import importlib.util as u, json, sys; "
            f"print(json.dumps({{m: u.find_spec(m) is not None for m in {ABSENT!r}}}))")
    p = _in_venv(runtime_venv, "python", "-c", code)
    assert p.returncode == 0, p.stderr
    present = [m for m, there in json.loads(p.stdout).items() if there]
    assert not present, f"the deploy-only venv has {present}"


RUN = r"""
import json, sys
from pathlib import Path
import numpy as np
import hal
d = Path(sys.argv[1]); x = np.load(d / "x.npy"); out = {}
for name in ("ov_fp32", "ov_int8", "edgetpu_int8"):
    exe = hal.load(d / f"{name}.hal")
    np.save(d / f"{name}.here.npy", np.asarray(exe(x)))
    out[name] = {"target": exe.info.target, "precision": exe.info.precision}
from importlib.resources import files
w = files("hal_conformance") / "weights" / "convnet.safetensors"
out["weights"] = w.is_file()
out["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in %r)
print(json.dumps(out))
""" % (ABSENT,)


@pytest.mark.full  # a fresh venv: the CI sample is test_deploy_only_here_without_frameworks
def test_artifacts_load_and_run_without_torch_or_nncf(runtime_venv, artifacts, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(RUN)
    p = _in_venv(runtime_venv, "python", str(script), str(artifacts), cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["imported"] == [], got["imported"]
    assert got["weights"] is True  # package data installed from the wheel
    assert got["ov_int8"] == {"target": "openvino:CPU", "precision": "int8"}
    assert got["edgetpu_int8"] == {"target": "edgetpu:emulated", "precision": "int8"}
    for name in ("ov_fp32", "ov_int8", "edgetpu_int8"):
        here = np.load(artifacts / f"{name}.here.npy")
        expected = np.load(artifacts / f"{name}.expected.npy")
        # the same runtime versions on the same host: the same numbers (0.0 apart when measured)
        np.testing.assert_allclose(here, expected, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.full  # a fresh venv: the CI sample is test_deploy_only_here_without_frameworks
def test_cli_in_the_deploy_venv(runtime_venv, artifacts, tmp_path):
    p = _in_venv(runtime_venv, "hal", "run", str(artifacts / "ov_int8.hal"),
                 "--input", str(artifacts / "x.npy"), "-o", str(tmp_path / "y.npz"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    y = np.load(tmp_path / "y.npz")
    np.testing.assert_allclose(y[y.files[0]], np.load(artifacts / "ov_int8.expected.npy"),
                               rtol=0, atol=1e-6)

    p = _in_venv(runtime_venv, "hal", "devices", "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert "ModuleNotFoundError" not in p.stdout and "No module named" not in p.stdout
    _check_runtime_only_listing(data)


@pytest.mark.full  # a fresh venv: the CI sample is test_deploy_only_here_without_frameworks
def test_compiling_there_names_the_extra(runtime_venv, artifacts, tmp_path):
    """An IR file compiles to fp32 with the runtime alone; int8 needs NNCF and the
    reference backend torch, and each error names the extra that has it."""
    import zipfile

    with zipfile.ZipFile(artifacts / "ov_fp32.hal") as z:
        for n in ("model.xml", "model.bin"):
            (tmp_path / n).write_bytes(z.read(f"artifact/{n}"))
    x = str(artifacts / "x.npy")
    p = _in_venv(runtime_venv, "hal", "compile", str(tmp_path / "model.xml"), "--target",
                 "openvino:CPU", "-o", str(tmp_path / "fp32.hal"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for args, needle in ((("--target", "openvino:CPU", "--precision", "int8", "--calibration", x),
                          "hal-accel[openvino]"),
                         (("--target", "cpu"), "hal-accel[cpu]")):
        p = _in_venv(runtime_venv, "hal", "compile", str(tmp_path / "model.xml"), *args,
                     "-o", str(tmp_path / "no.hal"), cwd=tmp_path)
        assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
        assert needle in p.stderr and "No module named" not in p.stderr, p.stderr


#: what a deploy-only venv lacks, made unimportable in a process of this venv: an import of
#: any of them raises ModuleNotFoundError, as it would where they are not installed
ABSENT_HOOK = r"""
import importlib.abc, sys
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in %r:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
""" % (ABSENT,)

HERE = r"""
import json, sys
from pathlib import Path
import numpy as np
import hal
d, ir = Path(sys.argv[1]), Path(sys.argv[2]); x = np.load(d / "x.npy"); out = {}
for name in ("ov_fp32", "ov_int8", "edgetpu_int8"):
    exe = hal.load(d / f"{name}.hal")
    np.save(d / f"{name}.blocked.npy", np.asarray(exe(x)))
    out[name] = {"target": exe.info.target, "precision": exe.info.precision}
out["backends"] = [b.to_dict() for b in hal.backends()]
out["devices"] = [dv.to_dict() for b in hal.backends() for dv in b.devices]
out["ir_fp32"] = hal.compile(ir / "model.xml", "openvino:CPU", cache=False).info.precision
errors = {}
for key, kw in (("int8", dict(target="openvino:CPU", precision="int8", calibration=[x])),
                ("cpu", dict(target="cpu"))):
    try:
        hal.compile(ir / "model.xml", cache=False, **kw)
        errors[key] = None
    except hal.HalError as e:
        errors[key] = str(e)
out["errors"] = errors
out["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in %r)
print(json.dumps(out))
""" % (ABSENT,)


def test_deploy_only_here_without_frameworks(artifacts, tmp_path):
    """The CI sample of the deploy venv's tests, in this venv: with torch, NNCF, the
    converters and TensorFlow unimportable, the three artifacts load and give the outputs
    they gave where they were compiled; devices name the extra for each missing runtime; an
    IR compiles at fp32 with the runtime alone, and int8 (NNCF) and the reference backend
    (torch) are refused naming their extra."""
    import zipfile

    ir = tmp_path / "ir"
    ir.mkdir()
    with zipfile.ZipFile(artifacts / "ov_fp32.hal") as z:
        for n in ("model.xml", "model.bin"):
            (ir / n).write_bytes(z.read(f"artifact/{n}"))
    env = {k: v for k, v in os.environ.items() if k != "HAL_PLUGINS"}
    p = _run([sys.executable, "-c", ABSENT_HOOK + HERE, str(artifacts), str(ir)], cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["imported"] == [], got["imported"]
    assert got["ov_int8"] == {"target": "openvino:CPU", "precision": "int8"}
    assert got["edgetpu_int8"] == {"target": "edgetpu:emulated", "precision": "int8"}
    for name in ("ov_fp32", "ov_int8", "edgetpu_int8"):
        np.testing.assert_allclose(np.load(artifacts / f"{name}.blocked.npy"),
                                   np.load(artifacts / f"{name}.expected.npy"), rtol=0, atol=1e-6,
                                   err_msg=name)
    listed = json.dumps(got["backends"])
    assert "ModuleNotFoundError" not in listed and "No module named" not in listed
    _check_runtime_only_listing(got)
    assert got["ir_fp32"] == "fp32"
    for key, needle in (("int8", "hal-accel[openvino]"), ("cpu", "hal-accel[cpu]")):
        assert got["errors"][key] and needle in got["errors"][key], got["errors"]
        assert "No module named" not in got["errors"][key], got["errors"]


def _check_runtime_only_listing(data: dict) -> None:
    """`hal devices --json` where only the OpenVINO and Edge TPU runtimes are installed:
    no backend errors, the others say which extra installs them, OpenVINO's CPU runs int8."""
    backends = {b["name"]: b for b in data["backends"]}
    for name in backends:
        assert not backends[name].get("error"), (name, backends[name]["error"])
    for name, extra in (("reference", "hal-accel[cpu]"), ("cuda", "hal-accel[cuda]"),
                        ("tpu", "hal-accel[tpu-runtime]")):
        assert extra in (backends[name]["missing_runtime"] or ""), backends[name]
        for dev in backends[name]["devices"]:
            assert not dev["available"] and extra in dev["reason"], dev
    assert backends["openvino"]["missing_runtime"] is None
    cpu = next(dv for dv in data["devices"] if dv["target"] == "openvino:CPU")
    assert "int8" in cpu["precisions"]  # runs int8 without NNCF
