"""Plain typed records shared by the core and every backend."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import UsageError

#: Precisions hal knows. ``fp64`` exists for the conformance oracle.
PRECISIONS: dict[str, str] = {
    "fp64": "IEEE double everywhere (reference oracle)",
    "fp32": "IEEE single everywhere; no TF32, no bf16 down-conversion",
    "fp16": "half-precision weights and compute",
    "bf16": "bfloat16 weights and compute",
    "int8": "static int8: weights and activations, calibrated on caller data",
    "int8-dynamic": "int8 weights, activations quantized per call",
}

DeviceKind = Literal["hardware", "emulated"]


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(
            f"unknown precision {precision!r}",
            f"use one of {', '.join(PRECISIONS)}",
        )
    return precision


@dataclass
class Device:
    """One place a model can run. ``kind='emulated'`` means the host runs the
    artifact that would be sent to the device; it is never picked by ``auto``."""

    backend: str
    id: str
    name: str
    kind: DeviceKind = "hardware"
    available: bool = True
    reason: str = ""
    memory_bytes: int | None = None
    aliases: tuple[str, ...] = ()
    #: what this device offers, and so what the core and conformance let run on it
    #: (``Backend.precisions_for``): exactly that on an available device, ``()`` for none;
    #: on an unavailable one, what it would offer when the backend can tell without it.
    precisions: tuple[str, ...] = ()
    #: rough rank for ``target="auto"`` among hardware: accelerators > CPUs.
    rank: int = 0
    #: typical board power in watts, where the vendor states one.
    power_w: float | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    #: ids of this backend's devices that this one dispatches to (OpenVINO's AUTO, CUDA's
    #: data-parallel ``cuda:*``): conformance's operator and architecture tiers test those
    #: directly and leave a router to the quick tier, instead of running every cell twice
    routes_to: tuple[str, ...] = ()
    #: the device is the host's own CPU: no op can fall back from it to the host, so it
    #: owes no placement record (:mod:`hal.placement`). Every other device (an
    #: accelerator, an emulated one) reports where its ops run, or conformance fails it.
    host_cpu: bool = False

    @property
    def target(self) -> str:
        return f"{self.backend}:{self.id}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target"] = self.target
        d["aliases"] = list(self.aliases)
        d["precisions"] = list(self.precisions)
        d["routes_to"] = list(self.routes_to)
        return d


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for a dynamic dimension) and numpy dtype name."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    @classmethod
    def of(cls, name: str, array: np.ndarray, dynamic_batch: bool = False) -> TensorSpec:
        shape = tuple(array.shape)
        if dynamic_batch and shape:
            shape = (None,) + shape[1:]
        return cls(name, shape, str(array.dtype))


@dataclass
class CompileOptions:
    """Everything that shapes a compiled artifact (and so the cache key)."""

    precision: str = "fp32"
    #: one sample: a tuple with one array per model input (fixes shapes and dtypes)
    example_input: tuple[np.ndarray, ...] | None = None
    #: many samples, each like ``example_input`` (sets int8 quantization ranges)
    calibration: list[tuple[np.ndarray, ...]] | None = None
    #: the backend's own knobs (the ``options={...}`` of ``hal.compile``), e.g.
    #: {"torch_compile": "max-autotune"}; keys are checked against ``Backend.options``.
    backend_options: dict[str, Any] = field(default_factory=dict)
    #: reject NaN/Inf inputs at run time (documented default).
    check_finite: bool = True
    #: where the backend may keep its runtime's own compile cache (a folder inside
    #: hal's cache); ``None`` when caching is off: then write nothing persistent.
    cache_dir: Path | None = None
    #: the caller accepts ops of a device that is not the host running on the host
    #: (``hal.compile(allow_host_ops=True)``). A backend that can place an op on the
    #: device or on the host compiles for the device only when this is False; the core
    #: refuses any host op the runner's placement reports then (:mod:`hal.placement`).
    allow_host_ops: bool = False


@dataclass
class Requirements:
    """What ``target='auto'`` must satisfy besides the precision (which is
    ``hal.compile``'s own argument). ``None`` means no constraint."""

    max_latency_ms: float | None = None
    max_power_w: float | None = None
    #: "speed" ranks by device rank / measured latency, "power" by stated watts.
    prefer: Literal["speed", "power"] = "speed"
