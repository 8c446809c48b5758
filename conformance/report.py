"""Render a :class:`~hal_conformance.results.Report`: rich table, JUnit XML, HTML."""

from __future__ import annotations

import base64
import html
import io
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hal.paths import atomic_file, write_text_atomic

from .models import MODELS
from .policy import JUDGED_PRECISIONS, POLICY
from .coverage import placement_text
from .results import Category, CellResult, Report, Result

#: each result's console style and matrix mark, as the :class:`Result` enum defines them
STYLE = {r.value: r.style for r in Result}
MARK = {r.value: r.mark for r in Result}


def headline(c: CellResult) -> str:
    """The one number that matters for a cell: relative max error for float
    precisions, top-1 agreement for int8 precisions (SNR for an operator, which has
    no classes)."""
    if c.rel_max_err is None:
        return ""
    if POLICY[c.precision].max_rel_err is not None:
        return "exact" if not c.max_abs_err else f"{c.rel_max_err:.1e}"
    if c.top1_agreement is None:
        return "exact" if c.snr_db is None else f"{c.snr_db:.0f} dB"
    return f"{c.top1_agreement:.1%}"


def _fmt(v, spec: str = ".3g", none: str = "") -> str:
    return none if v is None else format(v, spec)


def summary_line(r: Report) -> str:
    s = r.summary()
    parts = [f"{s[r.value]} {r.value}" for r in Result if s.get(r.value)]
    dur = r.meta.get("duration_s")
    return (f"{s['cells']} cells ({s['runnable']} runnable): {', '.join(parts) or 'none'}"
            + (f" in {dur:.0f}s" if dur is not None else "")
            + ("" if r.complete else " [INCOMPLETE]"))


class NotRun(NamedTuple):
    """Something the run could not test: a device, a backend, a plugin, or the run itself."""

    what: str
    kind: str  # the device's kind, or "backend" / "plugin" / "run"
    problem: str  # "unavailable", "backend error", "failed to load", "error"
    why: str

    def line(self) -> str:
        dev = self.kind not in ("backend", "plugin", "run")
        return f"{self.problem}{f' ({self.kind})' if dev else ''}: {self.why}"


def not_run(r: Report) -> list[NotRun]:
    """What the run could not test: unavailable devices with the backend's reason,
    backends and plugins that failed, errors outside any cell. The terminal, JSON and
    HTML reports all show this list."""
    out = []
    for name, b in sorted(r.backends.items()):
        for d in b.get("devices", []):
            if not d.get("available"):
                out.append(NotRun(d["target"] + (f" on {d['host']}" if d.get("host") else ""),
                                  str(d.get("kind") or "device"), "unavailable",
                                  d.get("reason") or "no reason given"))
        if b.get("error"):
            out.append(NotRun(name, "backend", "backend error", str(b["error"])))
    for p in r.plugins:
        if p.get("error") and not str(p["error"]).startswith("disabled"):
            out.append(NotRun(f"plugin {p['name']}", "plugin", "failed to load", str(p["error"])))
    for e in r.errors:
        out.append(NotRun("run", "run", "error", e))
    return out


