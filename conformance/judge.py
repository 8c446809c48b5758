"""The judge: a cell's :class:`~.results.CellResult` from its spec, how it ended where it
ran and the oracle's reference, by the tolerance policy (:mod:`.policy`).

Pure: no files, no workers, no clock. One host, a lab's driver and the pytest plugin
judge with this one function, so the same outputs get the same verdict everywhere.
"""

from __future__ import annotations

import numpy as np

from hal.placement import stated

from . import cases
from .goldens import Reference
from .plan import CellSpec
from .policy import ROUNDTRIP_MAX_REL, Metrics, compare, honesty, judge as broken_rules
from .protocol import Outcome, Status
from .results import CellResult, Reason, Report, Result, Stage

_KEPT = ("compile_time_s", "artifact_size_bytes", "latency_p50_ms", "latency_batch",
         "roundtrip_max_abs", "backend_version", "duration_s", "detail", "host")


def judge(spec: CellSpec, outcome: Outcome, reference: Reference | None) -> CellResult:
    """The verdict on one cell. ``reference``: the oracle's outputs for its model (None
    where the case brings its own verdict, as ONNX's node cases do)."""
    d = spec.device
    c = CellResult(spec.id, spec.backend, d.target, d.name, d.kind, spec.model, spec.precision,
                   suite=spec.suite, family=spec.family, shapes=spec.shapes.value)
    for k in _KEPT:
        if getattr(outcome, k) is not None:
            setattr(c, k, getattr(outcome, k))
    c.conversion_path, c.notes = list(outcome.conversion_path), list(outcome.notes)
    c.placement = outcome.placement
    c.host = outcome.host or d.host
    if outcome.judged is not None:  # the case's own test judged it
        c.result, c.message = outcome.judged, outcome.message
        if c.result != Result.PASS:
            c.reason = outcome.reason or Reason.EXTERNAL
            c.stage = outcome.stage or c.reason.stage
        return c
    if outcome.status != Status.RAN:
        c.result, c.message = outcome.status.result, outcome.message or f"the cell ended {outcome.status}"
        c.reason = outcome.reason or outcome.status.reason
        c.stage = outcome.stage or c.reason.stage
        return c
    if reference is None or outcome.outputs is None:
        c.result, c.reason = Result.ERROR, Reason.NO_REFERENCE if reference is None else Reason.NO_OUTPUT
        c.message = ("no reference output for this model" if reference is None
                     else "the runner sent no outputs")
        c.stage = c.reason.stage
        return c
    out, ref = outcome.outputs, reference
    c.reference_accuracy = ref.accuracy
    if out.shape != ref.outputs.shape:
        return _failed(c, Reason.SHAPE, f"output shape {out.shape} differs from the "
                                         f"reference's {ref.outputs.shape}")
    if not np.isfinite(out).all():
        return _failed(c, Reason.NOT_FINITE, f"{int((~np.isfinite(out)).sum())} outputs are NaN or Inf")
    m = compare(out, ref.outputs, ref.labels)
    for k, v in m.to_dict().items():
        setattr(c, k, v)
    if cases.catalogue()[spec.model].kind == "tensor":
        c.top1_agreement = None  # an operator's output has no classes
    kind = [] if outcome.device_kind == d.kind else [
        f"the executable says kind={outcome.device_kind} but {d.target} is {d.kind}"]
    rt = outcome.roundtrip_max_abs
    if rt is not None and rt > ROUNDTRIP_MAX_REL * m.max_abs_ref:
        rules = broken_rules(m, spec.precision, ref.accuracy, spec.suite, ref.emulated)
        return _placed(_failed(c, Reason.ROUNDTRIP, "; ".join(
            rules + kind + [f"the reloaded artifact differs from the compiled one by {rt:.3g} "
                            f"(> {ROUNDTRIP_MAX_REL:g}·max|ref|)"])), spec, outcome)
    verdict(c, m, ref.accuracy, ref.emulated, kind)
    return _placed(c, spec, outcome)


