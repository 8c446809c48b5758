"""Finding and initialising a Cloud TPU.

Probing must be fast where there is no TPU, so hal first looks for local
evidence (``TPU_NAME`` and friends, ``/dev/accel*`` character devices, a Google
PCI processing accelerator behind vfio) and only then asks TensorFlow's
``TPUClusterResolver``, which can otherwise wait on metadata-server timeouts.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hal import DeviceUnavailableError
from hal.plugin import brief

TPU_ENV = ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES",
           "CLOUD_TPU_TASK_ID")
#: Google's PCI vendor id; TPUs are class 0x12 (processing accelerators), which
#: tells them apart from the gVNIC network card of the same vendor.
GOOGLE_PCI_VENDOR = "0x1ae0"


def evidence() -> list[str]:
    """Local signs of a TPU (cheap: environment and /dev, /sys listings)."""
    found = [f"${v}" for v in TPU_ENV if os.environ.get(v)]
    found += sorted(glob.glob("/dev/accel[0-9]*"))
    for dev in sorted(glob.glob("/sys/bus/pci/devices/*")):
        try:
            vendor = Path(dev, "vendor").read_text().strip()
            cls = Path(dev, "class").read_text().strip()
        except OSError:
            continue
        if vendor == GOOGLE_PCI_VENDOR and cls.startswith("0x12"):
            found.append(f"PCI {Path(dev).name}")
    return found


@dataclass
class TpuSystem:
    """An initialised TPU: the resolver, its topology and a one-core strategy."""

    resolver: Any
    topology: Any
    strategy: Any
    cores: int
    name: str
    properties: dict[str, Any] = field(default_factory=dict)


_system: TpuSystem | None = None
_error: str | None = None


def no_tpu_reason() -> str | None:
    """Why there is no TPU, without importing TensorFlow; None when one may be here."""
    if evidence():
        return None
    return ("no TPU found: no /dev/accel* device, no Google PCI accelerator and $TPU_NAME is "
            "unset (run on a Cloud TPU VM, or set TPU_NAME to a TPU node)")


def connect() -> TpuSystem:
    """Resolver → connect → initialize_tpu_system → TPUStrategy, once per process.
    Any failure becomes one DeviceUnavailableError line."""
    global _system, _error
    if _system is not None:
        return _system
    if _error is not None:
        raise DeviceUnavailableError(_error, "check the TPU with `gcloud compute tpus list`, "
                                             "or target tpu:xla-cpu (emulated)")
    why = no_tpu_reason()
    if why:
        raise DeviceUnavailableError(why, "target tpu:xla-cpu to run the same XLA program on the host")
    import tensorflow as tf

    tpu = os.environ.get("TPU_NAME") or "local"
    step = "TPUClusterResolver"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        step = "experimental_connect_to_cluster"
        tf.config.experimental_connect_to_cluster(resolver)
        step = "initialize_tpu_system"
        topology = tf.tpu.experimental.initialize_tpu_system(resolver)
        step = "TPUStrategy"
        # one replica on one core: an inference executable is one program on one core
        assignment = tf.tpu.experimental.DeviceAssignment.build(topology, num_replicas=1)
        strategy = tf.distribute.TPUStrategy(resolver, experimental_device_assignment=assignment)
    except Exception as e:  # noqa: BLE001 - the resolver raises many kinds
        _error = f"TPU {tpu!r} unreachable: {step} failed: {brief(e, 240, typed=True)}"
        raise DeviceUnavailableError(_error, "check the TPU with `gcloud compute tpus list`, "
                                             "or target tpu:xla-cpu (emulated)") from None
    cores = int(topology.num_tasks * topology.num_tpus_per_task)
    accel = os.environ.get("TPU_ACCELERATOR_TYPE", "")
    props = {"tpu": tpu, "cores": cores, "hosts": int(topology.num_tasks),
             "mesh_shape": [int(d) for d in topology.mesh_shape],
             "accelerator_type": accel or None, "cores_used_per_executable": 1}
    name = f"Cloud TPU {accel or tpu} ({cores} cores, mesh {'x'.join(map(str, props['mesh_shape']))})"
    _system = TpuSystem(resolver, topology, strategy, cores, name, props)
    return _system
