""".npy and .npz files read as data, with every declared size checked first.

An ``.npy`` header declares a shape and dtype; numpy allocates what it declares
before reading a byte of data, so a 200-byte file that declares 10^12 float32
elements asks for 4 TB (a ``MemoryError`` at best, the OOM killer at worst).
Here each array's declared size must equal the bytes the file actually stores,
and all of them together must fit the memory budget, before numpy allocates
anything. Object (pickled) arrays are refused, as ``allow_pickle=False`` does.
"""

from __future__ import annotations

import os
import zipfile
from math import prod
from pathlib import Path
from typing import IO

import numpy as np

from . import safezip
from .errors import HalError, printable

#: the memory budget for declared sizes: this variable (bytes), else half the host's memory
ENV_BUDGET = "HAL_MEMORY_BUDGET_BYTES"


def memory_budget() -> int:
    """Bytes one file may ask hal to allocate: ``HAL_MEMORY_BUDGET_BYTES``, else
    half of physical memory (a file never gets to take the whole host)."""
    v = os.environ.get(ENV_BUDGET, "")
    if v.isdigit():
        return int(v)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_budget(nbytes: int, what: str, error: type[HalError]) -> None:
    budget = memory_budget()
    if nbytes > budget:
        raise error(f"{what} declares {nbytes:,} bytes of arrays, more than hal's memory budget "
                    f"of {budget:,} bytes", f"check the file; a larger budget is set with {ENV_BUDGET}")


def _declared(fh: IO[bytes], stored: int, what: str, error: type[HalError]) -> int:
    """Read one .npy header from ``fh``; the array's size if it matches ``stored``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        else:
            shape, _, dtype = fmt.read_array_header_2_0(fh)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise error(f"{what} has no valid .npy header ({printable(str(e), 80)})",
                    "save arrays with numpy.save / numpy.savez") from None
    if dtype.hasobject:
        raise error(f"{what} holds Python objects (a pickle), which hal never loads",
                    "save plain numeric arrays")
    nbytes = prod(int(d) for d in shape) * dtype.itemsize
    if nbytes != stored - fh.tell():
        raise error(f"{what} declares {dtype} {list(shape)[:8]} ({nbytes:,} bytes) but stores "
                    f"{stored - fh.tell():,} bytes", "the file is damaged or was crafted; re-save it")
    return nbytes


def load_npy(path: str | os.PathLike, what: str, error: type[HalError]) -> np.ndarray:
    path = Path(path)
    with open(path, "rb") as fh:
        check_budget(_declared(fh, os.fstat(fh.fileno()).st_size, what, error), what, error)
    return np.load(path, allow_pickle=False)


def load_npz(path: str | os.PathLike, what: str, error: type[HalError]) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, in stored order, after the archive passed
    :func:`hal.safezip.open_strict` and every member's header its size check."""
    try:
        z = safezip.open_strict(path)
    except (safezip.UnsafeArchive, zipfile.BadZipFile, OSError) as e:
        raise error(f"{what} is not an .npz hal can read safely ({printable(str(e), 120)})",
                    "save arrays with numpy.savez") from None
    with z:
        total = 0
        infos = [i for i in z.infolist() if not i.is_dir()]
        for i in infos:
            if not i.filename.endswith(".npy"):
                raise error(f"{what} holds {printable(i.filename, 60)}, which is not an array",
                            "save arrays with numpy.savez")
            with z.open(i) as fh:
                total += _declared(fh, i.file_size, f"{what}: {printable(i.filename, 60)}", error)
        check_budget(total, what, error)
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {i.filename[:-4]: arrays[i.filename[:-4]] for i in infos}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise error(f"{what} cannot be read ({printable(str(e), 120)})", "re-save it") from None
