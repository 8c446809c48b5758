"""On-disk compile cache: one ``.hal`` file per content-hash key.

The key covers everything that shapes the artifact (model content, backend and
its runtime version, device, precision, options, calibration data, hal's own
version). The model part hashes what runs, never a ``repr``
(``hal.formats.Model.digest``): a file by the stored bytes of every file it
consists of (an IR's ``.bin``, ONNX external data, a SavedModel's folder),
streamed; an ``nn.Module`` by a canonical walk of every submodule's class
code, ``__dict__`` (plain attributes, configs, hooks) and tensors
(``hal.formats.torchkey``); an ``ExportedProgram`` by every graph's code and
constant. A model whose state the key cannot read compiles uncached, with a
note. Writes are atomic (``Executable.save``) and a file lock makes two
processes compiling the same model wait for one another instead of racing.

An entry is as untrusted as any ``.hal`` file: it is loaded through the same
checks, must name the key it is stored under, must be a file this user owns
and nobody else can write (:func:`untrusted`), and one that fails any of this
is removed and rebuilt. A cache that cannot be used (a file in its place, no
permission, writable by other users, sticky bit or not) is skipped with a
note, never fatal.
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


def runtime_dir() -> Path | None:
    """Where a backend's runtime may keep its own compile cache when nothing more
    specific says (``Backend.load``, which gets no ``CompileOptions.cache_dir``):
    hal's cache folder, or None when ``$HAL_NO_CACHE`` turns caching off (then
    the runtime writes nothing persistent)."""
    return cache_dir() if enabled(True) else None


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
    # sticky or not: in a /tmp-like folder another user cannot replace my entries, but
    # can plant the entry of a key I have not compiled yet
    if st.st_mode & stat.S_IWOTH or (st.st_mode & stat.S_IWGRP and st.st_uid != _uid()):
        raise Unusable(f"cache directory {directory} is writable by other users, so its entries "
                       "could be anyone's (chmod go-w it, or set HAL_CACHE_DIR to a folder of your own)")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise Unusable(f"cache directory {directory} is not writable")


#: entries are written rw-r--r--: readable by others, changed by their owner alone
ENTRY_MODE = 0o644


def _uid() -> int | None:
    return os.geteuid() if hasattr(os, "geteuid") else None


def untrusted(entry: Path) -> str | None:
    """Why an existing entry must not be served, or None: only a regular file
    that this user owns and no one else can write is taken from the cache."""
    try:
        st = entry.lstat()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if _uid() is not None and st.st_uid != _uid():
        return f"belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "is writable by other users"
    return None


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
