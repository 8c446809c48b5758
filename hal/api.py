"""The application surface: devices(), compile(), load()."""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version as dist_version
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Callable, Iterable

import numpy as np

from . import cache as _cache
from . import formats as _formats
from . import signature as _signature
from .backend import Backend
from .errors import stage
from .errors import (ArtifactError, CompileError, DeviceUnavailableError, HalError, InvalidInputError,
                     UnsupportedError, UsageError, brief, out_of_memory)
from .executable import Executable, ExecutableInfo, Runner, as_numpy, read_artifact, write_hal
from .placement import Placement, allowed_note
from .plugins import registry
from .profile import random_inputs
from .types import CompileOptions, Device, Requirements, check_precision

try:
    HAL_VERSION = dist_version("hal-accel")
except PackageNotFoundError:  # running from a source tree
    HAL_VERSION = "0+unknown"


@dataclass
class BackendStatus:
    name: str
    description: str
    version: str | None
    #: why the backend's runtime cannot be used (what to install), or None when it can
    missing_runtime: str | None
    formats: list[str]
    precisions: list[str]
    devices: list[Device] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["devices"] = [dev.to_dict() for dev in self.devices]
        return d


_probed: dict[str, BackendStatus] = {}
_log = logging.getLogger("hal")


def backend_status(b: Backend, refresh: bool = False) -> BackendStatus:
    """Probe one backend once per process (``refresh`` re-probes)."""
    if not refresh and b.name in _probed:
        return _probed[b.name]
    missing = b.missing_runtime()
    st = BackendStatus(b.name, b.description, None, missing, list(b.formats), list(b.precisions))
    try:
        st.version = None if missing else b.version()
        st.devices = b.probe()
    except Exception as e:  # noqa: BLE001 - a failing probe must not hide the others
        st.error = f"probe failed: {brief(e, 286, typed=True)}"
    _probed[b.name] = st
    return st


def backends(refresh: bool = False) -> list[BackendStatus]:
    """Every registered backend with its runtime status and devices."""
    return [backend_status(b, refresh) for b in registry().backends.values()]


def devices(refresh: bool = False) -> list[Device]:
    """Every device of every backend: hardware or emulated, available or why not."""
    return [d for st in backends(refresh) for d in st.devices]


# --- target resolution ---------------------------------------------------------------
def _match(dev: Device, name: str) -> bool:
    n = name.lower()
    return dev.id.lower() == n or n in (a.lower() for a in dev.aliases)


def _explain(devs: list[Device]) -> str:
    return "; ".join(f"{d.target}: {d.reason or 'unavailable'}" for d in devs)


def resolve(target: str) -> tuple[Backend, Device]:
    """Map a target string to one available device.

    ``backend:id`` names a device exactly; a bare backend name takes that
    backend's first available *hardware* device (never an emulator); any other
    name is looked up among device aliases ("cpu", "cuda:1", "movidius").
    """
    if not isinstance(target, str) or not target.strip():
        raise UsageError(f"target {target!r} is not a name", "pass e.g. target='cpu' or 'auto'")
    reg = registry()
    head, _, rest = target.partition(":")
    if head in reg.backends:
        b = reg.backends[head]
        st = backend_status(b)
        if st.error or (st.missing_runtime and not st.devices):
            raise DeviceUnavailableError(f"backend {head} is unusable: {st.error or st.missing_runtime}",
                                         "install its runtime, or choose another target")
        if rest:
            devs = [d for d in st.devices if _match(d, rest)]
        else:
            devs = [d for d in st.devices if d.kind == "hardware"]
            if not any(d.available for d in devs):
                emu = [d.target for d in st.devices if d.kind == "emulated" and d.available]
                raise DeviceUnavailableError(
                    f"backend {head} has no available hardware device"
                    + (f" ({_explain(devs)})" if devs else ""),
                    f"target the emulator explicitly ({', '.join(emu)})" if emu
                    else "attach the device, or choose another target")
    else:
        cands = [b for b in reg.backends.values() if head.lower() in b.aliases or
                 target.lower() in b.aliases]
        devs = [d for b in cands for d in backend_status(b).devices if _match(d, target)]
        if not devs:
            known = sorted({d.target for d in devices()} | {a for d in devices() for a in d.aliases})
            raise UsageError(f"unknown target {target!r}",
                             f"use 'auto' or one of: {', '.join(known)} (see `hal devices`)")
    avail = [d for d in devs if d.available]
    if not avail:
        if not devs:
            raise UsageError(f"backend {head} has no device {rest!r}",
                             f"see `hal devices` for {head}'s devices")
        raise DeviceUnavailableError(f"target {target!r} is not available: {_explain(devs)}",
                                     "attach the device or install its driver, or pick another target")
    if len(avail) > 1 and len({d.backend for d in avail}) > 1:
        raise UsageError(f"target {target!r} is ambiguous: {', '.join(d.target for d in avail)}",
                         "name one of them exactly")
    dev = sorted(avail, key=lambda d: (d.kind != "hardware", -d.rank))[0]
    return reg.backends[dev.backend], dev


