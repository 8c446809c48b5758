"""What ``hal conformance`` and ``python -m hal_conformance`` do, as a plain
function of :class:`~hal_conformance.options.Options`: run, print, write reports."""

from __future__ import annotations

from .options import Options


def run_cli(opts: Options, console=None) -> int:
    """Run the conformance suite, print a table, write the requested reports.

    ``opts.cluster`` (``host:port`` of a Ray head, or ``local``) runs it over every
    node of a Ray cluster instead of this host alone (see docs/lab.md).

    Returns the exit code: 0 when every runnable cell passed, 1 otherwise,
    2 for a usage error, 130 when interrupted (the JSON keeps finished cells).
    """
    import hal
    from hal.cli import SafeConsole as Console

    from . import report as rep
    from .results import CellResult, Result
    from .runner import Suite, export_goldens

    con = console or Console()
    if not con.is_terminal:
        con.width = max(con.width, 132)  # logs and README: do not squeeze the matrix
    err = Console(stderr=True)
    run = None

    def note(msg: str) -> None:
        con.print(f"[dim]· {msg}[/dim]", highlight=False)

    progress = Progress()
    bar = _bar(con)

    def cell(c: CellResult) -> None:
        eta = progress.tick(c, dict(run.planned) if run is not None else {}, opts.parallel)
        if bar is not None:
            bar.update(bar.task_ids[0], completed=progress.finished,
                       total=max(progress.total, progress.finished), description=eta)
        if not c.runnable or (c.suite == "onnx" and c.result == Result.PASS):
            return  # ONNX's 1884 node cases per target: only what breaks gets a line
        extra = rep.headline(c)
        con.print(f"[dim]{eta}[/dim] [{c.result.style}]{c.result.mark:>7}[/] {c.id:<42} {extra:>9} "
                  + (f"[dim]{c.host:<12}[/dim] " if c.host else "")
                  + f"[dim]{c.duration_s or 0:5.1f}s[/dim]"
                  + (f"  [dim]{c.message[:160]}[/dim]" if c.result != Result.PASS else ""),
                  highlight=False)

    try:
        if opts.export_goldens:
            if opts.cluster:
                raise hal.UsageError("--export-goldens runs on this host, not on a cluster",
                                     "drop --cluster; pass the goldens to a lab run with --goldens")
            if opts.goldens:
                raise hal.UsageError("--export-goldens and --goldens exclude each other",
                                     "export on the host with the reference stack, check elsewhere")
            man = export_goldens(opts.export_goldens, opts.models, on_note=note, suite=opts.suite,
                                 timeout_s=opts.timeout_s)
            con.print(f"wrote goldens for {len(man['models'])} model(s) to {opts.export_goldens} "
                      f"(oracle {man['oracle'].get('target')} {man['oracle'].get('version')})")
            return 0
        if opts.jobs < 0:
            raise hal.UsageError(f"--jobs {opts.jobs} is negative",
                                 "use --jobs 1 or more, or 0 for one per CPU core")
        if bar is not None:
            bar.start()
        try:
            if opts.cluster:
                from .lab import Lab

                lab = Lab(opts, on_cell=cell, on_note=note)
                r = lab.run()
            else:
                run = Suite(opts, on_cell=cell, on_note=note)
                r = run.run()
        finally:
            if bar is not None:
                bar.stop()
    except hal.HalError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted" + (f"; finished cells are in {opts.json_path}" if opts.json_path else ""))
        return 130
    for t in rep.rich_tables(r):
        con.print(t)
    if r.meta.get("lab"):
        from .lab import lab_tables

        for t in lab_tables(r):
            con.print(t)
    if opts.junit_path:
        rep.write_junit(r, opts.junit_path)
    if opts.html_path and r.meta.get("lab"):
        from .lab.reports import write_html

        write_html(r, opts.html_path)  # the single-host page with a lab section
    elif opts.html_path:
        rep.write_html(r, opts.html_path)
    if opts.markdown_path:
        from .lab.reports import write_markdown

        write_markdown(r, opts.markdown_path)
    for what, p in (("JSON", opts.json_path), ("JUnit", opts.junit_path), ("HTML", opts.html_path),
                    ("markdown", opts.markdown_path)):
        if p:
            con.print(f"[dim]{what}: {p}[/dim]")
    return r.summary()["exit_code"]


def _bar(con):
    """A progress bar under the cell lines, on a terminal (logs get the lines alone)."""
    if not con.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn

    bar = Bar(BarColumn(), MofNCompleteColumn(), TextColumn("[dim]{task.description}"),
              console=con, transient=True)
    bar.add_task("", total=None)
    return bar


class Progress:
    """``[done/planned ETA m:ss]`` for each cell line. A cell's cost depends on its suite (an
    operator compiles in a second, an architecture in a minute), so the estimate is, per
    suite, the cells still to come times the mean time of that suite's finished cells
    (until one has finished, the run's pace scaled by the suite's prior cost: the
    scheduler's :class:`~.runner.Workload`, over all backends at once), divided by the
    backends that run at once. The plan grows as each backend's worker starts, so early
    estimates are low."""

    def __init__(self) -> None:
        import time

        from .runner import Suite, Workload

        self.clock = time.monotonic
        self.t0 = self.clock()
        self.done: dict[str, int] = {}
        #: every backend's cells as one: the pace per suite, a prior-scaled one for the unseen
        self.pace = Workload(Suite.COST)
        self.finished = self.total = 0

    def tick(self, c, planned: dict[str, int], jobs: int) -> str:
        self.done[c.suite] = self.done.get(c.suite, 0) + 1
        if c.runnable:
            self.pace.took("", c.suite, c.duration_s or 0.0)
        done = sum(self.done.values())
        total = max(sum(planned.values()), done)
        self.finished, self.total = done, total
        runnable = {su: n for su, (n, _) in self.pace.spent.get("", {}).items()}
        ran = sum(runnable.values())
        left = 0.0
        for suite, count in planned.items():
            n = runnable.get(suite, 0)
            share = n / max(1, self.done.get(suite, 0)) if n else 0.5  # runnable share
            left += max(0, count - self.done.get(suite, 0)) * share * self.pace.rate("", suite)
        left /= max(1, jobs)
        if total > done and ran:
            return f"[{done}/{total} ETA {int(left) // 60}:{int(left) % 60:02d}]"
        elapsed = self.clock() - self.t0
        return f"[{done}/{total} {int(elapsed) // 60}:{int(elapsed) % 60:02d}]"
