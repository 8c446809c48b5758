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
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from .results import CellResult, Result, Stage

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


#: a refusal by design or a missing conversion: the target declines the case
_DECLINED = re.compile(r"UnsupportedError|NoConversionPath|passes tensors only|is (a sequence|a map|"
                       r"an empty optional)")


def cell(device: dict[str, Any], backend: str, name: str, rec: dict[str, Any]) -> CellResult:
    """One case's record from :mod:`.onnx_suite` as a conformance cell."""
    target = device["target"]
    c = CellResult(f"{target}/{name}/{PRECISION}", backend, target, device["name"], device["kind"],
                   name, PRECISION, suite=SUITE, family=cases().get(name, "?"),
                   duration_s=rec.get("seconds"))
    r, msg, who = rec.get("result"), rec.get("message", ""), rec.get("whose", "")
    if r == "pass":
        c.result = Result.PASS
        return c
    c.message = f"{who}: {msg}" if who else msg
    if r == "fail":
        c.result, c.stage = Result.FAIL, Stage.COMPARE
    elif r in ("crash", "timeout"):
        c.result, c.stage = Result(r), Stage.RUN
    elif r == "skip" or _DECLINED.search(msg):
        c.result, c.stage = Result.UNSUPPORTED, (Stage.CONVERT if "converter" in who else Stage.COMPILE)
    else:  # the stage hal tagged the error with, else what the attribution says
        c.result = Result.ERROR
        c.stage = Stage(rec["stage"]) if rec.get("stage") in Stage._value2member_map_ else (
            Stage.CONVERT if who.startswith("converter") else
            Stage.COMPILE if "compile" in who or "refused" in who else Stage.RUN)
    return c
