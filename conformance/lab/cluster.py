"""Reaching a Ray cluster and asking each of its nodes what it has.

``--cluster ADDRESS`` joins a running cluster (``host:port`` of its head; ``auto``:
``$RAY_ADDRESS`` or the cluster ``ray start`` started on this host); ``--cluster local``
starts a one-node Ray on this host, bound to loopback, with this host's devices as its
resources.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hal
from hal.errors import brief

from .probe import PREFIX, advertised, probe_host, resources

#: how long one node may take to probe itself (a subprocess importing every plugin)
PROBE_TIMEOUT_S = 180.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def ray_module():
    try:
        import ray
    except ImportError:
        raise hal.UsageError("--cluster needs Ray, which is not installed",
                             "pip install 'hal-accel[lab]'") from None
    return ray


def _stay_on_loopback(ray) -> None:
    """Ray rewrites a loopback address (in ``ray.init``'s address and its node address
    alike) to this host's routable IP (ray-project/ray#59110), so a cluster bound to
    127.0.0.1 could not be joined and a local one would bind elsewhere. Ray's own switch
    for hosts that must stay on loopback is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read
    once at import; set what it sets."""
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise hal.UsageError(f"--cluster {address!r} is not HOST:PORT, 'auto' or 'local'",
                             "pass the head's address as printed by `ray start --head` "
                             "(e.g. 10.0.0.5:6379), or 'local'")
    return host, int(port)


@dataclass
class Connection:
    address: str
    #: we started Ray (``local``) or joined it: either way, ours to disconnect
    started_local: bool = False
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        ray = ray_module()
        if ray.is_initialized():
            ray.shutdown()


def connect(address: str, num_cpus: int | None = None, timeout_s: float = 10.0) -> Connection:
    """Join the cluster at ``address`` (or start ``local``); a clear error when nobody answers."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address == "local" and "ray" not in sys.modules and not any(
            os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        # Ray's token authentication with a token for this run only (set before Ray reads
        # it, at import): Ray would otherwise create one and keep it in ~/.ray/auth_token
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    ray = ray_module()
    if ray.is_initialized():
        raise hal.UsageError("this process is already connected to Ray",
                             "call ray.shutdown() first, or run hal in its own process")
    if address == "local":
        _stay_on_loopback(ray)
        res = resources(probe_host())
        # Ray's memory monitor off: on a busy workstation it would kill the runners for
        # memory that other programs use, and this one-node cluster has nowhere to rerun
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, resources=res,
                 num_cpus=num_cpus or 1, object_store_memory=200 * 2**20, log_to_driver=False,
                 configure_logging=False, _system_config={"memory_monitor_refresh_ms": 0})
        return Connection("local", started_local=True)
    if address == "auto":  # the cluster this process belongs to (a Ray job, a node's shell)
        address = os.environ.get("RAY_ADDRESS") or ""
        if not address:
            ray.init(address="auto", log_to_driver=False, configure_logging=False)
            return Connection("auto")
    host, port = _split(address)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise hal.DeviceUnavailableError(
            f"no Ray cluster answers at {address} ({e})",
            "start one with `ray start --head --port PORT` on the head host, or check the "
            "address and the firewall") from None
    if host in LOOPBACK:
        _stay_on_loopback(ray)
    kw = {"_node_ip_address": "127.0.0.1"} if host in LOOPBACK else {}
    if not os.environ.get("RAY_AUTH_MODE") and (os.environ.get("RAY_AUTH_TOKEN")
                                                or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_MODE"] = "token"  # a token given means: use it
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False, **kw)
    except (ConnectionError, RuntimeError) as e:
        raise hal.DeviceUnavailableError(
            f"could not join the Ray cluster at {address}: {brief(e, 300, typed=True)}",
            "if the cluster uses token authentication (what `ray start` does by default since "
            "Ray 2.5x), set RAY_AUTH_TOKEN to the output of `ray get-auth-token` on its head "
            "(or RAY_AUTH_TOKEN_PATH to a file holding it)") from None
    return Connection(address)


def _probe_here() -> dict[str, Any]:
    """Run on a node: probe it in a subprocess (a plugin that crashes while probing
    takes that process down, not Ray's worker), with the node's environment."""
    out = subprocess.run([sys.executable, "-m", "hal_conformance.lab", "probe"],
                         capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    if out.returncode != 0:
        tail = " | ".join(out.stderr.strip().splitlines()[-3:])[-600:]
        raise RuntimeError(f"the probe exited with status {out.returncode}: {tail}")
    return json.loads(out.stdout)


@dataclass
class Node:
    node_id: str
    ip: str
    alive: bool
    resources: dict[str, float]
    host: str = ""
    info: dict[str, Any] | None = None
    error: str | None = None

    @property
    def devices(self) -> dict[str, str | None]:
        """Advertised device targets (→ kind)."""
        return advertised(self.resources)

    @property
    def slots(self) -> int:
        """Devices this node runs at once: its Ray CPUs (``ray start --num-cpus``)."""
        return int(self.resources.get("CPU", 0))

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "node_id": self.node_id, "ip": self.ip, "alive": self.alive,
                "resources": {k: v for k, v in self.resources.items() if k.startswith(PREFIX)},
                "cpus": self.resources.get("CPU", 0), "error": self.error}


def nodes(timeout_s: float = PROBE_TIMEOUT_S + 60) -> list[Node]:
    """Every alive node of the connected cluster, each probed on itself."""
    ray = ray_module()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    found = [Node(n["NodeID"], n["NodeManagerAddress"], n["Alive"], dict(n["Resources"]))
             for n in ray.nodes() if n["Alive"]]
    probe = ray.remote(_probe_here)
    refs = {probe.options(num_cpus=0, max_retries=0, scheduling_strategy=
                          NodeAffinitySchedulingStrategy(n.node_id, soft=False)).remote(): n
            for n in found}
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in ready:
        n = refs[ref]
        try:
            n.info = ray.get(ref, timeout=10)
            n.host = n.info["host"]
        except Exception as e:  # noqa: BLE001 - a node that cannot probe is listed with why
            n.error = f"probe failed: {brief(e, 400, typed=True)}"
    for ref in pending:
        ray.cancel(ref, force=True)
        refs[ref].error = f"probe did not answer within {timeout_s:g}s"
    counts = Counter(n.host or n.ip for n in found)
    for n in found:
        n.host = n.host or n.ip
        if counts[n.host] > 1:  # two nodes with one name (two raylets on one machine)
            n.host = f"{n.host}#{n.node_id[:6]}"
    return sorted(found, key=lambda n: n.host)
