"""The orchestrator: backends × devices × models × precisions, each backend in
its own worker process, judged against the fp64 oracle (or stored goldens).

The models come from one suite of :mod:`.cases` (the quick zoo, operators,
architectures, or all). Every non-pass names the :class:`~.results.Stage` it broke
at, and a cell whose numbers are impossible for its claimed precision is
``precision-not-honoured`` (see :func:`.policy.honesty`).

This process imports no framework: workers compile and run, and hand back
outputs as ``.npy`` files that are judged here with numpy.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hal.plugin import missing

from . import cases, onnx_nodes
from .models import MODELS, weights_digest
from .policy import (JUDGED_PRECISIONS, ORACLE_BACKEND, ORACLE_DISAGREEMENT, ORACLE_PRECISION,
                     POLICIES, ROUNDTRIP_MAX_REL, Metrics, compare, honesty, judge)
from .goldens import FORMAT as GOLDENS_FORMAT, VERSION as GOLDENS_VERSION
from .goldens import Reference, read_goldens, sha256
from .options import Options
from .process import BackendRun, WorkerDied, WorkerTimeout
from .results import CellResult, JsonSink, Report, Result, Stage

ENV_SOURCE = "HAL_CONFORMANCE_SOURCE"  # "onnx": feed workers the goldens' ONNX files
#: precision honesty needs the size of fp16/bf16 arithmetic's error, not every sample
EMULATED_SAMPLES = 8


@dataclass
class CellSpec:
    backend: str
    device: dict[str, Any]
    model: str
    precision: str
    unsupported: str | None = None
    #: "static": compiled from the module at the example's batch; "dynamic": from a
    #: program whose batch is a torch.export Dim, run at batches 1, 3 and 8
    shapes: str = "static"

    @property
    def id(self) -> str:
        return f"{self.device['target']}/{self.model}/{self.precision}" + (
            "@dynamic" if self.shapes == "dynamic" else "")


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


class Suite:
    def __init__(self, opts: Options, on_cell: Callable[[CellResult], None] | None = None,
                 on_note: Callable[[str], None] | None = None) -> None:
        import hal
        import hal.plugin

        self.hal = hal
        self.opts = opts
        self.on_cell = on_cell or (lambda c: None)
        self.on_note = on_note or (lambda s: None)
        self.reg = hal.plugin.registry()
        self.models, self.onnx_cases = _select(opts.suite, opts.models)
        self.onnx_index = {n: i for i, n in enumerate(self.onnx_cases)}
        self.cases = cases.catalogue()
        self.precisions = self._precisions(opts.precisions)
        self.targets = self._backend_filter(opts.backends)
        suites = sorted({self.cases[m].suite for m in self.models}, key=cases.SUITES.index)
        self.report = Report(policy={s: {p: POLICIES[s][p].to_dict() for p in JUDGED_PRECISIONS}
                                     for s in suites})
        #: planned cells so far, by suite, for progress and the ETA (grows as backends plan)
        self.planned: dict[str, int] = {}
        self.sink = JsonSink(opts.json_path)
        self.lock = threading.Lock()
        self.refs: dict[str, Reference] = {}
        self.disagreed: dict[str, str] = {}  # model -> why its oracle is not trusted
        self._refs_done = False
        self.runs: dict[str, BackendRun] = {}
        #: ONNX node corpus results by (target, chunk), each chunk run once on first need
        self.onnx_results: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
        self.onnx_locks: dict[str, threading.Lock] = {}
        self.source = os.environ.get(ENV_SOURCE) or None
        self._own_workdir = opts.workdir is None
        self.workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="hal-conformance-"))
        (self.workdir / "out").mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)

    # --- selection --------------------------------------------------------------------
    def _precisions(self, names: list[str] | None) -> list[str]:
        if not names:
            return list(JUDGED_PRECISIONS)
        bad = [p for p in names if p not in JUDGED_PRECISIONS]
        if bad:
            raise self.hal.UsageError(f"unknown precision(s) {', '.join(bad)}",
                                      f"use one of: {', '.join(JUDGED_PRECISIONS)}")
        return [p for p in JUDGED_PRECISIONS if p in names]

    def _backend_filter(self, names: list[str] | None) -> dict[str, set[str] | None]:
        """backend → device targets to run (None: all of its devices)."""
        known = self.reg.backends
        if not names:
            return {n: None for n in known}
        out: dict[str, set[str] | None] = {}
        for n in names:
            b, _, dev = n.partition(":")
            if b not in known:
                broken = [f"{p.name} ({p.error})" for p in self.reg.plugins if p.error]
                raise self.hal.UsageError(
                    f"no installed backend is called {b!r}",
                    f"use one of: {', '.join(known) or 'none installed'}"
                    + (f"; plugins that failed to load: {', '.join(broken)}" if broken else ""))
            if dev:
                if out.get(b, set()) is not None:
                    out.setdefault(b, set()).add(n.lower())  # device ids match case-blind
            else:
                out[b] = None
        return out

    # --- the run ------------------------------------------------------------------------
    def run(self) -> Report:
        t0 = time.time()
        r = self.report
        self.start_report()
        try:
            self.references()
            for n in [n for n in self.runs if n not in self.targets]:
                self.runs[n].close()  # the oracle's worker, when its cells are not asked for
            names = list(self.targets)  # the oracle's worker, if among them, is reused warm
            if self.opts.parallel > 1 and len(names) > 1:
                self.run_parallel(names, self.opts.parallel)
            else:
                for n in names:
                    self.run_backend(n)
            r.complete = True
        finally:
            r.meta["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            r.meta["duration_s"] = round(time.time() - t0, 2)
            self.sink.write(r, force=True)
            self.close()
        return r

    def start_report(self) -> None:
        """Fill the run's metadata and plugin list (once)."""
        r = self.report
        if r.meta:
            return
        r.meta = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "hal_version": self.hal.__version__, "python": platform.python_version(),
                  "host": platform.node(), "machine": platform.machine(),
                  "cpu_count": os.cpu_count(), "filters": {
                      "backends": self.opts.backends, "models": self.opts.models,
                      "precisions": self.opts.precisions},
                  "timeout_s": self.opts.timeout_s}
        r.plugins = [{k: v for k, v in p.to_dict().items() if k != "traceback"}
                     for p in self.reg.plugins]
        for p in self.reg.plugins:
            if p.error and not p.error.startswith("disabled"):
                self.on_note(f"plugin {p.name} ({p.source}) failed to load: {p.error}")

    # --- references ---------------------------------------------------------------------
    def references(self) -> dict[str, Reference]:
        """The oracle's outputs per model (computed once; from goldens when given)."""
        if self._refs_done:
            return self.refs
        self._refs_done = True
        if self.opts.goldens:
            self.refs, self.report.oracle = read_goldens(Path(self.opts.goldens), self.models)
            for ref in self.refs.values():
                self.report.models[ref.model] = self._model_entry(ref)
            return self.refs
        name = self._oracle_name()
        run = self._run_of(name)
        try:
            ready = run.ensure_started()
        except (WorkerDied, WorkerTimeout) as e:
            raise self.hal.DeviceUnavailableError(f"the oracle backend {name} did not start: {e}",
                                                  "fix it, or pass --goldens DIR") from None
        devs = [d for d in ready["devices"] if d["available"] and d["unsupported"].get(ORACLE_PRECISION) is None]
        if not devs:
            raise self.hal.DeviceUnavailableError(
                f"the oracle backend {name} has no available device offering {ORACLE_PRECISION}",
                "install the reference backend's runtime (torch), or pass --goldens DIR")
        dev = devs[0]
        self.report.oracle = {"backend": name, "target": dev["target"], "version": ready["version"],
                              "precision": ORACLE_PRECISION, "source": "oracle run"}
        self.on_note(f"oracle: {dev['target']} at {ORACLE_PRECISION} ({ready['version']})")
        # the oracle's models split over one worker per parallel slot (an oracle is a
        # minute of fp64 and autocast runs per architecture; the other core would idle)
        slots = min(self.opts.parallel, len(self.models)) or 1
        runs = [run] + [self._run_of(name, f"{name}#oracle{i}") for i in range(1, slots)]
        order = sorted(self.models, key=lambda m: -self._cost_of(m))  # heavy first, dealt out

        def part(i: int) -> None:
            for m in order[i::slots]:
                self._reference(runs[i], name, dev, m)

        with ThreadPoolExecutor(slots) as ex:
            list(ex.map(part, range(slots)))
        for extra in runs[1:]:
            extra.close()
        self.report.models = {m: self.report.models[m] for m in self.models if m in self.report.models}
        return self.refs

    def _reference(self, run: BackendRun, name: str, dev: dict[str, Any], m: str) -> None:
        """The oracle's outputs for one model, and its fp16/bf16 emulation."""
        data_path = self._write_data(m)
        spec = CellSpec(name, dev, m, ORACLE_PRECISION)
        done = run.execute(self._command(spec, data_path, profile=False, roundtrip=False))
        if done.get("status") == ORACLE_DISAGREEMENT:  # judged by nothing, not an error
            self.disagreed[m] = done.get("message") or "the oracle's implementations disagree"
            self.on_note(f"oracle: {m}: {self.disagreed[m]}")
            return
        if done.get("status") != "ran":
            msg = f"the oracle failed on {m}: {done.get('status')}: {done.get('message')}"
            with self.lock:
                self.report.errors.append(msg)
            self.on_note(msg)
            return
        d = np.load(data_path)
        out = np.load(self._out_path(spec))
        labels = d["y_eval"] if "y_eval" in d else None
        ref = Reference(m, out, labels, None if labels is None else
                        float((out.argmax(-1) == labels).mean()), data_path,
                        meta={"conversion_path": done.get("conversion_path")})
        ref.emulated = self._emulate(run, m, data_path, out)
        with self.lock:
            self.refs[m] = ref
            self.report.models[m] = self._model_entry(ref)

    def _emulate(self, run: BackendRun, model: str, data_path: Path, ref: np.ndarray
                 ) -> dict[str, float | None]:
        """Relative error of the model under torch autocast at fp16 and bf16: the error
        those precisions' arithmetic gives here (None where it could not be emulated)."""
        if self.source == "onnx":
            return {}
        outs = {p: str(self.workdir / "out" / f"{_safe(model)}.emulated-{p}.npy")
                for p in ("fp16", "bf16")}
        done = run.request({"op": "emulate", "id": f"emulate/{model}", "model": model,
                            "data": str(data_path), "out": outs, "samples": EMULATED_SAMPLES},
                           self.opts.timeout_s)
        out: dict[str, float | None] = {}
        ref = ref[:EMULATED_SAMPLES]
        scale = float(np.abs(ref).max()) or 1.0
        for p, path in outs.items():
            if done.get("status") == "ran" and done.get(p):
                y = np.load(path)
                out[p] = (float(np.abs(y.reshape(ref.shape) - ref).max()) / scale
                          if y.size == ref.size and np.isfinite(y).all() else None)
            else:
                out[p] = None
        return out

    def _oracle_name(self) -> str:
        cands = [b.name for b in self.reg.backends.values() if ORACLE_PRECISION in b.precisions]
        if ORACLE_BACKEND in cands:
            return ORACLE_BACKEND
        if cands:
            return cands[0]
        raise self.hal.DeviceUnavailableError(
            f"no installed backend offers {ORACLE_PRECISION}, so there is no oracle",
            "install the reference backend (pip install 'hal-accel[cpu]'), or pass --goldens DIR "
            "exported with --export-goldens on a host that has it")

    def _model_entry(self, ref: Reference) -> dict[str, Any]:
        case = self.cases[ref.model]
        entry = {"suite": case.suite, "family": case.family, "description": case.description,
                 "inputs": [{"shape": list(sh), "dtype": dt} for sh, dt in case.inputs],
                 "kind": case.kind, "eval_samples": int(len(ref.outputs)),
                 "reference_accuracy": ref.accuracy, "emulated_rel_err": ref.emulated}
        if ref.model in MODELS:
            entry.update(input_shape=list(MODELS[ref.model].input_shape),
                         output=MODELS[ref.model].output, weights_sha256=weights_digest(ref.model))
        return entry

    def _write_data(self, model: str) -> Path:
        path = self.workdir / "data" / f"{_safe(model)}.npz"
        if not path.exists():
            np.savez(path, **cases.data(model))
        return path

    def _out_path(self, spec: CellSpec) -> Path:
        return self.workdir / "out" / f"{_safe(spec.id)}.npy"

    def _run_of(self, name: str, key: str | None = None) -> BackendRun:
        """``name``'s worker (``key``: another worker of the same backend)."""
        key = key or name
        with self.lock:
            if key not in self.runs:
                jobs = self.opts.parallel
                threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
                self.runs[key] = BackendRun(name, self.workdir / f"worker-{_safe(key)}.log",
                                            self.source, self.opts.startup_s,
                                            self.opts.timeout_s, threads)
            return self.runs[key]

    def _command(self, spec: CellSpec, data_path: Path, profile: bool = True,
                 onnx: Path | None = None, roundtrip: bool = True) -> dict[str, Any]:
        return {"op": "cell", "id": spec.id, "target": spec.device["target"], "model": spec.model,
                "precision": spec.precision, "data": str(data_path),
                "out": str(self._out_path(spec)), "profile": profile, "roundtrip": roundtrip,
                "shapes": spec.shapes,
                "onnx": str(onnx) if onnx else None}

    # --- one backend ----------------------------------------------------------------------
    def plan(self, name: str) -> list[CellSpec] | None:
        """Start ``name``'s worker and list its cells (unsupported ones included);
        ``None`` when the worker does not start (recorded as a run error)."""
        run = self._run_of(name)
        entry: dict[str, Any] = {"devices": []}
        with self.lock:
            self.report.backends[name] = entry
        try:
            ready = run.ensure_started()
        except (WorkerDied, WorkerTimeout) as e:
            msg = f"backend {name}: the worker did not start: {e}"
            entry["error"] = str(e)
            with self.lock:
                self.report.errors.append(msg)
            self.on_note(msg)
            self.sink.write(self.report)
            return None
        entry.update(version=ready["version"], missing_runtime=ready["missing_runtime"], error=ready["error"],
                     description=ready["description"],
                     devices=[{k: d.get(k) for k in ("target", "name", "kind", "available", "reason")}
                              for d in ready["devices"]])
        if ready["error"]:
            with self.lock:
                self.report.errors.append(f"backend {name}: {ready['error']}")
        wanted = self.targets.get(name)
        targets = [d["target"] for d in ready["devices"]]
        for t in sorted((wanted or set()) - {t.lower() for t in targets}):
            with self.lock:
                self.report.errors.append(f"backend {name} has no device {t} "
                                          f"(it has {', '.join(targets) or 'none'})")
        specs = []
        chosen = [d for d in ready["devices"] if d["available"]
                  and (wanted is None or d["target"].lower() in wanted)]
        ids = {d["id"] for d in chosen}
        for d in ready["devices"]:
            if not d["available"]:
                self.on_note(f"{d['target']} ({d['kind']}) is not available: {d['reason']}")
                continue
            if d not in chosen:
                continue
            routed = d.get("routes_to") or []
            # a router (AUTO, data parallel) runs cells on devices already in this run: the
            # quick tier checks the routing; the deep tiers would run every cell twice
            models = [m for m in self.models if self.cases[m].suite == "quick"] \
                if routed and set(routed) <= ids else self.models
            if len(models) < len(self.models):
                self.on_note(f"{d['target']} routes to {', '.join(routed)}, which this run tests "
                             f"directly: it runs the quick tier only")
                entry.setdefault("routers", {})[d["target"]] = list(routed)
            for m in models:
                for p in self.precisions:
                    why = d["unsupported"].get(p)
                    if why is None and p == "int8" and not self.cases[m].quantizable:
                        why = f"{m} takes integer inputs only: static int8 calibration does not apply"
                    specs.append(CellSpec(name, d, m, p, unsupported=why))
                    # the shape axis at fp32: each precision's own path is checked statically
                    if self.cases[m].suite == "models" and self.cases[m].dynamic_batch \
                            and p == "fp32":
                        dyn = why or (None if ready.get("dynamic_batch") else
                                      f"the {name} backend declares no dynamic batch")
                        specs.append(CellSpec(name, d, m, p, unsupported=dyn, shapes="dynamic"))
            if self.onnx_cases and d.get("takes_onnx") and len(models) == len(self.models):
                specs += [CellSpec(name, d, n, onnx_nodes.PRECISION) for n in self.onnx_cases]
        with self.lock:
            for s in specs:
                suite = self._suite_of(s.model)
                self.planned[suite] = self.planned.get(suite, 0) + 1
        self.on_note(f"{name} {ready['version'] or ''}: {len(specs)} cells on "
                     f"{len({s.device['target'] for s in specs})} device(s)")
        return specs

    def run_cell(self, spec: CellSpec) -> CellResult:
        """Run (or record as unsupported) one cell, judge it, record it."""
        self.references()
        ref = self.refs.get(spec.model)
        if spec.model in self.onnx_index:
            cell = self._onnx_cell(spec)
        elif spec.unsupported:
            cell = self._cell(spec, {"status": "unsupported", "message": spec.unsupported})
        elif spec.model in self.disagreed:
            cell = self._cell(spec, {"status": ORACLE_DISAGREEMENT,
                                     "message": f"not judged: {self.disagreed[spec.model]}"})
        elif ref is None:
            cell = self._cell(spec, {"status": "error", "message": "no reference output for this model"})
        else:
            # latency is part of the quick tier's report; the operator and architecture
            # tiers are about correctness, and 0.2 s per cell would add minutes
            suite = self.cases[spec.model].suite
            profile = self.opts.profile and suite == "quick"
            # save → load → rerun recompiles on most backends: every zoo cell checks it, the
            # architectures at fp32, the operator cases not (their artifacts are the same
            # format as the zoo's, and it would double the tier's time)
            roundtrip = suite == "quick" or (suite == "models" and spec.precision == "fp32")
            cmd = self._command(spec, ref.data_path, profile, ref.onnx_path, roundtrip)
            cmd["shared_export"] = suite != "quick"
            done = self._run_of(spec.backend).execute(cmd)
            cell = self._cell(spec, done)
        self._record(cell)
        return cell

    def _onnx_cell(self, spec: CellSpec) -> CellResult:
        """An ONNX node case: its chunk runs on first need, in its own worker process."""
        target = spec.device["target"]
        names = self.onnx_cases
        k = self.onnx_index[spec.model] // onnx_nodes.CHUNK
        with self.lock:
            lock = self.onnx_locks.setdefault(target, threading.Lock())
        with lock:
            if (target, k) not in self.onnx_results:
                self.onnx_results[(target, k)] = onnx_nodes.run_chunk(
                    target, onnx_nodes.chunks(names)[k], self.workdir, self.opts.timeout_s,
                    self.on_note)
        rec = self.onnx_results[(target, k)].get(spec.model) or {
            "result": "error", "message": "the ONNX worker returned no result for this case"}
        return onnx_nodes.cell(spec.device, spec.backend, spec.model, rec)

    def _suite_of(self, model: str) -> str:
        return self.cases[model].suite if model in self.cases else onnx_nodes.SUITE

    def run_backend(self, name: str) -> None:
        specs = self.plan(name)
        for spec in specs or ():
            self.run_cell(spec)
        run = self.runs[name]
        self.report.backends[name]["worker_starts"] = run.starts
        run.close()

    def run_parallel(self, names: list[str], jobs: int) -> None:
        """Cells of different backends at once, ``jobs`` at a time; each backend's worker
        runs its own cells one after another (one process per backend: crash isolation,
        and its per-model export is shared between precisions). A free slot goes first to
        an idle backend that has not run a cell yet (to learn its pace), then to the idle
        backend with the most time left as its own finished cells measure it (longest
        processing time first), so the run does not end with one slow backend alone."""
        with ThreadPoolExecutor(jobs) as ex:
            plans = dict(zip(names, ex.map(self.plan, names)))
        queues: dict[str, deque[CellSpec]] = {}
        load = Workload(self.COST)
        for name, specs in plans.items():
            queues[name] = deque()
            for spec in specs or ():
                if spec.unsupported:
                    self.run_cell(spec)  # recorded at once: it needs no worker time
                else:
                    queues[name].append(spec)
                    load.add(name, self._suite_of(spec.model))
            if not queues[name] and name in self.runs:
                self.runs[name].close()  # nothing runnable (no device here): free it now
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
                    self.run_cell(spec)
                finally:
                    with cond:
                        load.took(name, self._suite_of(spec.model), time.monotonic() - t0)
                        busy.discard(name)
                        done = not queues[name]
                        cond.notify_all()
                    if done:  # free its memory for the backends still running
                        self.runs[name].close()

        with ThreadPoolExecutor(jobs) as ex:
            for f in [ex.submit(slot) for _ in range(jobs)]:
                f.result()
        for name in names:
            if name in self.runs:
                self.report.backends[name]["worker_starts"] = self.runs[name].starts
                self.runs[name].close()

    #: a cell's cost by suite before any is measured, in operator cells
    COST = {"quick": 3.0, "ops": 1.0, "models": 30.0, onnx_nodes.SUITE: 0.15}

    def _cost_of(self, model: str) -> float:
        return self.COST.get(self._suite_of(model), 1.0)

    def close(self) -> None:
        """Stop every worker; remove the scratch folder when it is ours."""
        for run in list(self.runs.values()):
            run.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _record(self, cell: CellResult) -> None:
        with self.lock:
            self.report.cells.append(cell)
            self.on_cell(cell)
        self.sink.write(self.report)

    def _cell(self, spec: CellSpec, done: dict[str, Any]) -> CellResult:
        d = spec.device
        case = self.cases[spec.model]
        c = CellResult(spec.id, spec.backend, d["target"], d["name"], d["kind"], spec.model,
                       spec.precision, suite=case.suite, family=case.family, shapes=spec.shapes)
        for k in ("compile_time_s", "artifact_size_bytes", "latency_p50_ms", "latency_batch",
                  "roundtrip_max_abs", "backend_version", "duration_s", "detail"):
            if done.get(k) is not None:
                setattr(c, k, done[k])
        c.conversion_path = list(done.get("conversion_path") or [])
        c.notes = list(done.get("notes") or []) + ([done["notes_save"]] if done.get("notes_save") else [])
        status = done.get("status")
        if status != "ran":
            c.result = Result(status) if status in (
                Result.UNSUPPORTED, Result.ERROR, Result.CRASH, Result.TIMEOUT,
                Result.ORACLE_DISAGREEMENT) else Result.ERROR
            c.message = done.get("message") or f"worker answered {status!r}"
            c.stage = Stage(_stage_of(done, c.message))
            return c
        ref = self.refs[spec.model]
        out = np.load(self._out_path(spec))
        c.reference_accuracy = ref.accuracy
        c.stage = Stage.COMPARE  # from here on, a non-pass broke at the comparison
        if out.shape != ref.outputs.shape:
            c.result, c.message = Result.FAIL, (f"output shape {out.shape} differs from the "
                                                f"reference's {ref.outputs.shape}")
            return c
        if not np.isfinite(out).all():
            c.result, c.message = Result.FAIL, f"{int((~np.isfinite(out)).sum())} outputs are NaN or Inf"
            return c
        m = compare(out, ref.outputs, ref.labels)
        for k, v in m.to_dict().items():
            setattr(c, k, v)
        if case.kind == "tensor":
            c.top1_agreement = None  # an operator's output has no classes
        other = []
        if done.get("device_kind") != d["kind"]:
            other.append(f"the executable says kind={done.get('device_kind')} but "
                         f"{d['target']} is {d['kind']}")
        rt = done.get("roundtrip_max_abs")
        if rt is not None and rt > ROUNDTRIP_MAX_REL * m.max_abs_ref:
            c.result, c.stage = Result.FAIL, Stage.SAVE_RELOAD
            c.message = "; ".join(judge(m, spec.precision, ref.accuracy, case.suite, ref.emulated)
                                  + other + [f"the reloaded artifact differs from the compiled "
                                             f"one by {rt:.3g} (> {ROUNDTRIP_MAX_REL:g}·max|ref|)"])
            return c
        verdict(c, m, ref.accuracy, ref.emulated, other)
        return c


