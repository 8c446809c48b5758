"""On-disk compile cache: one ``.hal`` file per content-hash key.

The key covers everything that shapes the artifact (model content, backend and
its runtime version, device, precision, options, calibration data, hal's own
version). Writes are atomic (``Executable.save``) and a file lock makes two
processes compiling the same model wait for one another instead of racing.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ENV_DIR = "HAL_CACHE_DIR"
ENV_OFF = "HAL_NO_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    if override is not None:
        return Path(override)
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    import platformdirs

    return Path(platformdirs.user_cache_dir("hal")) / "compiled"


def enabled(flag: bool) -> bool:
    return flag and os.environ.get(ENV_OFF, "") in ("", "0")


def hash_arrays(h, samples) -> None:
    for sample in samples or ():
        for a in sample:
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())


def key(parts: dict[str, Any], calibration=None) -> str:
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    hash_arrays(h, calibration)
    return h.hexdigest()[:32]


@contextmanager
def locked(directory: Path, k: str) -> Iterator[Path]:
    """Hold ``<key>.lock`` while looking up or producing ``<key>.hal``."""
    from filelock import FileLock

    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / f"{k}.lock"), timeout=600):
        yield directory / f"{k}.hal"
