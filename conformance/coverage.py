"""What a vendor reads first: per device and precision, how many cells passed, and which
operators or architectures broke at which stage.

The operator tier's coverage matrix has one row per operator family and one column per
device × precision; each entry counts that family's cases (``✓`` all pass, ``3/5`` three
of five pass, ``–`` unsupported, ``·`` not run). Used by the console, the markdown
summary (``--markdown``, meant for a pull request) and the HTML report.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .policy import JUDGED_PRECISIONS
from .results import Category, CellResult, Report, Result

#: results that are not the backend declining: counted as "broken" in summaries
BROKEN = tuple(r for r in Result if r.category in (Category.FAILURE, Category.ERROR))
#: the totals' columns: every result kind, as the report names it
TOTALS = [(r.value, {Result.PRECISION_NOT_HONOURED: "not honoured",
                     Result.PLACEMENT_NOT_HONOURED: "placement hidden"}.get(r, r.value)) for r in Result]


def columns(cells: list[CellResult]) -> list[tuple[str, str]]:
    """(target, precision) pairs that have cells, in report order."""
    seen = {(c.target, c.precision) for c in cells}
    targets = sorted({t for t, _ in seen})
    return [(t, p) for t in targets for p in JUDGED_PRECISIONS if (t, p) in seen]


#: the tiers a report's cells come from, in the order summaries list them
TIERS = (("quick", "zoo"), ("ops", "operators"), ("onnx", "ONNX nodes"), ("models", "architectures"))
#: the matrices: suite, title, row heading
MATRICES = (("ops", "Operator coverage", "family"),
            ("onnx", "ONNX node corpus (fp32, judged by ONNX's expected outputs)", "operator"),
            ("models", "Architectures", "model"))


def totals(r: Report) -> list[dict]:
    """One row per tier × device × precision: counts of every result."""
    by: dict[tuple[str, str, str], Counter] = defaultdict(Counter)
    for c in r.cells:
        by[(c.suite, c.target, c.precision)][Result(c.result).value] += 1
    out = []
    for suite, label in TIERS:
        cells = [c for c in r.cells if c.suite == suite]
        out += [{"tier": label, "target": t, "precision": p, **by[(suite, t, p)]}
                for t, p in columns(cells)]
    return out


def entry(cells: list[CellResult]) -> str:
    """One matrix entry for the cases of one row at one device × precision."""
    if not cells:
        return "·"
    runnable = [c for c in cells if c.runnable]
    if not runnable:
        return "–"
    ok = sum(1 for c in runnable if c.result == Result.PASS)
    if ok == len(runnable):
        return "✓" if len(runnable) == 1 else f"✓{len(runnable)}"
    if len(runnable) == 1:
        return {Result.FAIL: "✗", Result.PRECISION_NOT_HONOURED: "≠",
                Result.PLACEMENT_NOT_HONOURED: "⌂"}.get(runnable[0].result, "E")
    return f"{ok}/{len(runnable)}"


def matrix(r: Report, suite: str) -> tuple[list[tuple[str, str]], list[tuple[str, list[str]]]]:
    """(columns, rows) of one suite: rows are operator families (ops) or models."""
    cells = [c for c in r.cells if c.suite == suite]
    cols = columns(cells)
    groups: dict[str, dict[tuple[str, str], list[CellResult]]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    for c in sorted(cells, key=_case_order):
        key = c.family if suite in ("ops", "onnx") else c.model + ("@dynamic" if c.shapes == "dynamic" else "")
        if key not in groups:
            order.append(key)
        groups[key][(c.target, c.precision)].append(c)
    return cols, [(k, [entry(groups[k].get(col, [])) for col in cols]) for k in order]


def broken_by_stage(r: Report) -> dict[str, list[CellResult]]:
    """Every runnable cell that did not pass, grouped by the stage it broke at."""
    out: dict[str, list[CellResult]] = defaultdict(list)
    for c in sorted(r.cells, key=_case_order):
        if c.runnable and c.result != Result.PASS:
            out[str(c.stage or "unknown")].append(c)
    return dict(out)


def markdown(r: Report, max_listed: int = 300) -> list[str]:
    """The summary for a pull request: totals, each suite's matrix, what broke where."""
    md = ["## Totals", "", "| tier | device | precision | " + " | ".join(n for _, n in TOTALS) + " |",
          "|---|---|---|" + "---|" * len(TOTALS)]
    for t in totals(r):
        md.append(f"| {t['tier']} | {t['target']} | {t['precision']} | "
                  + " | ".join(str(t.get(k, 0)) for k, _ in TOTALS) + " |")
    for suite, title, heading in MATRICES:
        cols, rows = matrix(r, suite)
        if not rows:
            continue
        md += ["", f"## {title}", "",
               "`✓` every case passed (`✓3`: all three) · `2/5` two of five runnable cases "
               "passed · `✗` failed · `≠` precision not honoured · `⌂` placement not honoured "
               "(host ops hidden) · `E` error, crash or timeout · "
               "`–` unsupported · `·` not run", "",
               f"| {heading} | "
               + " | ".join(f"{t} {p}" for t, p in cols) + " |",
               "|---|" + "---|" * len(cols)]
        md += [f"| {name} | " + " | ".join(row) + " |" for name, row in rows]
    md += placement_markdown(r)
    stages = broken_by_stage(r)
    if stages:
        md += ["", "## Not passing, by stage", "",
               "| stage | cells |", "|---|---|"]
        md += [f"| {s} | {len(cs)} |" for s, cs in stages.items()]
        md += ["", "| cell | result | stage | why |", "|---|---|---|---|"]
        listed = [c for cs in stages.values() for c in cs]
        for c in listed[:max_listed]:
            md.append(f"| {c.id} | {c.result} | {c.stage or ''} | {_md(c.message[:300])} |")
        if len(listed) > max_listed:
            md.append(f"| … {len(listed) - max_listed} more in the JSON report | | | |")
    return md


