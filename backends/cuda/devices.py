"""Finding CUDA GPUs.

Imports torch (the backend's own runtime) but initialises CUDA only when there
is something to initialise: a CPU-only torch build or a machine without a GPU
is answered from ``torch.version.cuda`` and ``torch.cuda.device_count()``
(NVML-based, no CUDA context) alone.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

from hal import Device, DeviceUnavailableError
from hal.plugin import brief

from . import nvml
from .options import PRECISIONS

RANK = 100  # an accelerator: above the reference CPU (0)
ALL = "*"   # the multi-GPU (data-parallel) pseudo device id


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_memory: int
    capability: tuple[int, int]
    multiprocessors: int
    uuid: str | None

    @property
    def precisions(self) -> tuple[str, ...]:
        return PRECISIONS if self.capability >= (8, 0) else tuple(p for p in PRECISIONS if p != "bf16")


def no_cuda_reason(torch) -> str | None:
    """Why this torch cannot reach a CUDA GPU at all, decided without touching CUDA."""
    if torch.version.cuda is None:
        build = "a ROCm" if getattr(torch.version, "hip", None) else "a CPU-only"
        drv = ("an NVIDIA driver is loaded" if nvml.driver_present()
               else "no NVIDIA driver was found either")
        return (f"PyTorch {torch.__version__} is {build} build (torch.version.cuda is None; {drv}); "
                "install a CUDA build of torch to use NVIDIA GPUs")
    return None


def _count_reason(torch) -> tuple[int, str]:
    """(number of visible GPUs, why there are none)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = torch.cuda.device_count()
    if n:
        return n, ""
    said = "; ".join(str(w.message).splitlines()[0] for w in caught)[:300]
    vis = os.environ.get("CUDA_VISIBLE_DEVICES")
    if vis is not None and vis.strip() in ("", "-1", "none", "NoDevFiles"):
        why = f"CUDA_VISIBLE_DEVICES={vis!r} hides every GPU"
    elif not nvml.driver_present():
        why = "no NVIDIA driver found (no /proc/driver/nvidia, NVML absent)"
    else:
        why = "the NVIDIA driver is loaded but CUDA sees no GPU"
    return 0, why + (f" ({said})" if said else "")


def gpus(torch) -> tuple[list[Gpu], str]:
    """Every visible GPU, or ([], why not)."""
    why = no_cuda_reason(torch)
    if why:
        return [], why
    n, why = _count_reason(torch)
    if not n:
        return [], why
    out = []
    try:
        for i in range(n):
            p = torch.cuda.get_device_properties(i)
            uuid = getattr(p, "uuid", None)
            out.append(Gpu(i, p.name, int(p.total_memory), (p.major, p.minor),
                           int(p.multi_processor_count), str(uuid) if uuid is not None else None))
    except Exception as e:  # noqa: BLE001 - e.g. "CUDA driver version is insufficient"
        return [], f"CUDA failed to initialise: {brief(e, 240)}"
    return out, ""


def probe(backend: str, missing_runtime: str | None = None) -> list[Device]:
    aliases0 = ("cuda:0", "gpu:0", "gpu")
    if missing_runtime:  # no torch: the devices are listed with what to install, torch is not imported
        return [Device(backend, "0", "CUDA GPU", available=False, reason=missing_runtime,
                       aliases=aliases0, precisions=PRECISIONS, rank=RANK),
                _all_device(backend, [], missing_runtime)]
    import torch

    found, why = gpus(torch)
    if not found:
        return [Device(backend, "0", "CUDA GPU", available=False, reason=why, aliases=aliases0,
                       precisions=PRECISIONS, rank=RANK),
                _all_device(backend, [], why)]
    driver = nvml.driver_version()
    devs = []
    for g in found:
        props = {"compute_capability": f"{g.capability[0]}.{g.capability[1]}",
                 "multiprocessors": g.multiprocessors, "driver_version": driver or "unknown",
                 "cuda_runtime": torch.version.cuda, "uuid": g.uuid,
                 "torch": torch.__version__}
        devs.append(Device(backend, str(g.index), g.name, available=True,
                           memory_bytes=g.total_memory,
                           aliases=(f"cuda:{g.index}", f"gpu:{g.index}", "gpu"),
                           precisions=g.precisions, rank=RANK,
                           power_w=nvml.default_power_w(g.uuid), properties=props))
    return devs + [_all_device(backend, found, "")]


def _all_device(backend: str, found: list[Gpu], why: str) -> Device:
    """``cuda:*``: every GPU at once, a batch split across them (data parallel)."""
    ok = len(found) >= 2
    if not ok and not why:
        why = (f"data parallelism needs 2 or more CUDA GPUs; this machine has {len(found)} "
               f"(use cuda:0)")
    elif not ok:
        why = f"data parallelism needs 2 or more CUDA GPUs: {why}"
    precs = tuple(p for p in PRECISIONS if all(p in g.precisions for g in found)) if found else PRECISIONS
    names = sorted({g.name for g in found})
    members = tuple(str(g.index) for g in found)
    return Device(backend, ALL, f"{len(found)}× {' + '.join(names)} (batch split across GPUs)"
                  if ok else "all CUDA GPUs (batch split across GPUs)",
                  available=ok, reason="" if ok else why,
                  memory_bytes=sum(g.total_memory for g in found) or None,
                  aliases=("cuda:all", "gpu:*", "gpu:all"), precisions=precs, rank=RANK - 1,
                  routes_to=members, properties={"members": list(members)})


def gpu_indices(device: Device) -> list[int]:
    """The CUDA indices behind a hal Device, or DeviceUnavailableError with its reason."""
    if not device.available:
        raise DeviceUnavailableError(f"{device.target} is not available: {device.reason}",
                                     "attach an NVIDIA GPU with its driver and use a CUDA build "
                                     "of torch, or pick another target")
    if device.id == ALL:
        return [int(i) for i in device.properties.get("members", [])]
    return [int(device.id)]