def _timed(cands, latency_of, why_not: list[str]) -> list[tuple[float, Backend, Device]]:
    """p50 latency of each candidate that compiles and runs; why not for the rest."""
    timed = []
    for b, d in cands:
        try:
            timed.append((latency_of(b, d), b, d))
        except HalError as e:
            why_not.append(f"{d.target}: {brief(e, 120)}")
    return timed


def select(model: _formats.Model, precision: str, req: Requirements,
           latency_of: Callable[[Backend, Device], float] | None = None
           ) -> tuple[Backend, Device, str]:
    """``target='auto'``: pick among available *hardware* devices by capability
    and requirements, and say why. Emulated devices are never candidates.
    ``latency_of`` compiles and times one candidate (for latency requirements,
    and between devices of equal rank)."""
    reg = registry()
    cands, why_not = [], []
    for b in reg.backends.values():
        for d in backend_status(b).devices:
            if d.kind != "hardware" or not d.available:
                continue
            if precision not in b.precisions_for(d):
                why_not.append(f"{d.target}: no {precision}")
                continue
            try:
                _formats.plan(model.format, b.formats_for(d, precision), reg.converters)
            except HalError:
                why_not.append(f"{d.target}: cannot take a {model.format} model")
                continue
            if req.max_power_w is not None and (d.power_w is None or d.power_w > req.max_power_w):
                why_not.append(f"{d.target}: power {d.power_w or 'unknown'} W > {req.max_power_w} W")
                continue
            cands.append((b, d))
    if not cands:
        raise DeviceUnavailableError(
            f"no available hardware device satisfies {precision}"
            + (f", ≤{req.max_power_w} W" if req.max_power_w else "")
            + (f" ({'; '.join(why_not)})" if why_not else ""),
            "relax the requirements, install a backend, or name an emulated target explicitly")
    if req.max_latency_ms is not None:
        if latency_of is None:
            raise UsageError("a latency requirement needs an example input to time with",
                             "pass example_input to hal.compile")
        timed = _timed(cands, latency_of, why_not)
        ok = sorted((t, b, d) for t, b, d in timed if t <= req.max_latency_ms)
        if not ok:
            seen = ", ".join(f"{d.target} {t:.3f} ms" for t, _, d in timed)
            raise DeviceUnavailableError(f"no device meets {req.max_latency_ms} ms p50 ({seen})",
                                         "relax max_latency_ms or lower the precision")
        if req.prefer == "power":
            ok.sort(key=lambda x: (x[2].power_w is None, x[2].power_w or 0, x[0]))
        t, b, d = ok[0]
        return b, d, (f"auto: {d.target} measured {t:.3f} ms p50 ≤ {req.max_latency_ms} ms "
                      f"among {len(cands)} candidate(s)")
    if req.prefer == "power":
        order = lambda bd: (bd[1].power_w is None, bd[1].power_w or 0, -bd[1].rank)  # noqa: E731
    else:
        order = lambda bd: -bd[1].rank  # noqa: E731
    cands.sort(key=order)
    tied = [bd for bd in cands if order(bd) == order(cands[0])]
    skipped = f"; skipped {'; '.join(why_not)}" if why_not else ""
    if len(tied) > 1 and latency_of is not None:
        # rank is a plugin's own claim: between equals, time them instead of trusting the order
        timed = _timed(tied, latency_of, why_not)
        if timed:
            t, b, d = min(timed, key=lambda x: x[0])
            seen = ", ".join(f"{dd.target} {tt:.3f} ms" for tt, _, dd in timed)
            return b, d, (f"auto: {d.target} ({d.name}) measured fastest ({seen} p50) among "
                          f"{len(tied)} equally ranked device(s) that run {precision}{skipped}")
    b, d = cands[0]
    return b, d, (f"auto: {d.target} ({d.name}) is the {'lowest-power' if req.prefer == 'power' else 'highest-ranked'} "
                  f"(rank {d.rank}) available hardware device that runs {precision} "
                  f"({len(cands)} candidate(s){skipped})")


