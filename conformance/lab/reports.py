"""The merged report of a lab run: the single-host writers, plus what only a lab has
(hosts and their versions, where each cell ran, cross-host consistency, node losses).

JSON is the single-host schema: every cell has ``host``, and ``meta.lab`` holds the
hosts, the consistency entries, the losses and the reruns. JUnit is the single-host
writer (each testcase has a ``host`` property). HTML is the single-host page with a
lab section; markdown is written here, for a pull request or a wiki page.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

from hal.paths import write_text_atomic

from .. import coverage
from .. import report as rep
from ..results import Report, Result, _order


def hosts_rows(r: Report) -> list[dict[str, Any]]:
    """One row per host: versions, plugins, backends, and what its cells did."""
    lab = r.meta.get("lab") or {}
    rows = []
    for host, h in sorted((lab.get("hosts") or {}).items()):
        counts = Counter(c.result for c in r.cells if c.host == host and c.runnable)
        plugins = [p["name"] for p in h.get("plugins") or () if p.get("loaded")
                   and not str(p.get("source")) == "default"]
        broken = [p["name"] for p in h.get("plugins") or () if p.get("error")
                  and not str(p["error"]).startswith("disabled")]
        backends = ", ".join(f"{b} {v.get('version') or '?'}" + (f" ({v.get('missing_runtime')})"
                                                                   if v.get("missing_runtime") else "")
                             for b, v in sorted((h.get("backends") or {}).items())
                             if not v.get("error"))
        rows.append({"host": host, "ip": h.get("ip"), "alive": h.get("alive"),
                     "hal": h.get("hal_version"), "python": h.get("python"),
                     "cpus": h.get("cpus"), "plugins": ", ".join(plugins),
                     "broken": ", ".join(broken), "backends": backends,
                     "devices": ", ".join(sorted(k.split("/", 2)[2] for k in h.get("resources") or {}
                                                 if k.startswith("hal/device/"))),
                     "cells": ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none",
                     "error": h.get("error")})
    return rows


def consistency_rows(r: Report) -> list[dict[str, Any]]:
    out = []
    for e in (r.meta.get("lab") or {}).get("consistency") or ():
        if "precisions" in e:
            out.append({"what": f"{e['target']} precisions", "hosts": ", ".join(sorted(e["precisions"])),
                        "verdict": "differ", "detail": e["why"]})
            continue
        pairs = e.get("pairs") or []
        detail = "; ".join(f"{p['a']}/{p['b']}: {_pair(p)}" for p in pairs)
        if e.get("missing"):
            detail += ("; " if detail else "") + f"no copy from {', '.join(e['missing'])}"
        verdict = ("agree" if e["agree"] and e.get("compared") else
                   "not compared" if e["agree"] else "DISAGREE")
        out.append({"what": e["cell"], "hosts": ", ".join(e.get("hosts") or {}), "verdict": verdict,
                    "detail": detail})
    return out


def _pair(p: dict[str, Any]) -> str:
    """One pair's comparison against its limit, e.g. ``1.8e-04 > 0.0001·max|ref|``."""
    if p.get("rule") == "max_rel_err":
        return f"{p['rel_diff']:.1e} {'≤' if p['agree'] else '>'} {p['limit']:g}·max|ref|"
    if p.get("rule") == "top1":
        return f"top-1 {p['top1_agreement']:.1%} {'≥' if p['agree'] else '<'} {p['limit']:.1%}"
    return p.get("why") or "same outcome"


#: above this many cells the markdown lists only the cells that did not pass
CELLS_LISTED = 300


def write_markdown(r: Report, path: str | Path) -> None:
    """The merged report as markdown: verdict, hosts, cross-host consistency, losses,
    then every cell with the host that ran it."""
    s = r.summary()
    lab = r.meta.get("lab") or {}
    md = [f"# hal conformance{' lab' if lab else ''}", "",
          f"**{'PASS' if r.passed else 'FAIL'}**: {rep.summary_line(r)}", ""]
    if lab:
        md += [f"Cluster `{lab.get('address')}`, {len(lab.get('hosts') or {})} host(s), "
               f"cross-check `{lab.get('cross_check')}`.", "", "## Hosts", "",
               "| host | hal | python | plugins | backends | devices | cells |",
               "|---|---|---|---|---|---|---|"]
        for h in hosts_rows(r):
            md.append(f"| {h['host']} | {h['hal'] or '?'} | {h['python'] or '?'} | "
                      f"{_md(h['plugins'])}{' (failed: ' + _md(h['broken']) + ')' if h['broken'] else ''} | "
                      f"{_md(h['backends'])} | {_md(h['devices'])} | {h['cells']}"
                      + (f" — {_md(h['error'])}" if h["error"] else "") + " |")
        rows = consistency_rows(r)
        md += ["", "## Cross-host consistency", ""]
        if rows:
            md += ["| cell | hosts | verdict | detail |", "|---|---|---|---|"]
            md += [f"| {x['what']} | {x['hosts']} | {x['verdict']} | {_md(x['detail'])} |" for x in rows]
        else:
            md.append("No device is on more than one host (or the cross-check is off).")
        losses = lab.get("losses") or []
        if losses:
            md += ["", "## Node losses", "", "| after | host | device | in flight | reason |",
                   "|---|---|---|---|---|"]
            md += [f"| {x['after_s']:.0f} s | {x['host']} | {x['target']} | {x.get('in_flight') or ''} | "
                   f"{_md(x['reason'])} |" for x in losses]
            reruns = lab.get("reruns") or []
            if reruns:
                md += ["", "Rerun elsewhere: " + ", ".join(f"{x['cell']} ({x['from']} → {x['to']})"
                                                          for x in reruns)]
    md += [""] + coverage.markdown(r)
    md += ["", "## Cells", "", "| cell | host | result | error / agreement | p50 ms | message |",
           "|---|---|---|---|---|---|"]
    for c in sorted(r.cells, key=lambda c: (_order(c), c.host or "")):
        if not c.runnable or (len(r.cells) > CELLS_LISTED and c.result == Result.PASS):
            continue
        md.append(f"| {c.id} | {c.host or ''} | {c.result} | {rep.headline(c)} | "
                  f"{'' if c.latency_p50_ms is None else f'{c.latency_p50_ms:.3f}'} | "
                  f"{_md(c.message[:200])} |")
    unsup = [c for c in r.cells if not c.runnable]
    if unsup:
        md += ["", f"{s['unsupported']} unsupported cell(s) (see the JSON or HTML report for why)."]
    nr = rep.not_run(r)
    if nr:
        md += ["", "## Not run", ""] + [f"- {_md(n.what)}: {_md(n.line())}" for n in nr]
    write_text_atomic(path, "\n".join(md) + "\n")


