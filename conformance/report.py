"""Render a :class:`~hal_conformance.results.Report`: rich table, JUnit XML, HTML."""

from __future__ import annotations

import base64
import html
import io
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from .models import MODELS
from .policy import FLOWS, POLICY
from .results import CellResult, Report

STYLE = {"pass": "green", "fail": "bold red", "unsupported": "dim", "error": "yellow",
         "crash": "bold magenta", "timeout": "magenta"}
MARK = {"pass": "✓", "fail": "✗", "unsupported": "–", "error": "error", "crash": "crash",
        "timeout": "timeout"}


def headline(c: CellResult) -> str:
    """The one number that matters for a cell: relative max error for float
    flows, top-1 agreement for int8 flows."""
    if c.top1_agreement is None:
        return ""
    if POLICY[c.precision].max_rel_err is not None:
        return "exact" if not c.max_abs_err else f"{c.rel_max_err:.1e}"
    return f"{c.top1_agreement:.1%}"


def _fmt(v, spec: str = ".3g", none: str = "") -> str:
    return none if v is None else format(v, spec)


def summary_line(r: Report) -> str:
    s = r.summary()
    parts = [f"{s[k]} {k}" for k in ("pass", "fail", "unsupported", "error", "crash", "timeout") if s[k]]
    dur = r.meta.get("duration_s")
    return (f"{s['cells']} cells ({s['runnable']} runnable): {', '.join(parts) or 'none'}"
            + (f" in {dur:.0f}s" if dur is not None else "")
            + ("" if r.complete else " [INCOMPLETE]"))


# --- rich -------------------------------------------------------------------------------
def rich_tables(r: Report):
    """Renderables for the console: the result matrix, then anything that needs a look."""
    from rich.table import Table
    from rich.text import Text

    from rich import box

    flows = [p for p in FLOWS if any(c.precision == p for c in r.cells)]
    t = Table(box=box.SIMPLE_HEAD, caption="float flows: max|err|/max|ref| against the fp64 "
              "oracle · int8 flows: top-1 agreement · – unsupported", caption_justify="left")
    t.add_column("device", no_wrap=True)
    t.add_column("kind", no_wrap=True)
    t.add_column("model", no_wrap=True)
    for p in flows:
        t.add_column(p, justify="right", no_wrap=True)
    t.add_column("p50 ms", justify="right", no_wrap=True)
    rows: dict[tuple, dict[str, CellResult]] = defaultdict(dict)
    order = list(MODELS)
    for c in r.cells:
        rows[(c.device, c.device_kind, c.model)][c.precision] = c
    last = None
    for (dev, kind, model) in sorted(rows, key=lambda k: (k[0], order.index(k[2]) if k[2] in order else 99)):
        cells = rows[(dev, kind, model)]
        row = [Text(dev if dev != last else ""),
               Text({"emulated": "emu", "hardware": "hw"}.get(kind, kind) if dev != last else "",
                    style="dim"), Text(model)]
        if last is not None and dev != last:
            t.add_section()
        last = dev
        for p in flows:
            c = cells.get(p)
            if c is None:
                row.append(Text(""))
                continue
            txt = MARK[c.result] + (f" {headline(c)}" if headline(c) else "")
            row.append(Text(txt, style=STYLE[c.result]))
        timed = [cells[p] for p in flows if p in cells and cells[p].latency_p50_ms is not None]
        row.append(Text(_fmt(timed[0].latency_p50_ms if timed else None, ".3f")
                        + (f" {timed[0].precision}" if timed and timed[0].precision != "fp32" else "")))
        t.add_row(*row)
    head = Text(f"hal conformance — {summary_line(r)}", style="bold")
    out = [head, t]
    problems = [c for c in sorted(r.cells, key=lambda c: c.id) if c.runnable and c.result != "pass"]
    if problems:
        pt = Table(title="cells that did not pass", title_justify="left", show_lines=False)
        pt.add_column("cell")
        pt.add_column("result")
        pt.add_column("why", overflow="fold")
        for c in problems:
            pt.add_row(c.id, Text(c.result, style=STYLE[c.result]), c.message[:400])
        out.append(pt)
    other = []
    for name, b in r.backends.items():
        for d in b.get("devices", []):
            if not d.get("available"):
                other.append((d["target"], f"unavailable ({d.get('kind')}): {d.get('reason')}"))
        if b.get("error"):
            other.append((name, f"backend error: {b['error']}"))
    for p in r.plugins:
        if p.get("error") and not str(p["error"]).startswith("disabled"):
            other.append((f"plugin {p['name']}", f"failed to load: {p['error']}"))
    for e in r.errors:
        other.append(("run", e))
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
        by_dev[c.device].append(c)
    total = defaultdict(int)
    for dev, cells in sorted(by_dev.items()):
        counts = {"tests": len(cells), "failures": sum(c.result == "fail" for c in cells),
                  "errors": sum(c.result in ("error", "crash", "timeout") for c in cells),
                  "skipped": sum(c.result == "unsupported" for c in cells)}
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
                      "compile_time_s", "artifact_size_bytes", "latency_p50_ms"):
                v = getattr(c, k)
                if v is not None:
                    ET.SubElement(cp, "property", name=k, value=str(v))
            if c.conversion_path:
                ET.SubElement(cp, "property", name="conversion_path", value=" → ".join(c.conversion_path))
            if c.result == "fail":
                ET.SubElement(tc, "failure", message=c.message[:1000], type="tolerance").text = c.message
            elif c.result in ("error", "crash", "timeout"):
                ET.SubElement(tc, "error", message=c.message[:1000], type=c.result).text = \
                    c.message + ("\n" + c.detail if c.detail else "")
            elif c.result == "unsupported":
                ET.SubElement(tc, "skipped", message=c.message[:1000])
    for k, v in total.items():
        root.set(k, str(v))
    ET.indent(root)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


