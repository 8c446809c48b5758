"""MLPerf LoadGen scenarios on any executable (issue #24).

:func:`run_scenario` drives a compiled :class:`~hal.Executable` through MLPerf
LoadGen's SUT/QSL interface (``mlcommons-loadgen``, imported as ``mlperf_loadgen``)
in one of its four scenarios and reports LoadGen's own figures, read back from
the ``mlperf_log_summary.txt`` and ``mlperf_log_detail.txt`` it writes:
percentile latencies, samples per second, the QPS a Server run achieved, and
whether the run is VALID and, if not, why.

- **QSL**: ``samples`` (one tuple of arrays per sample, each checked once against
  the executable's inputs) or ``num_samples`` random ones from
  :func:`hal.profile.random_inputs`, all held in memory.
- **SUT**: each LoadGen sample is one inference of the executable on the QSL's
  own arrays (no per-sample check or copy; see :func:`_prepare_samples`).
  Single-Stream runs it inline in LoadGen's issue thread (the thread that called
  :func:`run_scenario`: LoadGen issues from the thread that starts the test; one query
  at a time: the latency path, no thread hop), and so do Offline and Multi-Stream on an
  executable with no native queue and one worker (:func:`_inline`). Otherwise an
  Offline or Multi-Stream query goes through the executable's pipeline as one
  stream (``Executable.map``'s: the runner's own batch loop where it has one,
  OpenVINO's), and a Server query is started on it on arrival (``submit``'s,
  without a Future): LoadGen's issue thread only queues work, and a full queue
  blocks it, which is the back-pressure LoadGen is meant to see. Completions
  reach LoadGen in groups of up to :data:`GROUP`.
- **Short runs**: MLPerf's own minimums (600 s, 24 576 Offline samples, 270 336
  Server queries) are for submissions. The defaults here are the shortest runs
  LoadGen can still call VALID (see :data:`MIN_QUERIES` and docs/throughput.md),
  and the rates LoadGen needs (Offline's expected QPS, Server's target QPS, the
  expected latency of the streams) come from a short measurement of the
  executable before the test, unless given.
- **Accuracy** (``accuracy=True``): LoadGen's AccuracyOnly mode on the same SUT;
  the outputs LoadGen logged (``mlperf_log_accuracy.json``) are decoded and
  compared with an oracle (the same model compiled for ``target="reference"`` at
  fp64) under the conformance tolerance policy of the executable's precision.

LoadGen writes its logs into a private temp dir, never into the working
directory; ``logs_dir`` keeps a copy. ``import hal`` does not import LoadGen: it
is imported on the first run, and a missing one is a :class:`~hal.UsageError`
naming the extra to install.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import HalError, UsageError, brief

#: hal's scenario names → LoadGen's
SCENARIOS = {"single-stream": "SingleStream", "multi-stream": "MultiStream",
             "server": "Server", "offline": "Offline"}
INSTALL_HINT = 'pip install "hal-accel[loadgen]"'

#: default minimum duration of a short run (MLPerf submissions: 600 s)
MIN_DURATION_S = 1.0
#: default min_query_count per scenario: the fewest queries with which LoadGen's early
#: stopping can accept the scenario's percentile (it says so in its log: "Processed at
#: least 64 queries", "Need to process at least 662 queries"; a Server run with no query
#: over the bound needs 459). Offline: the sample count of its one query (default: the
#: QSL size, each sample at least once).
MIN_QUERIES = {"single-stream": 64, "multi-stream": 662, "server": 500}
#: MLPerf's samples per query for Multi-Stream (LoadGen's default too)
SAMPLES_PER_QUERY = 8
#: random samples in the QSL when none are given
NUM_SAMPLES = 64
#: derived rates, as multiples of the measured ones: Offline's expected QPS at twice the
#: rate measured through LoadGen (LoadGen issues 1.1 × min_duration × expected_qps samples,
#: so the run lasts ~2.2 × min_duration at the measured rate, and stays long enough if the
#: rate during the test is up to 2.2× the measured one: a shared host's load moves);
#: Server's target QPS at half the rate measured through LoadGen; the
#: streams' expected latency at half the measured one (LoadGen pre-generates queries
#: for min_duration at that latency and ends the run early when they run out)
OFFLINE_QPS_FACTOR = 2.0
SERVER_LOAD = 0.5
EXPECTED_LATENCY_FACTOR = 0.5
#: default Server latency bound: 20× the measured latency, at least 50 ms (MLPerf's bounds
#: run from 15 ms for ResNet-50 to 130 ms for BERT; a shared 2-core host adds tens of ms of
#: scheduling jitter at the 99th percentile)
SERVER_BOUND_FACTOR, SERVER_BOUND_MIN_MS = 20.0, 50.0

_PERCENTILES = {"50.00": "p50", "90.00": "p90", "95.00": "p95", "97.00": "p97",
                "99.00": "p99", "99.90": "p99.9"}
_LOG_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json",
              "mlperf_log_trace.json")


def require_loadgen():
    """``mlperf_loadgen``, or one UsageError naming the extra to install."""
    try:
        import mlperf_loadgen
    except ImportError:  # absent, or blocked (sys.modules["mlperf_loadgen"] = None)
        raise UsageError("MLPerf LoadGen (mlcommons-loadgen) is not installed, and LoadGen "
                         "scenarios need it", INSTALL_HINT) from None
    return mlperf_loadgen


def loadgen_version() -> str | None:
    """The installed mlcommons-loadgen's version, without importing it."""
    from importlib import metadata

    try:
        return metadata.version("mlcommons-loadgen")
    except metadata.PackageNotFoundError:
        return None


