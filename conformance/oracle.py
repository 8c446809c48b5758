"""The oracle: each model's reference outputs, from the fp64 oracle backend or from
goldens, and the model's error under fp16/bf16 autocast (evidence for precision honesty).

It runs on the orchestrator's host (a lab's driver too), in the oracle backend's own
conformance worker, and keeps what every judgement needs: :class:`~.goldens.Reference`
per model, and why a model's oracle is not trusted where its implementations disagreed.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import cases
from .goldens import Reference, read_goldens
from .models import MODELS, weights_digest
from .plan import COST, oracle_cell
from .policy import ORACLE_BACKEND, ORACLE_PRECISION
from .process import WorkerDied, WorkerPool, WorkerTimeout
from .protocol import BackendInfo, Status

#: precision honesty needs the size of fp16/bf16 arithmetic's error, not every sample
EMULATED_SAMPLES = 8


class Oracle:
    """References for ``models``: computed once, on first need."""

    def __init__(self, models: list[str], workers: WorkerPool, goldens: Path | None = None,
                 parallel: int = 1, on_note: Callable[[str], None] | None = None) -> None:
        self.models = models
        self.workers = workers
        self.goldens = goldens
        self.parallel = parallel
        self.on_note = on_note or (lambda s: None)
        self.refs: dict[str, Reference] = {}
        #: model → why its oracle is not trusted (its cells are not judged)
        self.disagreed: dict[str, str] = {}
        #: the oracle's record for the report, each model's entry, problems outside cells
        self.record: dict[str, Any] = {}
        self.entries: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self.done = False
        self.lock = threading.Lock()

    def references(self) -> dict[str, Reference]:
        if self.done:
            return self.refs
        self.done = True
        if self.goldens:
            self.refs, self.record = read_goldens(Path(self.goldens), self.models)
        else:
            self._run()
        self.entries = {m: entry(self.refs[m]) for m in self.models if m in self.refs}
        return self.refs

    def backend(self, installed: dict[str, Any]) -> str:
        """The oracle backend among ``installed`` (name → backend with ``precisions``)."""
        from hal import DeviceUnavailableError

        cands = [n for n, b in installed.items() if ORACLE_PRECISION in b.precisions]
        if ORACLE_BACKEND in cands:
            return ORACLE_BACKEND
        if cands:
            return cands[0]
        raise DeviceUnavailableError(
            f"no installed backend offers {ORACLE_PRECISION}, so there is no oracle",
            "install the reference backend (pip install 'hal-accel[cpu]'), or pass --goldens DIR "
            "exported with --export-goldens on a host that has it")

    def _run(self) -> None:
        import hal.plugin
        from hal import DeviceUnavailableError

        name = self.backend(hal.plugin.registry().backends)
        run = self.workers.get(name)
        try:
            ready = BackendInfo.from_dict(run.ensure_started())
        except (WorkerDied, WorkerTimeout) as e:
            raise DeviceUnavailableError(f"the oracle backend {name} did not start: {e}",
                                         "fix it, or pass --goldens DIR") from None
        devs = [d for d in ready.devices if d.available and d.unsupported.get(ORACLE_PRECISION) is None]
        if not devs:
            raise DeviceUnavailableError(
                f"the oracle backend {name} has no available device offering {ORACLE_PRECISION}",
                "install the reference backend's runtime (torch), or pass --goldens DIR")
        dev = devs[0]
        self.record = {"backend": name, "target": dev.target, "version": ready.version,
                       "precision": ORACLE_PRECISION, "source": "oracle run"}
        self.on_note(f"oracle: {dev.target} at {ORACLE_PRECISION} ({ready.version})")
        # the models split over one worker per parallel slot (an oracle is a minute of
        # fp64 and autocast runs per architecture; the other core would idle)
        slots = min(self.parallel, len(self.models)) or 1
        runs = [run] + [self.workers.get(name, f"{name}#oracle{i}") for i in range(1, slots)]
        order = sorted(self.models, key=lambda m: -COST.get(cases.catalogue()[m].suite, 1.0))

        def part(i: int) -> None:
            for m in order[i::slots]:
                self._reference(runs[i], dev, m)

        with ThreadPoolExecutor(slots) as ex:
            list(ex.map(part, range(slots)))
        for i in range(1, slots):
            self.workers.close(f"{name}#oracle{i}")

    def _reference(self, run, dev, m: str) -> None:
        """The oracle's outputs for one model, and its fp16/bf16 emulation."""
        data = self.workers.data(m)
        spec = oracle_cell(dev, m, ORACLE_PRECISION)
        out_path = self.workers.out_path(spec.id)
        # the oracle is not a cell under test: it gets a worker's start-up bound, so a
        # short per-cell --timeout on a busy host cannot leave every cell unjudged
        done = run.execute(spec.command(str(data), str(out_path)), self.workers.startup_timeout_s)
        if done.status == Status.ORACLE_DISAGREEMENT:  # judged by nothing, not an error
            self.disagreed[m] = done.message or "the oracle's implementations disagree"
            self.on_note(f"oracle: {m}: {self.disagreed[m]}")
            return
        if done.status != Status.RAN:
            msg = f"the oracle failed on {m}: {done.status}: {done.message}"
            with self.lock:
                self.errors.append(msg)
            self.on_note(msg)
            return
        d = np.load(data)
        out = np.load(out_path)
        labels = d["y_eval"] if "y_eval" in d else None
        ref = Reference(m, out, labels, None if labels is None else
                        float((out.argmax(-1) == labels).mean()), data,
                        meta={"conversion_path": done.conversion_path})
        ref.emulated = self._emulate(run, m, data, out)
        with self.lock:
            self.refs[m] = ref

    def _emulate(self, run, model: str, data: Path, ref: np.ndarray) -> dict[str, float | None]:
        """Relative error of the model under torch autocast at fp16 and bf16: the error
        those precisions' arithmetic gives here (None where it could not be emulated)."""
        if self.workers.source == "onnx":
            return {}
        outs = {p: str(self.workers.out_path(f"{model}.emulated-{p}")) for p in ("fp16", "bf16")}
        done = run.request({"op": "emulate", "id": f"emulate/{model}", "model": model,
                            "data": str(data), "out": outs, "samples": EMULATED_SAMPLES},
                           self.workers.startup_timeout_s)
        out: dict[str, float | None] = {}
        ref = ref[:EMULATED_SAMPLES]
        scale = float(np.abs(ref).max()) or 1.0
        for p, path in outs.items():
            if done.get("status") == Status.RAN and done.get(p):
                y = np.load(path)
                out[p] = (float(np.abs(y.reshape(ref.shape) - ref).max()) / scale
                          if y.size == ref.size and np.isfinite(y).all() else None)
            else:
                out[p] = None
        return out


def entry(ref: Reference) -> dict[str, Any]:
    """A model's record in the report: its case, inputs, and what the oracle measured."""
    case = cases.catalogue()[ref.model]
    e = {"suite": case.suite, "family": case.family, "description": case.description,
         "inputs": [{"shape": list(sh), "dtype": dt} for sh, dt in case.inputs],
         "kind": case.kind, "eval_samples": int(len(ref.outputs)),
         "reference_accuracy": ref.accuracy, "emulated_rel_err": ref.emulated}
    if ref.model in MODELS:
        e.update(input_shape=list(MODELS[ref.model].input_shape), output=MODELS[ref.model].output,
                 weights_sha256=weights_digest(ref.model))
    return e


__all__ = ["EMULATED_SAMPLES", "Oracle", "entry"]
