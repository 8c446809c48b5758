"""Plugin discovery exactly as a third-party package gets it: a real install with
its own entry point, in a throwaway target directory (the environment is untouched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    for name in ("hal-example-backend", "hal-broken-import"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--no-build-isolation", "--target", str(target), str(PLUGINS / name)],
                       check=True, capture_output=True, timeout=300)
    return target


def hal_json(site: Path, *args: str, **env: str):
    p = subprocess.run([sys.executable, "-m", "hal.cli", *args, "--json"], capture_output=True,
                       text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(site), **env})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_third_party_plugin_is_discovered_and_broken_one_is_reported(site):
    infos = {i["name"]: i for i in hal_json(site, "plugins")}
    assert infos["example"]["loaded"] and infos["example"]["backends"] == ["example"]
    assert infos["example"]["source"] == "hal_example_backend"
    broken = infos["broken"]
    assert not broken["loaded"] and "broken on purpose" in broken["error"]
    assert infos["reference"]["loaded"]  # the others carry on


def test_discovered_backend_shows_its_devices(site):
    data = hal_json(site, "devices")
    targets = {d["target"]: d for d in data["devices"]}
    assert targets["example:cpu"]["available"] and targets["example:cpu"]["kind"] == "hardware"


def test_restriction_skips_the_broken_plugin(site):
    infos = {i["name"]: i for i in hal_json(site, "plugins", HAL_PLUGINS="reference,example")}
    assert infos["example"]["loaded"]
    assert not infos["broken"]["loaded"] and "disabled" in infos["broken"]["error"]


def test_importing_hal_imports_no_framework():
    code = ("import sys, hal, hal.plugin; hal.plugin.registry().plugins; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch','tensorflow','openvino','onnx','onnxruntime','jax','keras','ai_edge_litert')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_auto_measures_between_equally_ranked_devices(site, tmp_path):
    """Rank is a plugin's own claim: a third-party rank-0 CPU device must not win
    `auto` over the reference CPU (also rank 0) by load order; hal measures both."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("onnxruntime", reason="the example plugin runs on onnxruntime")
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU()).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (torch.zeros(1, 16),), str(path), dynamo=True)
    info = hal_json(site, "compile", str(path), "-t", "auto", "-o", str(tmp_path / "m.hal"),
                    HAL_PLUGINS="reference,example")
    why = [n for n in info["notes"] if n.startswith("auto:")]
    assert why and "measured fastest" in why[0], info["notes"]
    assert "example:cpu" in why[0] and "reference:cpu" in why[0]


def test_install_hints_name_what_to_pip_install():
    from hal.plugin import Backend

    class Npu(Backend):
        name, requires, install = "npu-x", ("hal_no_such_runtime_mod",), "hal-npu-plugin[runtime]"

    class Bare(Backend):
        name, requires = "bare-x", ("ai_no_such_runtime",)

    assert "pip install 'hal-npu-plugin[runtime]'" in Npu().missing_runtime()
    assert "pip install ai-no-such-runtime" in Bare().missing_runtime()
    assert Backend().missing_runtime() is None


def test_torch_to_tflite_is_an_ordinary_converter():
    import hal
    import hal.plugin
    from hal.formats import plan

    pytest.importorskip("litert_torch", reason="litert-torch (the edgetpu extra) is not installed")
    chain = plan("torch.nn", ("tflite",), hal.plugin.registry().converters)
    assert [c.name for c in chain] == ["litert_torch.convert"]
