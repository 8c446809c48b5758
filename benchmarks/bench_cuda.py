"""CUDA backend overhead, small CNN, same process, same run.

1. hal ``exe(x)`` vs a direct torch call that does the same work (numpy in,
   copy to the GPU, forward, copy back; the model cast to the same precision):
   ratio of medians, rounds alternated.
2. ``exe.profile`` (CUDA-event device timer) vs a raw CUDA-event loop around
   ``model(x_gpu)``: ratio of p50s; throughput (batch / p50), peak memory and
   NVML energy per inference.
3. The GEMM peak probe (10000×10000, fp32 IEEE and fp16), unless ``--no-gemm``.

Skips with a message (exit 0) where there is no CUDA GPU. ``benchmarks/gpu_check.sh``
runs it at batch 1 and 64, fp32/fp16/bf16, with CUDA graphs and with torch.compile.

    python benchmarks/bench_cuda.py [--rounds 30] [--iters 200] [--batch 1]
        [--precision fp32|fp16|bf16] [--cuda-graphs] [--torch-compile [MODE]] [--no-gemm]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch
from torch import nn

import hal

import hal.plugin
from bench_reference import per_call, small_cnn  # same CNN and timer as the CPU benchmark


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def raw_event_p50(model: nn.Module, xg: torch.Tensor, iters: int) -> float:
    """p50 ms of model(xg) between two CUDA events, IEEE fp32 (as hal's fp32)."""
    from hal_backends.cuda.runtime import fp32_mode

    times = []
    with fp32_mode(False), torch.inference_mode():
        for _ in range(10):
            model(xg)
        torch.cuda.synchronize()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(iters)]
        for s, e in ev:
            s.record()
            model(xg)
            e.record()
        torch.cuda.synchronize()
        times = [s.elapsed_time(e) for s, e in ev]
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--cuda-graphs", action="store_true", help="compile hal's side with CUDA graphs")
    ap.add_argument("--torch-compile", nargs="?", const="default", default=None, metavar="MODE",
                    help="compile hal's side with torch.compile (mode: default, max-autotune-no-cudagraphs, ...)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--no-gemm", action="store_true", help="skip the GEMM probe")
    ap.add_argument("--sweep", action="store_true",
                    help="run every configuration of SWEEP in this process (gpu_check.sh); one that "
                         "fails is reported and the next runs")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        why = next((d.reason for d in hal.devices() if d.target == "cuda:0"), "no cuda backend")
        print(f"bench_cuda: skipped, CUDA not available ({why})")
        return 0
    if not a.sweep:
        return run(a)
    failed = 0
    for i, extra in enumerate(SWEEP):
        cfg = ap.parse_args(["--rounds", str(a.rounds), "--iters", str(a.iters), *extra,
                             *([] if i == 0 else ["--no-gemm"])])
        print(f"\n=== bench_cuda {' '.join(extra) or '(batch 1, fp32, eager)'}", flush=True)
        try:
            run(cfg)
        except Exception as e:  # noqa: BLE001 - one configuration's failure is a result too
            failed += 1
            print(f"FAILED: {type(e).__name__}: {e}", flush=True)
    return 1 if failed else 0


#: the configurations of ``--sweep``: hal/direct at batch 1 and 64, CUDA graphs and
#: torch.compile against eager, fp16 and bf16 against fp32 throughput
SWEEP = [
    [],
    ["--cuda-graphs"],
    ["--torch-compile"],
    ["--batch", "64"],
    ["--batch", "64", "--precision", "fp16"],
    ["--batch", "64", "--precision", "bf16"],
    ["--batch", "64", "--cuda-graphs"],
    ["--batch", "64", "--torch-compile"],
]


def run(a: argparse.Namespace) -> int:
    model = small_cnn()
    dtype = DTYPES[a.precision]
    x = np.random.default_rng(0).standard_normal((a.batch, 3, 32, 32)).astype(np.float32)
    options = {"cuda_graphs": a.cuda_graphs}
    if a.torch_compile:
        options["torch_compile"] = a.torch_compile
    exe = hal.compile(model, target="cuda:0", precision=a.precision, example_input=(x,), cache=False,
                      options=options)
    gpu_model = small_cnn().cuda().to(dtype)
    xg = torch.from_numpy(x).cuda().to(dtype)

    from hal_backends.cuda.runtime import fp32_mode

    def direct():  # the same work as hal's: cast on the GPU, outputs widened to float32
        with fp32_mode(False), torch.inference_mode():
            return gpu_model(torch.from_numpy(x).cuda().to(dtype)).float().cpu().numpy()

    def via_hal():
        return exe(x)

    err = float(np.max(np.abs(direct() - via_hal())))
    if a.precision == "fp32":
        assert np.allclose(direct(), via_hal(), rtol=1e-5, atol=1e-6), err
    for fn in (direct, via_hal):
        per_call(fn, 50)
    d, h = [], []
    for _ in range(a.rounds):
        d.append(per_call(direct, a.iters))
        h.append(per_call(via_hal, a.iters))
    md, mh = statistics.median(d), statistics.median(h)
    name = torch.cuda.get_device_name(0)
    print(f"device            : {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print(f"config            : batch {a.batch}, {a.precision}, cuda_graphs={a.cuda_graphs}, "
          f"torch_compile={a.torch_compile}; max|hal - direct| {err:.3g}")
    print(f"direct torch call : {md * 1e6:9.1f} us/call of batch {a.batch} (median of {a.rounds} rounds × {a.iters})")
    print(f"hal exe(x)        : {mh * 1e6:9.1f} us/call"
          + (" (CUDA graphs)" if a.cuda_graphs else ""))
    print(f"ratio hal/direct  : {mh / md:.3f}")

    raw = raw_event_p50(gpu_model, xg, a.iters)
    prof = exe.profile(x, iterations=a.iters, warmup=10)
    print(f"raw CUDA events   : {raw:9.4f} ms p50")
    print(f"hal profile       : {prof.latency_ms['p50']:9.4f} ms p50 (timer: {prof.timer})")
    print(f"ratio hal/raw     : {prof.latency_ms['p50'] / raw:.3f}")
    print(f"throughput        : {a.batch / (prof.latency_ms['p50'] / 1e3):,.0f} inferences/s "
          f"(batch {a.batch} / hal p50)")
    print(f"peak memory       : {prof.peak_memory_bytes / 2**20:.1f} MiB")
    energy = prof.energy_j_per_inference
    print("energy            : " + (f"{energy * 1e3:.3f} mJ/inference" if energy is not None else
                                    f"unavailable ({prof.unavailable.get('energy_j_per_inference')})"))

    if a.no_gemm:
        return 0
    b = hal.plugin.registry().backends["cuda"]
    for dt in ("fp32", "fp16"):
        print(f"GEMM probe {dt:4s}   : {b.probe_gemm('cuda:0', dtype=dt):9.1f} TFLOP/s (10000×10000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
