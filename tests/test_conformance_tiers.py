"""The operator and architecture tiers on a small deterministic sample (issue #14).

CI runs the quick tier in full (tests/test_conformance.py) and, here, a fixed sample of
the others on the real reference and OpenVINO runtimes: operators that pass, one
OpenVINO cannot convert, one no int8 quantizer touches; one
architecture at a static and a dynamic batch. The full tiers' numbers are in
docs/conformance.md (measured with ``hal conformance --suite full``).
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch", reason="the cases are defined in PyTorch")
pytest.importorskip("transformers", reason="the architectures come from transformers")

from hal_conformance.options import Options  # noqa: E402
from hal_conformance.results import Result, Stage  # noqa: E402
from hal_conformance.runner import Suite  # noqa: E402

#: passes everywhere, an op no int8 quantizer touches (softplus), a conversion gap in
#: OpenVINO (median), and integer-only inputs (embedding)
OPS_SAMPLE = ["conv2d.basic", "linear.basic", "softplus", "median", "embedding"]


def _installed(name: str) -> bool:
    import hal

    return any(b.name == name and b.missing_runtime is None for b in hal.backends())


@pytest.fixture(scope="module")
def ops_run(tmp_path_factory):
    backends = ["reference"] + (["openvino:CPU"] if _installed("openvino") else [])
    tmp = tmp_path_factory.mktemp("ops")
    suite = Suite(Options(suite="ops", models=OPS_SAMPLE, backends=backends, timeout_s=300,
                          json_path=tmp / "ops.json"))
    return suite.run(), tmp


def test_every_non_pass_names_its_stage(ops_run):
    report, tmp = ops_run
    runnable = [c for c in report.cells if c.runnable]
    assert runnable
    for c in report.cells:
        if c.result == Result.PASS:
            assert c.stage is None, c.id
        else:
            assert isinstance(c.stage, Stage), (c.id, c.result, c.message)
    d = json.loads((tmp / "ops.json").read_text())
    assert d["schema"] == 2 and all(x["stage"] in (None, *[s.value for s in Stage]) for x in d["cells"])
    assert all(x["suite"] == "ops" and x["family"] for x in d["cells"])


def test_operator_cells(ops_run):
    report, _ = ops_run
    cells = {c.id: c for c in report.cells}
    ref = "reference:cpu"
    for case in ("conv2d.basic", "linear.basic", "softplus", "median"):
        assert cells[f"{ref}/{case}/fp32"].result == Result.PASS, cells[f"{ref}/{case}/fp32"].message
    # an operator the quantizer leaves alone is refused at int8, not claimed
    c = cells[f"{ref}/softplus/int8"]
    assert c.result == Result.UNSUPPORTED and c.stage == Stage.QUANTIZE, c.message
    c = cells[f"{ref}/linear.basic/int8-dynamic"]
    assert c.result == Result.PASS and c.top1_agreement is None  # operators have no classes
    # dynamic int8 quantizes Linear layers only: a convolution is refused, not passed off
    c = cells[f"{ref}/conv2d.basic/int8-dynamic"]
    assert c.result == Result.UNSUPPORTED and "Linear layers" in c.message, c.message
    c = cells[f"{ref}/embedding/int8"]
    assert c.result == Result.UNSUPPORTED and "integer inputs" in c.message
    if "openvino:CPU/softplus/fp32" in cells:
        # the tier hands OpenVINO the shared torch.export program, whose frontend keeps
        # Softplus's beta (its TorchScript path, from an nn.Module, drops it)
        assert cells["openvino:CPU/softplus/fp32"].result == Result.PASS
        c = cells["openvino:CPU/median/fp32"]  # no conversion rule for aten::median
        assert c.result == Result.ERROR and c.stage == Stage.CONVERT and "median" in c.message
        assert cells["openvino:CPU/conv2d.basic/int8"].result == Result.PASS


def test_markdown_coverage_matrix(ops_run, tmp_path):
    from hal_conformance.coverage import markdown, matrix

    report, _ = ops_run
    cols, rows = matrix(report, "ops")
    assert [r[0] for r in rows] == ["conv2d", "softplus", "median", "linear", "embedding"]  # catalogue order
    assert ("reference:cpu", "fp32") in cols
    md = "\n".join(markdown(report))
    assert "## Operator coverage" in md and "| conv2d |" in md and "## Totals" in md
    if any(c.result != Result.PASS and c.runnable for c in report.cells):
        assert "## Not passing, by stage" in md


@pytest.mark.timeout(900)
def test_architecture_static_and_dynamic_batch():
    """One real architecture (MobileNetV1 from transformers, seeded weights, 224×224) on the
    reference backend: fp32 at a static batch, and from a program with a dynamic batch Dim
    run at batches 1, 3 and 8; both judged against the fp64 oracle."""
    suite = Suite(Options(suite="models", models=["mobilenet_v1"], backends=["reference"],
                          precisions=["fp32"], timeout_s=600))
    report = suite.run()
    cells = {c.id: c for c in report.cells}
    static, dynamic = cells["reference:cpu/mobilenet_v1/fp32"], cells["reference:cpu/mobilenet_v1/fp32@dynamic"]
    assert static.result == Result.PASS and dynamic.result == Result.PASS, (static.message, dynamic.message)
    assert dynamic.shapes == "dynamic" and static.shapes == "static"
    assert static.top1_agreement == 1.0 and static.rel_max_err < 1e-4
    model = report.models["mobilenet_v1"]
    assert model["suite"] == "models" and model["eval_samples"] == 16
    assert model["emulated_rel_err"]["bf16"] > model["emulated_rel_err"]["fp16"] > 1e-4


def test_onnx_node_corpus_in_the_operator_tier(tmp_path):
    """ONNX's own node cases (two operators of the 1884) on the targets that take ONNX, as
    cells of suite ``onnx`` with the ONNX operator as family; targets that do not take
    ONNX get none. OpenVINO's ONNX frontend cannot convert one Col2Im case."""
    pytest.importorskip("onnx")
    backends = ["reference", "tpu"] + (["openvino:CPU"] if _installed("openvino") else [])
    report = Suite(Options(suite="ops", models=["onnx:Relu", "onnx:Col2Im"], backends=backends,
                           timeout_s=120, json_path=tmp_path / "r.json")).run()
    cells = {c.id: c for c in report.cells}
    assert {c.suite for c in report.cells} == {"onnx"}
    assert not [c for c in report.cells if c.target.startswith("tpu:")]  # torch/TF formats only
    ref = [c for c in report.cells if c.target == "reference:cpu"]
    assert {c.family for c in ref} == {"Relu", "Relu (expanded)", "Col2Im"}
    assert all(c.result == Result.PASS and c.precision == "fp32" for c in ref), \
        [(c.id, c.message) for c in ref if c.result != Result.PASS]
    if "openvino:CPU/node/test_relu_cpu/fp32" in cells:
        assert cells["openvino:CPU/node/test_relu_cpu/fp32"].result == Result.PASS
        broken = [c for c in report.cells if c.target == "openvino:CPU" and c.result != Result.PASS]
        assert broken and all(c.family == "Col2Im" and c.stage == Stage.CONVERT for c in broken), \
            [(c.id, c.stage, c.message) for c in broken]
    from hal_conformance.coverage import markdown

    md = "\n".join(markdown(report))
    assert "## ONNX node corpus" in md and "| Col2Im |" in md and "| ONNX nodes |" in md


