"""OpenVINO backend overhead, measured side by side in one run.

1. Throughput: ``hal profile <exe.hal> --mode throughput`` (hal's
   AsyncInferQueue loop) ÷ OpenVINO's own ``benchmark_app`` on the very IR hal
   compiled, same device, same precision hint, ``-hint throughput``. Both run
   as fresh subprocesses (start-up is outside either's timed window); rounds
   alternate and the median of the per-round ratios is reported (adjacent
   rounds share the machine's load). Target ≥ 0.97.
2. Latency at batch 1: hal ``exe.run([x])`` ÷ a direct ``compiled_model(x)``
   call on the same compiled model; blocks alternate, median per-block ratio.
   Target ≤ 1.03.

Models: the conformance zoo CNNs when ``hal_conformance`` is importable, else
two small CNNs defined here.

    python benchmarks/bench_openvino.py [--modes fp32,int8] [--duration 2] [--rounds 7]
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
from torch import nn

import hal
from hal_backends.openvino import compat


def zoo() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    try:
        from hal_conformance.models import MODELS
        from hal_conformance.zoo import build

        return {n: (build(n), (1, *s.input_shape)) for n, s in MODELS.items()
                if len(s.input_shape) == 3}  # the CNNs
    except Exception as e:  # noqa: BLE001 - the zoo is optional here
        print(f"(conformance zoo unavailable: {e}; using local CNNs)")
    torch.manual_seed(0)
    small = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(4096, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    dw = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU6(), nn.Conv2d(16, 16, 3, 1, 1, groups=16),
                       nn.Conv2d(16, 32, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(32, 10)).eval()
    return {"small_cnn": (small, (1, 3, 32, 32)), "dw_cnn": (dw, (1, 3, 64, 64))}


def benchmark_app(xml: Path, precision_hint: str, duration: int) -> float:
    exe = shutil.which("benchmark_app")
    if exe is None:
        raise SystemExit("benchmark_app not found (it ships with the openvino wheel)")
    out = subprocess.run([exe, "-m", str(xml), "-d", "CPU", "-hint", "throughput", "-t", str(duration),
                          "-infer_precision", precision_hint], capture_output=True, text=True)
    m = re.search(r"Throughput:\s*([\d.]+)\s*FPS", out.stdout)
    if not m:
        raise RuntimeError(f"benchmark_app failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(m.group(1))


def hal_profile(artifact: Path, duration: int) -> float:
    """``hal profile`` (the CLI) in throughput mode on the saved executable."""
    out = subprocess.run([sys.executable, "-m", "hal.cli", "profile", str(artifact), "-t", "openvino:CPU",
                          "--mode", "throughput", "--duration", str(duration), "--json"],
                         capture_output=True, text=True, env={**os.environ, "HAL_NO_CACHE": "1"})
    try:
        return float(json.loads(out.stdout)["throughput_per_s"])
    except (ValueError, KeyError):
        raise RuntimeError(f"hal profile failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}") from None


def latency(exe, x: np.ndarray, blocks: int, iters: int) -> tuple[float, float, list[float]]:
    """Median per-call µs of hal ``run`` and of ``compiled_model(x)``, in
    alternating blocks, and the per-block ratios (adjacent blocks share the
    machine's load, so their ratio is the robust statistic here)."""
    compiled = exe.runner.compiled
    paths = (lambda: exe.run([x]), lambda: compiled(x))
    for f in paths:  # warm both
        for _ in range(50):
            f()
    run, direct, ratios = [], [], []
    clock = time.perf_counter
    for _ in range(blocks):
        med = []
        for sink, f in zip((run, direct), paths):
            ts = []
            for _ in range(iters):
                t0 = clock()
                f()
                ts.append(clock() - t0)
            sink += ts
            med.append(statistics.median(ts))
        ratios.append(med[0] / med[1])
    return statistics.median(run) * 1e6, statistics.median(direct) * 1e6, ratios


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="fp32,int8")
    ap.add_argument("--duration", type=int, default=2, help="seconds per throughput round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    models = zoo()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-ov-"))
    rng = np.random.default_rng(0)
    for mode in args.modes.split(","):
        for name, (model, shape) in models.items():
            x = rng.standard_normal(shape).astype(np.float32)
            calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(32)] if mode == "int8" else None
            exe = hal.compile(model, target="openvino:CPU", precision=mode, example_input=(x,),
                              calibration=calib, cache=False)
            xml = tmp / f"{name}-{mode}.xml"
            compat.api().save_model(exe.runner.ov_model, xml)  # the very IR hal compiled
            artifact = exe.save(tmp / f"{name}-{mode}.hal")
            hint = exe.runner.config.get("INFERENCE_PRECISION_HINT", "f32")
            hal_t, app_t = [], []
            for _ in range(args.rounds):
                hal_t.append(hal_profile(artifact, args.duration))
                app_t.append(benchmark_app(xml, hint, args.duration))
            t_ratios = [h / a for h, a in zip(hal_t, app_t)]
            run_us, direct_us, l_ratios = latency(exe, x, args.blocks, args.iters)
            row = {"model": name, "mode": mode, "hal_fps": statistics.median(hal_t),
                   "benchmark_app_fps": statistics.median(app_t), "run_us": run_us,
                   "direct_us": direct_us, "tput_ratio": statistics.median(t_ratios),
                   "tput_ratios": t_ratios, "run_ratio": statistics.median(l_ratios),
                   "run_ratios": l_ratios}
            print(f"{name:12s} {mode:5s} throughput hal {row['hal_fps']:8.0f}/s  benchmark_app "
                  f"{row['benchmark_app_fps']:8.0f}/s  ratio {row['tput_ratio']:.3f} "
                  f"[{min(t_ratios):.2f}-{max(t_ratios):.2f}]  |  run {run_us:6.1f} us  direct "
                  f"{direct_us:6.1f} us  ratio {row['run_ratio']:.3f} "
                  f"[{min(l_ratios):.2f}-{max(l_ratios):.2f}]", flush=True)
            rows.append(row)
    shutil.rmtree(tmp, ignore_errors=True)
    tput_ok = all(r["tput_ratio"] >= 0.97 for r in rows)
    run_ok = all(r["run_ratio"] <= 1.03 for r in rows)
    print(f"throughput within 3% of benchmark_app: {'yes' if tput_ok else 'NO'}; "
          f"run ≤ 1.03× direct: {'yes' if run_ok else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if tput_ok and run_ok else 1


if __name__ == "__main__":
    sys.exit(main())
