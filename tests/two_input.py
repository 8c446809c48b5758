"""A small two-input torch model compiled once per available device, shared by
test_concurrency.py and test_inputs.py (one compile per device per session).

Both inputs are images of the same size, over 256 KiB: OpenVINO shares inputs
that large zero-copy, and a temporary copy of one input freed mid-call is then
overwritten by the next input's copy of the same size, so a lifetime bug shows
as a wrong answer rather than by luck. (Smaller inputs are copied into each
infer request's own buffers: test_concurrency covers that path separately.)
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import hal

A_SHAPE = B_SHAPE = (1, 3, 160, 160)  # 300 KiB of float32 each


@functools.cache
def model():
    torch = pytest.importorskip("torch", reason="the test model is a torch module")

    class TwoInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
            self.conv_b = torch.nn.Conv2d(3, 8, 3, stride=4, padding=1)
            self.fc = torch.nn.Linear(2 * 8 * 4 * 4, 10)

        def forward(self, a, b):
            pool = torch.nn.functional.adaptive_avg_pool2d
            ya = pool(torch.relu(self.conv_a(a)), 4)
            yb = pool(torch.relu(self.conv_b(b)), 4)
            return self.fc(torch.flatten(torch.cat([ya, yb], 1), 1))

    torch.manual_seed(0)
    return TwoInput().eval()


@functools.cache
def _base() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.standard_normal(A_SHAPE, np.float32), rng.standard_normal(B_SHAPE, np.float32),
            rng.uniform(-0.4, 0.4, (4096, 2)).astype(np.float32))


def sample(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Input pair ``i``: distinct for every i (a shifted, b scaled by amounts
    drawn per i), cheap to make on the fly, inside the calibration range."""
    a, b, k = _base()
    shift, scale = k[i % len(k)]
    return a + shift, b * (1 + scale)


def available() -> list[hal.Device]:
    return [d for d in hal.devices() if d.available]


def device_params() -> list:
    """One pytest param per available device (emulated ones included), or one
    skipped param saying none is."""
    devs = available()
    if not devs:
        return [pytest.param(None, marks=pytest.mark.skip(reason="no hal device is available"))]
    return [pytest.param(d.target, id=d.target) for d in devs]


@functools.cache
def _compile(target: str):
    dev = next(d for d in available() if d.target == target)
    kw: dict = {"cache": False, "example_input": sample(0)}
    if "fp32" not in dev.precisions and "int8" in dev.precisions:
        kw.update(precision="int8", calibration=[sample(1000 + i) for i in range(16)])
    try:
        return hal.compile(model(), target=target, **kw), None
    except hal.UnsupportedError as e:  # a backend that says it cannot take this model
        return None, f"{target} cannot compile the two-input torch model: {str(e).splitlines()[0]}"


def compiled(target: str):
    """The executable for ``target`` (compiled once), or a skip with the reason."""
    exe, why = _compile(target)
    if exe is None:
        pytest.skip(why)
    return exe
