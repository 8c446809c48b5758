"""Which OpenVINO devices exist here, and which precisions each can honour.

Devices come from ``Core().available_devices`` with their ``FULL_DEVICE_NAME``;
the device kinds OpenVINO could drive but did not find (no GPU driver, no NPU)
are listed as unavailable with the reason. Precisions follow each plugin's
``OPTIMIZATION_CAPABILITIES`` so a request the device cannot honour is refused
up front instead of being quietly run at another precision.
"""

from __future__ import annotations

import functools

from hal import Device, UnsupportedError

from . import compat
from .convert import short as _short

from hal.plugin import host_memory_bytes, require

NAME = "openvino"
#: target="auto" ranking among hardware: accelerators above the CPU, the
#: reference backend (rank 0) below everything here.
RANKS = {"GPU": 30, "NPU": 20, "MYRIAD": 15, "CPU": 10, "AUTO": 5}
MYRIAD_NOTE = ("Movidius (MYRIAD plugin: NCS2 / Myriad X) needs OpenVINO ≤ 2022.3, whose wheels "
               "exist only for Python ≤ 3.10; on current OpenVINO 'movidius' means the NPU, its successor")
ALL = ("fp32", "fp16", "bf16", "int8", "int8-dynamic")


def kind_of(device_id: str) -> str:
    return device_id.split(".")[0].upper()


def aliases_for(device_id: str, legacy: bool) -> tuple[str, ...]:
    kind = kind_of(device_id)
    if kind == "NPU" and not legacy:
        return ("npu", "movidius")
    if kind == "MYRIAD" and legacy:
        return ("movidius",)
    return ()


#: what quantizing needs; running a quantized model needs OpenVINO alone
QUANTIZER = ("nncf",)


def require_quantizer(precision: str) -> None:
    """Compiling int8 / int8-dynamic quantizes with NNCF; a device's precisions
    do not depend on it, so an int8 ``.hal`` loads and runs where only the
    OpenVINO runtime is installed (``hal-accel[openvino-runtime]``)."""
    require(QUANTIZER, f"quantizing to {precision} for OpenVINO (loading and running a "
            "quantized .hal does not need it)", UnsupportedError, extra="openvino")


def precisions(kind: str, caps: list[str], props: list[str]) -> tuple[str, ...]:
    """What the plugin can run, from its capabilities; MYRIAD is fp16 only. Not
    whether NNCF is installed: that is a compile-time question (:func:`require_quantizer`)."""
    if kind == "MYRIAD":
        return ("fp16",)
    out = []
    if "FP32" in caps:
        out.append("fp32")
    if "FP16" in caps:
        out.append("fp16")
    if "BF16" in caps:
        out.append("bf16")
    if "INT8" in caps:
        out.append("int8")
    if kind == "CPU" and "DYNAMIC_QUANTIZATION_GROUP_SIZE" in props:
        out.append("int8-dynamic")
    return tuple(out)


def why_not(precision: str, device: Device) -> str:
    """A one-line reason a device cannot run ``precision`` (for the refusal)."""
    kind = kind_of(device.id)
    caps = device.properties.get("optimization_capabilities", [])
    if kind == "MYRIAD":
        return "MYRIAD (Movidius) runs fp16 only"
    if precision == "int8-dynamic":
        return ("int8-dynamic uses the CPU plugin's dynamic quantization "
                "(DYNAMIC_QUANTIZATION_GROUP_SIZE), which only the OpenVINO CPU device has")
    if precision == "fp64":
        return "OpenVINO computes in at most fp32"
    if caps:
        return f"the {kind} plugin's OPTIMIZATION_CAPABILITIES are {', '.join(caps)}"
    return device.reason or ""


def _get(core, device: str, prop: str, default=None):
    try:
        return core.get_property(device, prop)
    except Exception:  # noqa: BLE001 - a property a plugin lacks
        return default


