"""hal under MLPerf LoadGen vs each runtime's own tool, measured side by side in one run.

Each row is a ratio hal ÷ native on the same model, same artifact and same threads
(> 1 means hal is faster for throughput; for latency < 1 means hal is faster):

1. ``openvino:CPU``: hal Offline samples/s (``hal.loadgen.run_scenario``) ÷ OpenVINO's
   ``benchmark_app -hint throughput -m model.xml -t SECS`` on the very IR hal compiled
   (its "Throughput: N FPS" line).
2. ``edgetpu:emulated``: hal Offline samples/s ÷ ``litert-benchmark`` (LiteRT's own
   tool; 1000 / its mean ms) on the very .tflite hal runs, same ``--num_threads``: once
   with hal's float I/O (hal quantizes and dequantizes around each call) and once with
   ``raw_io`` (int8 in and out, as litert-benchmark feeds the model).
3. ``reference``: hal Offline samples/s ÷ a hand-written torch loop (``inference_mode``,
   the same module, the same samples, ``torch.set_num_threads(THREADS)``), compiled with
   ``cache=False``; then the executable saved and ``hal.load``-ed, which runs the exported
   program (an artifact holds no Python code), ÷ a loop of that program's
   ``torch.export.load(...).module()``, and, for information, ÷ the eager loop.
4. per backend: hal SingleStream p90 (LoadGen's) ÷ the p90 of direct native calls
   (``compiled_model(x)``, ``Interpreter`` set_tensor/invoke/get_tensor with numpy
   quantization, ``module(x)``), timed call by call; and ÷ the p90 LoadGen reports for the
   same native call run by a plain SUT as LoadGen issues each sample, as hal's inline SUT
   runs it (what LoadGen itself costs any SUT); for the reference also Offline that way.

5. ``openvino:CPU``: ``exe.map`` (the pipelined async path) ÷ ``exe(x)`` in a loop, same
   executable: what OpenVINO's THROUGHPUT streams give over the LATENCY compile.

Rounds alternate hal and native so both see the same load of a shared host; the table
gives the median of the per-round ratios and their range. ``--model``: the conformance
zoo's ConvNet (3×32×32, shipped weights; the default), ResNet-18 (224×224), or a small
GRU whose one inference cannot use two cores (:func:`gru_model`; the model for row 5);
int8 for the Edge TPU (random calibration). Where the Edge TPU's placement refuses the
model for ops it would run on the host (ResNet-18: PADV2), the row compiles it with
``allow_host_ops=True`` and says so; a model its compile refuses (the GRU) is skipped
with the reason. A script, not a test: nothing here passes or fails.

    python benchmarks/bench_throughput.py [--model convnet|resnet18|gru] [--secs 3] [--rounds 3] [--threads N] [--backends reference,openvino,edgetpu]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hal
from hal.loadgen import run_scenario


def gru_model():
    """A one-layer GRU over 32 steps of 32 features (64 hidden) and a linear head: each
    step waits for the one before, and each step's matmuls (3 gates, 32 and 64 wide) are
    far too small to split over two cores, so one inference keeps one core busy however
    many threads it is given; two run side by side on OpenVINO's THROUGHPUT streams."""
    from torch import nn

    class GRUNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(32, 64, batch_first=True)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            y, _ = self.gru(x)
            return self.head(y[:, -1])

    torch.manual_seed(0)
    return GRUNet().eval()


