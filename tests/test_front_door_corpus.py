"""The front-door corpus (conformance/front_door.py, #21): models nobody here wrote, through
hal.compile on every available device, each answer against the model's native runtime
called directly. By default a CI sample (fd.SAMPLE) runs; the whole corpus is marked
``full`` and runs with ``--full`` (or ``-m full``, or HAL_FULL_TESTS=1).

A case fails on a ``wrong`` or ``lost`` cell (a false refusal is lost), a case that cannot
be built, or a contract (names, input dtypes, output structure) that differs between devices.
The judging rules themselves are checked first, on arrays, without a model."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch (the reference backend's runtime) is not installed")

from hal_conformance import front_door as fd  # noqa: E402


def _full(config) -> bool:
    """tests/conftest.py deselects ``full`` tests unless asked; this is the same rule for a
    checkout whose conftest does not (yet) know the marker."""
    return bool(config.getoption("--full", default=False)) or "full" in (config.option.markexpr or "") \
        or "1" in (os.environ.get("HAL_FULL_TESTS"), os.environ.get("HAL_TEST_FULL"))


@pytest.fixture(scope="module")
def devices():
    return fd.corpus_devices()


def _verdicts(r: fd.CaseResult) -> str:
    return "\n".join(f"  {c.target}: {c.verdict} {c.metric} {c.message}"
                     + (f" [refusal {c.truth}: {c.truth_why}]" if c.truth else "") for c in r.cells)


#: what the corpus found and hal does not fix yet (reports/front_door.md says more): each is
#: expected to fail exactly so, and the test says when one no longer does (then drop it here)
KNOWN: dict[tuple[str, str], str] = {
    ("tflite-int8-fio", "openvino:CPU"):
        "wrong: OpenVINO's own int8 execution of the TFLite differs from LiteRT's (26.7 dB on "
        "one probe); OpenVINO called directly gives hal's answer",
}


def failures(r: fd.CaseResult) -> set[tuple[str, str]]:
    out = {(r.case.name, c.target) for c in r.cells if c.verdict in fd.FAILING}
    if r.structure:
        out.add((r.case.name, "contract"))
    return out


def check(r: fd.CaseResult) -> None:
    assert r.build_error is None, f"{r.case.name} could not be built: {r.build_error}"
    assert any(c.verdict in ("match", "wrong") for c in r.cells), \
        f"{r.case.name}: no device ran it\n{_verdicts(r)}"
    found = failures(r)
    known = {k for k in KNOWN if k[0] == r.case.name and k[1] in {c.target for c in r.cells} | {"contract"}}
    new = found - known
    assert not new, (f"{r.case.name}: {sorted(new)}\n{_verdicts(r)}"
                     + (f"\ncontract: {r.structure}" if r.structure else ""))
    gone = known - found
    assert not gone, f"{r.case.name}: {sorted(gone)} no longer fail(s): drop it from KNOWN"
    if found:
        pytest.xfail("; ".join(f"{t}: {KNOWN[(r.case.name, t)]}" for _, t in sorted(found)))


# --- the judge, on arrays -----------------------------------------------------------------
def test_compare_judges_values_shapes_and_counts():
    w = [np.linspace(-3, 3, 50, dtype=np.float32).reshape(5, 10), np.arange(5, dtype=np.int64)]
    fp32 = fd.TOLERANCES["fp32"]
    assert fd.compare([w[0] * (1 + 1e-6), w[1]], w, fp32, None)[0] is None
    assert "max|err|" in fd.compare([w[0] * 1.01, w[1]], w, fp32, None)[0]
    assert "differs by" in fd.compare([w[0], w[1] + 1], w, fp32, None)[0]
    assert "shape" in fd.compare([w[0].T, w[1]], w, fp32, None)[0]
    assert "outputs" in fd.compare([w[0]], w, fp32, None)[0]
    # an int8 output compared as its float value where hal dequantizes (Edge TPU float I/O)
    q = np.array([[-128, 0, 5, 127]], np.int8)
    deq = (q.astype(np.float32) - 3) * 0.5
    assert fd.compare([deq], [q], fd.TOLERANCES["int8"], [(0.5, 3)])[0] is None
    assert "SNR" in fd.compare([deq + 2.0], [q], fd.TOLERANCES["int8"], [(0.5, 3)])[0]


def test_structure_mismatch_is_found():
    a = fd.Cell("m", "a:0", "fp32", "match", inputs=["x"], outputs=["logits"], dtypes=["float32"],
                tree="dict{logits: array}")
    b = fd.Cell("m", "b:0", "fp32", "match", inputs=["x"], outputs=["logits"], dtypes=["float32"],
                tree="dict{logits: array}")
    assert fd.check_structure([a, b]) is None
    c = fd.Cell("m", "c:0", "fp32", "match", inputs=["input_0"], outputs=["output_0"],
                dtypes=["float32"], tree="array")
    msg = fd.check_structure([a, b, c])
    assert "input names" in msg and "output names" in msg and "structure" in msg and "c:0" in msg


def test_a_refusal_the_native_runtime_contradicts_is_lost(monkeypatch):
    from hal import Device

    dev = Device("reference", "cpu", "host", precisions=("fp32",))
    built = fd.Built(object(), [(np.zeros(2, np.float32),)], lambda xs: xs[0], "id")
    cell = fd.Cell("m", dev.target, "fp32", "refused", message="UnsupportedError: no")
    fd.judge_refusal(cell, built, dev, fd._Natives(built))  # torch eager ran it: false
    assert cell.verdict == "lost" and cell.truth == "false"
    edge = Device("edgetpu", "emulated", "emu", precisions=("int8",))
    cell = fd.Cell("m", edge.target, "fp32", "refused", message="UnsupportedError: int8 only")
    fd.judge_refusal(cell, built, edge, fd._Natives(built))
    assert cell.verdict == "refused" and cell.truth == "true"


# --- the corpus ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", fd.SAMPLE)
def test_sample(name, devices):
    check(fd.run_case(next(c for c in fd.CASES if c.name == name), devices))


@pytest.mark.full
@pytest.mark.parametrize("name", [c.name for c in fd.CASES if c.name not in fd.SAMPLE])
def test_corpus(name, devices, request):
    if not _full(request.config):
        pytest.skip("the whole corpus runs with --full (or -m full, or HAL_FULL_TESTS=1)")
    check(fd.run_case(next(c for c in fd.CASES if c.name == name), devices))
