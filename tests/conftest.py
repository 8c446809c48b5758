"""Shared fixtures: an isolated compile cache and tiny real models; the ``full`` marker.

The default run (the README's test command, CI) leaves out the tests marked ``full``: each
one repeats a behaviour that a cheaper test of the default run already covers (another
backend, another attack of a family, a second process start, a Ray cluster where the local
executor shows the same planner), and together they cost minutes. ``--full`` or
``HAL_FULL_TESTS=1`` (``HAL_TEST_FULL=1`` too) runs them as well; ``-m full`` runs only them.
They are reported as deselected, never skipped.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest


def pytest_addoption(parser) -> None:
    parser.addoption("--full", action="store_true", default=False,
                     help="also run the tests marked 'full' (deselected by default; HAL_FULL_TESTS=1 "
                          "does the same)")


def full_run(config) -> bool:
    """Whether this run includes the ``full`` tests."""
    return (bool(config.getoption("--full", default=False))
            or os.environ.get("HAL_FULL_TESTS") == "1" or os.environ.get("HAL_TEST_FULL") == "1"
            or "full" in (config.option.markexpr or ""))  # -m full / -m "not full": -m decides


def pytest_collection_modifyitems(config, items) -> None:
    if full_run(config):
        return
    drop = [it for it in items if it.get_closest_marker("full") is not None]
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = [it for it in items if it.get_closest_marker("full") is None]


@pytest.fixture(scope="session")
def full_tests(request) -> bool:
    """Whether this run includes the ``full`` tests (for a fixture shared with them)."""
    return full_run(request.config)


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