# --- HTML -------------------------------------------------------------------------------
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def plot_errors(r: Report) -> str | None:
    """Relative max error per cell (log scale), one marker per flow, with the
    float flows' limits drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .results import _order

    cells = sorted((c for c in r.cells if c.rel_max_err is not None), key=_order)
    if not cells:
        return None
    fig, ax = plt.subplots(figsize=(max(8, len(cells) * 0.18), 4.5))
    colors = dict(zip(FLOWS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for i, c in enumerate(cells):
        y = max(c.rel_max_err, 1e-12)
        ax.scatter(i, y, color=colors[c.precision], marker="o" if c.result == "pass" else "x",
                   s=28, label=c.precision)
    for p in FLOWS:
        lim = POLICY[p].max_rel_err
        if lim is not None and any(c.precision == p for c in cells):
            ax.axhline(lim, color=colors[p], ls="--", lw=0.8)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    keys = [p for p in FLOWS if p in uniq]
    ax.legend([uniq[k] for k in keys], keys, fontsize=8, loc="upper left")
    ax.set_yscale("log")
    ax.set_ylabel("max |out − ref| / max |ref|")
    ax.set_xticks(range(len(cells)))
    ax.set_xticklabels([c.id for c in cells], rotation=90, fontsize=6)
    ax.set_title("error per cell (× = not a pass; dashed: the flow's limit)")
    return _png(fig)


def plot_latency(r: Report) -> str | None:
    """p50 latency per device, one bar group per model, one bar per flow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cells = [c for c in r.cells if c.latency_p50_ms is not None]
    if not cells:
        return None
    devices = sorted({c.device for c in cells})
    flows = [p for p in FLOWS if any(c.precision == p for c in cells)]
    models = [m for m in MODELS if any(c.model == m for c in cells)]
    fig, axes = plt.subplots(1, len(devices), figsize=(4.2 * len(devices), 3.8), squeeze=False,
                             sharey=True)
    w = 0.8 / max(1, len(flows))
    for ax, dev in zip(axes[0], devices):
        for j, p in enumerate(flows):
            vals = [next((c.latency_p50_ms for c in cells if c.device == dev and c.model == m
                          and c.precision == p), np.nan) for m in models]
            ax.bar(np.arange(len(models)) + j * w, vals, w, label=p)
        kind = next(c.device_kind for c in cells if c.device == dev)
        ax.set_title(f"{dev} ({kind})", fontsize=9)
        ax.set_xticks(np.arange(len(models)) + w * (len(flows) - 1) / 2)
        ax.set_xticklabels(models, rotation=45, fontsize=7)
        ax.set_yscale("log")
    axes[0][0].set_ylabel("p50 latency, ms (batch 1)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("latency per backend device")
    return _png(fig)


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;font-size:14px}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f0f0f0}td.l{text-align:left}.pass{background:#d9f2d9}.fail{background:#f8c6c6}
.unsupported{color:#888}.error{background:#fbeec0}.crash,.timeout{background:#ecd0f2}"""


def write_html(r: Report, path: str | Path) -> None:
    e = html.escape
    flows = [p for p in FLOWS if any(c.precision == p for c in r.cells)]
    out = [f"<!doctype html><meta charset='utf-8'><title>hal conformance</title><style>{_CSS}</style>",
           f"<h1>hal conformance</h1><p>{e(summary_line(r))}</p>",
           f"<p>oracle: {e(str(r.oracle.get('device', '?')))} at {e(str(r.oracle.get('precision', '')))} "
           f"({e(str(r.oracle.get('version', '')))}; {e(str(r.oracle.get('source', '')))}) · "
           f"hal {e(str(r.meta.get('hal_version')))} · host {e(str(r.meta.get('host')))} · "
           f"started {e(str(r.meta.get('started')))}</p>", "<h2>results</h2><table><tr><th>device</th>"
           "<th>kind</th><th>model</th>" + "".join(f"<th>{p}</th>" for p in flows) + "</tr>"]
    rows: dict[tuple, dict[str, CellResult]] = defaultdict(dict)
    for c in r.cells:
        rows[(c.device, c.device_kind, c.model)][c.precision] = c
    order = list(MODELS)
    for key in sorted(rows, key=lambda k: (k[0], order.index(k[2]) if k[2] in order else 99)):
        out.append(f"<tr><td class=l>{e(key[0])}</td><td class=l>{e(key[1])}</td><td class=l>{e(key[2])}</td>")
        for p in flows:
            c = rows[key].get(p)
            if c is None:
                out.append("<td></td>")
            else:
                out.append(f"<td class={c.result} title='{e(c.message)}'>{e(MARK[c.result])} "
                           f"{e(headline(c))}</td>")
        out.append("</tr>")
    out.append("</table>")
    for title, img in (("error per cell", plot_errors(r)), ("latency per backend", plot_latency(r))):
        if img:
            out.append(f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,{img}'>")
    cols = ["id", "result", "device_kind", "max_abs_err", "mean_abs_err", "snr_db", "top1_agreement",
            "accuracy", "compile_time_s", "artifact_size_bytes", "latency_p50_ms", "conversion_path",
            "message"]
    out.append("<h2>every cell</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for c in sorted(r.cells, key=lambda c: c.id):
        tds = []
        for k in cols:
            v = getattr(c, k)
            if k == "conversion_path":
                v = " → ".join(v)
            elif isinstance(v, float):
                v = f"{v:.4g}"
            cls = c.result if k == "result" else ("l" if k in ("id", "message", "conversion_path") else "")
            tds.append(f"<td class='{cls}'>{e('' if v is None else str(v))}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</table><h2>tolerance policy</h2><table><tr><th>flow</th><th>max err / max|ref|</th>"
               "<th>min SNR dB</th><th>min top-1</th><th>max accuracy drop (pts)</th><th>why</th></tr>")
    for p in FLOWS:
        t = POLICY[p]
        out.append(f"<tr><td class=l>{p}</td><td>{_fmt(t.max_rel_err, 'g', '—')}</td>"
                   f"<td>{_fmt(t.min_snr_db, 'g', '—')}</td><td>{t.min_top1:.1%}</td>"
                   f"<td>{_fmt(t.max_accuracy_drop_pts, 'g', '—')}</td><td class=l>{e(t.why)}</td></tr>")
    out.append("</table>")
    if r.errors:
        out.append("<h2>errors outside cells</h2><ul>" + "".join(f"<li>{e(x)}</li>" for x in r.errors) + "</ul>")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(out), encoding="utf-8")
