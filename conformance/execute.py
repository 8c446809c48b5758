"""Executors: where planned cells run. One protocol, two implementations: this host's
worker processes (:class:`LocalExecutor`) and a Ray cluster's nodes
(:class:`~.lab.scheduler.RayExecutor`). Neither plans nor judges: an executor reports the
devices it has, runs the cells it is given, and hands each :class:`~.protocol.Outcome`
(outputs included) to the run that judges and records it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from . import onnx_nodes
from .plan import COST, CellSpec, Kind, wanted
from .process import WorkerDied, WorkerTimeout
from .protocol import BackendInfo, DeviceInfo, Outcome, Status

#: the runner's ``Suite`` that drives an executor (not imported: the runner imports this module)
Suite = Any


class Executor(Protocol):
    """Runs cells somewhere. ``devices`` may record what it found in the run's report
    (backends, hosts, errors); ``run`` asks ``suite.references()`` when it has started what
    it can, records what needs no run (``suite.unrun``) and calls
    ``suite.finish(spec, outcome)`` per cell."""

    def devices(self) -> list[DeviceInfo]: ...

    def run(self, specs: list[CellSpec]) -> None: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Each backend in its own worker process on this host (crash isolation; a backend's
    per-model export shared between precisions), ``opts.parallel`` backends at once."""

    def __init__(self, suite: Suite) -> None:
        self.suite = suite
        self.workers = suite.workers
        #: ONNX node corpus outcomes by (target, chunk), each chunk run once on first need
        self.onnx: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        self.onnx_locks: dict[str, threading.Lock] = {}
        self.onnx_index: dict[str, int] = {n: i for i, n in enumerate(suite.onnx_cases)}
        self.names: list[str] = []

    # --- devices -----------------------------------------------------------------------
    def validate(self) -> list[str]:
        """The backends this run asks for (a UsageError for one that is not installed)."""
        import hal.plugin

        reg = hal.plugin.registry()
        broken = [f"{p.name} ({p.error})" for p in reg.plugins if p.error]
        self.names = list(wanted(self.suite.opts.backends, reg.backends,
                                 f"; plugins that failed to load: {', '.join(broken)}" if broken else ""))
        return self.names

    def devices(self) -> list[DeviceInfo]:
        names = self.names or self.validate()
        with ThreadPoolExecutor(max(1, self.suite.opts.parallel)) as ex:
            found = list(ex.map(self.probe, names))
        return [d for got in found for d in got]

    def probe(self, name: str) -> list[DeviceInfo]:
        """Start ``name``'s worker and list its devices (none when it does not start,
        which is an error of the run)."""
        s = self.suite
        entry: dict[str, Any] = {"devices": []}
        with s.lock:
            s.report.backends[name] = entry
        try:
            ready = BackendInfo.from_dict(self.workers.get(name).ensure_started())
        except (WorkerDied, WorkerTimeout) as e:
            entry["error"] = str(e)
            s.error(f"backend {name}: the worker did not start: {e}")
            return []
        entry.update(version=ready.version, missing_runtime=ready.missing_runtime,
                     error=ready.error, description=ready.description,
                     devices=[d.summary() for d in ready.devices])
        if ready.error:
            s.error(f"backend {name}: {ready.error}", note=False)
        for d in ready.devices:
            if not d.available:
                s.note(f"{d.target} ({d.kind}) is not available: {d.reason}")
        return ready.devices

    # --- running -----------------------------------------------------------------------
    def run_one(self, spec: CellSpec) -> Outcome:
        """Run one cell in its backend's worker (an ONNX node case: its chunk's runner)."""
        if spec.kind == Kind.ONNX_NODE:
            return self._onnx(spec)
        ref = self.suite.oracle.refs[spec.model]
        out = self.workers.out_path(spec.id)
        out.unlink(missing_ok=True)
        done = self.workers.get(spec.backend).execute(
            spec.command(str(ref.data_path), str(out), str(ref.onnx_path) if ref.onnx_path else None))
        if done.status == Status.RAN and out.exists():
            done.outputs = np.load(out, allow_pickle=False)
        return done

    def _onnx(self, spec: CellSpec) -> Outcome:
        target = spec.device.target
        k = self.onnx_index[spec.model] // onnx_nodes.CHUNK
        with self.suite.lock:
            lock = self.onnx_locks.setdefault(target, threading.Lock())
        with lock:
            if (target, k) not in self.onnx:
                self.onnx[(target, k)] = onnx_nodes.run_chunk(
                    target, onnx_nodes.chunks(self.suite.onnx_cases)[k], self.workers.workdir,
                    self.suite.opts.timeout_s, self.suite.note)
        rec = self.onnx[(target, k)].get(spec.model)
        return onnx_nodes.outcome(rec) if rec else Outcome(
            Status.ERROR, "the ONNX worker returned no result for this case")

    def run(self, specs: list[CellSpec]) -> None:
        self.suite.references()
        for key in [k for k in self.workers.runs if k not in self.names]:
            self.workers.close(key)  # the oracle's worker, when its cells are not asked for
        by: dict[str, deque[CellSpec]] = {n: deque() for n in self.names}
        for spec in specs:
            pre = self.suite.unrun(spec)
            if pre is not None:  # nothing to run (its oracle disagreed, or is missing)
                self.suite.finish(spec, pre)
            else:
                by.setdefault(spec.backend, deque()).append(spec)
        for name, queue in by.items():
            if not queue:
                self.close_backend(name)  # nothing runnable (no device here): free it now
        jobs = self.suite.opts.parallel
        if jobs > 1 and len([q for q in by.values() if q]) > 1:
            self._parallel(by, jobs)
        else:
            for name, queue in by.items():
                for spec in queue:
                    self.suite.finish(spec, self.run_one(spec))
                self.close_backend(name)

    def close_backend(self, name: str) -> None:
        run = self.workers.runs.get(name)
        if run is not None:
            entry = self.suite.report.backends.get(name)
            if entry is not None:
                entry["worker_starts"] = run.starts
            run.close()

    def _parallel(self, queues: dict[str, deque[CellSpec]], jobs: int) -> None:
        """Cells of different backends at once, ``jobs`` at a time; each backend's worker
        runs its own cells one after another. A free slot goes first to an idle backend that
        has not run a cell yet (to learn its pace), then to the idle backend with the most
        time left as its own finished cells measure it (longest processing time first), so
        the run does not end with one slow backend alone."""
        load = Workload(COST)
        for name, q in queues.items():
            for spec in q:
                load.add(name, spec.suite)
        cond = threading.Condition()
        busy: set[str] = set()

        def take() -> tuple[str, CellSpec] | None:
            with cond:
                while True:
                    idle = [n for n in queues if queues[n] and n not in busy]
                    if idle:
                        name = max(idle, key=lambda n: (not load.measured(n), load.remaining(n)))
                        busy.add(name)
                        return name, queues[name].popleft()
                    if not busy:
                        return None
                    cond.wait()

        def slot() -> None:
            while (got := take()) is not None:
                name, spec = got
                t0 = time.monotonic()
                try:
                    self.suite.finish(spec, self.run_one(spec))
                finally:
                    with cond:
                        load.took(name, spec.suite, time.monotonic() - t0)
                        busy.discard(name)
                        done = not queues[name]
                        cond.notify_all()
                    if done:  # free its memory for the backends still running
                        self.close_backend(name)

        with ThreadPoolExecutor(jobs) as ex:
            for f in [ex.submit(slot) for _ in range(jobs)]:
                f.result()
        for name in queues:
            self.close_backend(name)

    def close(self) -> None:
        for name in self.names:
            self.close_backend(name)


