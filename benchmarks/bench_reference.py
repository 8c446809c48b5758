"""hal run() vs a direct torch call, batch 1, small CNN, same process, same run.

Prints the ratio of medians (target ≤ 1.03). Rounds alternate between the two
so that drift on a shared machine hits both alike.

    python benchmarks/bench_reference.py [--rounds 30] [--iters 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def alternating_medians(a, b, n: int) -> tuple[float, float]:
    """Time single calls of ``a`` and ``b`` in strict alternation and return each
    one's median: a spike on the shared machine lands on one call, not a whole side."""
    clock = time.perf_counter
    ta, tb = [], []
    for _ in range(n):
        t0 = clock(); a(); t1 = clock(); b(); t2 = clock()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iters", type=int, default=200)
    a = ap.parse_args()
    model = small_cnn()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    checked = hal.compile(model, target="cpu", precision="fp32", example_inputs=(x,), cache=False)
    unchecked = hal.compile(model, target="cpu", precision="fp32", example_inputs=(x,), cache=False,
                            check_finite=False)

    def direct():  # numpy in, numpy out: the same contract as exe(x)
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    n = a.rounds * a.iters
    print(f"small CNN, batch 1, {torch.get_num_threads()} threads, medians of {n} alternating calls")
    for label, exe in (("exe(x), check_finite=False (like for like)", unchecked),
                       ("exe(x), default NaN/Inf check", checked),
                       ("exe.infer([x]) (backend path only)", None)):
        fn = (lambda e=exe: e(x)) if exe is not None else (lambda: unchecked.infer([x]))
        assert np.allclose(direct(), fn(), rtol=1e-5, atol=1e-6)
        per_call(fn, 50)
        md, mh = alternating_medians(direct, fn, n)
        print(f"  {label:45s} {mh * 1e6:8.1f} us vs direct {md * 1e6:8.1f} us: ratio {mh / md:.3f}")
    print("target: ratio <= 1.03")


if __name__ == "__main__":
    main()