def _md(s: Any) -> str:
    return str(s or "").replace("|", "\\|").replace("\n", " ")


def html_section(r: Report) -> str:
    """The lab's part of the HTML page: hosts, consistency, losses, where each cell ran."""
    e = html.escape
    lab = r.meta.get("lab") or {}
    out = [f"<h2 id=lab>lab: {len(lab.get('hosts') or {})} host(s) on {e(str(lab.get('address')))}</h2>",
           "<table><tr><th class=l>host</th><th class=l>hal</th><th class=l>python</th>"
           "<th class=l>plugins</th><th class=l>backends</th><th class=l>devices</th>"
           "<th class=l>cells</th></tr>"]
    for h in hosts_rows(r):
        out.append(f"<tr><td class='l nw'>{e(h['host'])}<br><small>{e(str(h['ip']))}</small></td>"
                   f"<td class=l>{e(str(h['hal']))}</td><td class=l>{e(str(h['python']))}</td>"
                   f"<td class=l>{e(h['plugins'])}{'<br>failed: ' + e(h['broken']) if h['broken'] else ''}</td>"
                   f"<td class=l>{e(h['backends'])}</td><td class=l>{e(h['devices'])}</td>"
                   f"<td class=l>{e(h['cells'])}{'<br>' + e(str(h['error'])) if h['error'] else ''}</td></tr>")
    out.append("</table><h2 id=consistency>cross-host consistency</h2><p class=note>the same cell on "
               "every host with its device, compared with each other by the precision's own rule</p>")
    rows = consistency_rows(r)
    if rows:
        out.append("<table><tr><th class=l>cell</th><th class=l>hosts</th><th class=l>verdict</th>"
                   "<th class=l>detail</th></tr>")
        for x in rows:
            cls = "pass" if x["verdict"] == "agree" else "fail" if x["verdict"] != "not compared" else ""
            out.append(f"<tr><td class='l nw'>{e(x['what'])}</td><td class=l>{e(x['hosts'])}</td>"
                       f"<td class='l {cls}'>{e(x['verdict'])}</td><td class=l>{e(x['detail'])}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>no device is on more than one host (or the cross-check is off).</p>")
    losses = lab.get("losses") or []
    out.append(f"<h2 id=losses>node losses ({len(losses)})</h2>")
    if losses:
        out.append("<table><tr><th>after s</th><th class=l>host</th><th class=l>device</th>"
                   "<th class=l>in flight</th><th class=l>reason</th></tr>")
        out += [f"<tr><td>{x['after_s']:.0f}</td><td class=l>{e(x['host'])}</td><td class=l>"
                f"{e(x['target'])}</td><td class=l>{e(str(x.get('in_flight') or ''))}</td>"
                f"<td class=l>{e(x['reason'])}</td></tr>" for x in losses]
        out.append("</table>")
    out.append("<h2 id=where>where each cell ran</h2><table class=cells><tr><th class=l>cell</th>"
               "<th class=l>host</th><th class=l>result</th><th class=l>notes</th></tr>")
    for c in sorted(r.cells, key=_order):
        if c.runnable:
            out.append(f"<tr><td class='l nw'>{e(c.id)}</td><td class=l>{e(c.host or '')}</td>"
                       f"<td class='l {c.result}'>{e(c.result)}</td><td class=l>"
                       f"{e('; '.join(n for n in c.notes if n.startswith('rerun')))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def write_html(r: Report, path: str | Path) -> None:
    """The single-host page with the lab section before its end."""
    rep.write_html(r, path)
    if not r.meta.get("lab"):
        return
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    head, sep, tail = text.rpartition("</html>")
    write_text_atomic(p, (head + html_section(r) + sep + tail) if sep else text + html_section(r))


def write_junit(r: Report, path: str | Path) -> None:
    rep.write_junit(r, path)