class Workload:
    """Each backend's time left, estimated: its cells left per suite times the mean time of
    its finished cells of that suite (else its other suites' pace, scaled by the prior cost;
    else the prior). A backend's pace is its own: an Edge TPU conversion takes seconds where
    OpenVINO takes a fraction of one, so counts alone would schedule the slowest last."""

    def __init__(self, prior: dict[str, float]) -> None:
        self.prior = prior
        self.left: dict[str, dict[str, int]] = {}
        self.spent: dict[str, dict[str, tuple[int, float]]] = {}

    def add(self, backend: str, suite: str) -> None:
        d = self.left.setdefault(backend, {})
        d[suite] = d.get(suite, 0) + 1

    def took(self, backend: str, suite: str, seconds: float) -> None:
        d = self.left.setdefault(backend, {})
        d[suite] = d.get(suite, 0) - 1
        n, s = self.spent.setdefault(backend, {}).get(suite, (0, 0.0))
        self.spent[backend][suite] = (n + 1, s + seconds)

    def measured(self, backend: str) -> bool:
        return bool(self.spent.get(backend))

    def rate(self, backend: str, suite: str) -> float:
        """Estimated seconds per cell of ``suite`` on ``backend``."""
        mine = self.spent.get(backend, {})
        if suite in mine:
            n, s = mine[suite]
            return s / n
        units = sum(self.prior.get(su, 1.0) * n for su, (n, _) in mine.items())
        secs = sum(s for _, s in mine.values())
        return self.prior.get(suite, 1.0) * (secs / units if units else 1.0)

    def remaining(self, backend: str) -> float:
        return sum(n * self.rate(backend, su) for su, n in self.left.get(backend, {}).items())


__all__ = ["Executor", "LocalExecutor", "Workload"]