def model_and_shape(which: str = "convnet"):
    if which == "gru":
        return "GRU 32 steps x 32 -> 64 + linear (one inference cannot use two cores)", \
            gru_model(), (1, 32, 32)
    if which == "resnet18":  # ~1.8 GFLOP a sample: per-call host overhead stops mattering
        from hal_conformance.architectures import ARCHITECTURES

        arch = ARCHITECTURES["resnet18"]
        return "transformers ResNet-18 (conformance architectures tier)", arch.build(), \
            (1, *arch.input_shape)
    try:
        from hal_conformance.models import MODELS
        from hal_conformance.zoo import build

        return "zoo convnet", build("convnet"), (1, *MODELS["convnet"].input_shape)
    except Exception as e:  # noqa: BLE001 - the zoo is optional here
        print(f"(conformance zoo unavailable: {e}; using a local CNN)")
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(4096, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    return "local cnn", m, (1, 3, 32, 32)


def p90_ms(fn, samples, n: int) -> float:
    """p90 of ``n`` direct calls, timed one by one (after 20 untimed ones)."""
    for i in range(20):
        fn(samples[i % len(samples)])
    clock, ts = time.perf_counter, []
    for i in range(n):
        t0 = clock()
        fn(samples[i % len(samples)])
        ts.append(clock() - t0)
    return float(np.percentile(ts, 90) * 1e3)


def loop_rate(fn, samples, secs: float) -> float:
    """Samples per second of a serial loop over ``samples`` for about ``secs``."""
    for i in range(20):
        fn(samples[i % len(samples)])
    clock, n = time.perf_counter, 0
    t0 = clock()
    while True:
        fn(samples[n % len(samples)])
        n += 1
        if n % 16 == 0 and clock() - t0 >= secs:
            return n / (clock() - t0)


def pipelined_rate(exe, samples, secs: float) -> float:
    """Samples per second of ``exe.map`` over ``samples`` repeated for about ``secs``."""
    list(exe.map(samples[:16]))
    n, t0, clock = 0, time.perf_counter(), time.perf_counter
    while clock() - t0 < secs:
        for _ in exe.map(samples):
            n += 1
    return n / (clock() - t0)


def benchmark_app(xml: Path, secs: int, data_shape: str | None = None) -> float:
    """benchmark_app's Throughput on ``xml``; ``data_shape`` (its ``-data_shape``) for an IR
    with a free dimension, which it otherwise refuses to fill."""
    exe = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    out = subprocess.run([exe, "-m", str(xml), "-d", "CPU", "-hint", "throughput", "-t", str(secs)]
                         + (["-data_shape", data_shape] if data_shape else []),
                         capture_output=True, text=True, timeout=600)
    m = re.search(r"Throughput:\s*([\d.]+)\s*FPS", out.stdout)
    if not m:
        raise RuntimeError(f"benchmark_app failed:\n{out.stdout[-1500:]}\n{out.stderr[-1500:]}")
    return float(m.group(1))


def litert_benchmark(path: Path, threads: int, secs: float, per_call_s: float) -> float:
    exe = shutil.which("litert-benchmark") or str(Path(sys.executable).parent / "litert-benchmark")
    runs = int(min(max(secs / max(per_call_s, 1e-6), 100), 200_000))
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "r.json"
        out = subprocess.run([exe, "--model", str(path), "--num_runs", str(runs), "--warmup_runs", "50",
                              "--num_threads", str(threads), "--result_json", str(res)],
                             capture_output=True, text=True, timeout=900)
        if out.returncode != 0 or not res.exists():
            raise RuntimeError(f"litert-benchmark failed ({out.returncode}): {out.stderr[-1500:]}")
        avg = json.loads(res.read_text())["latency"]["avg_ms"]
    return 1e3 / avg


def loadgen(exe, samples, secs: float, reports: list):
    """hal's Offline samples/s and SingleStream p90 (ms), each from its own LoadGen run;
    the reports are kept for the table."""
    def offline() -> float:
        r = run_scenario(exe, "offline", samples=samples, min_duration_s=secs)
        reports.append(r)
        return r.samples_per_second

    def single_stream() -> float:
        r = run_scenario(exe, "single-stream", samples=samples, min_duration_s=secs)
        reports.append(r)
        return r.latency_ms["p90"]

    return offline, single_stream


def native_under_loadgen(secs: float, call=None, samples=None, offline: bool = False) -> float:
    """LoadGen's Single-Stream p90 (ms), or with ``offline`` its Offline samples/s, of a
    SUT that is not hal: ``call(sample)`` run inline as LoadGen issues each sample (the
    native runtime, as hal's inline SUT runs it; LoadGen issues from the thread that
    started the test), completed in groups of hal's size; with ``call=None`` nothing at
    all, LoadGen's own floor (its Python callback and the completion). Started as hal's
    own runs are (hal.loadgen._start)."""
    import mlperf_loadgen as lg
    from hal.loadgen import GROUP, _number, _start, parse_detail, parse_summary

    n = len(samples) if samples else 64

    class Native:  # the three things _start reads of a SUT
        error = None

        @staticmethod
        def issue(queries):
            for i in range(0, len(queries), GROUP):
                group = queries[i:i + GROUP]
                if call is not None:
                    for q in group:
                        call(samples[q.index])
                lg.QuerySamplesComplete([lg.QuerySampleResponse(q.id, 0, 0) for q in group])

        @staticmethod
        def flush():
            pass

    ts = lg.TestSettings()
    ts.mode = lg.TestMode.PerformanceOnly
    ts.min_duration_ms = int(secs * 1000)
    if offline:  # expected QPS from a short serial timing, doubled as hal's is
        ts.scenario = lg.TestScenario.Offline
        ts.offline_expected_qps = 2.0 * loop_rate(call, samples, min(secs, 1.0)) if call else 1e5
    else:
        ts.scenario, ts.min_query_count = lg.TestScenario.SingleStream, 100
        ts.single_stream_expected_latency_ns = 20_000
    with tempfile.TemporaryDirectory() as d:
        _start(lg, Native, n, ts, Path(d))
        if offline:
            values, _, _ = parse_detail((Path(d) / "mlperf_log_detail.txt").read_text())
            return _number(values, "result_samples_per_second")
        text = (Path(d) / "mlperf_log_summary.txt").read_text()
    return parse_summary(text)["figures"]["90.00 percentile latency (ns)"] / 1e6


def rounds(n: int, a, b) -> tuple[list[float], list[float]]:
    """``n`` rounds of a then b, the order flipped every round."""
    xa, xb = [], []
    for i in range(n):
        if i % 2 == 0:
            xa.append(a())
            xb.append(b())
        else:
            xb.append(b())
            xa.append(a())
    return xa, xb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--secs", type=int, default=3, help="seconds per run (LoadGen min_duration, benchmark_app -t)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch and LiteRT threads (benchmark_app and OpenVINO choose their own)")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--backends", default="reference,openvino,edgetpu")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--model", choices=("convnet", "resnet18", "gru"), default="convnet",
                    help="convnet: the zoo's 3x32x32 CNN (host overhead shows); resnet18: 224x224; "
                         "gru: a small GRU one inference of which cannot use two cores (OpenVINO's "
                         "THROUGHPUT streams overlap two: the exe.map row)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name, module, shape = model_and_shape(args.model)
    rng = np.random.default_rng(0)
    samples = [(rng.standard_normal(shape).astype(np.float32),) for _ in range(args.samples)]
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(32)]
    x0 = samples[0][0]
    want = args.backends.split(",")
    rows: list[dict] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    print(f"model: {name} {shape}; threads {args.threads}; {args.secs} s a run; {args.rounds} rounds; "
          f"host: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")

    def add(what: str, unit: str, hal_v: list[float], native_v: list[float], native: str,
            reports: list) -> None:
        ratios = [h / n for h, n in zip(hal_v, native_v)]
        verdicts = sorted({r.result for r in reports}) or ["not LoadGen"]
        rows.append({"comparison": what, "unit": unit, "hal": statistics.median(hal_v),
                     "native": statistics.median(native_v), "native_tool": native,
                     "ratio": statistics.median(ratios), "ratios": ratios,
                     "loadgen": "/".join(verdicts),
                     "sut": "/".join(sorted({r.sut for r in reports})) or "—"})
        print(f"  {what}: hal {statistics.median(hal_v):.4g} {unit}, {native} "
              f"{statistics.median(native_v):.4g} {unit}, ratio {statistics.median(ratios):.3f} "
              f"(LoadGen {'/'.join(verdicts)})", flush=True)
        for r in reports:
            if r.result == "INVALID":
                print(f"    a LoadGen run was INVALID: {r.reason[:200]}")
        reports.clear()

    if "reference" in want:
        print("reference (torch eager) …", flush=True)
        # cache=False: a cache hit is a loaded artifact, which runs the exported program
        # (an artifact holds no Python code), measured on its own below
        exe = hal.compile(module, target="reference", example_input=samples[0], cache=False)

        def direct(x):
            with torch.inference_mode():
                return module(torch.from_numpy(x))

        reps: list = []
        off, ss = loadgen(exe, samples, args.secs, reps)
        h, n = rounds(args.rounds, off, lambda: loop_rate(lambda s: direct(s[0]), samples, args.secs))
        add("reference Offline ÷ torch loop", "samples/s", h, n,
            f"torch loop ({args.threads} threads)", reps)
        h, n = rounds(args.rounds, ss, lambda: p90_ms(lambda s: direct(s[0]), samples, 2000))
        add("reference SingleStream p90 ÷ module(x) p90", "ms", h, n, "module(x)", reps)
        # the same module(x) called by a plain SUT as LoadGen issues each sample, as hal's
        # inline SUT runs it: what LoadGen itself costs any SUT (its completions, its
        # logging thread, which takes a core from torch's two threads on a 2-core host)
        h, n = rounds(args.rounds, off, lambda: native_under_loadgen(
            args.secs, lambda s: direct(s[0]), samples, offline=True))
        add("reference Offline ÷ module(x) under LoadGen Offline", "samples/s", h, n,
            "module(x) as LoadGen issues it", reps)
        h, n = rounds(args.rounds, ss, lambda: native_under_loadgen(
            args.secs, lambda s: direct(s[0]), samples))
        add("reference SingleStream p90 ÷ module(x) under LoadGen p90", "ms",
            h, n, "module(x) as LoadGen issues it", reps)

        print("reference, loaded from a .hal (the exported program) …", flush=True)
        exe.save(tmp / "model.hal")
        loaded = hal.load(tmp / "model.hal")
        # the native way to run that program (the one read from the .hal): its .module(),
        # as torch.export.load(...).module() gives it, same threads
        program = loaded.runner.program.module()

        def direct_program(x):
            with torch.inference_mode():
                return program(torch.from_numpy(x))

        off, ss = loadgen(loaded, samples, args.secs, reps)
        h, n = rounds(args.rounds, off, lambda: loop_rate(lambda s: direct_program(s[0]), samples,
                                                          args.secs))
        add("reference (loaded .hal) Offline ÷ loop of torch.export.load(…).module()", "samples/s",
            h, n, "program.module() loop", reps)
        h, n = rounds(args.rounds, ss, lambda: p90_ms(lambda s: direct_program(s[0]), samples, 2000))
        add("reference (loaded .hal) SingleStream p90 ÷ program.module()(x) p90", "ms", h, n,
            "program.module()(x)", reps)
        h, n = rounds(args.rounds, off, lambda: loop_rate(lambda s: direct(s[0]), samples, args.secs))
        add("reference (loaded .hal) Offline ÷ torch eager loop (information)", "samples/s", h, n,
            "torch eager loop", reps)

    if "openvino" in want:
        print("openvino:CPU …", flush=True)
        from hal_backends.openvino import compat

        exe = hal.compile(module, target="openvino:CPU", example_input=samples[0], cache=False)
        xml = tmp / "model.xml"
        compat.api().save_model(exe.runner.ov_model, xml)  # the very IR hal compiled
        data_shape = None
        if any(p.partial_shape.is_dynamic for p in exe.runner.ov_model.inputs):
            data_shape = ",".join(f"{p.any_name}[{','.join(map(str, a.shape))}]"
                                  for p, a in zip(exe.runner.ov_model.inputs, samples[0]))
            print(f"  the IR has a free dimension: benchmark_app -data_shape {data_shape}")
        reps = []
        off, ss = loadgen(exe, samples, args.secs, reps)
        h, n = rounds(args.rounds, off, lambda: benchmark_app(xml, args.secs, data_shape))
        add("openvino:CPU Offline ÷ benchmark_app -hint throughput", "samples/s", h, n,
            "benchmark_app", reps)
        compiled = exe.runner.compiled
        h, n = rounds(args.rounds, ss, lambda: p90_ms(lambda s: compiled(s[0]), samples, 2000))
        add("openvino:CPU SingleStream p90 ÷ compiled_model(x) p90", "ms", h, n,
            "compiled_model(x)", reps)
        h, n = rounds(args.rounds, ss, lambda: native_under_loadgen(
            args.secs, lambda s: compiled(s[0]), samples))
        add("openvino:CPU SingleStream p90 ÷ compiled_model(x) under LoadGen p90", "ms", h, n,
            "compiled_model(x) as LoadGen issues it", reps)
        # the async API itself: exe.map (the runner's stream, its queue kept full) against
        # exe(x) in a loop, same executable; OpenVINO overlaps requests on the streams of its
        # THROUGHPUT compile, exe(x) runs on the LATENCY one
        piped = lambda: pipelined_rate(exe, samples, args.secs)  # noqa: E731
        h, n = rounds(args.rounds, piped, lambda: loop_rate(lambda s: exe(*s), samples, args.secs))
        add("openvino:CPU exe.map (pipelined) ÷ exe(x) loop", "samples/s", h, n,
            "exe(x) loop", [])

    if "edgetpu" in want:
        print("edgetpu:emulated (LiteRT CPU) …", flush=True)
        from ai_edge_litert.interpreter import Interpreter

        kw = dict(target="edgetpu:emulated", precision="int8", calibration=calib,
                  example_input=samples[0], options={"num_threads": args.threads})
        host_ops = False
        try:
            exe = hal.compile(module, **kw)
        except hal.HalError as e:
            exe = None
            if isinstance(e, hal.UnsupportedError) and "allow_host_ops" in str(e):
                # e.g. ResNet-18's stem MaxPool pads with PADV2, which is no Edge TPU op: on a
                # device every op from there on would run on the host, so placement refuses it
                # unless asked; the emulation runs every op on the host either way
                exe = hal.compile(module, **kw, allow_host_ops=True)
                host_ops = True
                why = next((n for n in exe.info.notes if n.startswith("mapping")), str(e)[:200])
                print(f"  compiled with allow_host_ops=True: a device would run part of the model "
                      f"on the host ({why})")
            else:
                print(f"  edgetpu skipped, the compile refused the model: {str(e)[:300]}")
    if "edgetpu" in want and exe is not None:
        tag = "edgetpu:emulated" + (" [allow_host_ops]" if host_ops else "")
        files = exe.runner.files
        path = tmp / "model.tflite"
        path.write_bytes(files.compiled or files.int8)  # the very .tflite hal runs
        it = Interpreter(model_path=str(path), num_threads=args.threads)
        it.allocate_tensors()
        din, dout = it.get_input_details()[0], it.get_output_details()[0]
        (si, zi), (so, zo) = din["quantization"], dout["quantization"]

        def direct(x):  # float in, float out, as hal's executable takes and gives
            it.set_tensor(din["index"], np.clip(np.rint(x / si) + zi, -128, 127).astype(np.int8))
            it.invoke()
            return (it.get_tensor(dout["index"]).astype(np.float32) - zo) * so

        per_call = 1.0 / loop_rate(lambda s: direct(s[0]), samples, 0.3)
        reps = []
        off, ss = loadgen(exe, samples, args.secs, reps)
        h, n = rounds(args.rounds, off, lambda: litert_benchmark(path, args.threads, args.secs, per_call))
        add(f"{tag} Offline ÷ litert-benchmark", "samples/s", h, n,
            f"litert-benchmark ({args.threads} threads)", reps)
        h, n = rounds(args.rounds, ss, lambda: p90_ms(lambda s: direct(s[0]), samples, 2000))
        add(f"{tag} SingleStream p90 ÷ Interpreter p90", "ms", h, n,
            "Interpreter set/invoke/get", reps)
        h, n = rounds(args.rounds, ss, lambda: native_under_loadgen(
            args.secs, lambda s: direct(s[0]), samples))
        add(f"{tag} SingleStream p90 ÷ Interpreter under LoadGen p90", "ms", h, n,
            "Interpreter set/invoke/get as LoadGen issues it", reps)
        # litert-benchmark feeds the int8 tensors directly: so does hal with raw_io (the same
        # .tflite, no float quantize/dequantize around each call)
        q = [(np.clip(np.rint(s[0] / si) + zi, -128, 127).astype(np.int8),) for s in samples]
        raw = hal.compile(path.read_bytes(), target="edgetpu:emulated", precision="int8",
                          calibration=q[:8], options={"num_threads": args.threads, "raw_io": True},
                          allow_host_ops=host_ops,
                          cache=False)  # (an int8 .tflite's calibration is unused, but typed)
        off, _ = loadgen(raw, q, args.secs, reps)
        h, n = rounds(args.rounds, off, lambda: litert_benchmark(path, args.threads, args.secs, per_call))
        add(f"{tag} (raw int8 I/O) Offline ÷ litert-benchmark", "samples/s", h, n,
            f"litert-benchmark ({args.threads} threads)", reps)

    shutil.rmtree(tmp, ignore_errors=True)
    floor = statistics.median(native_under_loadgen(args.secs) for _ in range(args.rounds))
    print(f"\nLoadGen's own Single-Stream p90 with a SUT that does nothing: {floor * 1e3:.1f} us "
          "(in every SingleStream row's hal figure; the native calls are timed without it)")
    print()
    print(f"| comparison | hal | native | ratio (median of {args.rounds}) | range | LoadGen | SUT |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['comparison']} | {r['hal']:.4g} {r['unit']} | {r['native']:.4g} {r['unit']} "
              f"| {r['ratio']:.3f} | {min(r['ratios']):.3f}–{max(r['ratios']):.3f} | {r['loadgen']} "
              f"| {r['sut']} |")
    print("\nthroughput rows: > 1 means hal is faster; latency rows: < 1 means hal is faster. "
          "SUT: how hal's LoadGen SUT ran each sample (LoadGenReport.sut): 'inline' in LoadGen's "
          "issue thread, 'pipeline' through the executable's async pipeline (its stream for an "
          f"Offline query). Host load average at the end: {os.getloadavg()[0]:.1f}.")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