# --- the report ------------------------------------------------------------------------
@dataclass
class AccuracyCheck:
    """How many of the outputs LoadGen logged in accuracy mode match the oracle."""

    checked: int
    matched: int
    passed: bool
    #: the per-sample rule, in words (and where it comes from)
    rule: str
    #: the oracle's target and precision
    oracle: str
    #: largest max|out - ref| / max|ref| over the checked samples (float outputs)
    worst_rel_err: float | None = None
    #: QSL indices of samples that did not match (at most 20)
    mismatched: list[int] = field(default_factory=list)


@dataclass
class LoadGenReport:
    """One LoadGen run: what was asked, what LoadGen measured, and its verdict."""

    scenario: str
    #: "performance" or "accuracy" (LoadGen's PerformanceOnly / AccuracyOnly)
    mode: str
    loadgen_version: str
    backend: str
    target: str
    device_kind: str
    precision: str
    #: samples in the QSL (each held in memory)
    samples: int
    #: the TestSettings hal gave LoadGen (LoadGen's field names)
    settings: dict[str, Any]
    #: how hal chose the settings the caller left out (measured rates and latencies)
    derived: dict[str, str]
    #: what LoadGen made of them (its effective_* log entries)
    effective_settings: dict[str, Any]
    #: "VALID" or "INVALID"; None in accuracy mode (LoadGen judges no performance there)
    result: str | None
    #: every reason LoadGen gives for INVALID, one line each (empty when VALID)
    reasons: list[str]
    #: constraint → met, as the summary lists them ("min duration", "min queries",
    #: "early stopping", and Server's "performance constraints")
    constraints: dict[str, bool]
    #: the scenario's MLPerf metric: {"name", "value", "unit"}
    metric: dict[str, Any]
    #: LoadGen's latency percentiles (per query in Multi-Stream) in ms: p50 … p99.9, min, mean, max
    latency_ms: dict[str, float]
    #: samples per second: Offline's result, Single-Stream's QPS without LoadGen's
    #: overhead, Server's completed samples per second (None where LoadGen gives none)
    samples_per_second: float | None
    #: Server: the QPS LoadGen scheduled and the QPS completed (the achieved QPS)
    scheduled_qps: float | None
    achieved_qps: float | None
    query_count: int | None
    #: Server: queries over the latency bound
    overlatency_queries: int | None
    #: LoadGen's early-stopping verdict, and its percentile estimate (ms) where it gives one
    early_stopping: str | None
    early_stopping_latency_ms: float | None
    #: errors and warnings LoadGen logged (``is_error`` / ``is_warning`` entries)
    errors: list[str]
    warnings: list[str]
    accuracy: AccuracyCheck | None = None
    #: where the logs were kept (``logs_dir``), else None: the temp dir is gone
    logs_dir: str | None = None
    #: how the SUT ran each sample: "inline" in LoadGen's issue thread (``exe(x)``'s path)
    #: or through the executable's "pipeline" (``Executable.submit``'s)
    sut: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool | None:
        return None if self.result is None else self.result == "VALID"

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["valid"], d["reason"] = self.valid, self.reason
        return d


# --- the QSL and SUT ---------------------------------------------------------------------
#: samples completed with LoadGen in one call, at most: a query completes with its last
#: sample either way, and one call per group keeps LoadGen's per-call cost (a trip through
#: its Python binding) off a fast model's rate
GROUP = 64


class _Group:
    """The samples of one ``issue_queries`` call, completed with LoadGen in groups of up
    to :data:`GROUP` as their inferences finish, and the rest with the last one."""

    __slots__ = ("sut", "left", "buf", "lock")

    def __init__(self, sut: _SUT, n: int):
        self.sut, self.left, self.buf = sut, n, []
        self.lock = threading.Lock()

    def add(self, qid: int, idx: int, outputs: list[np.ndarray] | None) -> None:
        with self.lock:
            self.buf.append((qid, idx, outputs))
            self.left -= 1
            if len(self.buf) < GROUP and self.left > 0:
                return
            out, self.buf = self.buf, []
        self.sut._complete_all(out)

    def done(self, qid: int, idx: int, outputs: Any, error: BaseException | None) -> None:
        """The pipeline's completion callback for one sample (any thread): the least
        work that hands the outputs on (the core's output check, one list append)."""
        if error is None:
            try:
                outputs = self.sut.exe._outputs(outputs)
            except BaseException as e:  # noqa: BLE001 - a runner's broken outputs: raised after
                error = e
        if error is not None:
            self.sut._fail(error)
            outputs = None
        self.add(qid, idx, outputs)


def _inline(exe, scenario: str) -> bool:
    """Whether LoadGen's issue thread runs each sample itself (``exe(x)``'s path): in
    Single-Stream, one query at a time (the executable's latency path; on OpenVINO the
    pipeline runs on a THROUGHPUT compile's streams, which trades latency for
    throughput), and in Offline and Multi-Stream on an executable with no native queue
    and one worker, whose pool would only hand each sample to its one thread and back.
    Server keeps the pipeline: its issue thread must stay free to issue on schedule."""
    return scenario == "single-stream" or (scenario in ("offline", "multi-stream")
                                           and exe._pipeline().serial)


