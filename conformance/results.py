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


class Category(str, Enum):
    """What a result means for the run, as ExecuTorch's ``TestResult`` groups its outcomes
    (success, backend failure, not the backend's fault); each maps to one JUnit element."""

    PASS = "pass"
    #: the backend's answer is wrong (JUnit <failure>)
    FAILURE = "failure"
    #: the cell did not finish: an exception, a crash, a timeout, a lost host (<error>)
    ERROR = "error"
    #: the backend declines: not runnable, never a pass or a failure (<skipped>)
    SKIPPED = "skipped"
    #: ran, but nothing could judge it (<skipped>, and the run does not pass)
    NOT_JUDGED = "not-judged"

    def __str__(self) -> str:
        return self.value


class Result(str, Enum):
    """What became of a cell. A str, so the JSON holds the plain value; each knows its
    category, its mark in the matrices and its console style."""

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
    #: a device that is not the host CPU whose executable reports no placement, or lists
    #: host ops that its notes do not state (the core's allow_host_ops gate was bypassed)
    PLACEMENT_NOT_HONOURED = "placement-not-honoured"

    def __str__(self) -> str:
        return self.value

    @property
    def category(self) -> Category:
        return _LOOK[self][0]

    @property
    def mark(self) -> str:
        """Its mark in a result matrix (console, HTML)."""
        return _LOOK[self][1]

    @property
    def style(self) -> str:
        """Its rich console style."""
        return _LOOK[self][2]

    @property
    def runnable(self) -> bool:
        """Whether the cell counts as runnable (everything but a refusal)."""
        return self.category != Category.SKIPPED


_LOOK: dict[Result, tuple[Category, str, str]] = {
    Result.PASS: (Category.PASS, "✓", "green"),
    Result.FAIL: (Category.FAILURE, "✗", "bold red"),
    Result.PRECISION_NOT_HONOURED: (Category.FAILURE, "≠", "bold red"),
    Result.PLACEMENT_NOT_HONOURED: (Category.FAILURE, "⌂", "bold red"),
    Result.UNSUPPORTED: (Category.SKIPPED, "–", "dim"),
    Result.ERROR: (Category.ERROR, "error", "yellow"),
    Result.CRASH: (Category.ERROR, "crash", "bold magenta"),
    Result.TIMEOUT: (Category.ERROR, "timeout", "magenta"),
    Result.LOST: (Category.ERROR, "lost", "bold yellow"),
    Result.ORACLE_DISAGREEMENT: (Category.NOT_JUDGED, "no oracle", "cyan"),
}


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

    @classmethod
    def of(cls, value: str | None) -> Stage | None:
        """A stage from a worker's tag (None when it names none we know)."""
        return cls(value) if value in cls._value2member_map_ else None


class Reason(str, Enum):
    """Why a cell is not a plain pass, as a code that reports and re-judging read (the
    message says the same for people). Each knows the stage it is at when nothing
    more precise was tagged."""

    #: planning refusals (no worker asked)
    NOT_AVAILABLE = "not-available"
    NOT_OFFERED = "not-offered"
    NO_CONVERSION = "no-conversion"
    INTEGER_INPUTS = "integer-inputs"
    NO_DYNAMIC_BATCH = "no-dynamic-batch"
    #: the backend raised UnsupportedError while compiling
    REFUSED = "refused"
    #: an exception, a crash, a timeout, a lost host
    RAISED = "raised"
    WORKER_DIED = "worker-died"
    NO_ANSWER = "no-answer"
    HOST_LOST = "host-lost"
    NO_REFERENCE = "no-reference"
    NO_OUTPUT = "no-output"
    ORACLE_DISAGREED = "oracle-disagreed"
    #: judged: outputs that cannot be compared, then the rules
    SHAPE = "shape"
    NOT_FINITE = "not-finite"
    KIND = "kind"
    ROUNDTRIP = "roundtrip"
    TOLERANCE = "tolerance"
    DISHONEST = "dishonest"
    #: the executable hides where its ops run (no placement, or host ops it does not state)
    PLACEMENT = "placement"
    #: a verdict of the case's own test (ONNX's node corpus: its expected outputs)
    EXTERNAL = "external"

    def __str__(self) -> str:
        return self.value

    @property
    def stage(self) -> Stage:
        if self in _JUDGED:
            return Stage.COMPARE
        return {Reason.NO_CONVERSION: Stage.CONVERT,
                Reason.ROUNDTRIP: Stage.SAVE_RELOAD}.get(self, Stage.COMPILE)

    @property
    def rejudgeable(self) -> bool:
        """A verdict of the tolerance policy, which a policy change may turn."""
        return self in (Reason.TOLERANCE, Reason.DISHONEST)


_JUDGED = {Reason.SHAPE, Reason.NOT_FINITE, Reason.KIND, Reason.TOLERANCE, Reason.DISHONEST,
           Reason.PLACEMENT, Reason.EXTERNAL, Reason.ORACLE_DISAGREED}


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
    #: why it is not a pass, as a code (None for a pass)
    reason: Reason | None = None
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
    #: where the executable's ops ran, as the core recorded it at compile
    #: (``ExecutableInfo.placement``: device and host op counts, units, host ops named,
    #: the runtime record's source); None when the backend reported none
    placement: dict[str, Any] | None = None
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
        self.reason = Reason(self.reason) if self.reason else None

    @property
    def runnable(self) -> bool:
        return Result(self.result).runnable

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["result"] = Result(self.result).value
        d["stage"] = Stage(self.stage).value if self.stage else None
        d["reason"] = Reason(self.reason).value if self.reason else None
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
        """Cells per result, every kind listed (0 where none)."""
        c = {r: 0 for r in RESULTS}
        for cell in self.cells:
            c[Result(cell.result).value] += 1
        return c

    def categories(self) -> dict[str, int]:
        c = {k.value: 0 for k in Category}
        for cell in self.cells:
            c[Result(cell.result).category.value] += 1
        return c

    @property
    def passed(self) -> bool:
        """Every runnable cell passed and nothing failed outside a cell."""
        return not self.errors and all(c.result == Result.PASS for c in self.cells if c.runnable)

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
