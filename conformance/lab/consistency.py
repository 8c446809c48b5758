"""Cross-host consistency: the same cell on two hosts with the same device must agree.

Each host's copy is judged against the oracle by the single-host rules; this compares
the copies with each other, by the rule of the cell's precision: float precisions by
max|a − b| against the precision's own max|err| limit (both scaled by max|ref|), int8 precisions
by the share of samples whose top-1 class agrees against the precision's top-1 minimum.
Two hosts that each pass can still disagree with each other by more than that; no
single-host run can see it.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np

from ..policy import POLICY
from ..results import CellResult


def compare_pair(a: np.ndarray | None, b: np.ndarray | None, ca: CellResult, cb: CellResult,
                 precision: str, ref: np.ndarray) -> dict[str, Any]:
    """Do two hosts' copies of one cell agree within the precision's tolerance?"""
    t = POLICY[precision]
    if a is None or b is None or a.shape != b.shape:
        same = ca.result == cb.result and a is None and b is None
        return {"agree": same, "rule": "outcome",
                "why": "" if same else f"{ca.result} on {ca.host}, {cb.result} on {cb.host}"}
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    max_ref = float(np.abs(ref).max()) or 1.0
    diff = float(np.abs(a64 - b64).max())
    top1 = float((a64.argmax(-1) == b64.argmax(-1)).mean())
    out = {"max_abs_diff": diff, "rel_diff": diff / max_ref, "top1_agreement": top1}
    if t.max_rel_err is not None:
        ok = diff <= t.max_rel_err * max_ref
        why = "" if ok else (f"max|{ca.host} − {cb.host}| = {diff / max_ref:.2e}·max|ref| "
                             f"> {t.max_rel_err:g}·max|ref|")
        return {**out, "agree": ok, "rule": "max_rel_err", "limit": t.max_rel_err, "why": why}
    ok = top1 >= t.min_top1
    why = "" if ok else f"top-1 agreement {ca.host}/{cb.host} {top1:.2%} < {t.min_top1:.1%}"
    return {**out, "agree": ok, "rule": "top1", "limit": t.min_top1, "why": why}


def compare_copies(target: str, kind: str, spec, copies: dict[str, tuple[CellResult, np.ndarray | None]],
                   hosts: list[str], ref: np.ndarray, versions: dict[str, Any]) -> dict[str, Any]:
    """One cell's copies on every host with its device: each pair compared."""
    entry: dict[str, Any] = {
        "target": target, "kind": kind, "model": spec.model, "precision": spec.precision,
        "cell": spec.id, "versions": {h: versions.get(h) for h in hosts},
        "hosts": {h: {k: getattr(c, k) for k in ("result", "rel_max_err", "snr_db", "top1_agreement",
                                                  "backend_version")}
                  for h, (c, _) in sorted(copies.items())},
        "missing": [h for h in hosts if h not in copies], "pairs": []}
    for ha, hb in combinations(sorted(copies), 2):
        (ca, a), (cb, b) = copies[ha], copies[hb]
        entry["pairs"].append({"a": ha, "b": hb, **compare_pair(a, b, ca, cb, spec.precision, ref)})
    bad = [p for p in entry["pairs"] if not p["agree"]]
    entry["agree"] = not bad
    entry["compared"] = len(copies) >= 2
    entry["why"] = (f"cross-host: {spec.id} disagrees: " + "; ".join(p["why"] for p in bad)
                    if bad else "")
    return entry


def compare_precisions(target: str, kind: str,
                       unsupported: dict[str, dict[str, str | None]]) -> dict[str, Any] | None:
    """Hosts with the same device that offer different precisions (a different runtime
    or plugin version, usually): one entry naming who offers what, or None."""
    offered = {h: sorted(p for p, why in f.items() if why is None and p in POLICY)
               for h, f in unsupported.items()}
    if len({tuple(v) for v in offered.values()}) <= 1:
        return None
    return {"target": target, "kind": kind, "precisions": offered, "agree": False,
            "why": f"cross-host: {target} offers different precisions: "
                   + "; ".join(f"{h}: {', '.join(v) or 'none'}" for h, v in sorted(offered.items()))}