# --- rich -------------------------------------------------------------------------------
def rich_tables(r: Report):
    """Renderables for the console: the result matrix, then anything that needs a look."""
    from rich.table import Table
    from rich.text import Text

    from rich import box

    head = Text(f"hal conformance — {summary_line(r)}", style="bold")
    if len({(c.target, c.model) for c in r.cells}) > MATRIX_ROWS:
        from .coverage import rich_summary

        return [head, rich_summary(r)] + _problems(r)
    precisions = [p for p in JUDGED_PRECISIONS if any(c.precision == p for c in r.cells)]
    t = Table(box=box.SIMPLE_HEAD, caption="float precisions: max|err|/max|ref| against the fp64 "
              "oracle · int8 precisions: top-1 agreement · – unsupported", caption_justify="left")
    t.add_column("device", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    t.add_column("model", no_wrap=True)
    for p in precisions:
        t.add_column(p, justify="right", no_wrap=True)
    t.add_column("p50 ms", justify="right", no_wrap=True)
    rows: dict[tuple, dict[str, CellResult]] = defaultdict(dict)
    order = list(MODELS)
    for c in r.cells:
        rows[(c.target, c.device_kind, c.model + ("@dynamic" if c.shapes == "dynamic" else ""))][c.precision] = c
    last = None
    for (dev, kind, model) in sorted(rows, key=lambda k: (k[0], order.index(k[2]) if k[2] in order else 99)):
        cells = rows[(dev, kind, model)]
        row = [Text(dev if dev != last else ""),
               Text({"emulated": "emu", "hardware": "hw"}.get(kind, kind) if dev != last else "",
                    style="dim"), Text(model)]
        if last is not None and dev != last:
            t.add_section()
        last = dev
        for p in precisions:
            c = cells.get(p)
            if c is None:
                row.append(Text(""))
                continue
            txt = MARK[c.result] + (f" {headline(c)}" if headline(c) else "")
            row.append(Text(txt, style=STYLE[c.result]))
        timed = [cells[p] for p in precisions if p in cells and cells[p].latency_p50_ms is not None]
        row.append(Text(_fmt(timed[0].latency_p50_ms if timed else None, ".3f")
                        + (f" {timed[0].precision}" if timed and timed[0].precision != "fp32" else "")))
        t.add_row(*row)
    return [head, t] + _problems(r)


#: above this many device × model rows the console shows totals, not the matrix
MATRIX_ROWS = 60
#: at most this many non-passing cells are listed on the console
PROBLEMS_LISTED = 80


def _problems(r: Report) -> list:
    """The cells that did not pass (with their stage), then what was not run."""
    from rich.table import Table
    from rich.text import Text

    out = []
    problems = [c for c in sorted(r.cells, key=lambda c: c.id) if c.runnable and c.result != Result.PASS]
    if problems:
        pt = Table(title="cells that did not pass", title_justify="left", show_lines=False)
        pt.add_column("cell")
        pt.add_column("result")
        pt.add_column("stage")
        pt.add_column("why", overflow="fold")
        for c in problems[:PROBLEMS_LISTED]:
            pt.add_row(c.id, Text(c.result, style=STYLE[c.result]), str(c.stage or ""),
                       c.message[:400])
        if len(problems) > PROBLEMS_LISTED:
            pt.add_row(f"… {len(problems) - PROBLEMS_LISTED} more", "", "",
                       "see the JSON, markdown or HTML report")
        out.append(pt)
    other = [(n.what, n.line()) for n in not_run(r)]
    if other:
        ot = Table(title="not run", title_justify="left")
        ot.add_column("what")
        ot.add_column("why", overflow="fold")
        for what, why in other:
            ot.add_row(what, why[:400])
        out.append(ot)
    return out


# --- JUnit ------------------------------------------------------------------------------
def write_junit(r: Report, path: str | Path) -> None:
    """One <testsuite> per device, one <testcase> per cell: fail → <failure>,
    error/crash/timeout → <error>, unsupported → <skipped>."""
    root = ET.Element("testsuites", name="hal conformance")
    by_dev: dict[str, list[CellResult]] = defaultdict(list)
    for c in r.cells:
        by_dev[c.target].append(c)
    total = defaultdict(int)
    for dev, cells in sorted(by_dev.items()):
        cats = [Result(c.result).category for c in cells]
        counts = {"tests": len(cells), "failures": cats.count(Category.FAILURE),
                  "errors": cats.count(Category.ERROR),
                  "skipped": cats.count(Category.SKIPPED) + cats.count(Category.NOT_JUDGED)}
        ts = ET.SubElement(root, "testsuite", name=f"hal.conformance.{dev}",
                           time=f"{sum(c.duration_s or 0 for c in cells):.3f}",
                           **{k: str(v) for k, v in counts.items()})
        for k, v in counts.items():
            total[k] += v
        props = ET.SubElement(ts, "properties")
        ET.SubElement(props, "property", name="device_kind", value=cells[0].device_kind)
        ET.SubElement(props, "property", name="device_name", value=cells[0].device_name)
        for c in sorted(cells, key=lambda c: c.id):
            tc = ET.SubElement(ts, "testcase", classname=f"hal.conformance.{dev}.{c.model}",
                               name=c.precision, time=f"{c.duration_s or 0:.3f}")
            cp = ET.SubElement(tc, "properties")
            for k in ("max_abs_err", "mean_abs_err", "snr_db", "top1_agreement", "accuracy",
                      "compile_time_s", "artifact_size_bytes", "latency_p50_ms", "host"):
                v = getattr(c, k)
                if v is not None:
                    ET.SubElement(cp, "property", name=k, value=str(v))
            if c.conversion_path:
                ET.SubElement(cp, "property", name="conversion_path", value=" → ".join(c.conversion_path))
            if c.runnable:
                ET.SubElement(cp, "property", name="placement", value=placement_text(c.placement))
            cat = Result(c.result).category
            if cat == Category.FAILURE:
                ET.SubElement(tc, "failure", message=c.message[:1000],
                              type=str(c.reason or "tolerance")).text = c.message
            elif cat == Category.ERROR:
                ET.SubElement(tc, "error", message=c.message[:1000], type=str(c.result)).text = \
                    c.message + ("\n" + c.detail if c.detail else "")
            elif cat in (Category.SKIPPED, Category.NOT_JUDGED):  # judged by nothing
                ET.SubElement(tc, "skipped", message=c.message[:1000])
    for k, v in total.items():
        root.set(k, str(v))
    ET.indent(root)
    with atomic_file(path) as f:
        ET.ElementTree(root).write(f, encoding="utf-8", xml_declaration=True)


# --- HTML -------------------------------------------------------------------------------
#: type sizes for the plots: readable at the size the page shows them, not 6-point ticks
_RC = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
       "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 13}
_OK, _BAD = "#1a7f37", "#cf222e"


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def judged_value(c: CellResult) -> float | None:
    """The number a cell is judged on in its precision's plot: max|err|/max|ref| for the
    float precisions, top-1 agreement for the int8 precisions (whose error size is not judged)."""
    return c.rel_max_err if POLICY[c.precision].max_rel_err is not None else c.top1_agreement


def plot_precision(r: Report, precision: str) -> str | None:
    """:func:`precision_figure` as a base64 PNG, or ``None`` when the precision has no judged cell."""
    fig = precision_figure(r, precision)
    return None if fig is None else _png(fig)


def precision_figure(r: Report, precision: str):
    """One precision's cells against that precision's own rule, one row per device · model: a float
    precision's relative error (log scale) against its limit, an int8 precision's top-1 agreement
    against its minimum. Each precision gets its own plot so that no point is drawn against a
    limit that does not judge it."""
    from .results import _order

    tol = POLICY[precision]
    # the zoo's cells only: each suite has its own limits, and the big suites have their matrix
    cells = sorted((c for c in r.cells if c.precision == precision and c.precision in POLICY
                    and c.suite == "quick" and judged_value(c) is not None), key=_order)
    if not cells:
        return None
    plt = _pyplot()
    is_float = tol.max_rel_err is not None
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(5.4, 1.3 + 0.3 * len(cells)))
        ys = list(range(len(cells)))[::-1]  # the first cell on top, as in the matrix
        if is_float:
            vals = [max(judged_value(c), 1e-12) for c in cells]
            limit = tol.max_rel_err
            lo = 10 ** np.floor(np.log10(min(vals + [limit])) - 0.5)
            hi = 10 ** np.ceil(np.log10(max(vals + [limit])) + 0.5)
            ax.set_xscale("log")
            ax.axvspan(limit, hi, color=_BAD, alpha=0.07, lw=0)
            ax.set_xlabel("max |out − ref| / max |ref|   (log scale; smaller is better)")
            rule = f"limit {limit:g}"
        else:
            vals = [100 * judged_value(c) for c in cells]
            limit = 100 * tol.min_top1
            lo, hi = min(vals + [limit]) - 1.0, 100.5
            ax.axvspan(lo, limit, color=_BAD, alpha=0.07, lw=0)
            ax.set_xlabel("top-1 agreement with the fp64 oracle, %   (larger is better)")
            rule = f"minimum {limit:g}%"
        ax.set_xlim(lo, hi)
        if not is_float:  # no tick past 100%
            ax.set_xticks([t for t in ax.get_xticks() if lo <= t <= 100])
        for y, v, c in zip(ys, vals, cells):
            ok = c.result == Result.PASS
            ax.scatter(v, y, s=55, marker="o" if ok else "X", color=_OK if ok else _BAD, zorder=3)
        ax.axvline(limit, color=_BAD, ls="--", lw=1.3, zorder=2)
        ax.text(limit, len(cells) - 0.45, f" {rule}", color=_BAD, va="bottom", ha="left")
        ax.set_yticks(ys)
        ax.set_yticklabels([f"{c.target}  {c.model}" for c in cells])
        ax.set_ylim(-0.7, len(cells) + 0.2)
        for i in range(1, len(cells)):  # a rule between devices
            if cells[i].target != cells[i - 1].target:
                ax.axhline(ys[i] + 0.5, color="#999", lw=0.6)
        ax.grid(axis="x", alpha=0.3)
        failing = sum(c.result != Result.PASS for c in cells)
        ax.set_title(f"{precision}: {len(cells) - failing} of {len(cells)} pass"
                     + (f", {failing} {'does' if failing == 1 else 'do'} not" if failing else ""),
                     loc="left")
        return fig


