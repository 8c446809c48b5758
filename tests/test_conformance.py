"""The conformance suite itself: zoo, data, policy, reports, goldens, and a
real run on the reference backend (the only backend this file may assume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the zoo is defined in PyTorch")
pytest.importorskip("sklearn", reason="the zoo's data is scikit-learn's digits")

from hal_conformance import data, zoo  # noqa: E402
from hal_conformance.models import MODELS, WEIGHTS_DIR  # noqa: E402
from hal_conformance.policy import POLICY, compare, judge  # noqa: E402
from hal_conformance.results import Report  # noqa: E402
from hal_conformance.options import Options  # noqa: E402
from hal_conformance.results import _order  # noqa: E402
from hal_conformance.runner import Suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# --- zoo and data -----------------------------------------------------------------------
def test_splits_are_fixed_and_disjoint():
    s = data.splits()
    assert {k: len(v.labels) for k, v in s.items()} == {"eval": 600, "calib": 100, "train": 1097}
    seen = {}
    for name, split in s.items():
        for img in split.images.reshape(len(split.labels), -1):
            seen.setdefault(img.tobytes(), set()).add(name)
    # digits has a few duplicated images; distinct samples must never straddle splits
    straddle = [v for v in seen.values() if len(v) > 1]
    assert len(straddle) <= 3
    assert s["eval"].images.min() == -1.0 and s["eval"].images.max() == 1.0


def test_shape_input_upsamples_exactly():
    img = data.splits()["eval"].images[:2]
    x = data.shape_input(img, (3, 32, 32))
    assert x.shape == (2, 3, 32, 32) and x.dtype == np.float32
    assert np.array_equal(x[:, 1, ::4, ::4], img) and np.array_equal(x[:, 0], x[:, 2])
    assert data.shape_input(img, (64,)).shape == (2, 64)
    with pytest.raises(ValueError):
        data.shape_input(img, (1, 12, 12))


@pytest.mark.parametrize("name", list(MODELS))
def test_zoo_models_load_and_classify(name):
    spec = MODELS[name]
    m = zoo.build(name)
    d = data.model_data(spec.input_shape)
    with torch.no_grad():
        y = m(torch.from_numpy(d["x_eval"])).numpy()
    assert y.shape == (600, 10)
    acc = (y.argmax(1) == d["y_eval"]).mean()
    assert acc >= 0.95, f"{name} reaches only {acc:.2%} on the evaluation split"
    if spec.output == "probabilities":
        np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-5)


def test_seed_convnet_flatten_is_fixed():
    m = zoo.ConvNet()
    assert m.fc1.in_features == 64 * 8 * 8
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_weights_are_small_safetensors():
    files = sorted(WEIGHTS_DIR.glob("*"))
    assert {f.name for f in files} == {f"{m}.safetensors" for m in MODELS}
    assert sum(f.stat().st_size for f in files) < 4_000_000


def test_train_regenerates_weights(tmp_path):
    """Training is bit-exact on one machine (run twice, same bytes). Across CPUs
    the float kernels differ (AVX-512 vs AVX2 reductions in oneDNN/MKL), so the
    committed weights are matched bit for bit only where the machine reproduces
    them, and otherwise by structure and by accuracy within a point."""
    import json

    from safetensors import safe_open

    from hal_conformance import train

    threads, determ = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        for run in ("a", "b"):
            train.main(["mlp", "--out", str(tmp_path / run)])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(determ)
    a, b = (tmp_path / r / "mlp.safetensors" for r in ("a", "b"))
    assert a.read_bytes() == b.read_bytes(), "training is not deterministic on this machine"
    committed = WEIGHTS_DIR / "mlp.safetensors"
    if a.read_bytes() == committed.read_bytes():
        return
    with safe_open(a, "pt") as new, safe_open(committed, "pt") as old:
        assert sorted(new.keys()) == sorted(old.keys())
        assert all(new.get_slice(k).get_shape() == old.get_slice(k).get_shape() for k in new.keys())
        acc_new = json.loads(new.metadata()["hal_zoo"])["eval_accuracy"]
        acc_old = json.loads(old.metadata()["hal_zoo"])["eval_accuracy"]
    assert abs(acc_new - acc_old) <= 0.01, (acc_new, acc_old)


# --- policy -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref():
    rng = np.random.default_rng(0)
    r = rng.standard_normal((600, 10)) * 5
    r[np.arange(600), rng.integers(0, 10, 600)] += 20  # confident predictions
    return r, r.argmax(1)


def test_fp32_rejects_half_precision_sized_error(ref):
    r, labels = ref
    rng = np.random.default_rng(1)
    scale = np.abs(r).max()
    single = r + rng.standard_normal(r.shape) * 1e-6 * scale
    half = r + rng.standard_normal(r.shape) * 1e-3 * scale
    assert judge(compare(single, r, labels), "fp32", 1.0) == []
    broken = judge(compare(half, r, labels), "fp32", 1.0)
    assert any("max abs error" in b for b in broken) and any("SNR" in b for b in broken)
    assert judge(compare(half, r, labels), "fp16", 1.0) == []


def test_int8_rule_is_top1_and_accuracy(ref):
    r, labels = ref
    flipped = r.copy()
    flipped[:12] = flipped[:12, ::-1]  # 2% of predictions change
    m = compare(flipped, r, labels)
    assert m.top1_agreement == pytest.approx(0.98)
    broken = judge(m, "int8", 1.0)
    assert any("top-1" in b for b in broken) and any("accuracy" in b for b in broken)
    few = r.copy()
    few[:3] = few[:3, ::-1]
    assert judge(compare(few, r, labels), "int8", 1.0) == []  # 99.5%, 0.5 points lost


def test_bit_exact_output_has_no_snr(ref):
    r, labels = ref
    m = compare(r.copy(), r, labels)
    assert m.snr_db is None and m.max_abs_err == 0 and judge(m, "fp32", 1.0) == []
    assert judge(compare(r * np.nan, r, labels), "fp32", 1.0) == ["outputs contain NaN or Inf"]


def test_policy_covers_every_precision():
    assert set(POLICY) == {"fp32", "fp16", "bf16", "int8", "int8-dynamic"}
    assert POLICY["fp32"].max_rel_err < POLICY["fp16"].max_rel_err < POLICY["bf16"].max_rel_err


# --- a real run on the reference backend -----------------------------------------------
@pytest.fixture(scope="module")
def goldens(tmp_path_factory):
    """The oracle's run, exported once (ONNX included); the runs below judge against it."""
    from hal_conformance.runner import export_goldens

    d = tmp_path_factory.mktemp("goldens")
    man = export_goldens(d, ["mlp"])
    return d, man


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, goldens):
    tmp = tmp_path_factory.mktemp("conf")
    cells = []
    suite = Suite(Options(backends=["reference"], models=["mlp"],
                          precisions=["fp32", "fp16", "int8-dynamic"], json_path=tmp / "out.json",
                          timeout_s=120, goldens=goldens[0]), on_cell=cells.append)
    report = suite.run()
    return tmp, report, cells


