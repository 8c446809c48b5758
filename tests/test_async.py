"""Executable.submit / map: futures give what ``exe(x)`` gives, from many threads, on
every available device; the caller may reuse its buffers once submit returns; a
bad input raises at submit; a failing inference raises its hal error from the
future. Nothing here times anything.

OpenVINO pipelines natively (an AsyncInferQueue on the THROUGHPUT compile of the
same model at the same precision), so its futures are compared with ``exe(x)``
to float32 rounding (another stream count may order a reduction differently);
every other backend runs the very same ``infer`` and must match bitwise.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import hal
import two_input as ti

THREADS, PER_THREAD = 8, 12


def _same(got, want, native: bool) -> bool:
    if native:
        scale = max(1.0, float(np.abs(want).max()))
        return got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-5 * scale
    return np.array_equal(got, want)


@pytest.mark.parametrize("target", ti.device_params())
def test_futures_from_many_threads_equal_exe(target):
    exe = ti.compiled(target)
    n = THREADS * PER_THREAD
    want = [exe(*ti.sample(i)) for i in range(n)]
    got: list = [None] * n
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def work(t: int) -> None:
        start.wait()
        futs = [(i, exe.submit(*ti.sample(i))) for i in range(t * PER_THREAD, (t + 1) * PER_THREAD)]
        for i, f in futs:
            try:
                got[i] = f.result(timeout=300)
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors.append(f"call {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    assert not any(th.is_alive() for th in threads), "a submitting thread never finished"
    assert not errors, f"{len(errors)} of {n} futures on {target} raised; first: {errors[0]}"
    native = exe._pipeline()._native
    bad = [i for i in range(n) if not _same(got[i], want[i], native)]
    assert not bad, f"{len(bad)} of {n} futures on {target} differ from exe(x); first {bad[:3]}"
    # map: in order, with a bound of one and of the default depth
    xs = [ti.sample(i) for i in range(10)]
    for bound in (1, None):
        assert all(_same(g, w, native) for g, w in zip(exe.map(xs, max_in_flight=bound), want[:10]))


@pytest.mark.parametrize("target", ["reference:cpu", "openvino:CPU"])  # the pool; a native queue
def test_the_caller_may_reuse_its_buffer_once_submit_returns(target):
    if target not in {d.target for d in ti.available()}:
        pytest.skip(f"{target} is not available")
    exe = ti.compiled(target)
    a, b = (np.array(v) for v in ti.sample(0))
    want = exe(a, b)
    futs = []
    for _ in range(2 * exe._pipeline().depth):  # more than fit in flight: some wait in the queue
        futs.append(exe.submit(a, b))
        a += 1.0  # the caller's next input, written into the same memory
        b *= 0.5
    assert _same(futs[0].result(timeout=300), want, exe._pipeline()._native)
    outs = [f.result(timeout=300) for f in futs]
    assert len({o.tobytes() for o in outs}) == len(outs), "two submits saw the same input"


def test_bad_input_raises_at_submit_and_names_and_structure_hold(tmp_path):
    torch = pytest.importorskip("torch", reason="the test model is a torch module")

    class Heads(torch.nn.Module):
        def forward(self, x, scale):
            return {"boxes": x * scale, "scores": (x.sum(1), x.mean(1))}

    x = np.ones((2, 4), np.float32)
    s = np.full((2, 4), 2.0, np.float32)
    exe = hal.compile(Heads(), "cpu", example_input=(x, s), cache=False)
    with pytest.raises(hal.InvalidInputError, match="dtype"):
        exe.submit(x.astype(np.float64), s)
    with pytest.raises(hal.InvalidInputError, match="names"):
        exe.submit(x, nope=s)
    got = exe.submit(x, scale=s).result(timeout=60)
    want = exe(x, s)
    assert set(got) == {"boxes", "scores"} and isinstance(got["scores"], tuple)
    assert np.array_equal(got["boxes"], want["boxes"]) and np.array_equal(got["scores"][1], want["scores"][1])
    with pytest.raises(hal.UsageError, match="max_in_flight"):
        list(exe.map([(x, s)], max_in_flight=0))
    assert [r["boxes"][0, 0] for r in exe.map([{"x": x, "scale": s * k} for k in (1, 2, 3)])] == [2, 4, 6]


def test_a_failing_inference_raises_its_hal_error_from_the_future(tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed")
    from craft import constant_of_shape_onnx

    exe = hal.compile(constant_of_shape_onnx(tmp_path / "cos.onnx"), target="cpu", cache=False)
    bad = exe.submit(np.array([10 ** 6, 10 ** 6], np.int64))  # a terabyte of zeros
    good = exe.submit(np.array([2, 3], np.int64))
    with pytest.raises(hal.ResourceError, match="ran out of memory"):
        bad.result(timeout=120)
    assert good.result(timeout=120).shape == (2, 3)  # the queue goes on after a failure


def test_throughput_mode_on_a_backend_without_its_own_runs_the_pipeline():
    """reference has no offline mode of its own: profile(mode="throughput") drives
    Executable.submit instead, and says so (counts only; nothing is timed against a bound)."""
    torch = pytest.importorskip("torch", reason="the test model is a torch module")
    m = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU()).eval()
    x = np.ones((2, 16), np.float32)
    exe = hal.compile(m, "cpu", example_input=(x,), cache=False)
    p = exe.profile(x, mode="throughput", iterations=40, warmup=2)
    assert p.iterations == 40 and p.batch_size == 2 and p.throughput_per_s > 0
    assert "Executable.submit" in " ".join(p.notes)


@pytest.mark.parametrize("target", ["reference:cpu", "openvino:CPU"])  # the pool; a native stream
def test_map_copies_each_item_before_it_draws_the_next(target):
    """map draws items lazily: one generator handing out the same two arrays, rewritten
    for every item, must still give each item's own result (the runner's stream and the
    pool each copy an item before the next is drawn), also past the queue's size."""
    if target not in {d.target for d in ti.available()}:
        pytest.skip(f"{target} is not available")
    exe = ti.compiled(target)
    native = exe._pipeline()._native
    n = 3 * exe._pipeline().depth + 1
    want = [exe(*ti.sample(i)) for i in range(n)]
    a, b = (np.array(v) for v in ti.sample(0))

    def reused():
        for i in range(n):
            a[...], b[...] = ti.sample(i)
            yield a, b

    for bound in (None, 2):
        got = list(exe.map(reused(), max_in_flight=bound))
        assert len(got) == n
        bad = [i for i in range(n) if not _same(got[i], want[i], native)]
        assert not bad, f"map on {target} (max_in_flight={bound}) gave other items' results: {bad[:5]}"


@pytest.mark.parametrize("target", ["reference:cpu", "openvino:CPU"])
def test_map_stopped_early_or_failing_leaves_the_executable_working(target):
    """A consumer that stops after two results, and an item with the wrong shape (its
    InvalidInputError raised from the iteration, after the results before it), leave
    nothing running and the executable's map, submit and exe(x) as before."""
    if target not in {d.target for d in ti.available()}:
        pytest.skip(f"{target} is not available")
    exe = ti.compiled(target)
    native = exe._pipeline()._native
    xs = [ti.sample(i) for i in range(12)]
    want = [exe(*x) for x in xs]
    it = exe.map(xs)
    assert _same(next(it), want[0], native) and _same(next(it), want[1], native)
    it.close()
    bad = list(xs)
    bad[5] = (xs[5][0][..., :-1], xs[5][1])
    got = []
    with pytest.raises(hal.InvalidInputError, match="shape"):
        for y in exe.map(bad):
            got.append(y)
    assert len(got) <= 5 and all(_same(g, w, native) for g, w in zip(got, want))
    assert all(_same(g, w, native) for g, w in zip(exe.map(xs), want))
    assert _same(exe.submit(*xs[3]).result(timeout=300), want[3], native)
