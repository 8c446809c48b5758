"""pytest plugin (entry point ``pytest11: hal``): the conformance kit as pytest items.

``pytest --hal-backend=NAME`` adds one item per cell of backend NAME (device ×
zoo model × precision): a pass passes, ``unsupported`` is a skip with the reason, and
fail / error / crash / timeout fail the item with the message. Cells still run in
the backend's own worker process, so a crash fails its item and the session goes
on. Without ``--hal-backend`` this plugin does nothing (and imports nothing).
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser) -> None:
    from .options import add_pytest_options

    g = parser.getgroup("hal", "hal conformance kit")
    add_pytest_options(g)  # --hal-backend, --hal-model, ... (the same options as `hal conformance`)
    g.addoption("--hal-only", action="store_true", default=False,
                help="deselect every item that is not a conformance cell")


class CellFailed(Exception):
    """A cell that ran and broke the tolerance policy, errored, crashed or timed out."""


def _suite(config):
    suite = getattr(config, "_hal_suite", None)
    if suite is None:
        from hal import HalError

        from .options import from_pytest
        from .runner import Suite

        opts = from_pytest(config)

        try:
            suite = Suite(opts)
        except HalError as e:  # unknown backend, model or precision: a usage error, not a crash
            raise pytest.UsageError(str(e)) from None
        suite.start_report()
        config._hal_suite = suite
    return suite


class BackendCollector(pytest.Collector):
    """One backend's cells (its worker is started here, to probe devices)."""

    def collect(self):
        suite = _suite(self.config)
        specs = suite.plan()  # the one planner, as `hal conformance` and the lab use it
        broken = suite.report.backends.get(self.backend, {}).get("error")
        if broken:
            yield BrokenBackend.from_parent(self, name="worker-start",
                                            message="; ".join(suite.report.errors))
            return
        for spec in specs:
            if spec.backend == self.backend:
                yield CellItem.from_parent(self, name=f"{spec.target}/{spec.model}[{spec.precision}]"
                                           + ("@dynamic" if spec.shapes == "dynamic" else ""), spec=spec)


class CellItem(pytest.Item):
    def __init__(self, *, spec, **kw) -> None:
        super().__init__(**kw)
        self.spec = spec
        self.add_marker("hal_conformance")

    def runtest(self) -> None:
        from .results import Category

        cell = _suite(self.config).run_cell(self.spec)
        for k in ("result", "reason", "max_abs_err", "snr_db", "top1_agreement", "accuracy",
                  "compile_time_s", "latency_p50_ms"):
            self.user_properties.append((k, getattr(cell, k)))
        if cell.result.category == Category.SKIPPED:
            pytest.skip(f"{cell.result}: {cell.message}")
        if cell.result.category != Category.PASS:
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
    from .options import split

    if config.option.hal_only:
        config.hook.pytest_deselected(items=list(items))
        items[:] = []
    suite = _suite(config)
    for name in sorted({t.partition(":")[0] for t in split(config.option.hal_backend)}):
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
        suite.sink.write(suite.report, force=True)
        suite.close()