def test_reference_cells(reference_run):
    tmp, report, cells = reference_run
    by = {c.precision: c for c in report.cells}
    assert set(by) == {"fp32", "fp16", "int8-dynamic"}
    assert by["fp32"].result == "pass", by["fp32"].message
    assert by["fp32"].rel_max_err < 1e-5 and by["fp32"].top1_agreement == 1.0
    assert by["int8-dynamic"].result == "pass", by["int8-dynamic"].message
    assert by["fp16"].result == "unsupported" and "does not offer fp16" in by["fp16"].message
    c = by["fp32"]
    assert c.target == "reference:cpu" and c.device_kind == "hardware"
    for k in ("compile_time_s", "artifact_size_bytes", "latency_p50_ms", "accuracy", "snr_db"):
        assert getattr(c, k) is not None, k
    assert c.roundtrip_max_abs == 0.0
    assert report.passed and report.summary()["exit_code"] == 0
    assert [x.id for x in cells] == [x.id for x in report.cells]


def test_json_report_is_complete(reference_run):
    tmp, report, _ = reference_run
    d = json.loads((tmp / "out.json").read_text())
    assert d["complete"] and d["summary"]["pass"] == 2 and d["summary"]["unsupported"] == 1
    assert d["oracle"]["target"] == "reference:cpu" and d["oracle"]["precision"] == "fp64"
    assert d["models"]["mlp"]["reference_accuracy"] > 0.95
    back = Report.from_dict(d)  # cells in report order (the run records them as they finish)
    assert sorted(c.id for c in back.cells) == sorted(c.id for c in report.cells)
    assert [c.to_dict() for c in back.cells] == [c.to_dict() for c in sorted(report.cells, key=_order)]