def hidden_placement(spec: CellSpec, outcome: Outcome) -> str:
    """Why the cell's executable does not honour placement ("" when it does): a device
    that is not the host CPU (``host_cpu``) reported no placement, or a placement record
    (at compile, after running, or the reloaded artifact's) lists host ops that the
    executable's notes do not state, i.e. the core's ``allow_host_ops`` gate never saw them."""
    d = spec.device
    why = []
    if outcome.placement is None and not d.host_cpu:
        why.append(f"{d.target} is not declared the host CPU (Device.host_cpu) and its executable "
                   "reports no placement (Runner.placement() gave none): nothing shows which ops "
                   "ran on the host")
    for when, rec in [("at compile", outcome.placement)] + [
            (str(r.get("when") or "later"), r) for r in outcome.placement_later]:
        if rec is not None and not stated(rec, outcome.notes):
            named = ", ".join(rec.get("host") or [])
            why.append(f"its placement {when} lists {rec.get('host_ops')} op(s) on the host "
                       f"({named}) that the executable does not state: the allow_host_ops gate "
                       "was bypassed")
    return "; ".join(why)


def _placed(c: CellResult, spec: CellSpec, outcome: Outcome) -> CellResult:
    """Placement honesty, after the policy: a cell it passes becomes
    ``placement-not-honoured``; a failure keeps its result and says this too."""
    why = hidden_placement(spec, outcome)
    if not why:
        return c
    if c.result == Result.PASS:
        c.result, c.reason, c.stage, c.message = (Result.PLACEMENT_NOT_HONOURED, Reason.PLACEMENT,
                                                  Stage.COMPARE, why)
    else:
        c.message = "; ".join(x for x in (c.message, why) if x)
    return c


def _failed(c: CellResult, reason: Reason, message: str) -> CellResult:
    c.result, c.reason, c.stage, c.message = Result.FAIL, reason, reason.stage, message
    return c


def verdict(c: CellResult, m: Metrics, reference_accuracy: float | None,
            emulated: dict[str, float | None], kind: list[str] | None = None) -> None:
    """Set a cell's result from its metrics: the tolerance policy of its suite, then
    precision honesty (only for a cell the policy passes: a failure says more)."""
    broken = broken_rules(m, c.precision, reference_accuracy, c.suite, emulated) + list(kind or ())
    dishonest = honesty(c.precision, m.rel_max_err, emulated)
    if dishonest and not broken:
        c.result, c.message, c.reason = Result.PRECISION_NOT_HONOURED, dishonest, Reason.DISHONEST
        c.stage = Stage.COMPARE
        return
    c.result = Result.FAIL if broken else Result.PASS
    c.message = "; ".join(broken + ([dishonest] if dishonest else []))
    c.reason = (Reason.KIND if kind else Reason.TOLERANCE) if broken else None
    c.stage = Stage.COMPARE if broken else None


def rejudge(report: Report) -> int:
    """Judge a finished report's cells again from their stored metrics under the current
    policy (a policy change need not rerun the models); returns how many changed. Only
    the policy's own verdicts (a pass, a tolerance or honesty failure) are judged again."""
    changed = 0
    for c in report.cells:
        if c.rel_max_err is None or not (c.result == Result.PASS or (
                c.reason is not None and c.reason.rejudgeable)):
            continue
        m = Metrics(c.max_abs_err, c.mean_abs_err, c.max_abs_ref, c.rel_max_err, c.snr_db,
                    c.top1_agreement if c.top1_agreement is not None else 1.0, c.accuracy)
        before = (c.result, c.message)
        verdict(c, m, c.reference_accuracy,
                (report.models.get(c.model) or {}).get("emulated_rel_err") or {})
        changed += (c.result, c.message) != before
    return changed


__all__ = ["hidden_placement", "judge", "rejudge", "verdict"]
