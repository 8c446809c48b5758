"""A conformance run: plan → execute → judge.

:func:`.plan.plan` lists the cells from the options and the devices an executor found;
the :class:`~.oracle.Oracle` gives each model's reference (fp64 oracle or goldens); an
executor (:class:`~.execute.LocalExecutor` here, :class:`~.lab.scheduler.RayExecutor`
over a cluster) runs them; :func:`.judge.judge` turns each outcome into a
:class:`~.results.CellResult`; the run records it and rewrites the JSON. Every non-pass
names its :class:`~.results.Stage` and :class:`~.results.Reason`.

This process imports no framework: workers compile and run, and hand back outputs that
are judged here with numpy.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import cases, plan as planner
from .execute import Executor, LocalExecutor, Workload  # noqa: F401 - Workload re-exported
from .goldens import FORMAT as GOLDENS_FORMAT, VERSION as GOLDENS_VERSION
from .goldens import sha256
from .judge import judge, rejudge, verdict  # noqa: F401 - re-exported
from .models import MODELS, weights_digest
from .options import Options
from .oracle import Oracle
from .plan import COST, CellSpec
from .policy import JUDGED_PRECISIONS, POLICIES
from .process import WorkerPool, safe_name as _safe
from .protocol import DeviceInfo, Outcome, Status
from .results import CellResult, JsonSink, Reason, Report

ENV_SOURCE = "HAL_CONFORMANCE_SOURCE"  # "onnx": feed workers the goldens' ONNX files


class Suite:
    """One run of ``opts``: the report it fills, its oracle, and an executor (this host's
    workers unless one is given)."""

    #: a cell's cost by suite before any is measured (the ETA's prior)
    COST = COST

    def __init__(self, opts: Options, on_cell: Callable[[CellResult], None] | None = None,
                 on_note: Callable[[str], None] | None = None,
                 executor: Callable[[Suite], Executor] | None = None) -> None:
        import hal

        self.hal = hal
        self.opts = opts
        self.on_cell = on_cell or (lambda c: None)
        self.on_note = on_note or (lambda s: None)
        self.models, self.onnx_cases = planner.select(opts.suite, opts.models)
        self.precisions = planner.precisions(opts.precisions)
        suites = sorted({cases.catalogue()[m].suite for m in self.models}, key=cases.SUITES.index)
        self.report = Report(policy={s: {p: POLICIES[s][p].to_dict() for p in JUDGED_PRECISIONS}
                                     for s in suites})
        #: planned cells by suite, for progress and the ETA
        self.planned: dict[str, int] = {}
        self.specs: list[CellSpec] | None = None
        self.sink = JsonSink(opts.json_path)
        self.lock = threading.Lock()
        self.workers = WorkerPool(opts.workdir, os.environ.get(ENV_SOURCE) or None, opts.startup_s,
                                  opts.timeout_s, opts.parallel)
        self.oracle = Oracle(self.models, self.workers, opts.goldens, opts.parallel, self.note)
        self.executor = (executor or LocalExecutor)(self)
        validate = getattr(self.executor, "validate", None)
        if validate is not None:
            validate()  # unknown backends are usage errors before anything starts

    # --- what the oracle knows (for callers that look) ----------------------------------------
    @property
    def refs(self):
        return self.oracle.refs

    @property
    def disagreed(self) -> dict[str, str]:
        return self.oracle.disagreed

    @property
    def _refs_done(self) -> bool:
        return self.oracle.done

    @_refs_done.setter
    def _refs_done(self, value: bool) -> None:
        self.oracle.done = value

    @property
    def runs(self):
        return self.workers.runs

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> Report:
        t0 = time.time()
        r = self.report
        self.start_report()
        try:
            todo = []
            for spec in self.plan():
                if spec.unsupported:  # recorded at once: it needs no worker time
                    self.finish(spec, self.unrun(spec))
                else:
                    todo.append(spec)
            # the executor asks for the references when it has started what it can
            self.executor.run(todo)
            r.complete = True
        finally:
            r.meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            r.meta["duration_s"] = round(time.time() - t0, 2)
            self.sink.write(r, force=True)
            self.close()
        return r

    def start_report(self) -> None:
        """Fill the run's metadata and plugin list (once)."""
        import hal.plugin

        r = self.report
        if r.meta:
            return
        reg = hal.plugin.registry()
        r.meta = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "hal_version": self.hal.__version__, "python": platform.python_version(),
                  "host": platform.node(), "machine": platform.machine(),
                  "cpu_count": os.cpu_count(), "filters": {
                      "backends": self.opts.backends, "models": self.opts.models,
                      "precisions": self.opts.precisions},
                  "timeout_s": self.opts.timeout_s}
        r.plugins = [{k: v for k, v in p.to_dict().items() if k != "traceback"}
                     for p in reg.plugins]
        for p in reg.plugins:
            if p.error and not p.error.startswith("disabled"):
                self.note(f"plugin {p.name} ({p.source}) failed to load: {p.error}")

    def plan(self) -> list[CellSpec]:
        """The executor's devices, and every cell of the run on them (planned once)."""
        if self.specs is not None:
            return self.specs
        devices = self.executor.devices()
        self._missing_targets(devices)
        specs = self.specs = planner.plan(self.opts, devices)
        run = planner.chosen(self.opts, devices)
        for d in run:
            if planner.routed(d, run) and self.models != [m for m in self.models
                                                          if cases.catalogue()[m].suite == "quick"]:
                self.note(f"{d.target} routes to {', '.join(d.routes_to)}, which this run tests "
                          f"directly: it runs the quick tier only")
                entry = self.report.backends.get(d.backend)
                if entry is not None:
                    entry.setdefault("routers", {})[d.target] = list(d.routes_to)
        self.planned = planner.counts(specs)
        for b in dict.fromkeys(d.backend for d in devices):
            mine = [s for s in specs if s.backend == b]
            if b in self.report.backends:
                version = self.report.backends[b].get("version") or ""
                self.note(f"{b} {version}: {len(mine)} cells on "
                          f"{len({s.target for s in mine})} device(s)")
        self.sink.write(self.report)
        return specs

    def _missing_targets(self, devices: list[DeviceInfo]) -> None:
        asked = planner.wanted(self.opts.backends, sorted(
            {d.backend for d in devices} | {b.partition("@")[0] for b in self.report.backends}))
        for b, targets in asked.items():
            have = [d.target for d in devices if d.backend == b]
            for t in sorted((targets or set()) - {t.lower() for t in have}):
                self.error(f"backend {b} has no device {t} (it has {', '.join(have) or 'none'})",
                           note=False)

    def references(self):
        """The oracle's outputs per model (computed once; from goldens when given)."""
        if self.oracle.done:
            return self.oracle.refs
        refs = self.oracle.references()
        with self.lock:
            self.report.oracle = self.oracle.record
            self.report.models = dict(self.oracle.entries)
            self.report.errors += self.oracle.errors
        return refs

    def unrun(self, spec: CellSpec) -> Outcome | None:
        """The outcome of a cell that needs no run (unsupported, its oracle untrusted or
        missing); None when it must run."""
        if spec.unsupported:
            return Outcome(Status.UNSUPPORTED, spec.unsupported.message, reason=spec.unsupported.reason)
        if spec.kind == planner.Kind.ONNX_NODE:
            return None
        self.references()
        if spec.model in self.oracle.disagreed:
            return Outcome(Status.ORACLE_DISAGREEMENT, f"not judged: {self.oracle.disagreed[spec.model]}")
        if spec.model not in self.oracle.refs:
            return Outcome(Status.ERROR, "no reference output for this model", reason=Reason.NO_REFERENCE)
        return None

    def run_cell(self, spec: CellSpec) -> CellResult:
        """Run (or record as unsupported) one cell, judge it, record it (the pytest items)."""
        pre = self.unrun(spec)
        return self.finish(spec, pre if pre is not None else self.executor.run_one(spec))

    def judge(self, spec: CellSpec, outcome: Outcome) -> CellResult:
        return judge(spec, outcome, self.oracle.refs.get(spec.model))

    def finish(self, spec: CellSpec, outcome: Outcome) -> CellResult:
        """Judge one cell's outcome and record it."""
        cell = self.judge(spec, outcome)
        self.record(cell)
        return cell

    def record(self, cell: CellResult) -> None:
        with self.lock:
            self.report.cells.append(cell)
            self.on_cell(cell)
        self.sink.write(self.report)

    def note(self, msg: str) -> None:
        self.on_note(msg)

    def error(self, msg: str, note: bool = True) -> None:
        """A problem outside any cell: the run does not pass."""
        with self.lock:
            self.report.errors.append(msg)
        if note:
            self.note(msg)
        self.sink.write(self.report)

    def close(self) -> None:
        """Stop every worker; remove the scratch folder when it is ours."""
        self.executor.close()
        self.workers.close_all()