def verdict(c: CellResult, m: Metrics, reference_accuracy: float | None,
            emulated: dict[str, float | None], other: list[str] | None = None) -> None:
    """Set a cell's result from its metrics: the tolerance policy of its suite, then
    precision honesty (only for a cell the policy passes: a failure says more)."""
    broken = judge(m, c.precision, reference_accuracy, c.suite, emulated) + list(other or ())
    dishonest = honesty(c.precision, m.rel_max_err, emulated)
    if dishonest and not broken:
        c.result, c.message, c.stage = Result.PRECISION_NOT_HONOURED, dishonest, Stage.COMPARE
        return
    c.result = Result.FAIL if broken else Result.PASS
    c.message = "; ".join(broken + ([dishonest] if dishonest else []))
    c.stage = Stage.COMPARE if broken else None


def rejudge(report: Report) -> int:
    """Judge a finished report's cells again from their stored metrics under the current
    policy (a policy change need not rerun the models); returns how many changed."""
    changed = 0
    for c in report.cells:
        if c.result not in (Result.PASS, Result.FAIL, Result.PRECISION_NOT_HONOURED) \
                or c.stage not in (None, Stage.COMPARE) or c.rel_max_err is None \
                or "says kind=" in c.message or "outputs are NaN" in c.message \
                or "output shape" in c.message:
            continue
        m = Metrics(c.max_abs_err, c.mean_abs_err, c.max_abs_ref, c.rel_max_err, c.snr_db,
                    c.top1_agreement if c.top1_agreement is not None else 1.0, c.accuracy)
        before = (c.result, c.message)
        verdict(c, m, c.reference_accuracy,
                (report.models.get(c.model) or {}).get("emulated_rel_err") or {})
        changed += (c.result, c.message) != before
    return changed


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


