"""Find Edge TPUs: pycoral when importable, else libedgetpu itself.

Google's pycoral has no builds for current Python (and the PyPI project named
``pycoral`` is unrelated), so the usual path is libedgetpu's C API
(``edgetpu_list_devices`` / ``edgetpu_version``) through ctypes, and, for a
library without it, opening the LiteRT delegate on ``usb:N`` / ``pci:N``.
Nothing here imports a framework.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

LIB_ENV = "HAL_EDGETPU_LIBRARY"
DEFAULT_LIB = "libedgetpu.so.1"
#: libedgetpu's ``enum edgetpu_device_type`` (edgetpu_c.h).
_TYPES = {0: "pci", 1: "usb"}


def library() -> str:
    """The libedgetpu to load (``$HAL_EDGETPU_LIBRARY`` overrides the soname)."""
    return os.environ.get(LIB_ENV) or DEFAULT_LIB


@dataclass
class Found:
    kind: str  # "usb" or "pci"
    index: int
    path: str

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.index}"


@dataclass
class Discovery:
    found: list[Found] = field(default_factory=list)
    runtime_version: str | None = None
    method: str = ""
    #: why nothing was found, per kind ("usb"/"pci"), or for both ("*").
    why_not: dict[str, str] = field(default_factory=dict)


class _Dev(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("path", ctypes.c_char_p)]


def runtime_number(version: str | None) -> int | None:
    """``"BuildLabel(...), RuntimeVersion(14)"`` → 14."""
    m = re.search(r"RuntimeVersion\((\d+)\)", version or "")
    return int(m.group(1)) if m else None


def _number(found: list[tuple[str, str]]) -> list[Found]:
    seen: dict[str, int] = {}
    out = []
    for kind, path in found:
        out.append(Found(kind, seen.get(kind, 0), path))
        seen[kind] = seen.get(kind, 0) + 1
    return out


def _via_pycoral() -> Discovery | None:
    try:
        from pycoral.utils import edgetpu as pe  # Google's pycoral, not the PyPI namesake
    except Exception:  # noqa: BLE001 - absent, or the unrelated PyPI project
        return None
    try:
        tpus = pe.list_edge_tpus()
        version = pe.get_runtime_version()
    except Exception:  # noqa: BLE001 - pycoral present but its libedgetpu is not
        return None
    return Discovery(_number([(t["type"], t["path"]) for t in tpus]), version, "pycoral")


def _via_c_api(lib: ctypes.CDLL) -> Discovery | None:
    if not hasattr(lib, "edgetpu_list_devices"):
        return None
    lib.edgetpu_list_devices.restype = ctypes.POINTER(_Dev)
    lib.edgetpu_list_devices.argtypes = [ctypes.POINTER(ctypes.c_size_t)]
    lib.edgetpu_free_devices.argtypes = [ctypes.POINTER(_Dev)]
    n = ctypes.c_size_t(0)
    devs = lib.edgetpu_list_devices(ctypes.byref(n))
    found = [(_TYPES.get(devs[i].type, f"type{devs[i].type}"), (devs[i].path or b"").decode())
             for i in range(n.value)]
    if devs:
        lib.edgetpu_free_devices(devs)
    version = None
    if hasattr(lib, "edgetpu_version"):
        lib.edgetpu_version.restype = ctypes.c_char_p
        version = (lib.edgetpu_version() or b"").decode()
    return Discovery(_number(found), version, "libedgetpu edgetpu_list_devices")


def open_delegate(device_id: str):
    """The LiteRT delegate for ``usb:N`` / ``pci:N``; raises with libedgetpu's reason."""
    from ai_edge_litert.interpreter import load_delegate

    return load_delegate(library(), {"device": device_id})


def _via_delegate() -> Discovery:
    found, why = [], {}
    for kind in ("usb", "pci"):
        for i in range(8):
            try:
                open_delegate(f"{kind}:{i}")
            except Exception as e:  # noqa: BLE001 - the first failure ends this kind
                if i == 0:
                    why[kind] = short(e)
                break
            found.append(Found(kind, i, ""))
    return Discovery(found, None, "LiteRT load_delegate", why)


def short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text or type(e).__name__)[:240]


def discover() -> Discovery:
    """Every Edge TPU libedgetpu can see, or why none."""
    d = _via_pycoral()
    if d is not None and d.found:
        return d
    lib_name = library()
    try:
        lib = ctypes.CDLL(lib_name)
    except OSError as e:
        return Discovery(why_not={"*": f"{lib_name} not found ({short(e)}); install the Edge TPU "
                                       "runtime (libedgetpu1-std from Coral's apt repository)"})
    d = _via_c_api(lib)
    if d is None:
        d = _via_delegate()
        if not d.found and not d.why_not:
            d.why_not["*"] = f"{lib_name} opened no Edge TPU"
    if not d.found:
        d.why_not.setdefault("usb", "libedgetpu found no Coral USB Accelerator (is it plugged in?)")
        d.why_not.setdefault("pci", "no /dev/apex_0: no M.2/PCIe Edge TPU, or the gasket/apex "
                                    "driver is not loaded" if not Path("/dev/apex_0").exists()
                             else "/dev/apex_0 exists but libedgetpu did not open it "
                                  "(permissions: add the user to the 'apex' group)")
    return d


def temperature_c(device_id: str) -> float | None:
    """Die temperature of a PCIe Edge TPU from sysfs (the USB stick exposes none)."""
    kind, _, idx = device_id.partition(":")
    if kind != "pci":
        return None
    p = Path(f"/sys/class/apex/apex_{idx}/temp")
    try:
        return int(p.read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def device_present(device_id: str) -> bool | None:
    """Whether the device node is still there (PCIe only; ``None``: cannot tell)."""
    kind, _, idx = device_id.partition(":")
    if kind == "pci":
        return Path(f"/dev/apex_{idx}").exists()
    return None
