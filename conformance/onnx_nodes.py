"""ONNX's node test corpus as cells of the operator tier, for the targets that take ONNX.

The 1884 node cases of ``onnx.backend.test`` (one operator each, or its function body
"expanded" into other operators) run through the ``onnx.backend`` adapter
(:mod:`.onnx_backend`) in :mod:`.onnx_suite`'s crash-isolated workers, at fp32: each case
is judged by ONNX's own expected outputs and tolerances, not by hal's oracle. Every case
becomes a cell of suite ``onnx`` whose family is its ONNX operator, so the coverage matrix
gets a row per operator next to the torch operator tier's.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from .protocol import Outcome, Status
from .results import Reason, Result, Stage

SUITE = "onnx"
PRECISION = "fp32"
#: cases per worker process: a chunk is the unit the parallel scheduler hands out
CHUNK = 480
#: what ``-m`` names to select the corpus (alone, or next to torch operator families)
SELECTOR = "onnx"


@lru_cache(maxsize=1)
def cases() -> dict[str, str]:
    """Case name (``node/test_relu_cpu``, as :mod:`.onnx_suite` runs it) → its family: the
    node's operator, or ``<op> (expanded)`` for a function body expanded into other ops."""
    import warnings

    from onnx.backend.test.loader import load_model_tests

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow on purpose (Cast cases)
        loaded = load_model_tests(kind="node")
    single = {c.name: c.model.graph.node[0].op_type for c in loaded if len(c.model.graph.node) == 1}
    out = {}
    for c in loaded:
        if c.name in single:
            family = single[c.name]
        else:
            base = c.name.split("_expanded")[0]
            # the unexpanded sibling with the longest common name gives the operator
            sib = max((n for n in single if base.startswith(n) or n.startswith(base)),
                      key=lambda n: len(os.path.commonprefix([n, base])), default=None)
            family = f"{single[sib]} (expanded)" if sib else "(multi-node)"
        out[f"node/{c.name}_cpu"] = family
    return out


def select(selectors: list[str]) -> list[str]:
    """The case names for ``-m`` selectors: ``onnx`` (every case) or ``onnx:<Op>`` (that
    operator's cases, expanded ones included; case-blind). An unknown operator is a UsageError."""
    from hal import UsageError

    all_cases = cases()
    ops = {s.partition(":")[2].lower() for s in selectors if ":" in s}
    if not selectors or SELECTOR in selectors:
        return sorted(all_cases)
    base = {n: f.removesuffix(" (expanded)").lower() for n, f in all_cases.items()}
    unknown = sorted(ops - set(base.values()))
    if unknown:
        raise UsageError(f"ONNX's node corpus has no operator {', '.join(unknown)}",
                         f"use operator names such as "
                         f"{', '.join(sorted({f.removesuffix(' (expanded)') for f in all_cases.values()})[:12])}, …")
    return sorted(n for n in all_cases if base[n] in ops)


def chunks(names: list[str], size: int = CHUNK) -> list[list[str]]:
    return [names[i:i + size] for i in range(0, len(names), size)]


def run_chunk(target: str, names: list[str], workdir: Path, timeout_s: float,
              on_note=lambda s: None) -> dict[str, dict[str, Any]]:
    """Run ``names`` on hal ``target`` (one worker process, restarted after a crash)."""
    from .onnx_suite import run_runner, whose

    tmp = Path(tempfile.mkdtemp(prefix="onnx-", dir=workdir))
    res = run_runner(f"hal:{target}", names, tmp, timeout_s=timeout_s, on_note=on_note)
    for rec in res.results.values():
        rec["whose"] = whose(f"hal:{target}", rec)
    return res.results


#: exception types that mean the target declines a case (by design, or no conversion)
DECLINED = ("UnsupportedError", "NoConversionPath")


def outcome(rec: dict[str, Any]) -> Outcome:
    """One case's record from :mod:`.onnx_suite` as an :class:`Outcome` judged by ONNX's
    own expected outputs. The stage is the one hal tagged; where none was tagged, the
    attribution (:func:`.onnx_suite.whose`) says whose step it was."""
    r, msg, who = rec.get("result"), rec.get("message", ""), rec.get("whose", "")
    o = Outcome(Status.RAN, f"{who}: {msg}" if who and r != "pass" else "",
                duration_s=rec.get("seconds"))
    if r == "pass":
        o.judged = Result.PASS
    elif r == "fail":
        o.judged, o.stage, o.reason = Result.FAIL, Stage.COMPARE, Reason.EXTERNAL
    elif r in ("crash", "timeout"):
        o.judged, o.stage = Result(r), Stage.RUN
        o.reason = Reason.WORKER_DIED if r == "crash" else Reason.NO_ANSWER
    elif r == "skip" or any(t in DECLINED for t in rec.get("error_types") or ()):
        o.judged = Result.UNSUPPORTED
        conv = "converter" in who or "NoConversionPath" in (rec.get("error_types") or ())
        o.stage = Stage.CONVERT if conv else Stage.COMPILE
        o.reason = Reason.NO_CONVERSION if conv else Reason.REFUSED
    else:
        o.judged, o.reason = Result.ERROR, Reason.RAISED
        o.stage = Stage.of(rec.get("stage")) or (
            Stage.CONVERT if who.startswith("converter") else
            Stage.COMPILE if "compile" in who or "refused" in who else Stage.RUN)
    return o
