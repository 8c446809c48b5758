"""On-disk compile cache: one ``.hal`` file per content-hash key.

The key covers everything that shapes the artifact (model content, backend and
its runtime version, device, precision, options, calibration data, hal's own
version). Writes are atomic (``Executable.save``) and a file lock makes two
processes compiling the same model wait for one another instead of racing.

An entry is as untrusted as any ``.hal`` file: it is loaded through the same
checks, must name the key it is stored under, and one that fails to load is
removed and rebuilt. A cache that cannot be used (a file in its place, no
permission, writable by other users) is skipped with a note, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
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


class Unusable(Exception):
    """The cache directory cannot be used; the compile goes on without it."""


def _usable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        st = directory.stat()
    except OSError as e:
        raise Unusable(f"cache directory {directory} cannot be created ({e.strerror or e})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise Unusable(f"cache path {directory} is not a directory")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise Unusable(f"cache directory {directory} is writable by every user, so its entries "
                       "could be anyone's (chmod o-w it, or set HAL_CACHE_DIR)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise Unusable(f"cache directory {directory} is not writable")


#: temp files ``Executable.save`` writes before renaming: ``.<key>.hal.<random>``
_ORPHAN = re.compile(r"^\.([0-9a-f]{32})\.hal\.[A-Za-z0-9_]+$")
_swept: set[Path] = set()


def sweep(directory: Path) -> int:
    """Remove temp files left by saves that were killed: those whose key's
    lock nobody holds (a live save holds it). Once per directory per process."""
    from filelock import FileLock, Timeout

    if directory in _swept:
        return 0
    _swept.add(directory)
    removed = 0
    for f in directory.iterdir():
        m = _ORPHAN.match(f.name)
        if not m:
            continue
        try:
            with FileLock(str(directory / f"{m.group(1)}.lock"), timeout=0):
                f.unlink(missing_ok=True)
                removed += 1
        except (Timeout, OSError):
            continue
    return removed


@contextmanager
def locked(directory: Path, k: str) -> Iterator[Path]:
    """Hold ``<key>.lock`` while looking up or producing ``<key>.hal``; remove
    what killed saves of this key left behind. Raises :class:`Unusable` when
    the directory cannot serve as a cache."""
    from filelock import FileLock, Timeout

    _usable(directory)
    lock = FileLock(str(directory / f"{k}.lock"), timeout=600)
    try:
        lock.acquire()
    except (OSError, Timeout) as e:
        raise Unusable(f"cannot lock {directory / (k + '.lock')} ({e})") from None
    try:
        for orphan in directory.glob(f".{k}.hal.*"):
            orphan.unlink(missing_ok=True)
        try:
            sweep(directory)
        except OSError:
            pass
        yield directory / f"{k}.hal"
    finally:
        lock.release()
