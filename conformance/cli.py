"""``hal conformance`` as a plain function, mounted by hal's CLI (and by
``python -m hal_conformance``)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _split(values: Sequence[str] | None) -> list[str] | None:
    """Repeated options and comma-separated lists both work: -b a -b b,c."""
    if not values:
        return None
    out = [v.strip() for item in values for v in str(item).split(",") if v.strip()]
    return out or None


def run_cli(backend: list[str] | None = None, model: list[str] | None = None,
            precision: list[str] | None = None, json_path: str | Path | None = None,
            junit_path: str | Path | None = None, html_path: str | Path | None = None,
            export_goldens: str | Path | None = None, goldens: str | Path | None = None,
            timeout_s: float = 300.0, jobs: int = 1, console=None, cluster: str | None = None,
            markdown_path: str | Path | None = None, cross_check: str = "first") -> int:
    """Run the conformance suite, print a table, write the requested reports.

    ``cluster`` (``host:port`` of a Ray head, or ``local``) runs it over every node of
    a Ray cluster instead of this host alone (see docs/lab.md).

    Returns the exit code: 0 when every runnable cell passed, 1 otherwise,
    2 for a usage error, 130 when interrupted (the JSON keeps finished cells).
    """
    from rich.console import Console

    import hal

    from . import report as rep
    from .results import CellResult
    from .runner import Options, Suite

    con = console or Console()
    if not con.is_terminal:
        con.width = max(con.width, 132)  # logs and README: do not squeeze the matrix
    err = Console(stderr=True)

    def note(msg: str) -> None:
        con.print(f"[dim]· {msg}[/dim]", highlight=False)

    def cell(c: CellResult) -> None:
        if c.result == "unsupported":
            return
        extra = rep.headline(c)
        con.print(f"[{rep.STYLE[c.result]}]{rep.MARK[c.result]:>7}[/] {c.id:<42} {extra:>9} "
                  + (f"[dim]{c.host:<12}[/dim] " if c.host else "")
                  + f"[dim]{c.duration_s or 0:5.1f}s[/dim]"
                  + (f"  [dim]{c.message[:160]}[/dim]" if c.result != "pass" else ""),
                  highlight=False)

    try:
        if export_goldens:
            if cluster:
                raise hal.UsageError("--export-goldens runs on this host, not on a cluster",
                                     "drop --cluster; pass the goldens to a lab run with --goldens")
            if goldens:
                raise hal.UsageError("--export-goldens and --goldens exclude each other",
                                     "export on the host with the reference stack, check elsewhere")
            from .goldens import export_goldens as export

            man = export(Path(export_goldens), _split(model), on_note=note, timeout_s=timeout_s)
            con.print(f"wrote goldens for {len(man['models'])} model(s) to {export_goldens} "
                      f"(oracle {man['oracle'].get('device')} {man['oracle'].get('version')})")
            return 0
        opts = Options(backends=_split(backend), models=_split(model), precisions=_split(precision),
                       timeout_s=timeout_s, startup_timeout_s=max(timeout_s, 120.0),
                       goldens=Path(goldens) if goldens else None, jobs=max(1, int(jobs or 1)),
                       json_path=Path(json_path) if json_path else None)
        if cluster:
            from .lab import Lab, LabOptions

            r = Lab(opts, LabOptions(cluster, cross_check, max(1, int(jobs or 1))),
                    on_cell=cell, on_note=note).run()
        else:
            r = Suite(opts, on_cell=cell, on_note=note).run()
    except hal.HalError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted" + (f"; finished cells are in {json_path}" if json_path else ""))
        return 130
    for t in rep.rich_tables(r):
        con.print(t)
    if r.meta.get("lab"):
        from .lab import lab_tables

        for t in lab_tables(r):
            con.print(t)
    if junit_path:
        rep.write_junit(r, junit_path)
    if html_path and r.meta.get("lab"):
        from .lab.reports import write_html

        write_html(r, html_path)  # the single-host page with a lab section
    elif html_path:
        rep.write_html(r, html_path)
    if markdown_path:
        from .lab.reports import write_markdown

        write_markdown(r, markdown_path)
    for what, p in (("JSON", json_path), ("JUnit", junit_path), ("HTML", html_path),
                    ("markdown", markdown_path)):
        if p:
            con.print(f"[dim]{what}: {p}[/dim]")
    return r.summary()["exit_code"]
