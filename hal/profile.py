"""One profiling loop for every backend.

The core times ``infer`` with a monotonic host clock (or the backend's own
device timer via ``Executable.device_timer``) and adds whatever the backend can read
(per-layer times, peak memory, energy). Missing metrics are reported as
unavailable with a reason, never estimated.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import InvalidInputError, UsageError


@dataclass
class LayerTime:
    name: str
    type: str
    time_ms: float


@dataclass
class Profile:
    backend: str
    target: str
    device_kind: str
    precision: str
    batch_size: int
    iterations: int
    warmup: int
    latency_ms: dict[str, float]
    throughput_per_s: float
    timer: str
    layers: list[LayerTime] | None = None
    peak_memory_bytes: int | None = None
    energy_j_per_inference: float | None = None
    unavailable: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batched(exe, arrays: list[np.ndarray], batch_size: int | None) -> list[np.ndarray]:
    if batch_size is None:
        return arrays
    if batch_size < 1:
        raise UsageError(f"batch size {batch_size} is not positive", "use --batch-size 1 or more")
    out = []
    for a, spec in zip(arrays, exe.info.inputs):
        if a.shape[:1] == (batch_size,):
            out.append(a)
            continue
        if spec.shape and spec.shape[0] not in (None, batch_size):
            raise InvalidInputError(
                f"this executable takes batch {spec.shape[0]} only, not {batch_size}",
                f"compile with example inputs of batch {batch_size} (`hal profile MODEL --batch-size "
                f"{batch_size}` does this for a model file), or export the model with a dynamic batch",
            )
        reps = -(-batch_size // a.shape[0])
        out.append(np.concatenate([a] * reps, axis=0)[:batch_size])
    return out


def profile(
    exe,
    inputs: tuple,
    iterations: int | None = 100,
    warmup: int = 10,
    duration_s: float | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    extras: bool = True,
    mode: str = "latency",
) -> Profile:
    """Profile ``exe`` on ``inputs`` (random inputs from the input specs when
    empty). Runs ``warmup`` untimed calls, then ``iterations`` timed calls, or as
    many as fit in ``duration_s``."""
    if not inputs:
        inputs = tuple(random_inputs(exe.info.inputs, batch_size or 1))
    arrays = _batched(exe, exe.check_inputs(tuple(inputs)), batch_size)
    arrays = exe.check_inputs(tuple(arrays))
    bs = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 1
    if iterations is not None and iterations < 1:
        raise UsageError(f"iterations={iterations} is not positive", "use 1 or more")
    if warmup < 0:
        raise UsageError(f"warmup={warmup} is negative", "use 0 or more")
    if mode not in ("latency", "throughput"):
        raise UsageError(f"unknown profile mode {mode!r}", "use 'latency' or 'throughput'")
    if mode == "throughput":
        return _throughput(exe, arrays, bs, iterations, warmup, duration_s)
    infer = exe._infer
    for _ in range(warmup):
        infer(arrays)
    times: list[float] = []
    timer = "host perf_counter"
    if duration_s is None:
        n = iterations or 100
        dev = exe._serial(exe.runner.device_timer, arrays, n)
        if dev is not None:
            times, timer = list(dev), "device"
        else:
            clock = time.perf_counter
            for i in range(n):
                t0 = clock()
                infer(arrays)
                times.append(clock() - t0)
                if progress and (i % 10 == 9 or i == n - 1):
                    progress(i + 1, n)
    else:
        if duration_s <= 0:
            raise UsageError(f"duration {duration_s}s is not positive", "use a positive duration")
        clock = time.perf_counter
        end = clock() + duration_s
        while True:
            t0 = clock()
            infer(arrays)
            t1 = clock()
            times.append(t1 - t0)
            if t1 >= end:
                break
    ms = np.asarray(times) * 1e3
    lat = {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }
    prof = Profile(
        backend=exe.info.backend,
        target=exe.info.target,
        device_kind=exe.info.device_kind,
        precision=exe.info.precision,
        batch_size=bs,
        iterations=len(times),
        warmup=warmup,
        latency_ms=lat,
        throughput_per_s=bs * len(times) / float(np.sum(times)),
        timer=timer,
    )
    if exe.info.device_kind == "emulated":
        prof.notes.append("emulated device: timings are of the host, not the accelerator")
    add = exe._serial(exe.runner.profile_extras, arrays) if extras else {}
    layers = add.pop("layers", None)
    if layers is not None:
        prof.layers = [l if isinstance(l, LayerTime) else LayerTime(**l) for l in layers]
    prof.peak_memory_bytes = add.pop("peak_memory_bytes", None)
    prof.energy_j_per_inference = add.pop("energy_j_per_inference", None)
    prof.unavailable.update(add.pop("unavailable", {}))
    prof.notes.extend(add.pop("notes", []))
    for metric in ("layers", "peak_memory_bytes", "energy_j_per_inference"):
        if getattr(prof, metric) is None and metric not in prof.unavailable:
            prof.unavailable[metric] = f"the {exe.info.backend} backend does not report it"
    prof.extra.update(add)
    return prof


def _throughput(exe, arrays, bs, iterations, warmup, duration_s) -> Profile:
    got = exe._serial(exe.runner.throughput, arrays, iterations, duration_s)
    if got is None:
        got = _pipelined(exe, arrays, bs, iterations, warmup, duration_s)
    return Profile(backend=exe.info.backend, target=exe.info.target,
                   device_kind=exe.info.device_kind, precision=exe.info.precision, batch_size=bs,
                   iterations=int(got.get("iterations", 0)), warmup=warmup,
                   latency_ms=got.get("latency_ms", {}), throughput_per_s=got["throughput_per_s"],
                   timer="backend throughput mode", notes=list(got.get("notes", [])),
                   extra={k: v for k, v in got.items()
                          if k not in ("latency_ms", "throughput_per_s", "iterations", "notes")})


def _pipelined(exe, arrays, bs, iterations, warmup, duration_s) -> dict[str, Any]:
    """The offline mode of a backend without its own: ``exe.submit`` kept full
    (the executable's queue depth in flight), timed from the first submit to the
    last result; latency is each request's, submit to completion."""
    import threading
    from collections import deque

    for _ in range(warmup):
        exe.submit(*arrays).result()
    if iterations is None and duration_s is None:
        duration_s = 10.0
    depth = exe._pipeline().depth
    clock = time.perf_counter
    lat: list[float] = []
    lock = threading.Lock()

    def timed():
        t0 = clock()
        f = exe.submit(*arrays)
        f.add_done_callback(lambda _f: _record(lat, lock, clock() - t0))
        return f

    pending: deque = deque()
    n = 0
    start = clock()
    while (iterations and n < iterations) or (duration_s and clock() - start < duration_s):
        pending.append(timed())
        n += 1
        if len(pending) >= depth:
            pending.popleft().result()
    while pending:
        pending.popleft().result()
    total = clock() - start
    ms = np.asarray(lat, dtype=float) * 1e3
    return {"throughput_per_s": bs * n / total,
            "latency_ms": {"p50": float(np.median(ms)), "p90": float(np.percentile(ms, 90)),
                           "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
                           "min": float(ms.min()), "max": float(ms.max())},
            "iterations": n, "in_flight": depth, "duration_s": total,
            "notes": [f"hal's pipeline: Executable.submit with {depth} request(s) in flight on "
                      f"{exe._pipeline().workers} worker(s); latency is submit to result"]}


def _record(lat: list[float], lock, t: float) -> None:
    with lock:
        lat.append(t)


def random_inputs(specs, batch_size: int = 1, seed: int = 0) -> list[np.ndarray]:
    """Deterministic inputs matching ``specs`` (dynamic dims → ``batch_size``).
    8-bit integers span their range (quantized data); wider integers are 0 or 1:
    an int64 input is usually token ids, positions or a mask, and only 0 and 1 are
    valid ids for every vocabulary (a random id out of an embedding's range fails)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in specs:
        shape = tuple(batch_size if d is None else d for d in s.shape)
        dt = np.dtype(s.dtype)
        if dt.kind == "f":
            out.append(rng.standard_normal(shape).astype(dt))
        elif dt.kind in "iu":
            info = np.iinfo(dt)
            lo, hi = (info.min, info.max) if dt.itemsize == 1 else (0, 1)
            out.append(rng.integers(lo, hi, shape, dtype=dt, endpoint=True))
        elif dt.kind == "b":
            out.append(rng.integers(0, 2, shape).astype(bool))
        else:
            raise UsageError(f"cannot make random inputs of dtype {dt}", "pass inputs explicitly")
    return out
