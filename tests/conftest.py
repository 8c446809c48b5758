"""Shared fixtures: an isolated compile cache and tiny real models."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# every test run gets its own compile cache (never the user's)
os.environ.setdefault("HAL_CACHE_DIR", tempfile.mkdtemp(prefix="hal-test-cache-"))


@pytest.fixture(scope="session")
def small_cnn():
    torch = pytest.importorskip("torch", reason="torch (the reference backend's runtime) is not installed")
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    ).eval()


@pytest.fixture(scope="session")
def mlp():
    torch = pytest.importorskip("torch", reason="torch (the reference backend's runtime) is not installed")
    from torch import nn

    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10)).eval()


@pytest.fixture(scope="session")
def x16():
    return np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