def export_goldens(directory: Path, models: list[str] | None = None, onnx: bool = True,
                   on_note: Callable[[str], None] | None = None,
                   timeout_s: float = 300.0, suite: str = "quick") -> dict[str, Any]:
    """Run the oracle on a suite's models and write the goldens; returns the manifest."""
    from hal import HalError

    note = on_note or (lambda s: None)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suite = Suite(Options(models=models, backends=[], timeout_s=timeout_s, suite=suite,
                          startup_timeout_s=timeout_s), on_note=note)
    try:
        refs = suite.references()
        if suite.report.errors:
            raise HalError("; ".join(suite.report.errors), "fix the oracle backend and export again")
        oracle = suite.report.oracle
        run = suite.runs[oracle["backend"]]
        manifest: dict[str, Any] = {
            "format": GOLDENS_FORMAT, "version": GOLDENS_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hal_version": suite.hal.__version__, "oracle": oracle,
            "policy": suite.report.policy, "models": {}}
        for name, ref in refs.items():
            d = np.load(ref.data_path, allow_pickle=False)
            npz = directory / f"{_safe(name)}.npz"
            np.savez_compressed(npz, **{k: d[k] for k in d.files}, reference=ref.outputs)
            entry = {"file": npz.name, "sha256": sha256(npz),
                     "weights_sha256": weights_digest(name) if name in MODELS else None,
                     "eval_samples": len(ref.outputs), "reference_accuracy": ref.accuracy,
                     "emulated_rel_err": ref.emulated, "onnx": None}
            if onnx:
                path = directory / f"{_safe(name)}.onnx"
                done = run.request({"op": "export_onnx", "id": name, "model": name,
                                    "data": str(ref.data_path), "path": str(path)}, timeout_s)
                if done.get("status") == Status.RAN:
                    entry["onnx"], entry["onnx_sha256"] = path.name, sha256(path)
                else:
                    note(f"{name}: no ONNX in the goldens ({done.get('message')})")
            manifest["models"][name] = entry
            note(f"goldens: {name} ({len(ref.outputs)} samples"
                 + (f", reference accuracy {ref.accuracy:.2%})" if ref.accuracy is not None else ")"))
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return manifest
    finally:
        suite.close()


#: the planner's selection, under its old name
_select = planner.select

__all__ = ["CellSpec", "ENV_SOURCE", "Suite", "Workload", "export_goldens", "rejudge"]
