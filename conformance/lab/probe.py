"""What one host has: hal, its plugins, every backend's devices and the precisions each
device can attempt, and the Ray custom resources that advertise those devices.

``python -m hal_conformance.lab resources`` prints the resources for
``ray start --resources``; ``… probe`` prints the whole record. Both run on the
node itself, with the node's own plugins and environment (``HAL_PLUGINS``,
``PYTHONPATH``, ``HAL_CONFORMANCE_SOURCE``).
"""

from __future__ import annotations

import io
import json
import os
import platform
import socket
from typing import Any

from hal.plugin import missing

#: every resource hal advertises starts with this
PREFIX = "hal/"
#: a lab host's name in reports (default: the machine's hostname)
ENV_HOST = "HAL_LAB_HOST"


def device_resource(target: str) -> str:
    """The Ray resource for one device target, e.g. ``hal/device/openvino:CPU``."""
    return f"{PREFIX}device/{target}"


def kind_resource(kind: str) -> str:
    """The Ray resource counting a host's devices of one kind: ``hal/kind/hardware``."""
    return f"{PREFIX}kind/{kind}"


def advertised(resources: dict[str, float]) -> dict[str, str | None]:
    """Device targets a node advertises (from its Ray resources), each with the kind
    it also advertises when exactly one kind is there (else ``None``)."""
    targets = [k[len(device_resource("")):] for k in resources if k.startswith(device_resource(""))]
    kinds = [k[len(kind_resource("")):] for k in resources if k.startswith(kind_resource(""))]
    return {t: (kinds[0] if len(kinds) == 1 else None) for t in sorted(targets)}


def host_label() -> str:
    return os.environ.get(ENV_HOST) or socket.gethostname()


def source() -> str:
    """What the node's workers compile from: ``torch.nn`` where torch is installed,
    else the goldens' ONNX files (as ``hal_conformance.worker`` decides)."""
    from ..runner import ENV_SOURCE

    return os.environ.get(ENV_SOURCE) or ("onnx" if missing(("torch",)) else "torch.nn")


def probe_host() -> dict[str, Any]:
    """This host's hal, plugins and backends, each device with its precisions: the same
    ``ready`` record each backend's conformance worker sends, made here without
    starting one (the planner only plans; no framework is imported for it)."""
    import hal
    import hal.plugin

    from ..worker import Worker

    reg = hal.plugin.registry()
    src = source()
    backends: dict[str, Any] = {}
    for name in reg.backends:
        buf = io.StringIO()
        Worker(name, src, buf).ready()
        ready = json.loads(buf.getvalue())
        backends[name] = {k: ready.get(k) for k in ("version", "missing_runtime", "error", "description",
                                                     "devices")}
    return {"host": host_label(), "hostname": socket.gethostname(), "hal_version": hal.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "source": src,
            "plugins": [{k: v for k, v in p.to_dict().items() if k != "traceback"}
                        for p in reg.plugins],
            "backends": backends}


def resources(info: dict[str, Any]) -> dict[str, float]:
    """Ray custom resources for a probed host: one unit per available device target
    (a cell holds it while it runs, so a device runs one cell at a time) and, per
    kind, as many units as the host has available devices of that kind."""
    out: dict[str, float] = {}
    for b in info["backends"].values():
        for d in b.get("devices") or ():
            if d.get("available"):
                out[device_resource(d["target"])] = 1.0
                k = kind_resource(d["kind"])
                out[k] = out.get(k, 0.0) + 1.0
    return out


def devices_of(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Every device of a probed host, with its backend's version."""
    return [{**d, "backend_version": b.get("version")}
            for b in info["backends"].values() for d in b.get("devices") or ()]
