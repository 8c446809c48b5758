"""What the orchestrator and a backend's worker say to each other, typed.

The worker (:mod:`.worker`) announces its backend and devices (:class:`BackendInfo`),
takes :class:`CellCommand` s and answers each with an :class:`Outcome`. All of it goes
over JSON lines, so every type has ``to_dict`` / ``from_dict``; the same records travel
from a lab node to the driver through Ray. Nothing here imports a framework.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

import numpy as np

from .results import Reason, Result, Stage


class _Status(str, Enum):
    def __str__(self) -> str:
        return self.value

    @property
    def result(self) -> Result | None:
        """The cell's result when it did not run to the end (None: judge the outputs)."""
        return None if self.value == "ran" else Result(self.value)

    @property
    def reason(self) -> Reason | None:
        return _REASON.get(self)


#: how a command ended in the worker (or around it): ``ran`` means outputs to judge,
#: anything else is the result of a cell that did not run to the end (same values)
Status = _Status("Status", [("RAN", "ran")] + [(r.name, r.value) for r in (
    Result.UNSUPPORTED, Result.ERROR, Result.CRASH, Result.TIMEOUT, Result.LOST,
    Result.ORACLE_DISAGREEMENT)], module=__name__)


_REASON = {Status.UNSUPPORTED: Reason.REFUSED, Status.ERROR: Reason.RAISED,
           Status.CRASH: Reason.WORKER_DIED, Status.TIMEOUT: Reason.NO_ANSWER,
           Status.LOST: Reason.HOST_LOST, Status.ORACLE_DISAGREEMENT: Reason.ORACLE_DISAGREED}


def _known(cls, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


@dataclass(frozen=True)
class Refusal:
    """Why a device cannot run a cell, known before anything runs."""

    reason: Reason
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason.value, "message": self.message}

    @classmethod
    def of(cls, d: Any) -> Refusal | None:
        if d is None or isinstance(d, Refusal):
            return d
        if isinstance(d, str):  # a refusal given as text alone
            return cls(Reason.REFUSED, d)
        return cls(Reason(d["reason"]), d["message"])


@dataclass
class DeviceInfo:
    """One device as its backend's worker (or a lab node's probe) describes it."""

    backend: str
    target: str
    name: str = ""
    kind: str = "hardware"
    available: bool = True
    #: why it is not available
    reason: str | None = None
    id: str = ""
    #: the devices a router (AUTO, data parallel) sends work to
    routes_to: list[str] = field(default_factory=list)
    #: precision → why it cannot run there (None: it can be attempted)
    unsupported: dict[str, Refusal | None] = field(default_factory=dict)
    #: ONNX's node corpus can run here (a conversion path from ONNX at fp32)
    takes_onnx: bool = False
    #: its backend declares that a dynamic-batch model compiles to a dynamic executable
    dynamic_batch: bool = False
    precisions: list[str] = field(default_factory=list)
    #: the lab host it was found on (None: this host)
    host: str | None = None
    #: the device is the host's own CPU (``hal.Device.host_cpu``): it owes no placement
    host_cpu: bool = False

    def __post_init__(self) -> None:
        self.unsupported = {p: Refusal.of(w) for p, w in (self.unsupported or {}).items()}
        self.routes_to = list(self.routes_to or [])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["unsupported"] = {p: w.to_dict() if w else None for p, w in self.unsupported.items()}
        return d

    def summary(self) -> dict[str, Any]:
        """What a report lists for the device."""
        return {"target": self.target, "name": self.name, "kind": self.kind,
                "available": self.available, "reason": self.reason, "host_cpu": self.host_cpu}

    @classmethod
    def from_dict(cls, d: dict[str, Any], backend: str | None = None,
                  dynamic_batch: bool | None = None) -> DeviceInfo:
        kw = _known(cls, d)
        if backend is not None:
            kw["backend"] = backend
        kw.setdefault("backend", kw.get("target", "?").partition(":")[0])
        if dynamic_batch is not None:
            kw["dynamic_batch"] = dynamic_batch
        return cls(**kw)


@dataclass
class BackendInfo:
    """A worker's ``ready`` message: its backend, and what each device can attempt."""

    backend: str
    version: str | None = None
    missing_runtime: Any = None
    error: str | None = None
    description: str | None = None
    dynamic_batch: bool = False
    source: str | None = None
    devices: list[DeviceInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in ("backend", "version", "missing_runtime", "error",
                                                 "description", "dynamic_batch", "source")},
                "devices": [d.to_dict() for d in self.devices]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackendInfo:
        kw = _known(cls, d)
        kw["devices"] = [DeviceInfo.from_dict(x, kw["backend"], bool(kw.get("dynamic_batch")))
                         for x in d.get("devices") or ()]
        return cls(**kw)


@dataclass(frozen=True)
class CellCommand:
    """One cell for a worker: what to compile and run, and where its files are."""

    id: str
    target: str
    model: str
    precision: str
    shapes: str = "static"
    #: time the executable (``Executable.profile``)
    profile: bool = True
    #: save, reload, and compare the reloaded copy
    roundtrip: bool = True
    #: compile from the worker's one ``torch.export`` program of the model
    shared_export: bool = False
    #: the model's inputs (.npz), where to write the outputs (.npy), its ONNX file
    data: str = ""
    out: str = ""
    onnx: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"op": "cell", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellCommand:
        return cls(**_known(cls, d))


@dataclass
class Outcome:
    """How one cell ended where it ran: its status and bookkeeping, and the outputs to
    judge (``outputs``: filled in by the executor, never sent as JSON)."""

    status: Status
    message: str = ""
    #: the stage the worker was in (a crash or a timeout names it too)
    stage: Stage | None = None
    #: a code for why it did not run to the end (None: the status's own)
    reason: Reason | None = None
    compile_time_s: float | None = None
    artifact_size_bytes: int | None = None
    latency_p50_ms: float | None = None
    latency_batch: int | None = None
    roundtrip_max_abs: float | None = None
    backend_version: str | None = None
    duration_s: float | None = None
    detail: str | None = None
    device_kind: str | None = None
    executable_precision: str | None = None
    conversion_path: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the executable's placement summary as the core recorded it at compile
    #: (``ExecutableInfo.placement``; None: the backend reported none)
    placement: dict[str, Any] | None = None
    #: what the runtime reported when asked again (after running the cell, and the reloaded
    #: artifact's), where it lists other host ops than the compile-time record
    placement_later: list[dict[str, Any]] = field(default_factory=list)
    #: a result the case's own test gave (ONNX's node corpus), not the oracle's
    judged: Result | None = None
    #: the host that ran it, in a lab
    host: str | None = None
    outputs: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.status = Status(self.status)
        self.stage = Stage.of(self.stage)
        self.reason = Reason(self.reason) if self.reason else None
        self.judged = Result(self.judged) if self.judged else None
        self.conversion_path = list(self.conversion_path or [])
        self.notes = list(self.notes or [])
        self.placement_later = list(self.placement_later or [])

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "outputs"}
        for k in ("status", "stage", "reason", "judged"):
            d[k] = d[k].value if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Outcome:
        kw = _known(cls, d)
        kw.pop("outputs", None)
        if d.get("notes_save"):
            kw["notes"] = list(d.get("notes") or []) + [d["notes_save"]]
        return cls(**kw)


__all__ = ["BackendInfo", "CellCommand", "DeviceInfo", "Outcome", "Refusal", "Status"]
