"""Zip archives that every reader reads the same way, or none at all.

``.pt2`` programs and ``.hal`` artifacts are zips, and more than one parser
reads them: Python's :mod:`zipfile` (which hal uses to check them) and a
runtime's own reader (torch's C++ ``PyTorchFileReader``, miniz). Zip leaves
room for the two to disagree — a name stored twice (Python takes the last
copy, miniz the first), names equal after case folding or path normalisation,
data hidden between or before members, a second end-of-archive record in a
comment. A checker that reads one copy while the runtime reads another checks
nothing, so :func:`open_strict` refuses every archive where such a
disagreement is possible, and :func:`rewrite` hands the runtime a fresh copy
built only from the members that were checked.
"""

from __future__ import annotations

import json
import posixpath
import stat
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

#: an archive may expand to at most this much (a zip bomb is refused, not unpacked)
MAX_TOTAL_BYTES = 64 << 30
#: and to at most this many members
MAX_MEMBERS = 100_000
#: a member that expands more than this ratio (and past 1 MiB) is a bomb
MAX_RATIO = 1000

_LOCAL = b"PK\x03\x04"
_LOCAL_FIXED = 30
_DESCRIPTOR_SIG = b"PK\x07\x08"


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"a JSON object repeats a key ({sorted(k for k in keys if keys.count(k) > 1)[0]!r})")
    return dict(pairs)


def strict_json(data: bytes):
    """JSON where a repeated key is an error: two parsers may keep different copies."""
    return json.loads(data, object_pairs_hook=_no_duplicate_keys)



class UnsafeArchive(ValueError):
    """The archive is malformed or could be read differently by another parser."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int


def _norm(name: str) -> str:
    return posixpath.normpath(name.replace("\\", "/")).casefold()


def _check_names(infos: list[zipfile.ZipInfo]) -> None:
    seen: dict[str, str] = {}
    for i in infos:
        n = i.filename
        if not n or "\x00" in n:
            raise UnsafeArchive(f"member name {n!r} is empty or holds a NUL byte")
        if n.startswith(("/", "\\")) or (len(n) > 1 and n[1] == ":") or \
                ".." in n.replace("\\", "/").split("/"):
            raise UnsafeArchive(f"member {n!r} points outside the archive")
        if "\\" in n:
            raise UnsafeArchive(f"member {n!r} uses a backslash as a path separator")
        mode = i.external_attr >> 16
        if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchive(f"member {n!r} is a link or device, not a plain file")
        key = _norm(n).rstrip("/")
        if key in seen:
            what = "twice" if seen[key] == n else f"as {seen[key]!r} and {n!r}"
            raise UnsafeArchive(f"member {n!r} is stored {what} (readers would disagree on "
                                "which copy counts)")
        seen[key] = n


def _read_at(fh, at: int, n: int) -> bytes:
    fh.seek(at)
    return fh.read(n)


def _check_layout(fh, z: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Every byte before the central directory belongs to exactly one listed
    member, in order, with a local header that agrees with the central one."""
    pos = 0
    for i in sorted(infos, key=lambda i: i.header_offset):
        off = i.header_offset
        if off != pos:
            raise UnsafeArchive(f"{off - pos} unlisted byte(s) before member {i.filename!r}"
                                if off > pos else f"member {i.filename!r} overlaps the one before it")
        head = _read_at(fh, off, _LOCAL_FIXED)
        if len(head) < _LOCAL_FIXED or head[:4] != _LOCAL:
            raise UnsafeArchive(f"member {i.filename!r} has no local header")
        (_, _, flags, method, _, _, _, csize, _, nlen, xlen) = struct.unpack("<4s5H3I2H", head)
        name = fh.read(nlen)
        if name.decode("utf-8" if flags & 0x800 else "cp437", "replace") != i.filename:
            raise UnsafeArchive(f"member {i.filename!r} has another name in its local header")
        if method != i.compress_type:
            raise UnsafeArchive(f"member {i.filename!r} has two compression methods")
        if flags & 0x1:
            raise UnsafeArchive(f"member {i.filename!r} is encrypted")
        end = off + _LOCAL_FIXED + nlen + xlen + i.compress_size
        if flags & 0x8:  # a data descriptor follows the data, with or without its signature
            zip64 = i.compress_size >= 0xFFFFFFFF or i.file_size >= 0xFFFFFFFF or csize == 0xFFFFFFFF
            end += (4 if _read_at(fh, end, 4) == _DESCRIPTOR_SIG else 0) + (20 if zip64 else 12)
        pos = end
    if pos != z.start_dir:
        raise UnsafeArchive(f"{z.start_dir - pos} unlisted byte(s) before the central directory"
                            if z.start_dir > pos else "the central directory overlaps a member")


def open_strict(path: str | Path, allow_comment: bool = False) -> zipfile.ZipFile:
    """Open ``path`` as a zip that any reader reads the same way; raise
    :class:`UnsafeArchive` otherwise. Checks names, layout, sizes and CRCs."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise UnsafeArchive(f"not a zip archive, or truncated ({e})") from None
    try:
        if z.comment and not allow_comment:
            raise UnsafeArchive("the archive has a comment (a place to hide a second directory)")
        infos = z.infolist()
        if len(infos) > MAX_MEMBERS:
            raise UnsafeArchive(f"{len(infos)} members (at most {MAX_MEMBERS})")
        _check_names(infos)
        total = 0
        for i in infos:
            total += i.file_size
            if i.file_size > (1 << 20) and i.file_size > MAX_RATIO * max(i.compress_size, 1):
                raise UnsafeArchive(f"member {i.filename!r} expands {i.file_size // max(i.compress_size, 1)}"
                                    "-fold (a zip bomb)")
        if total > MAX_TOTAL_BYTES:
            raise UnsafeArchive(f"the archive expands to {total} bytes (at most {MAX_TOTAL_BYTES})")
        with open(path, "rb") as fh:
            _check_layout(fh, z, infos)
        bad = z.testzip()
        if bad is not None:
            raise UnsafeArchive(f"member {bad!r} fails its CRC")
    except UnsafeArchive:
        z.close()
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError,
            struct.error, RuntimeError) as e:  # a damaged member, a bad compression stream
        z.close()
        raise UnsafeArchive(f"damaged archive ({type(e).__name__}: {e})") from None
    return z


def extract(z: zipfile.ZipFile, dest: Path) -> list[Member]:
    """Unpack an archive that :func:`open_strict` accepted into ``dest``; only
    plain files and folders, only below ``dest``."""
    root = dest.resolve()
    out = []
    for i in z.infolist():
        target = (root / i.filename).resolve()
        if target != root and root not in target.parents:
            raise UnsafeArchive(f"member {i.filename!r} points outside the archive")
        if i.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with z.open(i) as src, open(target, "xb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        out.append(Member(i.filename, i.file_size))
    return out


def rewrite(z: zipfile.ZipFile, dest: Path) -> Path:
    """A fresh archive at ``dest`` with exactly the checked members, stored
    uncompressed (torch memory-maps stored members) and aligned as torch writes
    them, so that another reader sees byte for byte what was checked."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for i in z.infolist():
            info = zipfile.ZipInfo(i.filename, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            out.writestr(info, z.read(i))
    return dest
