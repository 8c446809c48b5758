"""Third-party plugins under the conformance suite, installed the way a user
would (pip) but into a temporary folder: nothing in the environment changes.

tests/plugins holds an example backend (ONNX Runtime) that must pass the kit,
one that returns wrong answers (→ fail), one that calls os.abort() (→ crash,
and the run goes on), one that hangs (→ timeout), one that raises on
import (listed with its error, not fatal), two that claim a precision they do
not compute (→ precision-not-honoured), and one that claims an accelerator, runs part
of the model on the host and hides it (→ placement-not-honoured).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the zoo is defined in PyTorch")
pytest.importorskip("sklearn", reason="the zoo's data is scikit-learn's digits")
pytest.importorskip("onnxruntime", reason="the example plugin runs on ONNX Runtime")
pytest.importorskip("onnxscript", reason="hal converts torch → ONNX with torch.onnx (dynamo)")

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """pip-install the four plugin packages into a private folder (copies, so
    the build leaves nothing in the source tree)."""
    tmp = tmp_path_factory.mktemp("plugins")
    srcs = []
    for d in sorted(PLUGINS.iterdir()):
        if (d / "pyproject.toml").exists():
            shutil.copytree(d, tmp / "src" / d.name, ignore=shutil.ignore_patterns("build", "*.egg-info"))
            srcs.append(str(tmp / "src" / d.name))
    target = tmp / "site"
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", "--target", str(target), *srcs],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return target


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _run(site: Path, *args: str, timeout: float = 1200, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "hal_conformance", *args], capture_output=True,
                          text=True, env=_env(site), timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def mixed_run(site, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    # three backends' cells at once: a crash in one worker must not touch the others
    out = _run(site, "-b", "abort", "-b", "example", "-b", "wrong", "-m", "mlp", "-j", "3",
               "-p", "fp32", "-p", "int8-dynamic", "--json", str(tmp / "r.json"),
               "--junit", str(tmp / "r.xml"))
    report = json.loads((tmp / "r.json").read_text())
    return out, report, tmp


def test_environment_is_untouched(site):
    import hal
    import hal.plugin

    assert {"example", "wrong", "abort"}.isdisjoint(hal.plugin.registry().backends)


def test_abort_is_a_crash_and_the_run_goes_on(mixed_run):
    out, report, _ = mixed_run
    cells = {c["id"]: c for c in report["cells"]}
    for p in ("fp32", "int8-dynamic"):
        c = cells[f"abort:cpu/mlp/{p}"]
        assert c["result"] == "crash", c
        assert "SIGABRT" in c["message"]
    # two crashes, two workers: the second cell ran in a restarted worker
    assert report["backends"]["abort"]["worker_starts"] == 2
    # the backends after it still ran
    assert cells["example:cpu/mlp/fp32"]["result"] == "pass"
    assert report["complete"]


@pytest.fixture(scope="module")
def liar_run(site, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("liars")
    # -j 2: two backends' workers at once (the same cells and results; 30 s instead of 80 here)
    out = _run(site, "-b", "liar16", "-b", "noquant", "-b", "hostsplit", "-b", "reference", "-j", "2",
               "--json", str(tmp / "r.json"), "--markdown", str(tmp / "r.md"), "--html",
               str(tmp / "r.html"))
    return (out, json.loads((tmp / "r.json").read_text()), (tmp / "r.md").read_text(),
            (tmp / "r.html").read_text())


def test_fp32_labelled_fp16_fails_every_fp16_cell(liar_run):
    """Its fp16 and bf16 errors are what fp32 gives (~1e-7): impossible at those precisions,
    whose arithmetic gives ~1e-3 on these models. Nothing else about it is wrong."""
    out, report, md, _ = liar_run
    cells = [c for c in report["cells"] if c["backend"] == "liar16"]
    for p in ("fp16", "bf16"):
        mine = [c for c in cells if c["precision"] == p]
        assert len(mine) == 5 and all(c["result"] == "precision-not-honoured" for c in mine), mine
        assert all(c["stage"] == "compare" and "higher precision" in c["message"] for c in mine)
    assert all(c["result"] == "pass" for c in cells if c["precision"] == "fp32")
    assert out.returncode == 1 and "precision-not-honoured" in md


def test_int8_that_quantizes_nothing_fails(liar_run):
    _, report, _, _ = liar_run
    cells = [c for c in report["cells"] if c["backend"] == "noquant" and c["precision"] == "int8"]
    assert len(cells) == 5 and all(c["result"] == "precision-not-honoured" for c in cells), cells
    assert all("no quantization error" in c["message"] for c in cells)


def test_honest_backends_are_not_flagged(liar_run):
    """The reference backend's int8 and int8-dynamic are real: same run, same rule."""
    _, report, _, _ = liar_run
    ref = [c for c in report["cells"] if c["backend"] == "reference" and c["result"] != "unsupported"]
    assert ref and all(c["result"] == "pass" for c in ref), [c for c in ref if c["result"] != "pass"]
    # the evidence: what fp16 and bf16 arithmetic do to each zoo model, recorded per model
    for m in report["models"].values():
        assert m["emulated_rel_err"]["fp16"] > 1e-4 and m["emulated_rel_err"]["bf16"] > 1e-3