class _SUT:
    """LoadGen's system under test: one inference per sample, on the QSL's own arrays
    (checked, and copied so that nothing else holds them, when the QSL was made: no
    per-sample check or copy is left to do)."""

    def __init__(self, lg, exe, samples: list[tuple[np.ndarray, ...]], record: bool,
                 inline: bool, batch: bool):
        self.lg, self.exe, self.samples, self.record = lg, exe, samples, record
        self.inline = inline
        self.pipeline = None if inline else exe._pipeline()
        #: a query's samples go through the pipeline's stream together (Offline and
        #: Multi-Stream: LoadGen waits for the whole query); Server starts each on arrival
        self.batch = batch
        #: accuracy mode: QSL index → [(shape, dtype)] of the bytes handed to LoadGen
        self.layout: dict[int, list[tuple[tuple[int, ...], str]]] = {}
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def issue(self, queries) -> None:
        if self.inline:
            return self._issue_inline(queries)
        if self.batch:
            return self._issue_stream(queries)
        group = _Group(self, len(queries))
        exe, samples, start, done = self.exe, self.samples, self.pipeline.start, group.done
        for q in queries:
            qid, idx = q.id, q.index
            if self.error is not None:  # after a failure: finish the run fast
                group.add(qid, idx, None)
                continue
            try:  # blocks while the executable's queue is full: LoadGen's back-pressure
                start(exe, list(samples[idx]), partial(done, qid, idx), copy=False)
            except BaseException as e:  # noqa: BLE001 - LoadGen waits for every sample
                self._fail(e)
                group.add(qid, idx, None)

    def _issue_stream(self, queries) -> None:
        """A whole query (Offline's every sample, a Multi-Stream query) through the
        pipeline's stream, in LoadGen's issue thread: LoadGen waits for the query's
        last sample either way, and the stream keeps the runtime's queue full without
        a callback per sample; completed in groups as the outputs come in order."""
        exe, samples, outputs = self.exe, self.samples, self.exe._outputs
        group: list[tuple[int, int, Any]] = []
        n = 0
        results = self.pipeline.stream(exe, (list(samples[q.index]) for q in queries), copy=False)
        try:
            for outs in results:
                q = queries[n]
                n += 1
                group.append((q.id, q.index, outputs(outs)))
                if len(group) == GROUP:
                    self._complete_all(group)
                    group = []
        except BaseException as e:  # noqa: BLE001 - LoadGen waits for every sample
            self._fail(e)
        finally:
            results.close()
        group += [(q.id, q.index, None) for q in queries[n:]]  # after a failure: finish fast
        for i in range(0, len(group), GROUP):
            self._complete_all(group[i:i + GROUP])

    def _issue_inline(self, queries) -> None:
        """Run each sample in LoadGen's issue thread; complete them in groups."""
        exe, samples = self.exe, self.samples
        infer, outputs = exe._infer, exe._outputs
        group: list[tuple[int, int, Any]] = []
        for q in queries:
            result = None
            if self.error is None:
                try:
                    result = outputs(infer(list(samples[q.index])))
                except BaseException as e:  # noqa: BLE001 - LoadGen waits for every sample
                    self._fail(e)
            group.append((q.id, q.index, result))
            if len(group) == GROUP:
                self._complete_all(group)
                group = []
        if group:
            self._complete_all(group)

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e

    def _complete_all(self, group: list[tuple[int, int, Any]]) -> None:
        lg = self.lg
        keep, responses = [], []
        for qid, idx, outputs in group:
            if self.record and outputs is not None:
                try:
                    flat = [np.ascontiguousarray(a) for a in outputs]
                    buf = np.frombuffer(b"".join(a.tobytes() for a in flat), np.uint8)
                    self.layout.setdefault(idx, [(a.shape, a.dtype.str) for a in flat])
                    keep.append(buf)  # alive until LoadGen has copied it (accuracy log)
                    responses.append(lg.QuerySampleResponse(
                        qid, buf.ctypes.data if buf.size else 0, int(buf.size)))
                    continue
                except BaseException as e:  # noqa: BLE001 - e.g. an output numpy cannot hold
                    self._fail(e)
            responses.append(lg.QuerySampleResponse(qid, 0, 0))
        lg.QuerySamplesComplete(responses)
        del keep

    def flush(self) -> None:
        pass


def _prepare_samples(exe, samples, num_samples: int, batch_size: int | None,
                     seed: int) -> list[tuple[np.ndarray, ...]]:
    """The QSL: each sample checked (and conformed) once and copied, so that LoadGen times
    the calls only and nothing but the SUT holds the arrays it hands the runtime (the
    contract of ``submit``, whose copy per call this one copy replaces). Arrays that
    live on a device (a runner's ``device_inputs``) are kept as they are."""
    if samples is None:
        from .profile import random_inputs

        samples = [random_inputs(exe.info.inputs, batch_size or 1, seed=seed + i)
                   for i in range(num_samples)]
    out = []
    for s in samples:
        if isinstance(s, dict):
            s = [s[n.name] if n.name in s else None for n in exe.info.inputs]
        elif not isinstance(s, (tuple, list)):
            s = (s,)  # one array: a single-input model's sample
        out.append(tuple(a.copy() if isinstance(a, np.ndarray) else a
                         for a in exe.check_inputs(tuple(s))))
    if not out:
        raise UsageError("no samples to run", "pass at least one sample, or none for random ones")
    return out


