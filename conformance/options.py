"""The conformance suite's options, defined once.

``hal conformance``, ``python -m hal_conformance`` and the pytest plugin
(``--hal-*``) all derive their flags from :data:`OPTIONS`, so a new option,
its default and its help text exist in exactly one place. This module imports
no framework and no CLI library; each front end builds its own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Options:
    """One conformance run: what to run, where, and which reports to write."""

    #: backend names or device targets ("name:id"); None = every installed backend
    backends: list[str] | None = None
    #: quick (the zoo) | ops (operators) | models (architectures) | full (all three)
    suite: str = "quick"
    models: list[str] | None = None
    precisions: list[str] | None = None
    timeout_s: float = 300.0
    #: cells of different backends run at once; 0: 1 for the quick suite (its
    #: latencies are measured), else one per CPU core
    jobs: int = 0
    goldens: Path | None = None
    json_path: Path | None = None
    junit_path: Path | None = None
    html_path: Path | None = None
    markdown_path: Path | None = None
    export_goldens: Path | None = None
    #: a Ray cluster's HOST:PORT, or "local" (see docs/lab.md)
    cluster: str | None = None
    cross_check: str = "first"
    # --- not on any command line ---------------------------------------------------
    #: how long a worker may take to start (default: max(timeout_s, 120))
    startup_timeout_s: float | None = None
    #: also time each cell (``Executable.profile``) and save + reload its artifact
    profile: bool = True
    #: keep worker logs and outputs here (default: a temporary folder, removed)
    workdir: Path | None = None

    @property
    def parallel(self) -> int:
        """How many cells run at once: ``jobs``, or its automatic value."""
        import os

        if self.jobs:
            return self.jobs
        return 1 if self.suite == "quick" else max(1, os.cpu_count() or 1)

    @property
    def startup_s(self) -> float:
        return self.startup_timeout_s or max(self.timeout_s, 120.0)


@dataclass(frozen=True)
class Flag:
    """How one :class:`Options` field appears on a command line."""

    field: str
    names: tuple[str, ...]  # CLI spellings; the pytest flag is "--hal-" + the long one
    help: str
    metavar: str | None = None
    multiple: bool = False  # repeatable, and comma-separated lists split
    choices: tuple[str, ...] | None = None
    pytest: bool = True

    @property
    def long(self) -> str:
        return next(n for n in self.names if n.startswith("--"))

    @property
    def pytest_flag(self) -> str:
        return "--hal-" + self.long[2:]

    @property
    def type(self) -> type:
        t = {f.name: f.type for f in fields(Options)}[self.field]
        return float if "float" in t else int if "int" in t else str


OPTIONS: tuple[Flag, ...] = (
    Flag("backends", ("-b", "--backend"), "only this backend or device target (repeatable)",
         "NAME", multiple=True),
    Flag("suite", ("--suite",), "which models: quick (the five-model zoo, default), ops "
         "(one case per operator), models (real architectures at 224×224), or full (all)",
         "SUITE", choices=("quick", "ops", "models", "full")),
    Flag("models", ("-m", "--model"), "only this model, or operator family, of the suite "
         "(repeatable)", "MODEL", multiple=True),
    Flag("precisions", ("-p", "--precision"),
         "only this precision: fp32 fp16 bf16 int8 int8-dynamic (repeatable)", "PRECISION",
         multiple=True),
    Flag("timeout_s", ("--timeout",), "seconds one cell may take before it is a timeout", "S"),
    Flag("jobs", ("-j", "--jobs"), "cells of different backends run at once, each backend in its "
         "own worker process; 0: 1 for the quick suite (latencies are measured), else one per "
         "CPU core", "N",
         pytest=False),
    Flag("goldens", ("--goldens",), "judge against goldens in DIR (no reference stack needed)", "DIR"),
    Flag("json_path", ("--json",), "write the JSON report here (rewritten as cells finish)", "PATH"),
    Flag("junit_path", ("--junit",), "write JUnit XML here", "PATH", pytest=False),
    Flag("html_path", ("--html",), "write the HTML report (tables and plots) here", "PATH",
         pytest=False),
    Flag("markdown_path", ("--markdown",), "write a markdown summary here", "PATH", pytest=False),
    Flag("export_goldens", ("--export-goldens",),
         "write the inputs and the oracle's outputs to DIR instead of running cells", "DIR",
         pytest=False),
    Flag("cluster", ("--cluster",),
         "run over every node of the Ray cluster at HOST:PORT, or 'local' (docs/lab.md)", "ADDRESS",
         pytest=False),
    Flag("cross_check", ("--cross-check",),
         "with --cluster: cells run on every host that has the device (default: first)",
         choices=("none", "first", "all"), pytest=False),
)


def split(values: Sequence[str] | str | None) -> list[str] | None:
    """Repeated options and comma-separated lists both work: -b a -b b,c."""
    if not values:
        return None
    if isinstance(values, str):
        values = [values]
    out = [v.strip() for item in values for v in str(item).split(",") if v.strip()]
    return out or None


def from_values(values: dict[str, Any]) -> Options:
    """An :class:`Options` from parsed flags keyed by field name (None: the default)."""
    kw: dict[str, Any] = {}
    for flag in OPTIONS:
        v = values.get(flag.field)
        if v is None or (flag.multiple and not v):
            continue
        if flag.multiple:
            v = split(v)
        elif flag.metavar in ("PATH", "DIR"):
            v = Path(v)
        kw[flag.field] = v
    return Options(**kw)


def add_pytest_options(group) -> None:
    """The ``--hal-*`` flags of the pytest plugin."""
    defaults = Options()
    for flag in OPTIONS:
        if not flag.pytest:
            continue
        if flag.multiple:
            group.addoption(flag.pytest_flag, action="append", default=[], metavar=flag.metavar,
                            help=flag.help)
        else:
            default = getattr(defaults, flag.field)
            group.addoption(flag.pytest_flag, type=flag.type if default is not None else str,
                            default=default, metavar=flag.metavar, choices=flag.choices,
                            help=flag.help + (f" (default {default})" if default is not None else ""))


def from_pytest(config) -> Options:
    return from_values({f.field: config.getoption(f.pytest_flag) for f in OPTIONS if f.pytest})


def typer_command(app, name: str, callback, help: str) -> None:
    """Add ``name`` to the typer ``app`` (hal's CLI library): a command whose
    flags are :data:`OPTIONS`, calling ``callback(Options)``. typer reads a
    function's signature, so the signature is built here from the one definition."""
    import inspect
    from typing import List, Optional

    import typer

    defaults = Options()
    params, hints = [], {}
    for flag in OPTIONS:
        default = None if flag.multiple else getattr(defaults, flag.field)
        hint = Optional[List[str]] if flag.multiple else (
            Optional[flag.type] if default is None else flag.type)
        help_text = flag.help + (f" (one of {', '.join(flag.choices)})" if flag.choices else "")
        params.append(inspect.Parameter(flag.field, inspect.Parameter.KEYWORD_ONLY, annotation=hint,
                                        default=typer.Option(default, *flag.names, help=help_text,
                                                             metavar=flag.metavar or flag.type.__name__.upper(),
                                                             show_default=default is not None)))
        hints[flag.field] = hint

    def command(**values: Any) -> None:
        raise typer.Exit(callback(from_values(values)))

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = hints
    command.__doc__ = help
    app.command(name, help=help)(command)


__all__ = ["OPTIONS", "Flag", "Options", "add_pytest_options", "from_pytest", "from_values",
           "split", "typer_command"]
