"""pytest plugin (entry point ``pytest11: hal``): the conformance kit as pytest items.

``pytest --hal-backend=NAME`` adds one item per cell of backend NAME (device ×
zoo model × flow): a pass passes, ``unsupported`` is a skip with the reason, and
fail / error / crash / timeout fail the item with the message. Cells still run in
the backend's own worker process, so a crash fails its item and the session goes
on. Without ``--hal-backend`` this plugin does nothing (and imports nothing).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser) -> None:
    g = parser.getgroup("hal", "hal conformance kit")
    g.addoption("--hal-backend", action="append", default=[], metavar="NAME",
                help="run the conformance cells of this hal backend (or device target); repeatable")
    g.addoption("--hal-model", action="append", default=[], metavar="MODEL",
                help="only these zoo models (default: all)")
    g.addoption("--hal-precision", action="append", default=[], metavar="FLOW",
                help="only these flows: fp32 fp16 bf16 int8 int8-dynamic (default: all)")
    g.addoption("--hal-timeout", type=float, default=300.0, metavar="S",
                help="seconds one cell may take before it is a timeout (default 300)")
    g.addoption("--hal-goldens", default=None, metavar="DIR",
                help="judge against exported goldens instead of running the oracle")
    g.addoption("--hal-json", default=None, metavar="PATH",
                help="also write the conformance JSON report here")
    g.addoption("--hal-only", action="store_true", default=False,
                help="deselect every item that is not a conformance cell")


class CellFailed(Exception):
    """A cell that ran and broke the tolerance policy, errored, crashed or timed out."""


def _suite(config):
    suite = getattr(config, "_hal_suite", None)
    if suite is None:
        from pathlib import Path

        from .cli import _split
        from .runner import Options, Suite

        o = config.option
        opts = Options(backends=_split(o.hal_backend), models=_split(o.hal_model),
                       precisions=_split(o.hal_precision), timeout_s=o.hal_timeout,
                       startup_timeout_s=max(o.hal_timeout, 120.0),
                       goldens=Path(o.hal_goldens) if o.hal_goldens else None,
                       json_path=Path(o.hal_json) if o.hal_json else None)
        from hal import HalError

        try:
            suite = Suite(opts)
        except HalError as e:  # unknown backend, model or flow: a usage error, not a crash
            raise pytest.UsageError(str(e)) from None
        suite.start_report()
        config._hal_suite = suite
    return suite


class BackendCollector(pytest.Collector):
    """One backend's cells (its worker is started here, to probe devices)."""

    def collect(self):
        suite = _suite(self.config)
        specs = suite.plan(self.backend)
        if specs is None:
            yield BrokenBackend.from_parent(self, name="worker-start",
                                            message="; ".join(suite.report.errors))
            return
        for spec in specs:
            yield CellItem.from_parent(self, name=f"{spec.device['target']}/{spec.model}[{spec.precision}]",
                                       spec=spec)


class CellItem(pytest.Item):
    def __init__(self, *, spec, **kw) -> None:
        super().__init__(**kw)
        self.spec = spec
        self.add_marker("hal_conformance")

    def runtest(self) -> None:
        cell = _suite(self.config).run_cell(self.spec)
        for k in ("result", "max_abs_err", "snr_db", "top1_agreement", "accuracy",
                  "compile_time_s", "latency_p50_ms"):
            self.user_properties.append((k, getattr(cell, k)))
        if cell.result == "unsupported":
            pytest.skip(f"unsupported: {cell.message}")
        if cell.result != "pass":
            raise CellFailed(f"{cell.result}: {cell.message}")

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CellFailed):
            return f"{self.spec.id}: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, f"hal conformance {self.spec.id}"


class BrokenBackend(pytest.Item):
    def __init__(self, *, message: str, **kw) -> None:
        super().__init__(**kw)
        self.message = message

    def runtest(self) -> None:
        raise CellFailed(self.message)

    def repr_failure(self, excinfo, style=None):
        return str(excinfo.value)


def pytest_collection_modifyitems(session, config, items) -> None:
    if not config.option.hal_backend:
        return
    from .cli import _split

    if config.option.hal_only:
        config.hook.pytest_deselected(items=list(items))
        items[:] = []
    suite = _suite(config)
    for name in sorted({t.partition(":")[0] for t in _split(config.option.hal_backend)}):
        col = BackendCollector.from_parent(session, name=f"hal-conformance[{name}]")
        col.backend = name
        for node in col.collect():
            items.append(node)
    del suite


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "hal_conformance: a hal conformance kit cell")


def pytest_unconfigure(config) -> None:
    suite = getattr(config, "_hal_suite", None)
    if suite is not None:
        suite.report.complete = True
        suite.sink.write(suite.report)
        suite.close()