def _measure(exe, samples, calls: int) -> float:
    """The median latency of ``calls`` serial calls (the first one not counted): the
    warm-up, and what the streams' expected latency is derived from."""
    n = len(samples)
    times = []
    for i in range(max(calls, 3)):
        t0 = time.perf_counter()
        exe(*samples[i % n])
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def _start(lg, sut: _SUT, n: int, ts, outdir: Path, trace: bool = False) -> None:
    """One LoadGen test of ``sut`` over a QSL of ``n`` samples held in memory, logs in ``outdir``."""
    log = lg.LogSettings()
    log.log_output.outdir = str(outdir)
    log.log_output.copy_summary_to_stdout = False
    log.log_output.copy_detail_to_stdout = False
    log.enable_trace = bool(trace)
    sut_h = lg.ConstructSUT(sut.issue, sut.flush)
    qsl_h = lg.ConstructQSL(n, n, lambda idx: None, lambda idx: None)
    try:
        # an audit.config in the working directory would change the test: LoadGen
        # reads the one named here, which does not exist
        lg.StartTestWithLogSettings(sut_h, qsl_h, ts, log, str(outdir / "no-audit.config"))
    finally:
        lg.DestroyQSL(qsl_h)
        lg.DestroySUT(sut_h)
    if sut.error is not None:
        if isinstance(sut.error, HalError):
            raise sut.error
        raise HalError(f"the executable failed under LoadGen: {brief(sut.error, 300, typed=True)}",
                       "run it once with exe(...) / hal run to see the failure") from sut.error


def _probe_rate(lg, exe, samples, latency_s: float) -> float:
    """Samples per second through LoadGen itself: a short Offline run (~0.1 s at the
    serial rate; longer where LoadGen's own cost per sample, a shared host or the
    machine's threads make the rate under LoadGen lower). What Server and Offline can
    sustain includes LoadGen's per-sample cost: a fast model on a small host spends
    more time in LoadGen's callbacks than in the model.

    A pipelined executable is warmed up first on the path the test takes (its first
    stream makes its queue: OpenVINO's requests on a THROUGHPUT compile), and the probe
    is sized by the faster of that and the serial rate (streams can run many times
    faster than serial calls on the LATENCY compile), so that it runs ~0.1 s either way."""
    inline = _inline(exe, "offline")
    if not inline:
        pipe, n = exe._pipeline(), len(samples)
        k = max(16, 2 * pipe.depth)
        t0 = time.perf_counter()
        for _ in pipe.stream(exe, (list(samples[i % n]) for i in range(k)), copy=False):
            pass
        latency_s = min(latency_s, (time.perf_counter() - t0) / k)
    ts = lg.TestSettings()
    ts.scenario, ts.mode = lg.TestScenario.Offline, lg.TestMode.PerformanceOnly
    ts.min_duration_ms, ts.offline_expected_qps = 0, 1.0
    ts.min_query_count = int(min(max(0.1 / latency_s, 16), 2000))
    with tempfile.TemporaryDirectory(prefix="hal-loadgen-probe-") as d:
        _start(lg, _SUT(lg, exe, samples, record=False, inline=inline, batch=True),
               len(samples), ts, Path(d))
        values, _, _ = parse_detail((Path(d) / _LOG_FILES[1]).read_text(errors="replace"))
    rate = _number(values, "result_samples_per_second")
    return rate if rate and rate > 0 else 1.0 / latency_s


# --- settings ------------------------------------------------------------------------------
def _positive(name: str, v: float | None, flag: str) -> None:
    if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise UsageError(f"{name}={v!r} is not a positive number", f"pass a positive {flag}")


def _ns(ms: float | None) -> int | None:
    return None if ms is None else max(int(round(ms * 1e6)), 1000)