def test_hidden_host_ops_fail_as_placement_not_honoured(liar_run):
    """hostsplit claims an NPU and runs half the model's layers on the host (all of it, in
    torch): reporting no placement, or claiming every op on the device until it has run,
    fails every cell; reporting its host half honestly is the core's refusal, with the ops
    named; devices that are the host CPU owe no placement and pass."""
    _, report, md, html = liar_run
    cells = [c for c in report["cells"] if c["backend"] == "hostsplit" and c["precision"] == "fp32"]
    by = {t: [c for c in cells if c["target"] == f"hostsplit:{t}"] for t in ("hidden", "late", "honest")}
    assert all(len(v) == 5 for v in by.values()), cells
    for c in by["hidden"]:
        assert c["result"] == "placement-not-honoured" and c["reason"] == "placement", c
        assert c["placement"] is None and "reports no placement" in c["message"]
        assert c["rel_max_err"] < 1e-5  # its numbers are right: only the placement is hidden
    for c in by["late"]:
        assert c["result"] == "placement-not-honoured" and c["stage"] == "compare", c
        assert c["placement"]["host_ops"] == 0  # what the core was told at compile
        assert "after running lists" in c["message"] and "gate was bypassed" in c["message"]
    for c in by["honest"]:
        assert c["result"] == "unsupported" and c["stage"] == "compile", c
        assert "would run on the host instead" in c["message"] and "allow_host_ops=True" in c["message"]
    host = [c for c in report["cells"] if c["backend"] in ("liar16", "noquant") and c["precision"] == "fp32"]
    assert len(host) == 10 and all(c["result"] == "pass" and c["placement"] is None for c in host)
    assert sum(c["result"] == "placement-not-honoured" for c in cells) == 10
    assert "## Placement" in md and "| hostsplit:hidden | 5 | 0 |" in md and "placement hidden" in md
    assert "placement-not-honoured" in html and "not reported" in html


def test_wrong_answers_fail(mixed_run):
    _, report, _ = mixed_run
    cells = {c["id"]: c for c in report["cells"]}
    c = cells["wrong:cpu/mlp/fp32"]
    assert c["result"] == "fail" and "top-1 agreement" in c["message"]
    assert c["top1_agreement"] < 0.5
    u = cells["wrong:cpu/mlp/int8-dynamic"]
    assert u["result"] == "unsupported" and "does not offer int8-dynamic" in u["message"]