def plot_errors(r: Report) -> dict[str, str]:
    """One plot per precision that has judged cells (see :func:`plot_precision`), in precision order."""
    out = {}
    for p in JUDGED_PRECISIONS:
        img = plot_precision(r, p)
        if img:
            out[p] = img
    return out


def plot_latency(r: Report) -> str | None:
    """p50 latency per device (a grid of panels, three to a row), one bar group per model,
    one bar per precision, on one shared log axis."""
    cells = [c for c in r.cells if c.latency_p50_ms is not None]
    if not cells:
        return None
    plt = _pyplot()
    devices = sorted({c.target for c in cells})
    precisions = [p for p in JUDGED_PRECISIONS if any(c.precision == p for c in cells)]
    models = [m for m in MODELS if any(c.model == m for c in cells)]
    models += sorted({c.model for c in cells} - set(models))
    colors = dict(zip(JUDGED_PRECISIONS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    ncols = min(3, len(devices))
    nrows = -(-len(devices) // ncols)
    lat = [c.latency_p50_ms for c in cells if c.latency_p50_ms > 0]
    # a log axis only where the values span more than a decade and a half; its bars then
    # start a decade below the fastest, so that no bar's length is an accident of the axis
    log = bool(lat) and max(lat) / min(lat) > 30
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows + 0.6),
                                 squeeze=False, sharey=True)
        w = 0.8 / max(1, len(precisions))
        x = np.arange(len(models))
        for ax, dev in zip(axes.flat, devices):
            for j, p in enumerate(precisions):
                vals = [next((c.latency_p50_ms for c in cells if c.target == dev and c.model == m
                              and c.precision == p), np.nan) for m in models]
                ax.bar(x + j * w, vals, w, label=p, color=colors[p])
            kind = next(c.device_kind for c in cells if c.target == dev)
            ax.set_title(f"{dev} ({kind})")
            ax.set_xticks(x + w * (len(precisions) - 1) / 2)
            ax.set_xticklabels(models, rotation=30, ha="right")
            if log:
                ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3)
        if log:  # shared axis: set once, from every device's values
            axes.flat[0].set_ylim(10 ** np.floor(np.log10(min(lat)) - 1),
                                  max(lat) * 1.6)
        for ax in axes.flat[len(devices):]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel("p50 latency, ms (batch 1" + (", log scale)" if log else ")"))
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[p]) for p in precisions]
        fig.legend(handles, precisions, loc="upper center", ncol=len(precisions), frameon=False,
                   bbox_to_anchor=(0.5, 1.0))
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        return _png(fig)


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em 2em;font-size:15px;color:#1f2328;max-width:1500px}
h1{margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f3f4f6}td.l,th.l{text-align:left}td.nw{white-space:nowrap}tr.grp td{border-top:2px solid #8c959f}
.pass{background:#dafbe1}.fail{background:#ffcecb;font-weight:600}.unsupported{color:#8c959f}
.precision-not-honoured,.placement-not-honoured{background:#ffcecb;font-weight:600}.error,.lost{background:#fff1c2}.crash,.timeout{background:#f2d5ff}.oracle-disagreement{background:#d8f1f7}
.verdict{font-size:1.25em;font-weight:600;padding:.5em .8em;border-radius:6px;display:inline-block}
.verdict.ok{background:#dafbe1;color:#116329}.verdict.bad{background:#ffcecb;color:#82071e}
.meta,.note{color:#57606a}.scroll{overflow-x:auto}img{max-width:100%;height:auto}
.plots{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.plots figure{margin:0;flex:0 1 calc(50% - 1em)}
figcaption{color:#57606a;max-width:640px}
td.place{min-width:12em}td.path{min-width:26em}td.path small{color:#57606a}td.msg{min-width:20em}table.cells{font-size:13px}nav a{margin-right:1em}code{font-size:.95em}"""


def _kb(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _tip(c: CellResult) -> str:
    """A matrix cell's hover text: the result, the numbers behind it, any message."""
    parts = [f"{c.id}: {c.result}"]
    if c.rel_max_err is not None:
        parts.append(f"max|err|/max|ref| {c.rel_max_err:.3g}")
    if c.snr_db is not None:
        parts.append(f"SNR {c.snr_db:.1f} dB")
    if c.top1_agreement is not None:
        parts.append(f"top-1 {c.top1_agreement:.2%}")
    if c.accuracy is not None:
        parts.append(f"accuracy {c.accuracy:.2%}")
    if c.runnable:
        parts.append(f"placement: {placement_text(c.placement)}")
    return " · ".join(parts) + (f"\n{c.message}" if c.message else "")


def write_html(r: Report, path: str | Path) -> None:
    """One self-contained page for a person deciding what to trust: the verdict, what
    did not pass, the matrix, what was not run and why, one plot per precision against its
    own rule, latency, every runnable cell, the unsupported ones grouped by reason, and
    the policy."""
    e = html.escape
    s = r.summary()
    precisions = [p for p in JUDGED_PRECISIONS if any(c.precision == p for c in r.cells)]
    problems = [c for c in sorted(r.cells, key=lambda c: c.id) if c.runnable and c.result != Result.PASS]
    skipped = not_run(r)
    bad = not r.passed
    verdict = (f"{len(problems)} of {s['runnable']} runnable cells did not pass"
               + (f"; {len(r.errors)} error(s) outside cells" if r.errors else "")
               if bad else f"all {s['runnable']} runnable cells passed"
               + (f"; {s['unsupported']} unsupported" if s['unsupported'] else ""))
    oracle = r.oracle
    out = [f"<!doctype html><html lang=en><meta charset='utf-8'><title>hal conformance</title>"
           f"<style>{_CSS}</style>",
           "<h1>hal conformance</h1>",
           f"<p class='verdict {'bad' if bad else 'ok'}'>{'FAIL' if bad else 'PASS'}: {e(verdict)}</p>",
           f"<p>{e(summary_line(r))}</p>",
           f"<p class=meta>oracle: {e(str(oracle.get('target', '?')))} at "
           f"{e(str(oracle.get('precision', '')))} ({e(str(oracle.get('version', '')))}; "
           f"{e(str(oracle.get('source', '')))}) · hal {e(str(r.meta.get('hal_version')))} · "
           f"host {e(str(r.meta.get('host')))} ({e(str(r.meta.get('machine', '')))}, "
           f"{e(str(r.meta.get('cpu_count', '?')))} CPUs) · started {e(str(r.meta.get('started')))}</p>",
           "<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in (
               ("results", "results"), ("not-run", f"not run ({len(skipped)})"),
               ("plots", "error per precision"), ("latency", "latency"), ("cells", "every runnable cell"),
               ("unsupported", f"unsupported ({s['unsupported']})"), ("policy", "policy"))) + "</nav>"]
    if problems:
        out.append(f"<h2 id=problems>did not pass ({len(problems)})</h2><table><tr><th class=l>cell</th>"
                   "<th class=l>result</th><th class=l>why</th></tr>")
        for c in problems:
            out.append(f"<tr><td class='l nw'>{e(c.id)}</td><td class='l {c.result}'>{c.result}</td>"
                       f"<td class=l>{e(c.message)}</td></tr>")
        out.append("</table>")

    # the matrix
    out.append("<h2 id=results>results</h2><p class=note>float precisions (fp32, fp16, bf16): max|err| / "
               "max|ref| against the fp64 oracle · int8 precisions: top-1 agreement with the oracle · "
               "– unsupported (hover a cell for its numbers and message)</p>"
               "<table><tr><th class=l>device</th><th class=l>kind</th><th class=l>model</th>"
               + "".join(f"<th>{p}</th>" for p in precisions) + "<th>p50 ms</th></tr>")
    rows: dict[tuple, dict[str, CellResult]] = defaultdict(dict)
    for c in r.cells:
        rows[(c.target, c.device_kind, c.model + ("@dynamic" if c.shapes == "dynamic" else ""))][c.precision] = c
    order = list(MODELS)
    last = None
    for key in sorted(rows, key=lambda k: (k[0], order.index(k[2]) if k[2] in order else 99)):
        first = key[0] != last
        last = key[0]
        out.append(f"<tr class='{'grp' if first else ''}'><td class='l nw'>{e(key[0]) if first else ''}"
                   f"</td><td class=l>{e(key[1]) if first else ''}</td><td class=l>{e(key[2])}</td>")
        for p in precisions:
            c = rows[key].get(p)
            if c is None:
                out.append("<td></td>")
            else:
                out.append(f"<td class='{c.result} nw' title='{e(_tip(c))}'>{e(MARK[c.result])} "
                           f"{e(headline(c))}</td>")
        timed = [rows[key][p] for p in precisions if p in rows[key] and rows[key][p].latency_p50_ms is not None]
        out.append(f"<td class=nw>{_fmt(timed[0].latency_p50_ms if timed else None, '.3f')}"
                   + (f" <span class=note>{timed[0].precision}</span>"
                      if timed and timed[0].precision != "fp32" else "") + "</td></tr>")
    out.append("</table>")

    # what was not run
    out.append(f"<h2 id=not-run>not run ({len(skipped)})</h2>")
    if skipped:
        out.append("<p class=note>devices, backends and plugins that no cell could test here, "
                   "each with the reason it gave</p><table><tr><th class=l>what</th>"
                   "<th class=l>kind</th><th class=l>status</th><th class=l>why</th></tr>")
        for n in skipped:
            out.append(f"<tr><td class='l nw'>{e(n.what)}</td><td class=l>{e(n.kind)}</td>"
                       f"<td class='l nw'>{e(n.problem)}</td><td class=l>{e(n.why)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>every device of every installed backend was tested.</p>")

    from .coverage import html as coverage_html

    out.append(coverage_html(r))
    # plots
    imgs = plot_errors(r)
    out.append("<h2 id=plots>error per precision, against that precision's own rule</h2><p class=note>"
               "each precision is judged by its own rule, so each has its own plot: float precisions by "
               "max|err| / max|ref| against their limit (log scale), int8 precisions by top-1 agreement "
               "against their minimum (their error size is not judged). Green ●: pass · red ✕: "
               "not a pass · shaded: outside the rule. Cells that did not run have no point.</p>")
    if imgs:
        out.append("<div class=plots>")
        for p, img in imgs.items():
            t = POLICY[p]
            rule = (f"max|err| ≤ {t.max_rel_err:g}·max|ref|, SNR ≥ {t.min_snr_db:g} dB, "
                    if t.max_rel_err is not None else "")
            rule += f"top-1 ≥ {t.min_top1:.1%}"
            if t.max_accuracy_drop_pts is not None:
                rule += f", accuracy drop ≤ {t.max_accuracy_drop_pts:g} pt"
            out.append(f"<figure data-precision='{e(p)}'><img alt='{e(p)} cells against the {e(p)} rule' "
                       f"src='data:image/png;base64,{img}'><figcaption>{e(p)} rule: {e(rule)}"
                       "</figcaption></figure>")
        out.append("</div>")
    else:
        out.append("<p>no cell produced numbers to plot.</p>")
    lat = plot_latency(r)
    out.append("<h2 id=latency>latency per device</h2><p class=note>p50 of batch-1 calls after "
               "warm-up. Emulated devices run the device's artifact on the host, so their latency "
               "is the host's, not the device's.</p>")
    out.append(f"<img alt='p50 latency per device' src='data:image/png;base64,{lat}'>" if lat
               else "<p>no latency was measured.</p>")

    # every runnable cell
    cols = [("cell · conversion path", "id"), ("result", "result"),
            ("max|err|<br>/ max|ref|", "rel_max_err"), ("max|err|", "max_abs_err"),
            ("mean|err|", "mean_abs_err"), ("SNR<br>dB", "snr_db"), ("top-1", "top1_agreement"),
            ("accuracy", "accuracy"), ("compile<br>s", "compile_time_s"),
            ("artifact", "artifact_size_bytes"), ("p50<br>ms", "latency_p50_ms"),
            ("placement", "placement"), ("message", "message")]
    runnable = [c for c in sorted(r.cells, key=lambda c: c.id) if c.runnable]
    if not any(c.message for c in runnable):
        cols.pop()
    out.append(f"<h2 id=cells>every runnable cell ({len(runnable)})</h2><div class=scroll><table class=cells><tr>"
               + "".join(f"<th{' class=l' if k in ('id', 'message') else ''}>{t}</th>"
                         for t, k in cols) + "</tr>")
    for c in runnable:
        tds = []
        for _, k in cols:
            v = getattr(c, k)
            if k == "id":
                tds.append(f"<td class='l path'>{e(v)}<br><small>{e(' → '.join(c.conversion_path))}"
                           "</small></td>")
                continue
            if k == "placement":
                src = f"{v.get('source')}" if v else "the backend reported no placement"
                tds.append(f"<td class='l place' title='{e(src)}'>{e(placement_text(v))}</td>")
                continue
            if k == "artifact_size_bytes":
                v = _kb(v)
            elif k in ("top1_agreement", "accuracy") and v is not None:
                v = f"{v:.2%}"
            elif k == "snr_db" and v is None and c.max_abs_err == 0:
                v = "exact"
            elif isinstance(v, float):
                v = f"{v:.3g}"
            cls = {"result": f"l {c.result}", "message": "l msg"}.get(k, "nw")
            tds.append(f"<td class='{cls}'>{e('' if v is None else str(v))}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</table></div>")

    # unsupported, grouped by reason: every combination is in the report, none silently absent
    groups: dict[tuple[str, str], list[CellResult]] = defaultdict(list)
    for c in r.cells:
        if not c.runnable:
            groups[(c.target, c.message)].append(c)
    out.append(f"<h2 id=unsupported>unsupported ({s['unsupported']})</h2>")
    if groups:
        out.append("<p class=note>cells the backend declined before compiling or at compile time, "
                   "with its reason; these are honest refusals, not failures</p><table><tr>"
                   "<th class=l>device</th><th class=l>precision</th><th class=l>models</th>"
                   "<th class=l>reason</th></tr>")
        for (dev, msg), cs in sorted(groups.items(), key=lambda kv: (kv[0][0], _precision_index(kv[1][0]))):
            fl = sorted({c.precision for c in cs}, key=lambda p: JUDGED_PRECISIONS.index(p) if p in JUDGED_PRECISIONS else 99)
            ms = [m for m in order if any(c.model == m for c in cs)]
            ms += sorted({c.model for c in cs} - set(ms))
            out.append(f"<tr><td class='l nw'>{e(dev)}</td><td class='l nw'>{e(', '.join(fl))}</td>"
                       f"<td class=l>{e(', '.join(ms))}</td><td class=l>{e(msg)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>none.</p>")

    out.append("<h2 id=policy>tolerance policy</h2><table><tr><th class=l>precision</th>"
               "<th>max err / max|ref|</th><th>min SNR dB</th><th>min top-1</th>"
               "<th>max accuracy drop (pts)</th><th class=l>why</th></tr>")
    for p in JUDGED_PRECISIONS:
        t = POLICY[p]
        out.append(f"<tr><td class=l>{p}</td><td>{_fmt(t.max_rel_err, 'g', '—')}</td>"
                   f"<td>{_fmt(t.min_snr_db, 'g', '—')}</td><td>{t.min_top1:.1%}</td>"
                   f"<td>{_fmt(t.max_accuracy_drop_pts, 'g', '—')}</td><td class=l>{e(t.why)}</td></tr>")
    out.append("</table></html>")
    write_text_atomic(path, "\n".join(out))


def _precision_index(c: CellResult) -> int:
    return JUDGED_PRECISIONS.index(c.precision) if c.precision in JUDGED_PRECISIONS else 99