def _settings(lg, scenario: str, accuracy: bool, n_samples: int, est: dict[str, float] | None,
              min_duration_s, max_duration_s, min_query_count, target_qps, latency_bound_ms,
              expected_latency_ms, samples_per_query, accuracy_samples, extra: dict | None):
    """(LoadGen TestSettings, the values hal set by LoadGen name, how it derived each)."""
    s: dict[str, Any] = {"scenario": SCENARIOS[scenario],
                         "mode": "AccuracyOnly" if accuracy else "PerformanceOnly",
                         "min_duration_ms": int(round(1000 * (min_duration_s or MIN_DURATION_S))),
                         "max_duration_ms": int(round(1000 * max_duration_s)) if max_duration_s else 0}
    derived: dict[str, str] = {}
    lat_ms = est["latency_s"] * 1e3 if est else None
    rate = est.get("rate_per_s") if est else None
    how = "measured (median of serial calls)"
    how_rate = "measured through LoadGen (a short Offline run)"

    def pick(key: str, given, value, why: str) -> None:
        s[key] = given if given is not None else value
        if given is None:
            derived[key] = why

    if scenario == "single-stream":
        pick("min_query_count", min_query_count, MIN_QUERIES[scenario],
             "the fewest queries LoadGen's early stopping accepts for the 90th percentile")
        pick("single_stream_expected_latency_ns", _ns(expected_latency_ms),
             _ns(EXPECTED_LATENCY_FACTOR * (lat_ms or 1.0)),
             f"{EXPECTED_LATENCY_FACTOR}× the latency {how} ({lat_ms or 0:.3f} ms)")
    elif scenario == "multi-stream":
        pick("multi_stream_samples_per_query", samples_per_query, SAMPLES_PER_QUERY,
             "MLPerf's Multi-Stream query size")
        spq = s["multi_stream_samples_per_query"]
        pick("min_query_count", min_query_count, MIN_QUERIES[scenario],
             "the fewest queries LoadGen's early stopping accepts for the 99th percentile")
        pick("multi_stream_expected_latency_ns", _ns(expected_latency_ms),
             _ns(EXPECTED_LATENCY_FACTOR * spq * (lat_ms or 1.0)),
             f"{EXPECTED_LATENCY_FACTOR}× {spq} samples at the latency {how} ({lat_ms or 0:.3f} ms)")
    elif scenario == "server":
        pick("min_query_count", min_query_count, MIN_QUERIES[scenario],
             "above the 459 queries LoadGen's early stopping needs for the 99th percentile "
             "when none is over the bound")
        pick("server_target_qps", target_qps, SERVER_LOAD * (rate or 1.0),
             f"{SERVER_LOAD}× the rate {how_rate} ({rate or 0:.1f}/s)")
        pick("server_target_latency_ns", _ns(latency_bound_ms),
             _ns(max(SERVER_BOUND_MIN_MS, SERVER_BOUND_FACTOR * (lat_ms or 0))),
             f"{SERVER_BOUND_FACTOR:g}× the latency {how} ({lat_ms or 0:.3f} ms), "
             f"at least {SERVER_BOUND_MIN_MS:g} ms")
    else:  # offline
        pick("min_query_count", min_query_count, n_samples,
             "the QSL size: every sample at least once")
        pick("offline_expected_qps", target_qps, OFFLINE_QPS_FACTOR * (rate or 1.0),
             f"{OFFLINE_QPS_FACTOR:g}× the rate {how_rate} ({rate or 0:.1f}/s)")
    if accuracy and accuracy_samples is not None:
        s["accuracy_sample_count_override"] = min(int(accuracy_samples), n_samples)
    ts = lg.TestSettings()
    for k, v in (extra or {}).items():
        if k in ("scenario", "mode") or not hasattr(ts, k) or k.startswith("_") or k == "FromConfig":
            raise UsageError(f"{k!r} is not a LoadGen TestSettings field hal passes through",
                             "use a field of mlperf_loadgen.TestSettings (docs/throughput.md)")
        s[k] = v
    for k, v in s.items():
        if k == "scenario":
            ts.scenario = getattr(lg.TestScenario, v)
        elif k == "mode":
            ts.mode = getattr(lg.TestMode, v)
        else:
            try:
                setattr(ts, k, v)
            except TypeError as e:
                raise UsageError(f"LoadGen setting {k}={v!r} has the wrong type ({brief(e, 120)})",
                                 f"pass a {type(getattr(lg.TestSettings(), k)).__name__}") from None
    return ts, s, derived


