"""NVML (nvidia-ml-py) where it can be read: driver version, board power, and the
total-energy counter. Every reader returns a value or says why it cannot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

_state: dict[str, Any] = {}
NOT_INSTALLED = "nvidia-ml-py is not installed (pip install 'hal-accel[cuda]')"


def init() -> tuple[Any, str | None]:
    """(pynvml, None) once NVML is up, else (None, why). Initialised once per process."""
    if "mod" in _state:
        return _state["mod"], _state["why"]
    mod, why = None, None
    try:
        import pynvml
    except ImportError:
        why = NOT_INSTALLED
    else:
        try:
            pynvml.nvmlInit()
            mod = pynvml
        except pynvml.NVMLError as e:
            why = f"NVML could not start ({e})"
    _state.update(mod=mod, why=why)
    return mod, why


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def driver_version() -> str | None:
    """From NVML, else the kernel module's /proc file, else nvidia-smi."""
    nv, _ = init()
    if nv is not None:
        try:
            return _text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError:
            pass
    try:
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)",
                      Path("/proc/driver/nvidia/version").read_text())
        if m:
            return m.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.splitlines()[0].strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def driver_present() -> bool:
    """The NVIDIA kernel driver is loaded (cheap: no CUDA, no NVML)."""
    return Path("/proc/driver/nvidia/version").exists() or init()[0] is not None


def handle(uuid: str | None) -> tuple[Any, str | None]:
    """The NVML handle of the GPU whose CUDA UUID is ``uuid``, or (None, why)."""
    nv, why = init()
    if nv is None:
        return None, why
    if not uuid:
        return None, "PyTorch reports no UUID for this GPU, so it cannot be matched to NVML"
    u = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
    try:
        return nv.nvmlDeviceGetHandleByUUID(u), None
    except nv.NVMLError as e:
        return None, f"NVML has no device with UUID {u} ({e})"


def default_power_w(uuid: str | None) -> float | None:
    """The board's default power limit (the vendor's stated board power)."""
    h, _ = handle(uuid)
    if h is None:
        return None
    nv = _state["mod"]
    try:
        return nv.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000.0
    except nv.NVMLError:
        return None


def energy_counter(uuid: str | None):
    """A zero-argument reader of the board's total energy in millijoules, or
    (None, why) when this GPU or driver does not expose the counter."""
    h, why = handle(uuid)
    if h is None:
        return None, why
    nv = _state["mod"]
    try:
        nv.nvmlDeviceGetTotalEnergyConsumption(h)
    except nv.NVMLError as e:
        return None, (f"NVML cannot read this GPU's total-energy counter ({e}; it needs a "
                      "Volta or newer data-centre GPU and is absent on MIG slices)")
    return (lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h)), None
