"""The folder rule: every file a model or artifact references lies inside its own folder.

A model is often more than one file (an IR's ``.bin``, ONNX external data, a
SavedModel's variables), and a companion can be a symbolic link or a relative
name that climbs out (``../../home/me/.ssh/id_rsa``): a loader that follows it
reads another file into the model's weights, and into any ``.hal`` built from
it. Every loader checks its companions here, by real path, before a runtime
opens them. The user's own choice of the main file is trusted; what that file
names is not.
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

from .errors import HalError, printable

#: entries walked at most in one folder tree (a SavedModel has a handful)
MAX_ENTRIES = 100_000


def inside(root: Path, p: Path) -> bool:
    """Whether ``p``'s real path (links resolved) lies in ``root``'s real path."""
    try:
        return Path(os.path.realpath(p)).is_relative_to(os.path.realpath(root))
    except (OSError, ValueError, RuntimeError):  # a link loop, an unencodable name
        return False


def require_inside(root: Path, files: Iterable[Path | str], error: type[HalError], what: str) -> None:
    """Refuse with ``error`` if any of ``files`` (absolute, or relative to
    ``root``) resolves outside ``root``; a name that climbs with ``..`` or is
    absolute counts as outside even if it happens to land back inside."""
    root = Path(root)
    for f in files:
        name = str(f)
        rel = Path(name)
        if "\x00" in name or (not rel.is_absolute() and ".." in rel.parts) or not inside(root, root / rel):
            raise error(f"{what} references {printable(name, 200)}, which lies outside its folder "
                        f"{printable(str(root), 200)} (a link or a path that climbs out)",
                        "keep every file of the model inside its own folder, as real files "
                        "(copy the model without symbolic links)")


def require_tree_inside(root: Path, error: type[HalError], what: str) -> None:
    """Every entry below the folder ``root`` (a SavedModel, an unpacked
    artifact) resolves inside it; links are not followed while walking."""
    root = Path(root)
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        names = dirnames + filenames
        seen += len(names)
        if seen > MAX_ENTRIES:
            raise error(f"{what} holds more than {MAX_ENTRIES} files", "pass the model's own folder")
        require_inside(root, [Path(dirpath) / n for n in names], error, what)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: int = 0o666) -> Iterator[IO[bytes]]:
    """Write ``path`` through an exclusive, randomly named dot-file beside it,
    renamed into place when the block ends (removed if it fails): a reader never
    sees half a file, and a link planted at a predictable temp name is never
    written through (``O_EXCL | O_NOFOLLOW``; the rename replaces a link at
    ``path`` itself rather than following it). ``mode`` is 0666 less the umask,
    as for any file the user writes (mkstemp's 0600 would hide reports)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))