def test_junit_and_html(reference_run, tmp_path):
    from hal_conformance.report import write_html, write_junit

    _, report, _ = reference_run
    write_junit(report, tmp_path / "j.xml")
    root = ET.parse(tmp_path / "j.xml").getroot()
    assert root.get("tests") == "3" and root.get("skipped") == "1" and root.get("failures") == "0"
    assert len(root.findall(".//testcase")) == 3
    write_html(report, tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    # one plot per precision that ran (fp32, int8-dynamic; fp16 is unsupported) and the latency
    assert html.count("data:image/png;base64,") == 3 and "reference:cpu/mlp/fp32" in html
    assert "data-precision='fp32'" in html and "data-precision='int8-dynamic'" in html
    assert "data-precision='fp16'" not in html


# --- the HTML report of the committed full run -------------------------------------------
@pytest.fixture(scope="module")
def host_report():
    """reports/conformance-cpu-host.json: a real run of every installed backend on the CPU
    host, with all five precisions judged and seven devices that could not run here."""
    return Report.from_dict(json.loads((ROOT / "reports" / "conformance-cpu-host.json").read_text()))


def _section(page: str, anchor: str) -> str:
    return page.split(f"<h2 id={anchor}>", 1)[1].split("<h2", 1)[0]


def test_html_lists_what_was_not_run(host_report, tmp_path):
    import html as h

    from hal_conformance.report import write_html

    absent = [(d["target"], d["reason"]) for b in host_report.backends.values()
              for d in b["devices"] if not d["available"]]
    assert len(absent) >= 5, "the committed run should have devices it could not run"
    d = host_report.to_dict()
    d["plugins"] = d["plugins"] + [{"name": "broken", "source": "hal_broken", "loaded": False,
                                    "error": "ImportError: no module named 'nothing'", "backends": []}]
    d["errors"] = ["backend z: the worker did not start: exit status 3"]
    r = Report.from_dict(d)
    write_html(r, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    section = _section(page, "not-run")
    for target, reason in absent:
        assert f">{h.escape(target)}<" in section and h.escape(reason) in section, target
    assert "plugin broken" in section and h.escape("no module named 'nothing'") in section
    assert "the worker did not start: exit status 3" in section
    assert section.startswith(f"not run ({len(absent) + 2})")
    # an error outside the cells fails the run, and the page says so first
    assert "class='verdict bad'>FAIL" in page


def test_html_plots_each_precision_against_its_own_rule(host_report):
    """Float precisions: relative error on a log axis against the precision's limit. int8 precisions:
    top-1 agreement against the minimum, never against a float precision's error limit."""
    from hal_conformance.policy import JUDGED_PRECISIONS
    from hal_conformance.report import precision_figure, judged_value
    from hal_conformance.results import _order

    ran = [f for f in JUDGED_PRECISIONS if any(c.precision == f and c.result == "pass" for c in host_report.cells)]
    assert len(ran) >= 4, ran  # the host report has passing cells in most precisions
    for precision in JUDGED_PRECISIONS:
        fig = precision_figure(host_report, precision)
        cells = sorted((c for c in host_report.cells if c.precision == precision and c.result == "pass"),
                       key=_order)
        if precision not in ran:  # e.g. fp16 on a CPU without FP16: nothing to plot, no figure
            assert fig is None, precision
            continue
        assert fig is not None and cells, precision
        ax = fig.axes[0]
        xs = [float(pc.get_offsets()[0][0]) for pc in ax.collections if len(pc.get_offsets())]
        limits = {float(ln.get_xdata()[0]) for ln in ax.get_lines()
                  if len(set(map(float, ln.get_xdata()))) == 1 and ln.get_linestyle() == "--"}
        tol = POLICY[precision]
        if tol.max_rel_err is not None:
            assert ax.get_xscale() == "log"
            assert limits == {tol.max_rel_err}
            assert xs == pytest.approx([c.rel_max_err for c in cells])
        else:
            assert ax.get_xscale() == "linear" and "top-1" in ax.get_xlabel()
            assert limits == {100 * tol.min_top1}
            assert xs == pytest.approx([100 * c.top1_agreement for c in cells])
            assert all(judged_value(c) == c.top1_agreement for c in cells)
        for lab in ax.get_yticklabels() + ax.get_xticklabels():
            assert lab.get_fontsize() >= 10, "tick labels must be readable"
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_html_shows_a_failing_cell(host_report, tmp_path):
    """A cell that broke the policy is the first thing on the page and a red ✕ in its
    precision's plot (here an fp32 cell with fp16-sized error)."""
    from hal_conformance.report import precision_figure, write_html

    d = host_report.to_dict()
    bad = next(c for c in d["cells"] if c["precision"] == "fp32" and c["result"] == "pass")
    bad.update(result="fail", rel_max_err=2e-3, message="max|err| 2e-03 of max|ref| > 1e-04")
    r = Report.from_dict(d)
    write_html(r, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    runnable = sum(c["result"] not in ("unsupported",) for c in d["cells"])
    fp32 = sum(c["precision"] == "fp32" and c["result"] in ("pass", "fail") for c in d["cells"])
    assert f"class='verdict bad'>FAIL: 1 of {runnable} runnable cells did not pass" in page
    assert bad["id"] in _section(page, "problems") and "2e-03 of max|ref|" in _section(page, "problems")
    ax = precision_figure(r, "fp32").axes[0]
    assert ax.get_title(loc="left").endswith(f"{fp32 - 1} of {fp32} pass, 1 does not")
    marks = [pc for pc in ax.collections if len(pc.get_offsets())
             and float(pc.get_offsets()[0][0]) == pytest.approx(2e-3)]
    from matplotlib.colors import to_rgb

    from hal_conformance.report import _BAD

    assert len(marks) == 1 and tuple(marks[0].get_facecolor()[0][:3]) == pytest.approx(to_rgb(_BAD))


def test_reports_are_readable_by_others(reference_run, tmp_path):
    """Reports are ordinary files (0666 less the umask), not mkstemp's private 0600."""
    from hal_conformance.report import write_html, write_junit
    from hal_conformance.results import write_json_atomic

    _, report, _ = reference_run
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "r.json", report.to_dict())
        write_html(report, tmp_path / "r.html")
        write_junit(report, tmp_path / "r.xml")
        os.umask(0o077)
        write_json_atomic(tmp_path / "private.json", report.to_dict())
    finally:
        os.umask(old)
    for name in ("r.json", "r.html", "r.xml"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.json", "r.html", "r.json", "r.xml"]


def test_unknown_filters_are_usage_errors():
    import hal

    with pytest.raises(hal.UsageError, match="no installed backend"):
        Suite(Options(backends=["no-such-backend"]))
    with pytest.raises(hal.UsageError, match="unknown precision"):
        Suite(Options(precisions=["fp8"]))
    with pytest.raises(hal.UsageError, match="unknown model.* alexnet in the quick suite"):
        Suite(Options(models=["alexnet"]))
    with pytest.raises(hal.UsageError, match="unknown suite"):
        Suite(Options(suite="everything"))
    # a suite narrows by case name or by operator family
    assert Suite(Options(suite="ops", models=["conv2d"], backends=["reference"])).models[0] == "conv2d.basic"


# --- goldens ---------------------------------------------------------------------------
def test_export_goldens(goldens):
    d, man = goldens
    entry = man["models"]["mlp"]
    assert entry["onnx"] == "mlp.onnx" and (d / "mlp.onnx").stat().st_size > 0
    z = np.load(d / "mlp.npz", allow_pickle=False)
    assert z["x_eval_0"].shape == (600, 64) and z["reference"].shape == (600, 10)
    assert z["reference"].dtype == np.float64 and z["x_calib_0"].shape == (100, 64)
    oracle = json.loads((d / "manifest.json").read_text())["oracle"]
    assert oracle["target"] == "reference:cpu" and oracle["precision"] == "fp64"
    # the oracle's fp64 outputs are the model's: its accuracy is the trained one
    assert entry["reference_accuracy"] == pytest.approx(0.9717, abs=1e-3)


def test_goldens_judge_without_the_oracle_and_from_onnx(goldens, monkeypatch):
    d, _ = goldens
    monkeypatch.setenv("HAL_CONFORMANCE_SOURCE", "onnx")  # what a host without torch does
    r = Suite(Options(backends=["reference"], models=["mlp"], precisions=["fp32", "int8"],
                      goldens=d, timeout_s=120)).run()
    by = {c.precision: c for c in r.cells}
    assert r.oracle["source"].startswith("goldens")
    assert by["fp32"].result == "pass", by["fp32"].message
    assert by["fp32"].conversion_path[0] == "onnx"
    # the reference backend takes ONNX at fp32 (and fp64, its oracle) only, and says so
    assert by["int8"].result == "unsupported" and "fp32 and fp64 only" in by["int8"].message


def test_goldens_are_checked(goldens, tmp_path):
    import shutil

    import hal
    from hal_conformance.goldens import read_goldens

    d, _ = goldens
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    with open(bad / "mlp.npz", "r+b") as f:
        f.seek(100)
        f.write(b"\0\0\0\0")
    with pytest.raises(hal.UsageError, match="checksum"):
        read_goldens(bad, ["mlp"])
    with pytest.raises(hal.UsageError, match="no model resnet"):
        read_goldens(d, ["resnet"])


# --- interruption -----------------------------------------------------------------------
def test_killed_run_keeps_finished_cells(tmp_path, goldens):
    out = tmp_path / "partial.json"
    proc = subprocess.Popen([sys.executable, "-m", "hal_conformance", "-b", "reference",
                             "-m", "mlp", "-p", "fp32", "-p", "int8", "--goldens", str(goldens[0]),
                             "--json", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if out.exists() and json.loads(out.read_text())["cells"]:
                break
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
    finally:
        proc.wait()
    d = json.loads(out.read_text())
    assert not d["complete"] and len(d["cells"]) >= 1
    assert d["cells"][0]["result"] == "pass"


def test_writing_a_backend_page_shows_the_tested_plugin():
    """docs/writing-a-backend.md quotes tests/plugins/hal-example-backend verbatim."""
    import re

    doc = (ROOT / "docs" / "writing-a-backend.md").read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```\n", doc, flags=re.S)
    assert len(blocks) == 4  # pyproject.toml, __init__.py, backend.py, placement.py
    for path, text in blocks:
        assert (ROOT / path).read_text() == text, f"{path} and the docs differ"


def test_workload_learns_each_backends_pace():
    """The parallel scheduler's estimate: counts alone would start a backend whose cells
    take seconds (the Edge TPU's conversions) last, and end the run with it alone."""
    from hal_conformance.runner import Workload

    w = Workload({"ops": 1.0, "models": 30.0})
    for b in ("fast", "slow"):
        for _ in range(100):
            w.add(b, "ops")
        w.add(b, "models")
    assert not w.measured("fast") and w.remaining("fast") == w.remaining("slow") == 130.0
    w.took("fast", "ops", 0.2)
    w.took("slow", "ops", 8.0)
    assert w.measured("slow")
    assert w.rate("slow", "ops") == 8.0 and w.rate("slow", "models") == 240.0  # its own pace
    assert w.remaining("slow") == 99 * 8.0 + 240.0 > 20 * w.remaining("fast")


def test_the_emulated_band_never_passes_an_output_without_signal():
    """On an ill-conditioned architecture (bf16 arithmetic 40% off) the int8 band is wide,
    but an all-zero output (SNR 0 dB, error = max|ref|) is still a failure."""
    from hal_conformance.policy import Metrics

    band = {"bf16": 0.4, "fp16": 0.07}
    zeros = Metrics(1.0, 0.5, 1.0, 1.0, 0.0, 0.0, None)
    honest = Metrics(0.6, 0.2, 1.0, 0.6, 1.8, 0.0, None)
    assert judge(honest, "int8", None, "models", band) == []
    broken = judge(zeros, "int8", None, "models", band)
    assert broken and "carries no signal" in broken[-1]


# --- plan and judge: pure, no workers ------------------------------------------------------
def _device(target, **kw):
    from hal_conformance.protocol import DeviceInfo

    return DeviceInfo(target.partition(":")[0], target, id=target.partition(":")[2],
                      unsupported={p: None for p in ("fp32", "fp16", "bf16", "int8", "int8-dynamic")},
                      **kw)


def test_the_planner_owns_routers_dynamic_batch_onnx_and_integer_inputs():
    """One pure function plans for one host, the lab and pytest alike."""
    from hal_conformance.plan import Kind, Shapes, plan
    from hal_conformance.protocol import Refusal
    from hal_conformance.results import Reason

    pytest.importorskip("onnx")
    cpu = _device("vendor:CPU", takes_onnx=True, dynamic_batch=False)
    auto = _device("vendor:AUTO", routes_to=["CPU"], takes_onnx=True)
    cpu.unsupported["fp16"] = Refusal(Reason.NOT_OFFERED, "vendor:CPU does not offer fp16")
    opts = Options(suite="full", models=["mlp", "embedding", "mobilenet_v1", "onnx:Relu"],
                   precisions=["fp32", "fp16", "int8"])
    specs = plan(opts, [cpu, auto])
    assert plan(opts, [cpu, auto]) == specs  # pure: the same cells every time
    ids = {s.id: s for s in specs}
    # a router whose devices are in the run gets the quick tier only, and no ONNX cases
    assert {s.model for s in specs if s.target == "vendor:AUTO"} == {"mlp"}
    assert ids["vendor:CPU/embedding/int8"].unsupported.reason == Reason.INTEGER_INPUTS
    assert ids["vendor:CPU/mlp/fp16"].unsupported.reason == Reason.NOT_OFFERED
    dyn = ids["vendor:CPU/mobilenet_v1/fp32@dynamic"]
    assert dyn.shapes == Shapes.DYNAMIC and dyn.unsupported.reason == Reason.NO_DYNAMIC_BATCH
    onnx = [s for s in specs if s.kind == Kind.ONNX_NODE]
    assert onnx and {s.target for s in onnx} == {"vendor:CPU"} and {s.precision for s in onnx} == {"fp32"}
    # each cell carries its whole worker command: what it measures depends on its tier
    q, o, m = ids["vendor:CPU/mlp/fp32"], ids["vendor:CPU/embedding/fp32"], ids["vendor:CPU/mobilenet_v1/fp32"]
    assert (q.profile, q.roundtrip, q.shared_export) == (True, True, False)
    assert (o.profile, o.roundtrip, o.shared_export) == (False, False, True)
    assert (m.profile, m.roundtrip, m.command("d", "o").shapes) == (False, True, "static")
    # selected alone, the router runs everything
    alone = plan(Options(suite="ops", models=["conv2d.basic"], backends=["vendor:AUTO"]), [cpu, auto])
    assert {s.target for s in alone} == {"vendor:AUTO"} and len(alone) == 5


def test_the_summary_counts_every_result_kind():
    """One precision-not-honoured cell and one pass is a failed run, and says so."""
    from hal_conformance.report import summary_line, write_junit
    from hal_conformance.results import Category, CellResult, Report, Result

    cells = [CellResult(f"x:cpu/mlp/{r.value}", "x", "x:cpu", "cpu", "hardware", "mlp", "fp32", r)
             for r in Result]
    r = Report(cells=cells, complete=True)
    line = summary_line(r)
    for res in Result:
        assert f"1 {res.value}" in line, (res, line)
    assert not r.passed and r.summary()["exit_code"] == 1
    assert not Report(cells=cells[:1] + [c for c in cells if c.result == Result.PRECISION_NOT_HONOURED],
                      complete=True).passed
    assert {res.category for res in Result} == set(Category)
    assert all(res.mark and res.style for res in Result)


def test_judge_is_pure_and_says_why_with_a_code():
    import numpy as np

    from hal_conformance.goldens import Reference
    from hal_conformance.judge import judge, rejudge
    from hal_conformance.plan import CellSpec
    from hal_conformance.protocol import Outcome, Status
    from hal_conformance.results import Reason, Report, Result, Stage

    dev = _device("x:cpu", host_cpu=True)  # the host CPU: it owes no placement record
    spec = CellSpec("x", dev, "mlp", "fp32")
    ref = Reference("mlp", np.eye(10)[np.arange(100) % 10] * 5.0, np.arange(100) % 10, 1.0, Path("-"))
    ok = judge(spec, Outcome(Status.RAN, device_kind="hardware", outputs=ref.outputs.copy()), ref)
    assert ok.result == Result.PASS and ok.reason is None and ok.stage is None
    kind = judge(spec, Outcome(Status.RAN, device_kind="emulated", outputs=ref.outputs.copy()), ref)
    assert kind.result == Result.FAIL and kind.reason == Reason.KIND and kind.stage == Stage.COMPARE
    bad = judge(spec, Outcome(Status.RAN, device_kind="hardware", outputs=ref.outputs[:, ::-1].copy()), ref)
    assert bad.reason == Reason.TOLERANCE
    crash = judge(spec, Outcome(Status.CRASH, "killed by SIGABRT", "run"), ref)
    assert (crash.result, crash.reason, crash.stage) == (Result.CRASH, Reason.WORKER_DIED, Stage.RUN)
    # an accelerator must say where its ops ran
    npu = CellSpec("x", _device("x:npu"), "mlp", "fp32")
    hidden = judge(npu, Outcome(Status.RAN, device_kind="hardware", outputs=ref.outputs.copy()), ref)
    assert (hidden.result, hidden.reason) == (Result.PLACEMENT_NOT_HONOURED, Reason.PLACEMENT)
    placed = {"device_ops": 3, "host_ops": 0, "units": {"NPU": 3}, "host": [], "source": "a record",
              "emulated": False}
    shown = judge(npu, Outcome(Status.RAN, device_kind="hardware", outputs=ref.outputs.copy(),
                               placement=placed), ref)
    assert shown.result == Result.PASS and shown.placement == placed
    report = Report(cells=[ok, kind, bad, crash])
    assert rejudge(report) == 0 and kind.reason == Reason.KIND  # only policy verdicts are re-judged
