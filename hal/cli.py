"""The ``hal`` command line (typer + rich).

Every command takes ``--json`` for machine-readable output only. Errors are one
line on stderr: exit 2 for usage errors, 1 for failures; ``--debug`` shows the
traceback. Plugins add commands through the ``register_commands`` hook
(``hal conformance`` and ``hal lab`` come from hal_conformance that way).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import api
from .errors import HalError, InvalidInputError, UsageError, brief, printable
from .npyfile import load_npy, load_npz
from .paths import atomic_file
from .plugins import API_VERSION, discover, registry
from .types import PRECISIONS

# plain click help: typer's rich panels print "<bool>" after every flag
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Compile, run and profile models on whatever accelerator is here.")
class SafeConsole(Console):
    """Prints every string as printable text: a file name or a string a model
    carries (an output name, a note) cannot forge lines or terminal escapes."""

    def print(self, *objects: Any, **kw: Any) -> None:
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kw)


def cells(*values: Any) -> list[str]:
    """Table cells as printable, markup-escaped text (rich renders a Table's cells itself)."""
    return [escape(printable(v)) for v in values]


out = SafeConsole(width=None if sys.stdout.isatty() else 160)
err = SafeConsole(stderr=True, soft_wrap=True)
_state = {"debug": False}


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    plugins: Optional[str] = typer.Option(None, "--plugins", help="Comma-separated entry points to load (default: all; env HAL_PLUGINS)."),
) -> None:
    _state["debug"] = debug
    if not debug:  # framework chatter is not the user's business at the CLI
        import logging
        import os
        import warnings

        from .native_stderr import filter_native_stderr

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TORCH_LOGS", "-all")  # torch installs its own handler on import
        filter_native_stderr()  # what the runtimes' C++ loggers print whatever the above says

        warnings.filterwarnings("ignore")
        for name in ("torchao", "torch", "tensorflow", "absl", "nncf", "openvino", "jax"):
            logging.getLogger(name).setLevel(logging.ERROR)
    if plugins is not None:
        discover(only=[p.strip() for p in plugins.split(",") if p.strip()])