def placement_text(p: dict | None) -> str:
    """One cell's placement in a few words: where its ops ran, or that nothing says."""
    if p is None:
        return "not reported"
    host = p.get("host_ops") or 0
    return (f"{p.get('device_ops', 0)} on device, {host} on host"
            + (f" ({', '.join(p.get('host') or [])})" if host else "")
            + (f", {io} converting the model's I/O on the host" if (io := p.get("io_ops")) else "")
            + (" · emulated" if p.get("emulated") else ""))


def host_cpus(r: Report) -> set[str]:
    """The targets the run's backends declared the host's own CPU (``Device.host_cpu``)."""
    return {d.get("target") for b in r.backends.values() for d in b.get("devices", [])
            if d.get("host_cpu")}


def placement_rows(r: Report) -> list[dict]:
    """Per device: how many of its runnable cells reported a placement, how many ran every
    op on the device, how many ran ops on the host, and the records' sources."""
    by: dict[str, list[CellResult]] = defaultdict(list)
    for c in r.cells:
        if c.runnable:
            by[c.target].append(c)
    host = host_cpus(r)
    out = []
    for target, cs in sorted(by.items()):
        rep = [c for c in cs if c.placement is not None]
        out.append({"target": target + (" (host CPU)" if target in host else ""),
                    "cells": len(cs), "reported": len(rep),
                    "all_on_device": sum(1 for c in rep if not c.placement.get("host_ops")),
                    "host_ops": sum(1 for c in rep if c.placement.get("host_ops")),
                    "not_reported": len(cs) - len(rep),
                    "sources": sorted({str(c.placement.get("source")) + (" (emulated)" if
                                       c.placement.get("emulated") else "") for c in rep})})
    return out


def placement_markdown(r: Report) -> list[str]:
    """The markdown report's placement section: per device, then every cell whose ops did
    not all run on the device (or that reported nothing) with its placement."""
    rows = placement_rows(r)
    if not rows:
        return []
    md = ["", "## Placement", "",
          "Where each runnable cell's ops ran, as the runtime reported it (`hal.placement`); a "
          "device that is not the host CPU must report it (the host CPU owes none).", "",
          "| device | runnable cells | placement reported | every op on the device | ops on the host "
          "| not reported | source |", "|---|---|---|---|---|---|---|"]
    md += [f"| {x['target']} | {x['cells']} | {x['reported']} | {x['all_on_device']} | "
           f"{x['host_ops']} | {x['not_reported']} | {_md(', '.join(x['sources']))} |" for x in rows]
    host = host_cpus(r)
    odd = [c for c in sorted(r.cells, key=_case_order) if c.runnable and (
        c.placement.get("host_ops") if c.placement is not None else c.target not in host)]
    if odd:
        md += ["", "| cell | result | placement |", "|---|---|---|"]
        md += [f"| {c.id} | {c.result} | {_md(placement_text(c.placement))} |" for c in odd[:300]]
        if len(odd) > 300:
            md.append(f"| … {len(odd) - 300} more in the JSON report | | |")
    return md


def html(r: Report) -> str:
    """The operator coverage matrix and the architecture matrix as HTML tables."""
    import html as h

    out = []
    for suite, title, heading in MATRICES:
        cols, rows = matrix(r, suite)
        if not rows:
            continue
        out.append(f"<h2 id={suite}>{h.escape(title)}</h2><p class=note>✓ every case passed · 2/5 two of "
                   "five runnable cases passed · ✗ failed · ≠ precision not honoured · ⌂ placement "
                   "not honoured · E error, "
                   "crash or timeout · – unsupported · · not run</p><div class=scroll><table><tr>"
                   f"<th class=l>{heading}</th>"
                   + "".join(f"<th>{h.escape(t)}<br>{p}</th>" for t, p in cols) + "</tr>")
        for name, row in rows:
            out.append(f"<tr><td class=l>{h.escape(name)}</td>"
                       + "".join(f"<td>{h.escape(x)}</td>" for x in row) + "</tr>")
        out.append("</table></div>")
    return "".join(out)


def rich_summary(r: Report):
    """The console's view of a large run: device × precision totals (the full matrix is
    in the markdown and HTML reports)."""
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, title="cells per device and precision", title_justify="left")
    for col in ("tier", "device", "precision"):
        t.add_column(col)
    for _, name in TOTALS:
        t.add_column(name, justify="right")
    for x in totals(r):
        t.add_row(x["tier"], x["target"], x["precision"], *(str(x.get(k, 0)) for k, _ in TOTALS))
    return t


def _case_order(c: CellResult) -> tuple:
    from .cases import position

    return (position(c.model), c.target, JUDGED_PRECISIONS.index(c.precision)
            if c.precision in JUDGED_PRECISIONS else 99)


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")
