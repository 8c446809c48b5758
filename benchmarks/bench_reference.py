"""hal's per-call overhead: reference ``exe(x)`` vs a direct torch call, batch 1,
small CNN, same process, same run.

Prints each way of calling as a ratio of medians to the direct call (target for
the default ``exe(x)``: <= 1.03) and the median overhead in microseconds. Every
iteration calls all of them once, in an order that rotates from one iteration to
the next, so drift on a shared machine and any first/second-call bias hit all
alike.

    python benchmarks/bench_reference.py [--rounds 30] [--iters 200] [--threads N]

On a loaded machine every extra microsecond between two torch calls can cost
far more (torch's worker threads go to sleep and must be woken); ``--threads 1``
shows hal's own overhead without that effect.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

import hal


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10),
    ).eval()


def per_call(fn, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters


def interleaved(fns: dict[str, Callable[[], object]], n: int) -> dict[str, list[float]]:
    """Per-call seconds of every function over ``n`` iterations; iteration i
    calls them in the order rotated by i."""
    clock = time.perf_counter
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for i in range(n):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            f = fns[name]
            t0 = clock()
            f()
            times[name].append(clock() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = small_cnn()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    checked = hal.compile(model, target="cpu", precision="fp32", example_input=(x,), cache=False)
    unchecked = hal.compile(model, target="cpu", precision="fp32", example_input=(x,), cache=False,
                            check_finite=False)

    # every path runs one module object: two copies of the same weights alone time
    # a few per cent apart here (where their memory lands), which would swamp hal's part
    module = unchecked.runner.module = checked.runner.module

    def direct():  # numpy in, numpy out: the same contract as exe(x)
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    fns = {
        "direct": direct,
        "exe(x), default NaN/Inf check": lambda: checked(x),
        "exe(x), check_finite=False (like for like)": lambda: unchecked(x),
        "exe.runner.infer([x]) (backend path only)": lambda: unchecked.runner.infer([x]),
    }
    for f in fns.values():
        assert np.allclose(direct(), f(), rtol=1e-5, atol=1e-6)
        per_call(f, 50)
    n = a.rounds * a.iters
    times = interleaved(fns, n)
    md = statistics.median(times.pop("direct"))
    print(f"small CNN, batch 1, {torch.get_num_threads()} threads, {n} interleaved calls each; "
          f"direct torch median {md * 1e6:.1f} us")
    for label, t in times.items():
        mh = statistics.median(t)
        print(f"  {label:45s} {mh * 1e6:8.1f} us: ratio {mh / md:.3f} "
              f"(overhead {(mh - md) * 1e6:+.1f} us)")
    print("target: ratio <= 1.03")


if __name__ == "__main__":
    main()