def test_example_plugin_passes_the_kit(mixed_run):
    _, report, _ = mixed_run
    cells = {c["id"]: c for c in report["cells"]}
    for p in ("fp32", "int8-dynamic"):
        c = cells[f"example:cpu/mlp/{p}"]
        assert c["result"] == "pass", c["message"]
        assert c["conversion_path"][:2] == ["torch.nn", "torch.onnx.export → onnx"]
        assert c["artifact_size_bytes"] > 0 and c["roundtrip_max_abs"] == 0.0
    assert cells["example:cpu/mlp/fp32"]["rel_max_err"] < 1e-5


def test_broken_plugin_is_listed_not_fatal(mixed_run):
    out, report, _ = mixed_run
    broken = [p for p in report["plugins"] if p["name"] == "broken"]
    assert broken and not broken[0]["loaded"]
    assert "broken on purpose" in broken[0]["error"]
    assert "broken on purpose" in out.stdout  # shown in the "not run" table
    assert report["errors"] == []


def test_exit_code_and_junit(mixed_run):
    out, report, tmp = mixed_run
    assert out.returncode == 1, out.stdout + out.stderr
    assert report["summary"]["exit_code"] == 1
    root = ET.parse(tmp / "r.xml").getroot()
    assert root.get("failures") == "1" and root.get("errors") == "2" and root.get("skipped") == "1"


def _pytest_items(site: Path, tmp: Path, *args: str) -> tuple[str, dict]:
    tmp.mkdir()
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                          "--hal-model=mlp", "--hal-json", str(tmp / "k.json"), "--hal-only", *args],
                         capture_output=True, text=True, env=_env(site), cwd=tmp, timeout=600)
    cells = {c["id"]: c for c in json.loads((tmp / "k.json").read_text())["cells"]}
    return out.stdout + out.stderr, cells


def test_pytest_plugin_items(site, tmp_path):
    """`pytest --hal-backend` turns cells into items: a pass passes, a wrong answer and
    a hang (per-cell timeout) fail, an unsupported flow is a skip with its reason.
    The hang runs in a session of its own with a short timeout; the cells that must
    finish get the default one, so a loaded machine cannot turn them into timeouts."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as ex:
        ok = ex.submit(_pytest_items, site, tmp_path / "ok", "--hal-backend=reference",
                       "--hal-backend=wrong", "--hal-precision=fp32", "--hal-precision=fp16")
        hang = ex.submit(_pytest_items, site, tmp_path / "hang", "--hal-backend=hang",
                         "--hal-precision=fp32", "--hal-timeout=5")
        (text, cells), (htext, hcells) = ok.result(), hang.result()
    assert "1 failed, 1 passed, 2 skipped" in text, text
    assert "wrong:cpu/mlp/fp32: fail: " in text and "does not offer fp16" in text
    assert cells["reference:cpu/mlp/fp32"]["result"] == "pass"
    assert cells["wrong:cpu/mlp/fp32"]["reason"] == "tolerance"
    assert "1 failed" in htext and "hang:cpu/mlp/fp32: timeout: no result within 5s" in htext, htext
    assert hcells["hang:cpu/mlp/fp32"]["duration_s"] >= 5
    assert hcells["hang:cpu/mlp/fp32"]["reason"] == "no-answer"


def test_pytest_plugin_is_inert_without_options(tmp_path):
    """Loaded through its pytest11 entry point, it imports neither hal nor a framework."""
    (tmp_path / "test_x.py").write_text(
        "import sys\n"
        "def test_ok():\n"
        "    assert 'hal_conformance.pytest_plugin' in sys.modules\n"
        "    heavy = [m for m in sys.modules if m.split('.')[0] in ('hal', 'torch')]\n"
        "    assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout + out.stderr


def test_pytest_plugin_usage_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                          "--hal-backend=no-such-backend"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 4, out.stdout + out.stderr  # pytest's usage-error code
    assert "no installed backend is called 'no-such-backend'" in out.stderr