# --- reading LoadGen's logs -------------------------------------------------------------------
def parse_detail(text: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """``mlperf_log_detail.txt`` → (key → value, the last of each key; errors; warnings)."""
    values: dict[str, Any] = {}
    errors, warnings = [], []
    for line in text.splitlines():
        if not line.startswith(":::MLLOG "):
            continue
        try:
            e = json.loads(line[len(":::MLLOG "):])
        except ValueError:
            continue
        key, value, meta = e.get("key"), e.get("value"), e.get("metadata") or {}
        values[key] = value
        if meta.get("is_error"):
            errors.append(f"{key}: {value}")
        elif meta.get("is_warning"):
            warnings.append(f"{key}: {value}")
    return values, errors, warnings


def parse_summary(text: str) -> dict[str, Any]:
    """``mlperf_log_summary.txt`` → result, constraints (name → met), recommendations,
    the early-stopping lines, and every ``name : number`` figure it prints."""
    out: dict[str, Any] = {"result": None, "constraints": {}, "recommendations": [],
                           "early_stopping": [], "figures": {}}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or set(line) == {"="}:
            continue
        if line.startswith("Result is"):
            out["result"] = line.split(":", 1)[1].strip()
            section = None
        elif " satisfied" in line and ":" in line:
            name, _, met = line.partition(":")
            out["constraints"][name.replace("satisfied", "").strip().lower()] = \
                met.strip().lower() == "yes"
        elif line == "Recommendations:":
            section = "recommendations"
        elif line == "Early Stopping Result:":
            section = "early_stopping"
        elif line.startswith("* ") and section:
            out[section].append(line[2:].strip())
        elif section and out[section] and raw.startswith(" ") and ":" not in line:
            out[section][-1] += " " + line  # LoadGen wraps long bullet points
        else:
            section = None
            name, sep, value = line.rpartition(":")
            if sep:
                try:
                    out["figures"][name.strip()] = float(value)
                except ValueError:
                    pass
    return out


def _number(values: dict[str, Any], key: str) -> float | None:
    v = values.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _hint(scenario: str, constraint: str) -> str | None:
    """What to change in hal's terms when a constraint is not met."""
    return {
        ("offline", "min duration"): "raise target_qps (--target-qps): LoadGen's one query "
                                     "was too small to last min_duration",
        ("single-stream", "min duration"): "lower expected_latency_ms (--expected-latency)",
        ("multi-stream", "min duration"): "lower expected_latency_ms (--expected-latency)",
        ("server", "performance constraints"): "lower target_qps (--target-qps) or raise "
                                               "latency_bound_ms (--latency-bound)",
    }.get((scenario, constraint)) or ({
        "min queries": "raise min_query_count (--min-queries) or min_duration_s (--duration)",
        "early stopping": "run more queries: raise min_query_count (--min-queries)",
    }.get(constraint))


def _report_from_logs(scenario: str, mode: str, exe, n_samples: int, settings, derived,
                      summary_text: str, detail_text: str) -> LoadGenReport:
    values, errors, warnings = parse_detail(detail_text)
    summary = parse_summary(summary_text)
    perf = mode == "performance"
    result = (summary["result"] or values.get("result_validity")) if perf else None
    reasons: list[str] = []
    if perf and result != "VALID":
        for name, met in summary["constraints"].items():
            if not met:
                hint = _hint(scenario, name)
                reasons.append(f"{name} not met" + (f" ({hint})" if hint else ""))
        if summary["constraints"].get("early stopping") is False and summary["early_stopping"]:
            reasons.append("LoadGen's early stopping: " + " ".join(summary["early_stopping"]))
        reasons += [f"LoadGen recommends: {r}" for r in summary["recommendations"]]
        reasons += [f"LoadGen error {e}" for e in errors]
        if not reasons:
            reasons.append(f"LoadGen reports {result or 'no result'} without a reason "
                           f"(result_invalid_reason: {values.get('result_invalid_reason')!r})")
    lat = {}
    for pct, name in _PERCENTILES.items():
        v = _number(values, f"result_{pct}_percentile_latency_ns")
        if v is not None:
            lat[name] = v / 1e6
    for k in ("min", "mean", "max"):
        v = _number(values, f"result_{k}_latency_ns")
        if v is not None:
            lat[k] = v / 1e6
    sps = {"offline": _number(values, "result_samples_per_second"),
           "single-stream": _number(values, "result_qps_without_loadgen_overhead"),
           "server": _number(values, "result_completed_samples_per_sec")}.get(scenario)
    es_ns = _number(values, "early_stopping_latency_ss" if scenario == "single-stream" else
                    "early_stopping_latency_ms" if scenario == "multi-stream" else "")
    achieved = _number(values, "result_completed_samples_per_sec")
    metric = {
        "single-stream": {"name": "90th percentile latency", "value": lat.get("p90"), "unit": "ms"},
        "multi-stream": {"name": "99th percentile latency per query", "value": lat.get("p99"),
                         "unit": "ms"},
        "server": {"name": "achieved QPS at the latency bound", "value": achieved, "unit": "1/s"},
        "offline": {"name": "samples per second", "value": sps, "unit": "1/s"},
    }[scenario] if perf else {"name": "accuracy", "value": None, "unit": ""}
    version = loadgen_version() or str(values.get("loadgen_version", "unknown"))
    effective = {k[len("effective_"):]: v for k, v in values.items() if k.startswith("effective_")}
    qc = _number(values, "result_query_count")
    olq = _number(values, "result_overlatency_query_count")
    es_text = values.get("early_stopping_result")
    return LoadGenReport(
        scenario=scenario, mode=mode, loadgen_version=version, backend=exe.info.backend,
        target=exe.info.target, device_kind=exe.info.device_kind, precision=exe.info.precision,
        samples=n_samples, settings=settings, derived=derived, effective_settings=effective,
        result=result, reasons=reasons, constraints=summary["constraints"] if perf else {},
        metric=metric, latency_ms=lat, samples_per_second=sps,
        scheduled_qps=_number(values, "result_scheduled_samples_per_sec"),
        achieved_qps=achieved, query_count=None if qc is None else int(qc),
        overlatency_queries=None if olq is None else int(olq),
        early_stopping=" ".join(es_text.replace("*", " ").split()) if isinstance(es_text, str)
        and es_text.strip() else None,
        early_stopping_latency_ms=es_ns / 1e6 if es_ns else None,
        errors=errors, warnings=warnings)


# --- accuracy --------------------------------------------------------------------------------
def _oracle(oracle: Any, sample: tuple[np.ndarray, ...]):
    if oracle is None:
        raise UsageError("accuracy mode needs an oracle to compare with",
                         "pass oracle= the source model (it is compiled for target='reference' "
                         "at fp64) or an executable compiled from it")
    if hasattr(oracle, "run") and hasattr(oracle, "info"):
        return oracle
    from .api import compile as hal_compile

    return hal_compile(oracle, "reference", precision="fp64", example_input=sample)


def _rule(precision: str, rel_tol: float | None) -> tuple[str, float | None, float | None]:
    """(words, max rel error per sample or None for top-1, share of samples that must match)."""
    if rel_tol is not None:
        return f"max|out - ref| ≤ {rel_tol:g}·max|ref| per sample (given)", rel_tol, 1.0
    from hal_conformance.policy import POLICY  # the tolerance policy (numpy only)

    p = precision if precision in POLICY else "fp32"  # fp64: held to fp32's rule
    t = POLICY[p]
    if t.max_rel_err is not None:
        return (f"max|out - ref| ≤ {t.max_rel_err:g}·max|ref| per sample (the conformance "
                f"policy's {p} rule)", t.max_rel_err, 1.0)
    return (f"top-1 (argmax) equal to the oracle's per sample, on ≥ {t.min_top1:.0%} of them "
            f"(the conformance policy's {p} rule)", None, t.min_top1)


def check_accuracy(accuracy_log: Path, layout: dict[int, list], samples, oracle_exe,
                   precision: str, rel_tol: float | None = None) -> AccuracyCheck:
    """Decode the outputs LoadGen logged and compare each with the oracle's."""
    try:
        entries = json.loads(accuracy_log.read_text() or "[]")
    except (OSError, ValueError) as e:
        raise HalError(f"LoadGen's accuracy log could not be read ({brief(e, 120)})",
                       "rerun with logs_dir= / --logs DIR and inspect mlperf_log_accuracy.json") from None
    words, max_rel, share = _rule(precision, rel_tol)
    seen: set[int] = set()
    checked = matched = 0
    worst: float | None = None
    bad: list[int] = []
    for e in entries:
        idx = int(e["qsl_idx"])
        if idx in seen or idx not in layout:
            continue
        seen.add(idx)
        raw, outs, at = bytes.fromhex(e["data"]), [], 0
        for shape, dt in layout[idx]:
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
            outs.append(np.frombuffer(raw[at:at + size], dtype=dt).reshape(shape))
            at += size
        refs = list(oracle_exe.run(list(samples[idx])))
        ok = len(refs) == len(outs)
        for out, ref in zip(outs, refs):
            if np.dtype(ref.dtype).kind not in "fc":
                ok &= out.shape == ref.shape and bool(np.array_equal(out, ref))
                continue
            o, r = out.astype(np.float64), np.asarray(ref, np.float64)
            if o.shape != r.shape:
                ok = False
                continue
            scale = float(np.abs(r).max()) if r.size else 0.0
            rel = float(np.abs(o - r).max()) / (scale or 1.0) if r.size else 0.0
            worst = rel if worst is None or not math.isfinite(rel) else max(worst, rel)
            if max_rel is not None:
                ok &= bool(rel <= max_rel)
            else:
                ok &= bool(np.array_equal(o.reshape(-1, o.shape[-1] if o.ndim else 1).argmax(-1),
                                          r.reshape(-1, r.shape[-1] if r.ndim else 1).argmax(-1)))
        checked += 1
        matched += ok
        if not ok and len(bad) < 20:
            bad.append(idx)
    info = oracle_exe.info
    return AccuracyCheck(checked=checked, matched=matched,
                         passed=checked > 0 and matched >= math.ceil(share * checked - 1e-9),
                         rule=words, oracle=f"{info.target} {info.precision}",
                         worst_rel_err=worst, mismatched=bad)


def check_options(scenario: str, *, min_duration_s=None, max_duration_s=None,
                  min_query_count=None, target_qps=None, latency_bound_ms=None,
                  expected_latency_ms=None, samples_per_query=None, accuracy=False, oracle=None,
                  accuracy_samples=None, rel_tol=None, warmup=0, num_samples=1) -> None:
    """One UsageError for a scenario or setting that cannot apply (the CLI calls this
    before it compiles anything)."""
    if scenario not in SCENARIOS:
        raise UsageError(f"unknown LoadGen scenario {scenario!r}",
                         f"use one of {', '.join(SCENARIOS)}")
    for name, v, flag in (("min_duration_s", min_duration_s, "--duration"),
                          ("max_duration_s", max_duration_s, "--max-duration"),
                          ("target_qps", target_qps, "--target-qps"),
                          ("latency_bound_ms", latency_bound_ms, "--latency-bound"),
                          ("expected_latency_ms", expected_latency_ms, "--expected-latency"),
                          ("rel_tol", rel_tol, "tolerance")):
        _positive(name, v, flag)
    for name, v, flag in (("min_query_count", min_query_count, "--min-queries"),
                          ("samples_per_query", samples_per_query, "--samples-per-query"),
                          ("accuracy_samples", accuracy_samples, "count")):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise UsageError(f"{name}={v!r} is not a positive whole number", f"pass {flag} 1 or more")
    if warmup < 0:
        raise UsageError(f"warmup={warmup} is negative", "use 0 or more")
    if num_samples < 1:
        raise UsageError(f"{num_samples} samples is not positive", "use --samples 1 or more")
    if samples_per_query is not None and scenario != "multi-stream":
        raise UsageError("samples_per_query (--samples-per-query) is a Multi-Stream setting",
                         "drop it, or use --scenario multi-stream")
    if latency_bound_ms is not None and scenario != "server":
        raise UsageError("latency_bound_ms (--latency-bound) is a Server setting",
                         "drop it, or use --scenario server")
    if target_qps is not None and scenario not in ("server", "offline"):
        raise UsageError("target_qps (--target-qps) is a Server or Offline setting",
                         "use expected_latency_ms (--expected-latency) for the streams")
    if expected_latency_ms is not None and scenario not in ("single-stream", "multi-stream"):
        raise UsageError("expected_latency_ms (--expected-latency) is a Single-Stream or Multi-Stream "
                         "setting",
                         "use target_qps (--target-qps) for Server and Offline")
    if not accuracy and (oracle is not None or accuracy_samples is not None or rel_tol is not None):
        raise UsageError("oracle, accuracy_samples and rel_tol apply to accuracy mode",
                         "pass accuracy=True (--accuracy)")


# --- the run ---------------------------------------------------------------------------------
def run_scenario(exe, scenario: str, *, samples: Sequence[Any] | None = None,
                 num_samples: int = NUM_SAMPLES, batch_size: int | None = None,
                 min_duration_s: float | None = None, max_duration_s: float | None = None,
                 min_query_count: int | None = None, target_qps: float | None = None,
                 latency_bound_ms: float | None = None, expected_latency_ms: float | None = None,
                 samples_per_query: int | None = None, warmup: int = 10,
                 settings: dict[str, Any] | None = None, accuracy: bool = False,
                 oracle: Any = None, accuracy_samples: int | None = None,
                 rel_tol: float | None = None, logs_dir: str | Path | None = None,
                 trace: bool = False, seed: int = 0) -> LoadGenReport:
    """Run ``exe`` under MLPerf LoadGen in ``scenario`` (single-stream, multi-stream,
    server, offline) and return LoadGen's figures and verdict.

    ``samples``: the QSL, one tuple of arrays (or one array, or a name → array dict)
    per sample; default ``num_samples`` random ones (``batch_size`` for a dynamic batch).
    ``min_duration_s`` (default 1 s), ``max_duration_s``, ``min_query_count`` (default
    :data:`MIN_QUERIES`; Offline: its sample count), ``target_qps`` (Server: the
    scheduled QPS; Offline: the expected QPS), ``latency_bound_ms`` (Server),
    ``expected_latency_ms`` (the streams) and ``samples_per_query`` (Multi-Stream)
    override hal's short-run defaults; those left out are derived from ``warmup`` timed
    serial calls (also the warm-up) and, for Server and Offline, a ~0.1 s Offline run
    through LoadGen. ``settings``: any other LoadGen TestSettings field by name.
    ``accuracy``: LoadGen's accuracy mode; ``accuracy_samples`` of the logged outputs
    (default all) are compared with ``oracle`` (the source model, compiled for
    ``target="reference"`` at fp64, or an executable) under the conformance tolerance
    policy of the executable's precision, or ``rel_tol``. ``logs_dir``: keep LoadGen's
    logs there (``trace`` adds its trace)."""
    check_options(scenario, min_duration_s=min_duration_s, max_duration_s=max_duration_s,
                  min_query_count=min_query_count, target_qps=target_qps,
                  latency_bound_ms=latency_bound_ms, expected_latency_ms=expected_latency_ms,
                  samples_per_query=samples_per_query, accuracy=accuracy, oracle=oracle,
                  accuracy_samples=accuracy_samples, rel_tol=rel_tol, warmup=warmup,
                  num_samples=num_samples)
    lg = require_loadgen()
    from .executable import Executable

    if not isinstance(exe, Executable):
        raise UsageError(f"run_scenario drives a hal.Executable, not a {type(exe).__name__}",
                         "compile or load the model with hal.compile / hal.load first")
    qsl_samples = _prepare_samples(exe, samples, num_samples, batch_size, seed)
    oracle_exe = _oracle(oracle, qsl_samples[0]) if accuracy else None
    latency = _measure(exe, qsl_samples, warmup)  # also the warm-up
    est: dict[str, float] = {"latency_s": latency}
    if scenario in ("server", "offline") and target_qps is None:
        est["rate_per_s"] = _probe_rate(lg, exe, qsl_samples, latency)
    ts, used, derived = _settings(lg, scenario, accuracy, len(qsl_samples), est, min_duration_s,
                                  max_duration_s, min_query_count, target_qps, latency_bound_ms,
                                  expected_latency_ms, samples_per_query, accuracy_samples, settings)
    if logs_dir is not None:
        logs_dir = Path(logs_dir)
        if logs_dir.exists() and not logs_dir.is_dir():
            raise UsageError(f"{logs_dir} exists and is not a directory",
                             "pass a directory for LoadGen's logs")
    tmp = Path(tempfile.mkdtemp(prefix="hal-loadgen-"))
    try:
        sut = _SUT(lg, exe, qsl_samples, record=accuracy, inline=_inline(exe, scenario),
                   batch=scenario != "server")
        _start(lg, sut, len(qsl_samples), ts, tmp, trace)
        summary, detail = (tmp / _LOG_FILES[0]), (tmp / _LOG_FILES[1])
        if not detail.is_file():
            raise HalError(f"LoadGen wrote no {detail.name}", "rerun with --debug")
        report = _report_from_logs(
            scenario, "accuracy" if accuracy else "performance", exe, len(qsl_samples), used,
            derived,
            summary.read_text(errors="replace") if summary.is_file() else "",
            detail.read_text(errors="replace"))
        report.notes.append(f"measured before the test: {latency * 1e3:.3f} ms a serial call"
                            + (f", {est['rate_per_s']:.1f} samples/s through LoadGen"
                               if "rate_per_s" in est else ""))
        report.sut = "inline" if sut.inline else "pipeline"
        if scenario == "single-stream":
            report.notes.append("single-stream: each sample ran inline in LoadGen's issue thread "
                                "(exe(x), the executable's latency path)")
        elif sut.inline:
            report.notes.append("each sample ran inline in LoadGen's issue thread (exe(x)'s path): "
                                "the executable has no native queue and one worker, which would "
                                "only be handed each sample and hand it back")
        else:
            p = sut.pipeline
            how = ("each query's samples went through the runner's own stream (its native "
                   "queue, refilled by LoadGen's issue thread)" if sut.batch and p._streams else
                   f"each sample was started on the executable's pipeline (at most {p.depth} in "
                   "flight, on " + ("the runner's native queue" if p._native else
                                    f"{p.workers} worker thread(s)") + ")")
            report.notes.append(f"{how}; completed with LoadGen in groups of up to {GROUP}")
        if exe.info.device_kind == "emulated":
            report.notes.append("emulated device: timings are of the host, not the accelerator")
        if accuracy:
            report.accuracy = check_accuracy(tmp / _LOG_FILES[2], sut.layout, qsl_samples,
                                             oracle_exe, exe.info.precision, rel_tol)
        if logs_dir is not None:
            logs_dir.mkdir(parents=True, exist_ok=True)
            for name in _LOG_FILES:
                if (tmp / name).is_file():
                    shutil.copyfile(tmp / name, logs_dir / name)
            report.logs_dir = str(logs_dir)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