def test_onnx_selectors():
    from hal import UsageError
    from hal_conformance.runner import _select

    pytest.importorskip("onnx")
    models, onnx = _select("ops", ["softplus", "onnx:relu"])
    assert models == ["softplus"] and onnx and all("relu" in n for n in onnx)
    assert _select("ops", ["softplus"])[1] == []  # a filter without onnx leaves the corpus out
    assert len(_select("ops", None)[1]) > 1000
    with pytest.raises(UsageError, match="no operator"):
        _select("ops", ["onnx:NoSuchOp"])
    with pytest.raises(UsageError, match="ops suite"):
        _select("quick", ["onnx"])


def test_the_committed_full_tier_report():
    """reports/conformance-full-cpu-host.json.gz: ``hal conformance --suite full`` on this
    2-core host, every installed backend and the third-party example plugin. It finished,
    within 30 minutes, covers ≥ 60 operator families and ≥ 12 architectures on every
    device, and every cell that did not pass names its stage."""
    import gzip
    from pathlib import Path

    from hal_conformance.results import Report

    path = Path(__file__).parent.parent / "reports" / "conformance-full-cpu-host.json.gz"
    report = Report.from_dict(json.loads(gzip.decompress(path.read_bytes())))
    assert report.complete and report.meta["duration_s"] <= 30 * 60
    assert report.meta["cpu_count"] == 2 and not report.errors
    for target in ("reference:cpu", "openvino:CPU", "tpu:xla-cpu", "edgetpu:emulated", "example:cpu"):
        mine = [c for c in report.cells if c.target == target]
        assert len({c.family for c in mine if c.suite == "ops"}) >= 60, target
        assert len({c.model for c in mine if c.suite == "models"}) >= 12, target
        assert any(c.result == Result.PASS for c in mine), target
    for c in report.cells:
        assert (c.stage is None) == (c.result == Result.PASS), (c.id, c.result, c.stage)
