"""One executable, many threads: every available device of every installed backend
(emulated ones included) must return exactly what a single-threaded call returns.

8 threads × 100 calls, every call with its own input pair, started together on a
barrier. The reference is each input's single-threaded result. A backend whose
results are bitwise equal run to run (every one here) must match bitwise; one that
is not would be held to its own single-threaded run-to-run spread, and the
failure message says so.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import hal
import two_input as ti

THREADS, CALLS = 8, 100


@pytest.mark.parametrize("target", ti.device_params())
def test_one_executable_many_threads(target):
    hammer(ti.compiled(target), ti.sample, target)


def test_openvino_small_inputs_many_threads(mlp):
    """Inputs of 256 KiB or less are copied into each infer request's own buffers:
    the other input path of the OpenVINO request pool."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed")
    if not any(d.target == "openvino:CPU" for d in ti.available()):
        pytest.skip("openvino:CPU is not available")
    xs = np.random.default_rng(3).standard_normal((THREADS * CALLS, 1, 64)).astype(np.float32)
    exe = hal.compile(mlp, "openvino:CPU", example_input=(xs[0],), cache=False)
    hammer(exe, lambda i: (xs[i],), "openvino:CPU (small inputs)")


def hammer(exe, sample, target: str) -> None:
    """THREADS threads × CALLS calls of ``exe(*sample(i))``, each i once, against
    the single-threaded results."""
    n = THREADS * CALLS
    ref = [exe(*sample(i)) for i in range(n)]
    again = [exe(*sample(i)) for i in range(0, n, 8)]  # run-to-run, single-threaded
    spread = max(float(np.abs(a - ref[8 * k]).max()) for k, a in enumerate(again))
    distinct = len({r.tobytes() for r in ref})
    assert distinct > n * 0.9, f"only {distinct} distinct outputs: cross-talk would go unseen"

    got: list = [None] * n
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        start.wait()
        for i in range(t * CALLS, (t + 1) * CALLS):
            try:
                got[i] = exe(*sample(i))
            except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                errors.append(f"call {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    assert not errors, f"{len(errors)} of {n} concurrent calls on {target} raised; first: {errors[0]}"
    bad = [(i, float(np.abs(g - r).max())) for i, (g, r) in enumerate(zip(got, ref))
           if g.shape != r.shape or not (np.array_equal(g, r) if spread == 0 else
                                         np.abs(g - r).max() <= spread)]
    how = "bitwise" if spread == 0 else (
        f"within {spread:g}, the spread of its own single-threaded runs ({target} is not "
        "bitwise deterministic run to run)")
    assert not bad, (f"{len(bad)} of {n} concurrent results on {target} differ from the "
                     f"single-threaded ones ({how}); first (call, max error): {bad[:3]}")
    print(f"{target}: {n} concurrent calls, 0 exceptions, all equal {how}")
