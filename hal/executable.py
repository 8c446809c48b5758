"""Executable: a compiled model bound to one device.

Backends subclass :class:`Runner` and implement ``infer`` and
``write_artifact``; the core wraps every runner in one :class:`Executable`
class that owns input checking, names, output structure, threading, profiling
and the ``.hal`` file, so that every backend behaves the same at the edges.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import zipfile
from dataclasses import asdict, dataclass, field
from math import isfinite
from pathlib import Path
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from . import safezip
from .paths import atomic_file
from . import signature
from .errors import ArtifactError, HalError, InvalidInputError, out_of_memory, printable
from .types import Device, TensorSpec

if TYPE_CHECKING:
    from .futures import Pipeline
    from .placement import Placement
    from .profile import Profile

ARTIFACT_DIR = "artifact"
META_NAME = "hal.json"
#: 2: hal.json lists a SHA-256 of every artifact file (``files``);
#: 3: info.device → info.target, info.options → info.backend_options
FORMAT_VERSION = 3


@dataclass
class ExecutableInfo:
    """What was built, how, and how big: the metadata every Executable carries."""

    backend: str
    backend_version: str
    #: the device's target string, "backend:id" (``Executable.device`` is the Device)
    target: str
    device_kind: str
    precision: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    conversion_path: list[str] = field(default_factory=list)
    compile_time_s: float = 0.0
    artifact_size_bytes: int | None = None
    #: the backend options it was compiled with (``hal.compile(options=...)``)
    backend_options: dict[str, Any] = field(default_factory=dict)
    check_finite: bool = True
    #: the caller let ops of this device run on the host (``hal.compile(allow_host_ops=True)``);
    #: recorded so that a loaded artifact keeps the permission (:mod:`hal.placement`)
    allow_host_ops: bool = False
    cache_hit: bool = False
    notes: list[str] = field(default_factory=list)
    #: backend facts worth reporting (model size, compression ratio, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    #: the structure the model returns (:mod:`hal.signature`); ``None``: one array alone,
    #: several as a tuple. Set by the core from the source model, never by a backend.
    output_tree: Any = None
    #: where the ops run (:meth:`hal.placement.Placement.summary`): set by the core from
    #: the runner after every compile and load, never read from a file
    placement: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [s.to_dict() for s in self.inputs]
        d["outputs"] = [s.to_dict() for s in self.outputs]
        return d

    @classmethod
    def from_dict(cls, d: Any) -> ExecutableInfo:
        """Rebuild from ``hal.json``, checking every field's type: the file is
        untrusted, and a wrong type must be an ArtifactError here, not a
        TypeError deep inside a backend."""
        return cls(**_checked_info(d))


#: field → accepted types, for the untrusted ``hal.json``
_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "backend": (str,), "backend_version": (str,), "target": (str,), "device_kind": (str,),
    "precision": (str,), "inputs": (list,), "outputs": (list,), "conversion_path": (list,),
    "compile_time_s": (int, float), "artifact_size_bytes": (int, type(None)),
    "backend_options": (dict,), "check_finite": (bool,), "allow_host_ops": (bool,),
    "cache_hit": (bool,), "notes": (list,),
    "extra": (dict,), "output_tree": (list, type(None)),
}
_REQUIRED = ("backend", "backend_version", "target", "device_kind", "precision", "inputs", "outputs")


def _bad(what: str) -> ArtifactError:
    return ArtifactError(f"the artifact's {META_NAME} is invalid: {what}",
                         "re-create the artifact with hal (it was damaged or not written by hal)")


def _checked_spec(d: Any, where: str) -> TensorSpec:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str) \
            or not isinstance(d.get("shape"), list) or not isinstance(d.get("dtype"), str):
        raise _bad(f"{where} is not a tensor spec {{name, shape, dtype}}")
    if not all(s is None or (type(s) is int and s >= 0) for s in d["shape"]):
        raise _bad(f"{where} has a shape that is not a list of sizes")
    try:
        dt = np.dtype(d["dtype"])
    except TypeError:
        raise _bad(f"{where} has an unknown dtype {d['dtype'][:40]!r}") from None
    if dt.kind not in "biuf" and dt.name != "bfloat16":
        raise _bad(f"{where} has dtype {dt.name}, which no model input or output has")
    return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"])


def _checked_info(d: Any) -> dict[str, Any]:
    from .types import PRECISIONS

    if not isinstance(d, dict):
        raise _bad("'info' is not an object")
    missing = [k for k in _REQUIRED if k not in d]
    if missing:
        raise _bad(f"'info' lacks {missing}")
    out = {}  # "placement" is not among them: the runtime is asked again, the file never trusted
    for k, types in _INFO_TYPES.items():
        if k in d:
            if not isinstance(d[k], types) or (bool not in types and isinstance(d[k], bool)):
                raise _bad(f"info.{k} is a {type(d[k]).__name__}")
            out[k] = d[k]
    if out["device_kind"] not in ("hardware", "emulated"):
        raise _bad(f"info.device_kind is {out['device_kind'][:20]!r}")
    if out["precision"] not in PRECISIONS:
        raise _bad(f"info.precision is {out['precision'][:20]!r}")
    for k in ("conversion_path", "notes"):
        if not all(isinstance(x, str) for x in out.get(k, [])):
            raise _bad(f"info.{k} holds something other than text")
    out["inputs"] = [_checked_spec(x, f"input {i}") for i, x in enumerate(out["inputs"])]
    out["outputs"] = [_checked_spec(x, f"output {i}") for i, x in enumerate(out["outputs"])]
    for k in ("inputs", "outputs"):
        if len({s.name for s in out[k]}) != len(out[k]):
            raise _bad(f"two {k} share a name")
    if out.get("output_tree") is not None:
        why = signature.why_invalid(out["output_tree"], len(out["outputs"]))
        if why:
            raise _bad(f"info.output_tree {why}")
    return out


def as_numpy(x: Any, what: str) -> np.ndarray:
    """numpy stays numpy; torch (or anything with ``.numpy()``) is converted
    without importing its framework."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, np.generic):
        return np.asarray(x)
    mod = type(x).__module__ or ""
    if mod.startswith("torch") and hasattr(x, "detach"):
        try:
            return x.detach().cpu().resolve_conj().resolve_neg().numpy()
        except (TypeError, RuntimeError) as e:  # e.g. bfloat16, which numpy has no type for
            raise InvalidInputError(
                f"{what} is a torch {str(x.dtype).removeprefix('torch.')} tensor that numpy cannot "
                f"hold ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})",
                "convert it to the model's dtype first (e.g. .float()), or pass a numpy array") from None
    if hasattr(x, "numpy") and callable(x.numpy):  # tf.Tensor, jax.Array
        return np.asarray(x.numpy())
    raise InvalidInputError(
        f"{what} is a {type(x).__name__}, not an array",
        "pass numpy arrays (or torch tensors)",
    )


