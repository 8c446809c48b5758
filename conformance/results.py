"""Records of a conformance run, and the JSON file written as cells finish."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hal.paths import write_text_atomic


class Result(str, Enum):
    """What became of a cell. A str, so the JSON holds the plain value."""

    PASS = "pass"
    #: it ran and broke the tolerance policy
    FAIL = "fail"
    #: the backend says it cannot (never a pass, never a failure)
    UNSUPPORTED = "unsupported"
    #: an exception in hal or the backend
    ERROR = "error"
    #: the worker process died (segfault, abort, out of memory)
    CRASH = "crash"
    TIMEOUT = "timeout"
    #: its host left a lab run before it finished (see lab/)
    LOST = "lost"
    #: the oracle's two implementations disagreed, so nothing was judged
    ORACLE_DISAGREEMENT = "oracle-disagreement"
    #: its numbers are impossible for the precision it claims (e.g. "fp16" that is
    #: fp32 to the last bits, "int8" with no quantization error at all)
    PRECISION_NOT_HONOURED = "precision-not-honoured"

    def __str__(self) -> str:
        return self.value


class Stage(str, Enum):
    """Where a cell that did not pass broke, in the order a cell goes through them
    (like ExecuTorch's test results, which name the failing step)."""

    EXPORT = "export"        # leaving the framework's graph: torch.export, torch.onnx
    CONVERT = "convert"      # format conversion: ov.convert_model, litert-torch, TFLiteConverter
    QUANTIZE = "quantize"    # calibration and int8 conversion: PT2E, NNCF
    COMPILE = "compile"      # the backend's compile (and, for unsupported cells, its refusal)
    SAVE_RELOAD = "save-reload"  # Executable.save, hal.load, and the reloaded copy's answers
    RUN = "run"              # running the executable on the evaluation inputs
    COMPARE = "compare"      # judging the outputs against the oracle and the policy

    def __str__(self) -> str:
        return self.value


#: every value ``CellResult.result`` can take
RESULTS = tuple(r.value for r in Result)
#: 2: ``device`` → ``target``; results named by :class:`Result`; ``stage``, ``suite``,
#: ``family`` per cell
SCHEMA = 2


@dataclass
class CellResult:
    """One backend device × zoo model × precision, and what became of it."""

    id: str
    backend: str
    target: str  # the device's "backend:id"
    device_name: str
    device_kind: str  # hardware | emulated
    model: str
    precision: str
    result: Result = Result.ERROR
    #: why it is not a pass (broken rules, the error, the crash, why unsupported)
    message: str = ""
    #: where a non-pass broke (None for a pass)
    stage: Stage | None = None
    #: quick | ops | models, and the operator family or model family (matrix rows)
    suite: str = "quick"
    family: str = ""
    #: static | dynamic (a dynamic-batch model, run at several batch sizes)
    shapes: str = "static"
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    max_abs_ref: float | None = None
    rel_max_err: float | None = None
    snr_db: float | None = None  # None with a numeric error of 0 means bit-exact
    top1_agreement: float | None = None
    accuracy: float | None = None
    reference_accuracy: float | None = None
    compile_time_s: float | None = None
    artifact_size_bytes: int | None = None
    latency_p50_ms: float | None = None
    latency_batch: int | None = None
    conversion_path: list[str] = field(default_factory=list)
    roundtrip_max_abs: float | None = None
    backend_version: str | None = None
    duration_s: float | None = None
    notes: list[str] = field(default_factory=list)
    detail: str | None = None  # traceback or log tail
    #: the host that ran it, in a lab run over a Ray cluster (None: this host)
    host: str | None = None

    def __post_init__(self) -> None:
        self.result = Result(self.result)
        self.stage = Stage(self.stage) if self.stage else None

    @property
    def runnable(self) -> bool:
        return self.result != Result.UNSUPPORTED

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = Result(self.result).value
        d["stage"] = Stage(self.stage).value if self.stage else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellResult:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Report:
    meta: dict[str, Any] = field(default_factory=dict)
    oracle: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    plugins: list[dict[str, Any]] = field(default_factory=list)
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    cells: list[CellResult] = field(default_factory=list)
    #: problems outside any cell: a backend whose worker would not start, an oracle failure
    errors: list[str] = field(default_factory=list)
    complete: bool = False

    def counts(self) -> dict[str, int]:
        c = {r: 0 for r in RESULTS}
        for cell in self.cells:
            c[Result(cell.result).value] += 1
        return c

    @property
    def passed(self) -> bool:
        """Every runnable cell passed and nothing failed outside a cell."""
        return not self.errors and all(c.result == "pass" for c in self.cells if c.runnable)

    def summary(self) -> dict[str, Any]:
        c = self.counts()
        runnable = sum(1 for x in self.cells if x.runnable)
        return {"cells": len(self.cells), "runnable": runnable, **c, "errors": len(self.errors),
                "passed": self.passed, "exit_code": 0 if self.passed else 1}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "complete": self.complete, "meta": self.meta,
                "summary": self.summary(), "oracle": self.oracle, "models": self.models,
                "policy": self.policy, "plugins": self.plugins, "backends": self.backends,
                "errors": self.errors,
                "cells": [c.to_dict() for c in sorted(self.cells, key=_order)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        r = cls(d.get("meta", {}), d.get("oracle", {}), d.get("models", {}), d.get("policy", {}),
                d.get("plugins", []), d.get("backends", {}),
                [CellResult.from_dict(c) for c in d.get("cells", [])], d.get("errors", []),
                d.get("complete", False))
        return r


def _order(c: CellResult) -> tuple:
    from .cases import position
    from .policy import JUDGED_PRECISIONS

    p = JUDGED_PRECISIONS.index(c.precision) if c.precision in JUDGED_PRECISIONS else 99
    return (c.backend, c.target, position(c.model), p)


class JsonSink:
    """Rewrites the JSON report atomically as cells finish, so an interrupted run leaves
    a valid file. At most every ``interval_s`` seconds (and when forced, as at the end of
    a run): rewriting a report of thousands of cells after each one would cost more
    than the cells."""

    def __init__(self, path: str | os.PathLike | None, interval_s: float = 2.0) -> None:
        self.path = Path(path) if path else None
        self.lock = threading.Lock()
        self.interval_s = interval_s
        self.last = float("-inf")

    def write(self, report: Report, force: bool = False) -> None:
        if self.path is None:
            return
        with self.lock:
            now = time.monotonic()
            if not force and now - self.last < self.interval_s:
                return
            write_json_atomic(self.path, report.to_dict())
            self.last = time.monotonic()


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=False, default=_jsonable))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)