def _absent(legacy: bool, kind: str, core, version: str) -> Device:
    try:
        found = core.get_versions(kind)
        why = (f"no {kind} found by OpenVINO's {kind} plugin (hardware or driver absent)" if found
               else f"OpenVINO {version} has no {kind} plugin")
    except Exception as e:  # noqa: BLE001 - e.g. libOpenCL missing for the GPU plugin
        why = f"OpenVINO's {kind} plugin cannot load: {_short(e)}"
    if kind == "NPU":
        why += f". {MYRIAD_NOTE}"
    names = {"GPU": "Intel GPU", "NPU": "Intel NPU (Movidius' successor)",
             "MYRIAD": "Intel Movidius Myriad X / NCS2 (MYRIAD)"}
    return Device(NAME, kind, names.get(kind, kind), available=False, reason=why,
                  aliases=aliases_for(kind, legacy), rank=RANKS.get(kind, 0),
                  precisions=precisions(kind, [], []) if kind == "MYRIAD" else ())


def unavailable(why: str) -> list[Device]:
    """The device list when OpenVINO itself cannot be imported."""
    return [Device(NAME, k, f"Intel {k} via OpenVINO", available=False,
                   reason=why + (f". {MYRIAD_NOTE}" if k == "NPU" else ""),
                   aliases=aliases_for(k, False), rank=RANKS[k]) for k in ("CPU", "GPU", "NPU", "AUTO")]


#: the x86 instructions that give int8 dot products a 32-bit sum (/proc/cpuinfo flags)
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}
NO_VNNI = "no VNNI"


@functools.lru_cache(maxsize=1)
def host_vnni() -> bool | None:
    """Whether the host CPU has VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8); ``None`` where
    the OS does not say (no ``/proc/cpuinfo``) or the CPU is not x86. Without it the CPU
    plugin's u8×s8 kernels add pairs of products in int16, which saturates: NNCF's
    overflow fix (7-bit weights) is then needed on every layer (:func:`.pipeline.quantize_int8`)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return bool(flags & VNNI_FLAGS) if "avx2" in flags else None
    except OSError:
        pass
    return None


def probe() -> list[Device]:
    o = compat.api()
    core = o.core()
    found = list(core.available_devices)
    devs: list[Device] = []
    for dev_id in found:
        kind = kind_of(dev_id)
        caps = list(_get(core, dev_id, "OPTIMIZATION_CAPABILITIES", []) or [])
        props = list(_get(core, dev_id, "SUPPORTED_PROPERTIES", {}) or {})
        mem = host_memory_bytes() if kind == "CPU" else _get(core, dev_id, f"{kind}_DEVICE_TOTAL_MEM_SIZE")
        name = str(_get(core, dev_id, "FULL_DEVICE_NAME", dev_id))
        if kind == "CPU" and host_vnni() is False:  # int8 is built otherwise here: part of the cache key
            name += f" ({NO_VNNI})"
        devs.append(Device(
            NAME, dev_id, name,
            kind="hardware", available=True, memory_bytes=int(mem) if mem else None,
            aliases=aliases_for(dev_id, o.legacy), precisions=precisions(kind, caps, props),
            rank=RANKS.get(kind, 1), host_cpu=kind == "CPU", properties={
                "openvino": o.version, "api": "openvino.runtime" if o.legacy else "openvino",
                "optimization_capabilities": caps, "export_import": "EXPORT_IMPORT" in caps,
                "architecture": str(_get(core, dev_id, "DEVICE_ARCHITECTURE", "")),
            }))
    kinds = {kind_of(d) for d in found}
    for kind in ("CPU", "GPU", o.movidius_device):
        if kind not in kinds:
            devs.append(_absent(o.legacy, kind, core, o.version))
    hw = [d for d in devs if d.available]
    common = [p for p in ALL if p != "int8-dynamic" and all(p in d.precisions for d in hw)]
    ids = tuple(d.id for d in hw)
    devs.append(Device(
        NAME, "AUTO", f"OpenVINO AUTO (chooses among {', '.join(d.id for d in hw) or 'nothing'})",
        kind="hardware", available=bool(hw), reason="" if hw else "no OpenVINO device found",
        precisions=tuple(common), rank=RANKS["AUTO"], routes_to=ids,
        properties={"openvino": o.version, "candidates": list(ids), "export_import": False}))
    return devs