class Runner:
    """What a backend builds: the compiled model on one device, behind the core.

    A backend subclasses this, implements :meth:`infer` and :meth:`write_artifact`
    (and any optional method below), and returns it from ``compile``/``load``. The
    core wraps it in :class:`Executable`, which owns everything at the edges the
    same way for every backend: input checks and copies, names, output
    structure, threading, async, profiling and the ``.hal`` file. ``infer`` only
    ever sees arrays that passed :func:`conform`."""

    #: ``infer`` may be called from several threads at once. When False (the safe
    #: default for a new backend) the core serializes calls with a lock.
    thread_safe: bool = False
    #: how many ``infer`` calls the runtime usefully overlaps: the size of the core's
    #: worker pool behind ``Executable.submit`` (a thread-safe runner only); the queue
    #: holds twice as many. A runner with its own ``start`` sets it to its request count.
    concurrency: int = 1

    def __init__(self, info: ExecutableInfo, device: Device):
        self.info = info
        self.device = device

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run once on already-checked inputs (see :func:`conform`: never write into
        them, keep none beyond the call). Return a list with one numpy array per
        ``info.outputs`` entry, in that order, each of exactly its declared dtype
        (shapes as the spec admits), each owned by the caller (a copy, never a view
        into a runtime buffer, an input or a weight). The core refuses any other
        count, type or dtype with one HalError naming the backend."""
        raise NotImplementedError

    def write_artifact(self, directory: Path) -> None:
        """Write the compiled artifact's files into ``directory``."""
        raise NotImplementedError

    def profile_extras(self, inputs: list[np.ndarray]) -> dict[str, Any]:
        """Backend additions to a profile: ``layers``, ``peak_memory_bytes``,
        ``energy_j_per_inference`` and anything else; ``unavailable`` maps a
        metric to why it cannot be read. Never estimate."""
        return {}

    def device_timer(self, inputs: list[np.ndarray], iterations: int) -> list[float] | None:
        """Optional: time ``iterations`` runs with the device's own clock (e.g. CUDA
        events) and return seconds per run. ``None`` lets the core time ``infer``
        with a host clock."""
        return None

    def throughput(self, inputs: list[np.ndarray], iterations: int | None,
                   duration_s: float | None) -> dict[str, Any] | None:
        """Optional offline mode (async queues, streams): return
        ``{"throughput_per_s": ..., "latency_ms": {...}, "iterations": n, "notes": [...]}``,
        or ``None`` when the backend has none."""
        return None

    def start(self, inputs: list[np.ndarray],
              done: Callable[[list[np.ndarray] | None, BaseException | None], None]) -> None:
        """Optional native pipelining behind ``Executable.submit``: start one
        inference and return at once, then call ``done(outputs, None)`` or
        ``done(None, error)`` from any thread. ``inputs`` are valid only during
        this call (copy what is kept); it may block while the runtime's queue is
        full. Without it the core runs ``infer`` on a pool of ``concurrency`` threads."""
        raise NotImplementedError

    def stream(self, inputs: Iterator[list[np.ndarray]]) -> Iterator[list[np.ndarray]]:
        """Optional native batch pipelining behind ``Executable.map`` and LoadGen's
        Offline and Multi-Stream (a thread-safe runner only): run every item of
        ``inputs`` and yield each one's outputs, in order, keeping the runtime's queue
        full without a call back into Python per inference (the consumer's thread reads
        the outputs of a finished request when it refills it, as ``benchmark_app`` does).
        Each item is valid only until the next is drawn (copy what is kept); a failure
        raises from the generator. Without it the core starts each item as ``submit`` does."""
        raise NotImplementedError

    def device_inputs(self, inputs: tuple) -> list | None:
        """Optional: check inputs that already live on the device (CUDA tensors) where
        they are, with the same errors as the core's checks, and return them as
        ``infer`` takes them; ``None`` hands every input to the core's numpy checks."""
        return None

    def placement(self) -> Placement | None:
        """Where each op runs, read from the runtime's own record of the graph it
        runs (:mod:`hal.placement`); ``None`` when the backend cannot tell, which
        conformance counts against a device that is not the host."""
        return None