# --- compile / load -------------------------------------------------------------------
def _memory_error_as_hal(doing: str):
    """A ``MemoryError`` anywhere below (a converter, a runtime, numpy) becomes
    one ResourceError: a file that declares terabytes is an error, not a crash."""
    def wrap(fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except MemoryError:
                raise out_of_memory(doing) from None
        return guarded
    return wrap


def _samples(data: Any, what: str) -> list[tuple[np.ndarray, ...]]:
    if data is None:
        return []
    if isinstance(data, np.ndarray) or hasattr(data, "detach"):
        data = [data]
    out = []
    for i, s in enumerate(data):
        if not isinstance(s, (tuple, list)):
            s = (s,)
        out.append(tuple(_native(as_numpy(a, f"{what} sample {i}")) for a in s))
    return out


def _bind(src: _formats.Model, named: Mapping, formats) -> tuple[_formats.Model, list[tuple]]:
    """Example inputs given by name (``example_input=dict(tokenizer(text))``): bound to the
    model's inputs by name, never by position (a mask passed second would land on GPT-2's
    ``past_key_values``). A format with its own ``bind`` (an ``nn.Module``, exported by
    keyword) may change the model; any other is ordered by its signature's input names."""
    arrays = {}
    for k, v in named.items():
        if not isinstance(k, str):
            raise UsageError(f"example_input has a key {k!r} that is not a name",
                             "key example inputs by the model's input names")
        arrays[k] = _native(as_numpy(v, f"example_input[{k!r}]"))
    fmt = formats.get(src.format)
    if fmt is not None and fmt.bind is not None:
        value, ordered = fmt.bind(src.value, arrays)
        return (src if value is src.value else _formats.identify(value, formats)), [ordered]
    sig = fmt.signature(src.value, None) if fmt is not None and fmt.signature else None
    names = list(sig.inputs or ()) if sig is not None else []
    if not names:
        raise UsageError(f"hal cannot read the input names of this {src.format} model, so it "
                         "cannot bind example inputs by name", "pass them as a tuple, in the model's order")
    if set(arrays) != set(names):
        raise UsageError(f"example_input names {sorted(arrays)} are not the model's inputs {names}",
                         "key example inputs by exactly the model's input names")
    return src, [tuple(arrays[n] for n in names)]


def _native(a: np.ndarray) -> np.ndarray:
    """C-contiguous, native byte order: what converters and quantizers expect."""
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a if a.flags.c_contiguous else np.array(a, order="C")  # ascontiguousarray makes 0-d 1-d


@_memory_error_as_hal("compiling the model")
def compile(
    model: Any,
    target: str = "auto",
    *,
    precision: str = "fp32",
    example_input: Any = None,
    calibration: Iterable | None = None,
    options: dict[str, Any] | None = None,
    requirements: Requirements | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    check_finite: bool = True,
    allow_host_ops: bool = False,
) -> Executable:
    """Compile ``model`` (an object or a path) for ``target`` at ``precision``.

    ``example_input`` is one sample (an array, a tuple with one array per model
    input, or a dict binding arrays to the model's input names, as a tokenizer's
    output does) and fixes the input shapes; ``calibration`` is a list of samples
    in the model's input order and is required for ``int8``. ``options`` are the backend's own
    knobs (see ``hal backends``). ``requirements`` constrain ``target="auto"``.
    The result comes from the on-disk cache when the same model, target,
    precision, options and calibration were compiled before (``cache=False``
    or ``HAL_NO_CACHE=1`` bypasses it).

    A device that is not the host runs the whole model or nothing: when the
    runtime reports ops that would run on the host instead (:mod:`hal.placement`),
    compile raises UnsupportedError naming them, unless ``allow_host_ops=True``
    accepts them (then a note says how many run on the host).
    """
    check_precision(precision)
    if not isinstance(allow_host_ops, bool):
        raise UsageError(f"allow_host_ops is a {type(allow_host_ops).__name__}, not a bool",
                         "pass allow_host_ops=True or False")
    reg = registry()
    named = isinstance(example_input, Mapping)
    ex = [] if example_input is None or named else _samples([example_input], "example_input")
    calib = _samples(calibration, "calibration")
    if options is not None and not isinstance(options, dict):
        raise UsageError(f"options is a {type(options).__name__}, not a dict",
                         "pass options={'name': value, ...} (see the backend's docs)")
    # example inputs only fix shapes and dtypes, so NaN there is the caller's business;
    # calibration data sets quantization ranges, where one NaN spoils every scale
    for n, sample in enumerate(calib):
        for a in sample:
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise InvalidInputError(f"calibration sample {n} contains NaN or Inf",
                                        "pass finite, representative inputs")
    src = _formats.identify(model, reg.formats)
    if named:
        src, ex = _bind(src, example_input, reg.formats)
    src.example_input = ex[0] if ex else None
    _check_quantization(src, precision, calib)
    if requirements is not None and not isinstance(requirements, Requirements):
        raise UsageError(f"requirements is a {type(requirements).__name__}",
                         "pass requirements=hal.Requirements(...)")
    if target == "auto":
        def latency_of(b, d):  # compile (cached) and time a short run on each candidate
            exe = _compile_on(b, d, src, precision, calib, options, cache, cache_dir, check_finite,
                              allow_host_ops)
            xs = src.example_input or tuple(random_inputs(exe.info.inputs))
            return exe.profile(*xs, iterations=20, warmup=3, extras=False).latency_ms["p50"]

        b, dev, why = select(src, precision, requirements or Requirements(), latency_of)
    else:
        b, dev = resolve(target)
        why = None
    exe = _compile_on(b, dev, src, precision, calib, options, cache, cache_dir, check_finite,
                      allow_host_ops)
    if why:
        exe.info.notes.append(why)
        _log.info(why)
    return exe


def _check_quantization(src: _formats.Model, precision: str, calib) -> None:
    """A pre-quantized model (QDQ ONNX, an IR with FakeQuantize, a TFLite with int8
    activations) runs int8 on every
    backend: only the int8 label is true, and it needs no calibration (hal never
    quantizes it again). Any other model needs calibration data for static int8."""
    fmt = registry().formats.get(src.format)
    quantized = fmt.quantized(src.value) if fmt is not None and fmt.quantized else None
    if quantized and precision != "int8":
        raise UnsupportedError(f"the model is already quantized ({quantized}), so it runs int8 "
                               f"whatever the precision asked for; {precision} would be a false label",
                               "compile it with precision='int8' (no calibration data needed), or pass "
                               "the float model it was quantized from")
    if precision == "int8" and not calib and not quantized:
        raise UsageError("int8 (static) needs calibration data",
                         "pass representative inputs (hal.compile(calibration=[x1, x2, ...]) or "
                         "`--calibration FILE.npy` at the CLI), or use int8-dynamic")


def _compile_on(b: Backend, dev: Device, src: _formats.Model, precision: str, calib, options,
                cache: bool, cache_dir, check_finite: bool, allow_host_ops: bool = False) -> Executable:
    reg = registry()
    if precision not in b.precisions_for(dev):
        raise b.refuse_precision(precision, dev)
    b.check_options(options or {})
    chain = _formats.plan(src.format, b.formats_for(dev, precision), reg.converters)
    opts = CompileOptions(precision=precision, example_input=src.example_input,
                          calibration=calib or None, backend_options=dict(options or {}),
                          check_finite=check_finite, allow_host_ops=allow_host_ops)
    if not _cache.enabled(cache):
        return _build(b, dev, src, chain, opts, None)
    directory = _cache.cache_dir(cache_dir)
    try:  # the key hashes what runs; a model whose state it cannot read is never cached
        model_key = src.digest(reg.formats)
    except _formats.Unkeyable as e:
        exe = _build(b, dev, src, chain, opts, None)
        exe.info.notes.append(f"not cached: {e}")
        return exe
    parts = {"model": model_key, "backend": b.name, "backend_version": b.version(),
             "device": dev.target, "device_name": dev.name, "precision": precision,
             "options": opts.backend_options, "check_finite": check_finite,
             "allow_host_ops": allow_host_ops, "hal": HAL_VERSION,
             "example": [(a.shape, str(a.dtype)) for a in src.example_input or ()]}
    k = _cache.key(parts, calib)
    notes: list[str] = []
    try:
        with _cache.locked(directory, k) as path:
            opts.cache_dir = directory
            if path.exists() or path.is_symlink():
                try:
                    why = _cache.untrusted(path)
                    if why:
                        raise ArtifactError(f"the entry {why}", "it is never served")
                    exe = _from_cache(path, b, dev, expect_key=k)
                    exe.info.cache_hit = True
                    return exe
                except Exception as e:  # noqa: BLE001 - any bad entry is rebuilt, never fatal
                    try:
                        path.unlink(missing_ok=True)
                    except OSError:
                        pass  # the rebuilt entry replaces it by rename, or the save says why not
                    notes.append(f"cache entry {path.name} could not be used ({brief(e, 160)}); "
                                 "removed and rebuilt")
            exe = _build(b, dev, src, chain, opts, path, cache_key=k)
    except _cache.Unusable as e:
        opts.cache_dir = None
        exe = _build(b, dev, src, chain, opts, None)
        notes.append(f"not cached: {e}")
    exe.info.notes.extend(notes)
    return exe


def _build(b: Backend, dev: Device, src: _formats.Model, chain, opts: CompileOptions,
           save_to: Path | None, cache_key: str | None = None) -> Executable:
    t0 = time.perf_counter()
    with _formats.scratch_scope():  # converted files live only as long as this compile
        model = _formats.convert(src, chain, opts)
        with stage("compile"):  # a backend tags its own steps inside (e.g. "quantize")
            exe = _wrap(b, b.compile(model, dev, opts), "compile")
            # after the backend: a backend-specific alias may have set the permission
            _place(exe, opts.allow_host_ops, "compile")
        _signature.stamp(exe.info, _source_signature(src), _keep_free)
        exe.info.compile_time_s = time.perf_counter() - t0
        exe.info.conversion_path = [src.format] + [f"{c.name} → {c.target}" for c in chain] + \
            exe.info.conversion_path
        exe.info.check_finite = opts.check_finite
        if save_to is not None:
            try:
                write_hal(exe, save_to, {"cache_key": cache_key}, mode=_cache.ENTRY_MODE)
            except (HalError, OSError) as e:
                exe.info.notes.append(f"not cached: {brief(e, 160)}")
    return exe


def _wrap(b: Backend, built: Any, verb: str) -> Executable:
    """The core's :class:`Executable` around what ``b.compile``/``b.load`` built:
    the one place a backend's object enters, so a plugin written for another
    plugin API is one clear error, not an AttributeError at the first call."""
    if not isinstance(built, Runner) or not isinstance(getattr(built, "info", None), ExecutableInfo) \
            or not isinstance(getattr(built, "device", None), Device):
        raise CompileError(f"backend {b.name}'s {verb}() returned a {type(built).__name__}, not a "
                           "hal.plugin.Runner carrying its ExecutableInfo and Device",
                           "the plugin was written for another hal plugin API: update it (see "
                           "docs/writing-a-backend.md) or uninstall it")
    return Executable(built)


def _place(exe: Executable, allowed: bool, verb: str) -> None:
    """The core's placement gate, after every compile and load: ask the runner where
    its ops run (a failure there is a note, not a crash), keep the record
    (``exe.placement``, its summary in ``info.placement``), and refuse host ops on a
    device that is not the host unless the caller allowed them; allowed ones get a note."""
    info = exe.info
    info.allow_host_ops = bool(allowed)
    try:
        p = exe.runner.placement()
        if p is not None and not isinstance(p, Placement):
            raise TypeError(f"it returned a {type(p).__name__}, not a hal.placement.Placement")
    except Exception as e:  # noqa: BLE001 - a backend's report: its failure must not lose the build
        info.notes.append(f"placement unknown: {info.backend}'s placement() failed "
                          f"({brief(e, 160, typed=True)})")
        p = None
    exe._placement = p
    info.placement = None if p is None else p.summary()
    if p is None or not p.host_ops:
        return
    if not allowed:
        how = ("to hal.compile (CLI: --allow-host-ops) to run them on the host, or change the "
               "model so that every op maps to the device") if verb == "compile" else \
              ("to hal.load (CLI: --allow-host-ops) to run them on the host, or recompile the "
               "model for this device")
        raise UnsupportedError(
            f"{info.target} cannot run the whole model: {p.describe_host()} would run on the "
            f"host instead (placement read from {p.source}{'; emulated' if p.emulated else ''})",
            f"pass allow_host_ops=True {how}")
    note = allowed_note(p, info.target)
    if note not in info.notes:  # a loaded artifact carries the note it was compiled with
        info.notes.append(note)


def _keep_free(dim: int) -> list[str]:
    """The installed backends that declare they keep free dimension ``dim`` free."""
    return [b.name for b in registry().backends.values() if b.keeps_free(dim)]


def _source_signature(src: _formats.Model):
    """The I/O contract read off the model the user gave (:mod:`hal.signature`);
    None when its format does not say, or reading it fails (the backend's names stand)."""
    fmt = registry().formats.get(src.format)
    if fmt is None or fmt.signature is None:
        return None
    try:
        return fmt.signature(src.value, src.example_input)
    except Exception as e:  # noqa: BLE001 - a format's reader: the names are a courtesy, not the build
        _log.debug("no signature for %s: %s", src.format, brief(e))
        return None


@_memory_error_as_hal("loading the artifact")
def load(path: str | os.PathLike, target: str | None = None, *,
         allow_host_ops: bool = False) -> Executable:
    """Restore an executable from a ``.hal`` file on the device it was built
    for (or on ``target``, which must be of the same backend).

    The same placement rule as compile applies to what the runtime reports
    now: host ops are refused unless the artifact was compiled with
    ``allow_host_ops=True`` or this call passes it.

    The file is untrusted: it is checked before anything reads it (one
    unambiguous zip, a well-typed ``hal.json``, every file matching its
    recorded SHA-256), and each backend then checks that the artifact is what
    ``hal.json`` claims. Nothing in it is ever executed as code."""
    def place(meta: dict) -> tuple[Backend, Device]:
        info = meta["info"]
        b = registry().backends.get(info.backend)
        if b is None:
            raise ArtifactError(f"{path} was built by backend {info.backend!r}, which is not installed",
                                f"install the plugin that provides {info.backend!r} (see `hal plugins`)")
        _, dev = resolve(target or info.target)
        if dev.backend != b.name:
            raise UsageError(f"{path} is a {b.name} artifact; target {target!r} is {dev.backend}",
                             f"load it on a {b.name} device")
        return b, dev

    if not isinstance(allow_host_ops, bool):
        raise UsageError(f"allow_host_ops is a {type(allow_host_ops).__name__}, not a bool",
                         "pass allow_host_ops=True or False")
    return _restore(Path(path), place, allow_host_ops)


def _from_cache(path: Path, b: Backend, dev: Device, expect_key: str) -> Executable:
    """A cache entry: the artifact must be the one stored under this key."""
    def place(meta: dict) -> tuple[Backend, Device]:
        if meta.get("cache_key") != expect_key:
            raise ArtifactError(f"{path.name} holds the entry of another model", "rebuild it")
        if meta["info"].backend != b.name:
            raise ArtifactError(f"{path.name} was built by {meta['info'].backend}, not {b.name}",
                                "rebuild it")
        return b, dev

    return _restore(path, place)


def _restore(path: Path, place: Callable[[dict], tuple[Backend, Device]],
             allow_host_ops: bool = False) -> Executable:
    """Check and unpack ``path``, let ``place`` pick the backend and device from
    its metadata, and have the backend load it; the unpacked files live as long
    as the executable, or go at once if anything fails."""
    meta, art, cleanup = read_artifact(path)
    try:
        b, dev = place(meta)
        try:  # the file's options pass the same declaration as a caller's, before any backend sees them
            b.check_options(meta["info"].backend_options)
        except UsageError as e:
            raise ArtifactError(f"{path.name} records backend options that {b.name} does not admit: "
                                f"{e.what}", "re-create the artifact with `hal compile`; do not edit "
                                ".hal files") from None
        exe = _wrap(b, b.load(art, meta["info"], dev), "load")
        _place(exe, exe.info.allow_host_ops or allow_host_ops, "load")
    except BaseException:
        cleanup()
        raise
    exe._keepalive.append(_Cleanup(cleanup))
    return exe


class _Cleanup:
    def __init__(self, fn):
        self.fn = fn

    def __del__(self):
        try:
            self.fn()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