def guarded(fn: Callable) -> Callable:
    """One line per error, the right exit code, no traceback unless --debug."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        try:
            return fn(*a, **k)
        except typer.Exit:
            raise
        except HalError as e:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except Exception as e:  # noqa: BLE001 - the CLI never shows a raw traceback
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/] {escape(brief(e, 400, typed=True))} (run with --debug for the traceback)",
                      highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def _dump(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# --- helpers -------------------------------------------------------------------------
def _read_arrays(path: Path, what: str) -> list[np.ndarray]:
    """.npy → one array; .npz → its arrays in stored order. Pickles refused."""
    if not path.exists():
        raise UsageError(f"{what} file {path} does not exist", "check the path")
    try:
        if path.suffix == ".npz":
            return list(load_npz(path, f"{what} file {path.name}", UsageError).values())
        if path.suffix == ".npy":
            return [load_npy(path, f"{what} file {path.name}", UsageError)]
    except HalError:
        raise
    except ValueError as e:
        raise InvalidInputError(f"{what} file {path} is not plain numpy data ({e})",
                                "save arrays with np.save / np.savez (no object arrays)") from None
    except Exception as e:  # noqa: BLE001 - truncated or not numpy at all
        raise InvalidInputError(f"{what} file {path} could not be read ({type(e).__name__}: {e})",
                                "save arrays with np.save / np.savez") from None
    raise UsageError(f"{what} file {path} must be .npy or .npz", "save arrays with np.save / np.savez")


def _inputs(paths: Optional[List[Path]]) -> tuple[np.ndarray, ...] | None:
    if not paths:
        return None
    arrays: list[np.ndarray] = []
    for p in paths:
        arrays.extend(_read_arrays(p, "input"))
    return tuple(arrays)


def _calibration(path: Optional[Path]) -> list[tuple[np.ndarray, ...]] | None:
    """Each array's first axis indexes samples; sample i of a multi-input model
    takes row i of every array (each row keeps a batch axis of 1)."""
    if path is None:
        return None
    arrays = _read_arrays(path, "calibration")
    n = {a.shape[0] for a in arrays if a.ndim}
    if len(n) != 1:
        raise InvalidInputError(f"calibration arrays in {path} disagree on the sample count {sorted(n)}",
                                "give every input the same number of samples (first axis)")
    return [tuple(a[i:i + 1] for a in arrays) for i in range(n.pop())]


def _options(pairs: Optional[List[str]]) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for p in pairs or []:
        if "=" not in p:
            raise UsageError(f"option {p!r} is not KEY=VALUE", "e.g. --option torch_compile=max-autotune")
        k, v = p.split("=", 1)
        try:
            opts[k] = json.loads(v)
        except json.JSONDecodeError:
            opts[k] = v
    return opts


def _executable(model: Path, target: str, precision: str, inputs, calibration: Optional[Path],
                option: Optional[List[str]], no_cache: bool, quiet: bool, allow_host_ops: bool = False):
    if model.suffix == ".hal":
        return api.load(model, None if target == "auto" else target, allow_host_ops=allow_host_ops)
    calib = _calibration(calibration)
    spinner = contextlib.nullcontext() if quiet else err.status(
        f"compiling {model.name} for {target} at {precision}"
        + (f" (calibrating on {len(calib)} samples)" if calib else "") + " …")
    with spinner:  # api.compile checks the precision name itself
        exe = api.compile(model, target, precision=precision, example_input=inputs, calibration=calib,
                          options=_options(option), cache=not no_cache, allow_host_ops=allow_host_ops)
    if target == "auto" and not quiet:  # say which device auto chose, and why
        for n in exe.info.notes:
            if n.startswith("auto:"):
                err.print(f"[dim]{escape(n)}[/]", highlight=False)
    return exe


ModelArg = typer.Argument(..., metavar="MODEL", help="Model file: .onnx, .pt2, .tflite, .xml (OpenVINO IR), .keras, a SavedModel dir, or a compiled .hal.")
TargetOpt = typer.Option("auto", "--target", "-t", metavar="TARGET", help="Device target (see `hal devices`), or auto.")
PrecisionOpt = typer.Option("fp32", "--precision", "-p", metavar="PRECISION", help=f"One of {', '.join(PRECISIONS)}.")
InputOpt = typer.Option(None, "--input", "-i", metavar="FILE", help=".npy/.npz input(s), in model input order.")
CalibOpt = typer.Option(None, "--calibration", "-c", metavar="FILE", help=".npy/.npz, first axis = samples (int8).")
OptionOpt = typer.Option(None, "--option", metavar="KEY=VALUE", help="Backend option KEY=VALUE (repeatable).")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output only.")
NoCacheOpt = typer.Option(False, "--no-cache", help="Bypass the compile cache.")
AllowHostOpt = typer.Option(False, "--allow-host-ops", help="Let ops the device cannot run run on the host instead (refused by default; the placement is printed).")


# --- commands --------------------------------------------------------------------------
@app.command()
@guarded
def devices(as_json: bool = JsonOpt,
            refresh: bool = typer.Option(False, "--refresh", help="Re-probe.")) -> None:
    """Every backend found and each of its devices, hardware or emulated, and why unavailable."""
    statuses = api.backends(refresh)
    if as_json:
        devs = [d.to_dict() for st in statuses for d in st.devices]
        _dump({"backends": [st.to_dict() for st in statuses], "devices": devs})
        return
    t = Table(title="hal devices")
    for c in ("target", "kind", "available", "name", "precisions", "note"):
        t.add_column(c)
    for st in statuses:
        if not st.devices:
            name, desc, why = cells(st.name, st.description, st.error or st.missing_runtime or "")
            t.add_row(name, "-", "[red]no[/]", desc, "", why)
        for d in st.devices:
            target, kind, name, precisions, reason = cells(d.target, d.kind, d.name,
                                                           " ".join(d.precisions), d.reason or "")
            t.add_row(target, kind, "[green]yes[/]" if d.available else "[red]no[/]", name,
                      precisions, reason)
    out.print(t)


@app.command()
@guarded
def plugins(as_json: bool = JsonOpt) -> None:
    """Every plugin found through the `hal` entry points, loaded or not, with its error
    (an import error, another plugin API, a misspelled hook) or what to fix."""
    infos = registry().plugins
    if as_json:
        _dump([i.to_dict() for i in infos])
        return
    t = Table(title=f"hal plugins (this hal speaks plugin API {API_VERSION})")
    for c in ("plugin", "source", "api", "loaded", "backends", "error / warning"):
        t.add_column(c)
    for i in infos:
        name, source, backends, error, warning = cells(i.name, i.source, ", ".join(i.backends),
                                                       i.error or "", i.warning or "")
        api = "?" if i.api is None else str(i.api)
        t.add_row(name, source, api if i.api in (None, API_VERSION) else f"[red]{api}[/]",
                  "[green]yes[/]" if i.loaded else "[red]no[/]", backends,
                  error or (f"[yellow]{warning}[/]" if warning else ""))
    out.print(t)


@app.command("compile")
@guarded
def compile_(model: Path = ModelArg, target: str = TargetOpt, precision: str = PrecisionOpt,
             output: Path = typer.Option(..., "--output", "-o", help="Where to write the .hal file."),
             input: Optional[List[Path]] = InputOpt, calibration: Optional[Path] = CalibOpt,
             option: Optional[List[str]] = OptionOpt, no_cache: bool = NoCacheOpt,
             allow_host_ops: bool = AllowHostOpt, as_json: bool = JsonOpt) -> None:
    """Compile MODEL for a target and write a .hal artifact."""
    exe = _executable(model, target, precision, _inputs(input), calibration, option, no_cache, as_json,
                      allow_host_ops)
    exe.save(output)
    if as_json:
        _dump({"output": str(output), **exe.info.to_dict()})
        return
    i = exe.info
    out.print(f"[bold]{output}[/]: {i.backend} on {i.target} ({i.device_kind}), {i.precision}, "
              f"{output.stat().st_size / 1e3:.1f} kB file ({(i.artifact_size_bytes or 0) / 1e3:.1f} kB "
              f"unpacked), compiled in {i.compile_time_s:.2f}s" + (" (cache hit)" if i.cache_hit else ""))
    out.print("path: " + " → ".join(i.conversion_path))
    out.print(escape(placement_line(i.placement)), highlight=False)
    for n in i.notes:
        out.print(f"note: {n}")


@app.command()
@guarded
def run(model: Path = ModelArg, input: Optional[List[Path]] = InputOpt, target: str = TargetOpt,
        precision: str = PrecisionOpt, calibration: Optional[Path] = CalibOpt,
        option: Optional[List[str]] = OptionOpt,
        output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write outputs to this .npz."),
        no_cache: bool = NoCacheOpt, allow_host_ops: bool = AllowHostOpt,
        as_json: bool = JsonOpt) -> None:
    """Run MODEL once on --input arrays (random inputs from the model's specs if none)."""
    inputs = _inputs(input)
    exe = _executable(model, target, precision, inputs, calibration, option, no_cache, as_json,
                      allow_host_ops)
    if inputs is None:
        from .profile import random_inputs

        inputs = tuple(random_inputs(exe.info.inputs))
    outs = exe.run(list(inputs))
    if output is not None:
        with atomic_file(output) as f:
            np.savez(f, **{s.name: o for s, o in zip(exe.info.outputs, outs)})
    if as_json:
        _dump({"target": exe.info.target, "device_kind": exe.info.device_kind,
               "precision": exe.info.precision,
               "outputs": [{"name": s.name, "shape": list(o.shape), "dtype": str(o.dtype),
                            "values": o.tolist()} for s, o in zip(exe.info.outputs, outs)]})
        return
    for s, o in zip(exe.info.outputs, outs):
        out.print(f"{s.name} {tuple(o.shape)} {o.dtype}: {np.array2string(o.ravel()[:10], precision=5)}"
                  + (" …" if o.size > 10 else ""))


@app.command()
@guarded
def profile(model: Path = ModelArg, input: Optional[List[Path]] = InputOpt, target: str = TargetOpt,
            precision: str = PrecisionOpt, calibration: Optional[Path] = CalibOpt,
            option: Optional[List[str]] = OptionOpt,
            iterations: Optional[int] = typer.Option(None, "--iterations", "-n", help="Timed runs (default 100)."),
            warmup: int = typer.Option(10, "--warmup"),
            duration: Optional[float] = typer.Option(None, "--duration", help="Seconds (instead of --iterations); with --scenario, LoadGen's min_duration (default 1)."),
            batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b"),
            mode: str = typer.Option("latency", "--mode", help="latency | throughput (backend offline mode)."),
            probe: Optional[str] = typer.Option(None, "--probe", help="Also run a peak probe: gemm."),
            scenario: Optional[str] = typer.Option(None, "--scenario", metavar="SCENARIO", help="Run under MLPerf LoadGen: single-stream | multi-stream | server | offline (docs/throughput.md)."),
            accuracy: bool = typer.Option(False, "--accuracy", help="With --scenario: LoadGen's accuracy mode; outputs checked against the model on the reference backend (fp64)."),
            logs: Optional[Path] = typer.Option(None, "--logs", metavar="DIR", help="With --scenario: keep LoadGen's logs in DIR."),
            samples: Optional[int] = typer.Option(None, "--samples", help="With --scenario: random samples in LoadGen's sample library (default 64)."),
            min_queries: Optional[int] = typer.Option(None, "--min-queries", help="With --scenario: LoadGen's min_query_count (Offline: samples in its query)."),
            max_duration: Optional[float] = typer.Option(None, "--max-duration", help="With --scenario: LoadGen's max_duration in seconds."),
            target_qps: Optional[float] = typer.Option(None, "--target-qps", help="Server: the QPS LoadGen schedules; Offline: the QPS it expects (default: measured)."),
            latency_bound: Optional[float] = typer.Option(None, "--latency-bound", metavar="MS", help="Server: the 99th percentile latency bound in ms."),
            expected_latency: Optional[float] = typer.Option(None, "--expected-latency", metavar="MS", help="Single-/Multi-Stream: the latency LoadGen plans queries for (default: measured)."),
            samples_per_query: Optional[int] = typer.Option(None, "--samples-per-query", help="Multi-Stream: samples per query (default 8)."),
            no_cache: bool = NoCacheOpt, allow_host_ops: bool = AllowHostOpt,
            as_json: bool = JsonOpt) -> None:
    """Latency percentiles, throughput and whatever the backend adds (per-layer times, memory, energy);
    with --scenario, MLPerf LoadGen's figures and verdict."""
    loadgen_opts = {"--accuracy": accuracy or None, "--logs": logs, "--samples": samples,
                    "--min-queries": min_queries, "--max-duration": max_duration,
                    "--target-qps": target_qps, "--latency-bound": latency_bound,
                    "--expected-latency": expected_latency, "--samples-per-query": samples_per_query}
    if scenario is None:
        given = [k for k, v in loadgen_opts.items() if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to LoadGen runs only",
                             "add --scenario single-stream|multi-stream|server|offline")
    else:
        from .loadgen import NUM_SAMPLES, check_options, require_loadgen

        check_options(scenario, min_duration_s=duration, max_duration_s=max_duration,
                      min_query_count=min_queries, target_qps=target_qps,
                      latency_bound_ms=latency_bound, expected_latency_ms=expected_latency,
                      samples_per_query=samples_per_query, accuracy=accuracy, warmup=warmup,
                      num_samples=NUM_SAMPLES if samples is None else samples)
        require_loadgen()  # before compiling anything
        clash = [k for k, v in {"--iterations": iterations, "--probe": probe,
                                "--mode": None if mode == "latency" else mode}.items() if v is not None]
        if clash:
            raise UsageError(f"{', '.join(clash)} do{'es' if len(clash) == 1 else ''} not apply to a "
                             "LoadGen scenario", "LoadGen decides how many queries run: use --duration "
                             "and --min-queries")
        if input and samples is not None:
            raise UsageError("--samples makes random samples, and --input gives the sample",
                             "pass one of them")
        if accuracy and model.suffix == ".hal":
            raise UsageError("--accuracy compiles the oracle from the source model, which a .hal "
                             "does not hold", "pass the model file instead of the .hal")
    inputs = _inputs(input)
    exe = _executable(model, target, precision, inputs, calibration, option, no_cache, as_json,
                      allow_host_ops)
    if batch_size and model.suffix != ".hal" and _static_batch(exe) not in (None, batch_size):
        # the model was compiled at its own batch: compile it again at the one asked for
        from .profile import random_inputs

        specs = [replace(s, shape=(None,) + tuple(s.shape[1:])) if s.shape else s
                 for s in exe.info.inputs]
        inputs = tuple(a[:batch_size] for a in random_inputs(specs, batch_size))
        exe = _executable(model, exe.info.target, precision, inputs, calibration, option, no_cache,
                          as_json, allow_host_ops)
    if scenario is not None:
        _scenario(exe, model, scenario, inputs if input else None, samples, batch_size, warmup,
                  duration, max_duration, min_queries, target_qps, latency_bound, expected_latency,
                  samples_per_query, accuracy, logs, as_json)
        return
    iterations = iterations or 100
    probe_result = _probe(exe, probe, precision) if probe else None
    kw = dict(iterations=None if duration else iterations, warmup=warmup, duration_s=duration,
              batch_size=batch_size, mode=mode)
    if as_json:
        p = exe.profile(*(inputs or ()), **kw)
        _dump({**p.to_dict(), **({"probe": probe_result} if probe_result else {})})
        return
    from rich.progress import Progress

    with Progress(transient=True, console=err) as bar:
        task = bar.add_task("profiling", total=iterations)
        p = exe.profile(*(inputs or ()), progress=lambda d, n: bar.update(task, completed=d), **kw)
    _print_profile(p)
    if probe_result:
        out.print(f"probe {probe}: {probe_result}")


def _scenario(exe, model: Path, scenario: str, inputs, samples, batch_size, warmup, duration,
              max_duration, min_queries, target_qps, latency_bound, expected_latency,
              samples_per_query, accuracy: bool, logs, as_json: bool) -> None:
    """``hal profile --scenario``: one LoadGen run (hal.loadgen), its report printed."""
    from .loadgen import NUM_SAMPLES, run_scenario

    oracle = model if accuracy else None  # compiled for the reference backend at fp64
    status = contextlib.nullcontext() if as_json else err.status(
        f"LoadGen {scenario}{' (accuracy)' if accuracy else ''} on {exe.info.target} …")
    with status:
        r = run_scenario(exe, scenario, samples=[inputs] if inputs else None,
                         num_samples=samples or NUM_SAMPLES, batch_size=batch_size, warmup=warmup,
                         min_duration_s=duration, max_duration_s=max_duration,
                         min_query_count=min_queries, target_qps=target_qps,
                         latency_bound_ms=latency_bound, expected_latency_ms=expected_latency,
                         samples_per_query=samples_per_query, accuracy=accuracy, oracle=oracle,
                         logs_dir=logs)
    if as_json:
        _dump(r.to_dict())
        return
    _print_loadgen(r)


def _print_loadgen(r) -> None:
    verdict = ("accuracy run" if r.result is None else
               "[green]VALID[/]" if r.valid else "[red]INVALID[/]")
    out.print(f"[bold]LoadGen {escape(r.loadgen_version)}[/], {r.scenario} on "
              f"{escape(printable(r.target))} ({r.device_kind}), {r.precision}, "
              f"{r.samples} samples: {verdict}", highlight=False)
    if r.mode == "performance":
        t = Table()
        for c in ("p50 ms", "p90 ms", "p99 ms", "samples/s", "achieved QPS", "queries"):
            t.add_column(c, justify="right")
        lat = r.latency_ms

        def num(v, fmt):
            return "-" if v is None else format(v, fmt)

        t.add_row(*(num(lat.get(k), ".4f") for k in ("p50", "p90", "p99")),
                  num(r.samples_per_second, ".1f"), num(r.achieved_qps, ".1f"),
                  num(r.query_count, "d"))
        out.print(t)
        m = r.metric
        if m.get("value") is not None:
            out.print(f"{m['name']}: {m['value']:.4g} {m['unit']}")
    for reason in r.reasons:
        out.print(f"[red]reason:[/] {escape(printable(reason))}", highlight=False)
    if r.accuracy is not None:
        a = r.accuracy
        out.print(f"accuracy: {a.matched}/{a.checked} outputs match {a.oracle} "
                  f"({'pass' if a.passed else 'FAIL'}): {a.rule}"
                  + (f"; worst {a.worst_rel_err:.2e}·max|ref|" if a.worst_rel_err is not None else ""))
    shown = {k: v for k, v in r.settings.items() if k not in ("scenario", "mode")}
    out.print("[dim]settings: " + escape(", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                                                    for k, v in shown.items())) + "[/]", highlight=False)
    for n in r.notes + [f"LoadGen {e}" for e in r.errors if f"LoadGen error {e}" not in r.reasons]:
        out.print(f"note: {n}")
    if r.logs_dir:
        out.print(f"logs: {r.logs_dir}")


def placement_line(summary: dict | None) -> str:
    """``hal compile``'s one line on where the ops run (``info.placement``)."""
    if summary is None:
        return "placement: not reported by the backend"
    host = summary.get("host_ops", 0)
    named = ", ".join(summary.get("host") or [])
    more = host - len(summary.get("host") or [])
    io = summary.get("io_ops") or 0
    return (f"placement: {summary.get('device_ops', 0)} op(s) on the device, {host} on the host"
            + (f" ({named}{f', and {more} more' if more > 0 else ''})" if host else "")
            + (f", {io} converting the model's I/O on the host" if io else "")
            + f"; from {summary.get('source')}" + (", emulated" if summary.get("emulated") else ""))


def _static_batch(exe) -> int | None:
    """The one batch size the executable takes, or None if its batch is dynamic."""
    shapes = [s.shape for s in exe.info.inputs if s.shape]
    return shapes[0][0] if shapes and all(sh[0] == shapes[0][0] for sh in shapes) else None


def _probe(exe, probe: str, precision: str) -> dict:
    if probe != "gemm":
        raise UsageError(f"unknown probe {probe!r}", "use --probe gemm")
    b = registry().backends[exe.info.backend]
    fn = getattr(b, "probe_gemm", None)
    if fn is None:
        raise UsageError(f"the {b.name} backend has no gemm probe", "drop --probe, or pick a backend with one")
    return {"probe": "gemm", "device": exe.device.target, "precision": precision,
            "tflops": fn(exe.device, precision)}


def _print_profile(p) -> None:
    t = Table(title=cells(f"{p.backend} on {p.target} ({p.device_kind}), {p.precision}, "
                          f"batch {p.batch_size}")[0])
    for c in ("p50 ms", "p90 ms", "p99 ms", "mean ms", "throughput/s", "iterations", "timer"):
        t.add_column(c, justify="right")
    lat = p.latency_ms
    t.add_row(*(f"{lat.get(k, float('nan')):.4f}" for k in ("p50", "p90", "p99", "mean")),
              f"{p.throughput_per_s:.1f}", str(p.iterations), *cells(p.timer))
    out.print(t)
    if p.layers:
        lt = Table(title="slowest layers")
        for c in ("layer", "type", "ms"):
            lt.add_column(c)
        for layer in sorted(p.layers, key=lambda l: -l.time_ms)[:15]:
            lt.add_row(*cells(layer.name, layer.type), f"{layer.time_ms:.4f}")
        out.print(lt)
    if p.peak_memory_bytes is not None:
        out.print(f"peak memory: {p.peak_memory_bytes / 2**20:.1f} MiB")
    if p.energy_j_per_inference is not None:
        out.print(f"energy: {p.energy_j_per_inference * 1e3:.3f} mJ/inference")
    for k, why in p.unavailable.items():
        out.print(f"[dim]{k}: unavailable ({why})[/]")
    for k, v in p.extra.items():
        out.print(f"{k}: {v}")
    for n in p.notes:
        out.print(f"note: {n}")


def main() -> None:
    """The ``hal`` command: hal's own commands plus every plugin's (``register_commands``)."""
    registry().add_commands(app)
    app(prog_name="hal")


if __name__ == "__main__":
    main()