_PIPELINE_LOCK = threading.Lock()


class Executable:
    """A compiled model: hal's own object around what a backend built (its
    :class:`Runner`), like ``onnxruntime.InferenceSession`` around its C session.
    Call it with arrays; get back what the model returns."""

    def __init__(self, runner: Runner):
        if not isinstance(runner, Runner):
            raise TypeError(f"Executable wraps a hal.plugin.Runner, not a {type(runner).__name__}")
        self.runner = runner
        self._lock = None if runner.thread_safe else threading.Lock()
        self._keepalive: list[Any] = []  # e.g. the temp dir an artifact was unpacked to
        self._fast: list[tuple[np.dtype | None, tuple, int, int]] | None = None  # check_inputs' hot path
        self._out: list[np.dtype | None] | None = None  # the declared output dtypes (_outputs)
        self._async: Pipeline | None = None
        self._on_device = type(runner).device_inputs is not Runner.device_inputs

    @property
    def info(self) -> ExecutableInfo:
        """What was built, how, and how big (shared with the runner)."""
        return self.runner.info

    @property
    def device(self) -> Device:
        return self.runner.device

    @property
    def placement(self) -> Placement | None:
        """Where each op runs, as the runtime reported it when the core built or loaded
        this executable (:mod:`hal.placement`; ``info.placement`` is its summary);
        ``None`` when the backend cannot tell."""
        return getattr(self, "_placement", None)

    # --- the user-facing surface -------------------------------------------------
    def __call__(self, *inputs: Any, **named: Any):
        """Positional arrays in input order, or arrays by input name (``exe(input_ids=...)``);
        returns what the model returns: one array, or its tuple / dict / nesting of them."""
        if named:
            inputs = tuple(self._by_name(named, inputs))
        return signature.unflatten(self.info.output_tree,
                                   self._outputs(self._infer(self.check_inputs(inputs))))

    def _infer(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The runner's ``infer`` under the core's rules: serialized when the
        runner is not thread-safe; a MemoryError is one ResourceError."""
        try:
            if self._lock is None:
                return self.runner.infer(arrays)
            with self._lock:
                return self.runner.infer(arrays)
        except MemoryError:
            raise out_of_memory(f"running the model on {self.info.target}") from None

    def _serial(self, fn: Callable, *args: Any) -> Any:
        """Call one of the runner's methods under its threading rule."""
        if self._lock is None:
            return fn(*args)
        with self._lock:
            return fn(*args)

    def submit(self, *inputs: Any, **named: Any) -> Future:
        """Start one inference and return a :class:`concurrent.futures.Future` of
        what ``exe(*inputs, **named)`` returns. Inputs are checked here (a bad one
        raises at once) and copied as needed, so the caller may reuse its buffers
        as soon as ``submit`` returns; a failing inference raises its hal error
        from ``future.result()``. Blocks while the executable's queue is full."""
        if named:
            inputs = tuple(self._by_name(named, inputs))
        tree = self.info.output_tree
        return self._pipeline().submit(self, self.check_inputs(inputs),
                                       lambda outs: signature.unflatten(tree, self._outputs(outs)))

    def map(self, inputs: Iterable[Any], *, max_in_flight: int | None = None) -> Iterator[Any]:
        """Results of ``exe(item)`` for each item (an array, a tuple of arrays, or a
        name→array dict), in order, with at most ``max_in_flight`` submitted ahead
        (default: the executable's queue depth), like ``Executor.map`` but bounded."""
        from .futures import ordered

        return ordered(self, inputs, max_in_flight)

    def _pipeline(self) -> Pipeline:
        if self._async is None:
            with _PIPELINE_LOCK:
                if self._async is None:
                    from .futures import Pipeline

                    kind = type(self.runner)
                    self._async = Pipeline(self, kind.start is not Runner.start,
                                           kind.stream is not Runner.stream)
        return self._async

    def run(self, inputs: Any) -> Outputs:
        """Like ``__call__`` but takes a sequence or a name→array dict and always
        returns the flat outputs, as a list that also answers to output names
        (``outs["logits"]``, ``outs.names``), like OpenVINO's ``OVDict``."""
        if isinstance(inputs, dict):
            inputs = self._by_name(inputs, ())
        elif isinstance(inputs, np.ndarray):
            inputs = [inputs]
        return Outputs(self._outputs(self._infer(self.check_inputs(tuple(inputs)))),
                       [s.name for s in self.info.outputs])

    def _outputs(self, outs: Any) -> list[np.ndarray]:
        """What the runner returned, held to ``info.outputs`` before the caller sees
        it: one numpy array per declared output, each of exactly the declared dtype.
        Anything else is a bug in the backend, never the caller's: one HalError
        naming it (never a silent cast). Shapes are not checked here (conformance
        compares them with the oracle's)."""
        want = self._out
        if want is None:
            want = self._out = [_dtype_or_none(s.dtype) for s in self.info.outputs]
        if type(outs) is not list:
            if not isinstance(outs, (tuple, list)):
                raise _broken_outputs(self.info, outs)
            outs = list(outs)
        if len(outs) == len(want):
            for a, dt in zip(outs, want):
                if not isinstance(a, np.ndarray) or (a.dtype is not dt and dt is not None and a.dtype != dt):
                    break
            else:
                return outs
        raise _broken_outputs(self.info, outs)

    def _by_name(self, named: dict, positional: tuple) -> list[Any]:
        names = [s.name for s in self.info.inputs]
        given = dict(zip(names, positional))
        twice = sorted(set(given) & set(named))
        unknown = sorted(map(str, set(named) - set(names)))
        given.update(named)
        missing = [n for n in names if n not in given]
        if unknown or missing or twice:
            raise InvalidInputError(
                f"input names do not match the model's {names}: missing {missing}, unknown "
                f"{[printable(u, 40) for u in unknown]}" + (f", given twice {twice}" if twice else ""),
                f"pass exactly {names} (by position or by name)")
        return [given[n] for n in names]

    def check_inputs(self, inputs: tuple) -> list[np.ndarray]:
        """Count, dtype, shape and (by default) NaN/Inf, with one clear error
        each; returns the arrays as ``infer`` takes them (see :func:`conform`).

        The common case (C-contiguous, aligned numpy arrays of the exact dtype)
        takes a fast path of attribute checks and one reduction: the checks sit
        on the hot path of every ``exe(x)``."""
        if self._on_device and (kept := self.runner.device_inputs(inputs)) is not None:
            return kept
        fast = self._fast
        if fast is None:
            fast = self._fast = [_fast_spec(s) for s in self.info.inputs]
        if len(inputs) == len(fast):
            finite = self.info.check_finite
            for a, (dt, shape, start, check) in zip(inputs, fast):
                # dtype identity: numpy's built-in native dtypes are singletons, so
                # this also proves native byte order
                if type(a) is not np.ndarray or a.dtype is not dt or len(a.shape) != len(shape) \
                        or (a.shape[start:] != shape[start:] if start >= 0 else
                            any(d is not None and d != n for d, n in zip(shape, a.shape))):
                    break
                flags = a.flags
                if not (flags.c_contiguous and flags.aligned):
                    break
                # NaN/Inf: a finite a·a proves a float32/64 array finite (squares
                # cannot cancel an Inf; NaN propagates; an overflow of large finite
                # values goes to the slow path, which decides). Measured between torch
                # calls on 3 K elements: +1.4 us, vs +2.4 for a sum and +3.6 for
                # isfinite().all(), which wins from ~100 K elements on; the cut-off
                # also keeps dot below OpenBLAS's threading threshold (10 K).
                if finite and check and not (
                        isfinite(_vdot(a, a)) if check == 1 and a.size <= _DOT_MAX
                        else np.isfinite(a).all()):
                    break
            else:
                return list(inputs)
        return self._check_slow(inputs)

    def _check_slow(self, inputs: tuple) -> list[np.ndarray]:
        specs = self.info.inputs
        if len(inputs) != len(specs):
            raise InvalidInputError(
                f"expected {len(specs)} input(s) {[s.name for s in specs]}, got {len(inputs)}",
                "pass one array per model input, in order",
            )
        return [conform(as_numpy(x, f"input {spec.name!r}"), spec, self.info.check_finite)
                for x, spec in zip(inputs, specs)]

    def profile(self, *inputs: Any, iterations: int | None = 100, warmup: int = 10,
                duration_s: float | None = None, batch_size: int | None = None,
                mode: str = "latency", extras: bool = True,
                progress: Callable[[int, int], None] | None = None) -> Profile:
        """Latency percentiles and throughput of ``inputs`` (random when none).

        ``iterations`` timed runs after ``warmup`` (or as many as fit in
        ``duration_s``); ``batch_size`` repeats the inputs up to that batch;
        ``mode="throughput"`` uses the backend's offline mode (async queues,
        streams); ``extras`` adds what the backend can read (per-layer times,
        peak memory, energy); ``progress(done, total)`` is called as it goes."""
        from .profile import profile

        # batching repeats arrays with numpy: device tensors (CUDA) are profiled from host copies
        inputs = tuple(x if isinstance(x, np.ndarray) else as_numpy(x, "input") for x in inputs)
        return profile(self, inputs, iterations=iterations, warmup=warmup, duration_s=duration_s,
                       batch_size=batch_size, mode=mode, extras=extras, progress=progress)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a self-contained ``.hal`` file atomically (no half-written file)."""
        return write_hal(self, Path(path))

    def __repr__(self) -> str:
        i = self.info
        return (f"<Executable {i.backend} on {i.target} ({i.device_kind}) {i.precision} "
                f"inputs={[_fmt_shape(s.shape) for s in i.inputs]}>")


class Outputs(list):
    """The flat outputs of one run, in order, also by name: ``outs[0]``,
    ``outs["logits"]``, ``outs.names``, ``outs.to_dict()``."""

    def __init__(self, arrays: list[np.ndarray], names: list[str]):
        super().__init__(arrays)
        self.names = list(names)

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return list.__getitem__(self, self.names.index(key))
            except ValueError:
                raise KeyError(f"no output {key!r}; the outputs are {self.names}") from None
        return list.__getitem__(self, key)

    def to_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self))


def conform(a: np.ndarray, spec: TensorSpec, check_finite: bool) -> np.ndarray:
    """One input as every backend's ``infer`` receives it, or one InvalidInputError.

    The contract: a base ``np.ndarray`` of exactly ``spec``'s dtype in native
    byte order, C-contiguous and aligned, of a shape the spec admits, finite
    unless ``check_finite`` is off. It may be read-only and may be the caller's
    own memory: backends never write into it, and it is valid only during the
    call, so a backend that keeps a reference keeps a copy. Views, Fortran
    order, unaligned and byte-swapped arrays are copied here once."""
    name = spec.name
    if a.dtype != spec.dtype and a.dtype.name != spec.dtype:  # '>f4' is named float32
        raise InvalidInputError(
            f"input {name!r} has dtype {a.dtype.name}, the model takes {spec.dtype}",
            f"convert it with .astype(np.{spec.dtype})",
        )
    if a.ndim != len(spec.shape) or any(
        d is not None and d != n for d, n in zip(spec.shape, a.shape)
    ):
        raise InvalidInputError(
            f"input {name!r} has shape {tuple(a.shape)}, the model takes "
            f"{_fmt_shape(spec.shape)}",
            "reshape the input, or recompile with example inputs of this shape",
        )
    try:
        want = np.dtype(spec.dtype)  # the singleton numpy uses for its own arrays
    except TypeError:  # a name numpy cannot parse here: the array's dtype, natively ordered
        want = a.dtype.newbyteorder("=")
    if type(a) is not np.ndarray:  # np.matrix, masked arrays: their data, as a plain array
        a = np.asarray(a)
    if a.dtype is not want or not (a.flags.c_contiguous and a.flags.aligned):
        a = np.require(a, want, ("C_CONTIGUOUS", "ALIGNED"))
    if check_finite and _floating(a.dtype) and not np.isfinite(a).all():
        raise InvalidInputError(
            f"input {name!r} contains NaN or Inf",
            "clean the input, or compile with check_finite=False to pass it through",
        )
    return a


_vdot = np.vdot
_DOT_MAX = 8192


def _floating(dt: np.dtype) -> bool:
    """numpy floats and ml_dtypes' (bfloat16, float8_*), which numpy calls kind 'V'."""
    return dt.kind == "f" or (dt.kind == "V" and dt.name.startswith(("bfloat", "float")))


def _fast_spec(spec: TensorSpec) -> tuple[np.dtype | None, tuple, int, int]:
    """(dtype, shape, start, check): ``a.shape[start:]`` must equal ``shape[start:]``;
    start is 0 for static shapes, 1 for a dynamic batch only, -1 otherwise. check:
    0 not a float, 1 float32/64, 2 another float (float16, bfloat16: its a·a
    overflows too easily). A dtype numpy cannot name here (bfloat16 without
    ml_dtypes) is None: every call takes the slow path."""
    dyn = [i for i, d in enumerate(spec.shape) if d is None]
    start = 0 if not dyn else 1 if dyn == [0] else -1
    try:
        dt = np.dtype(spec.dtype)
    except TypeError:
        return None, tuple(spec.shape), start, 0
    check = 0 if not _floating(dt) else 1 if dt in (np.float32, np.float64) else 2
    return dt, tuple(spec.shape), start, check


def _dtype_or_none(name: str) -> np.dtype | None:
    """The numpy dtype of a spec's name; None when numpy cannot name it here
    (bfloat16 without ml_dtypes), which then goes unchecked."""
    try:
        return np.dtype(name)
    except TypeError:
        return None


def _broken_outputs(info: ExecutableInfo, outs: Any) -> HalError:
    """The error for a runner whose outputs do not match ``info.outputs``."""
    want = [f"{s.name}: {s.dtype}" for s in info.outputs][:8]
    if isinstance(outs, list):
        got = ", ".join(f"{type(a).__name__} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
                        for a in outs[:8])
        returned = f"{len(outs)} output(s) [{got}]"
    else:
        returned = f"an object of type {type(outs).__name__}, not a list of arrays"
    return HalError(f"backend {info.backend}'s runner returned {returned}; the executable declares "
                    f"{len(info.outputs)} [{', '.join(want)}]",
                    f"this is a bug in the {info.backend} plugin: its infer must return one numpy array "
                    "per ExecutableInfo.outputs entry, of exactly that dtype (report it to the plugin's "
                    "authors)")


def _fmt_shape(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def read_json_object(path: Path, backend: str) -> dict[str, Any]:
    """A backend's own metadata file inside an unpacked artifact, as a JSON
    object, or one ArtifactError: the file is as untrusted as the artifact (a
    repeated key is refused too, since two parsers may keep different copies)."""
    try:
        d = safezip.strict_json(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ArtifactError(f"the {backend} artifact's {path.name} is missing or not JSON "
                            f"({type(e).__name__})", "re-create it with hal compile") from None
    if not isinstance(d, dict):
        raise ArtifactError(f"the {backend} artifact's {path.name} is not a JSON object",
                            "re-create it with hal compile")
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def write_hal(exe: Executable, path: Path, meta_extra: dict[str, Any] | None = None,
              mode: int = 0o666) -> Path:
    """Write ``exe`` as a ``.hal`` zip: ``hal.json`` (metadata and a SHA-256 of
    every artifact file) plus ``artifact/``, through :func:`~hal.paths.atomic_file`
    (a reader never sees half a file). ``mode``: the cache writes its entries 0644."""
    with tempfile.TemporaryDirectory(prefix="hal-save-") as tmp:
        art = Path(tmp) / ARTIFACT_DIR
        art.mkdir()
        exe.runner.write_artifact(art)
        files = sorted(f for f in art.rglob("*") if f.is_file())
        exe.info.artifact_size_bytes = sum(f.stat().st_size for f in files)
        digests = {f.relative_to(tmp).as_posix(): _sha256(f) for f in files}
        meta = {"format_version": FORMAT_VERSION, "info": exe.info.to_dict(),
                "device": exe.device.to_dict(), "files": digests, **(meta_extra or {})}
        with atomic_file(path, mode) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(META_NAME, json.dumps(meta, indent=1))
            for member in files:
                z.write(member, member.relative_to(tmp).as_posix())
    return path


def read_artifact(path: str | os.PathLike) -> tuple[dict[str, Any], Path, Callable[[], None]]:
    """Unpack a ``.hal`` file into a private temp dir after checking it: one
    unambiguous zip (:mod:`hal.safezip`), a well-typed ``hal.json``, and every
    artifact file matching its recorded SHA-256 (no file missing or added).
    Return (meta with ``meta["info"]`` an :class:`ExecutableInfo`, artifact dir, cleanup)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path} does not exist" if not path.exists() else f"{path} is not a file",
                            "check the path")
    if path.stat().st_size == 0:
        raise ArtifactError(f"{path} is empty", "re-create it with `hal compile ... -o`")
    try:
        z = safezip.open_strict(path)
    except safezip.UnsafeArchive as e:
        raise ArtifactError(f"{path} is not a .hal artifact hal can read safely: {e}",
                            "pass a file written by Executable.save or `hal compile -o`") from None
    with z:
        try:
            meta = safezip.strict_json(z.read(META_NAME))
        except KeyError:
            raise ArtifactError(f"{path} has no {META_NAME}", "re-create it with hal") from None
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise _bad(f"not JSON ({str(e)[:80]})") from None
        if not isinstance(meta, dict):
            raise _bad("not a JSON object")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path} has artifact format {str(meta.get('format_version'))[:20]}, this hal "
                f"reads {FORMAT_VERSION}", "recompile the model with this version of hal")
        meta["info"] = ExecutableInfo.from_dict(meta.get("info"))
        digests = meta.get("files")
        if not isinstance(digests, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in digests.items()):
            raise _bad("'files' is not a map of file → SHA-256")
        members = {i.filename for i in z.infolist() if not i.is_dir()} - {META_NAME}
        if members != set(digests):
            extra, gone = sorted(members - set(digests)), sorted(set(digests) - members)
            raise ArtifactError(f"{path} does not hold the files its {META_NAME} lists "
                                f"(unlisted: {extra[:3]}, missing: {gone[:3]})",
                                "re-create it with hal; do not edit .hal files")
        if any(not m.startswith(ARTIFACT_DIR + "/") for m in members):
            raise _bad(f"a member lies outside {ARTIFACT_DIR}/")
        tmp = tempfile.TemporaryDirectory(prefix="hal-load-")
        try:
            safezip.extract(z, Path(tmp.name))
            for name, want in digests.items():
                if _sha256(Path(tmp.name) / name) != want:
                    raise ArtifactError(f"{path}: {name} does not match its SHA-256 in {META_NAME} "
                                        "(the artifact was edited or damaged)",
                                        "re-create it with hal; do not edit .hal files")
        except BaseException:
            tmp.cleanup()
            raise
    (Path(tmp.name) / ARTIFACT_DIR).mkdir(exist_ok=True)
    return meta, Path(tmp.name) / ARTIFACT_DIR, tmp.cleanup