def _select(suite: str, names: list[str] | None) -> tuple[list[str], list[str]]:
    """The suite's torch cases and its ONNX node cases. The operator tier (``ops``, and
    ``full``) includes ONNX's node corpus; ``-m onnx`` names it, ``-m onnx:Conv`` one
    operator of it, next to other names or alone."""
    from hal import UsageError

    names = list(names or [])
    sel = [n for n in names if n == onnx_nodes.SELECTOR or n.startswith(onnx_nodes.SELECTOR + ":")]
    rest = [n for n in names if n not in sel]
    if sel and suite not in ("ops", "full"):
        raise UsageError(f"ONNX's node corpus is part of the ops suite, not {suite}",
                         "add --suite ops (or full)")
    models = cases.select(suite, rest) if rest or not names else []
    if suite not in ("ops", "full") or (names and not sel) or missing(("onnx",)):
        return models, []
    return models, onnx_nodes.select(sel)


def _stage_of(done: dict[str, Any], message: str) -> str:
    """The stage of a cell that did not run to the end: the worker's tag, else what the
    refusal says (a plan-time refusal: no conversion path → convert, else compile)."""
    st = done.get("stage")
    if st in Stage._value2member_map_:
        return st
    if done.get("status") == Result.ORACLE_DISAGREEMENT:
        return Stage.COMPARE
    return Stage.CONVERT if "no conversion" in message.lower() else Stage.COMPILE


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
                if done.get("status") == "ran":
                    entry["onnx"], entry["onnx_sha256"] = path.name, sha256(path)
                else:
                    note(f"{name}: no ONNX in the goldens ({done.get('message')})")
            manifest["models"][name] = entry
            note(f"goldens: {name} ({len(ref.outputs)} samples"
                 + (f", reference accuracy {ref.accuracy:.2%})" if ref.accuracy is not None else ")"))
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return manifest
    finally:
        for run in suite.runs.values():
            run.close()
        if suite._own_workdir:
            import shutil

            shutil.rmtree(suite.workdir, ignore_errors=True)
