"""A multi-node Ray cluster on this one machine, for trying a lab and for tests: each
node is its own raylet with its own environment (plugins, name, settings), bound to
127.0.0.1, built with Ray's own test utility (``ray.cluster_utils.Cluster``).

Each node advertises what ``python -m hal_conformance.lab resources`` finds in that
node's environment, exactly as ``ray start --resources "$(…)"`` does on a real host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .cluster import _stay_on_loopback, ray_module
from .probe import ENV_HOST

MB = 2**20
#: a killed node is noticed in about 3 s, not Ray's default ~30 s; Ray's memory
#: monitor is off, so that other work on a shared machine cannot get our actors killed
SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                 "memory_monitor_refresh_ms": 0}


@dataclass
class HostSpec:
    name: str
    #: HAL_PLUGINS for this node (None: every installed plugin)
    plugins: str | None = None
    #: Ray CPUs: how many of its devices the node runs at once
    cpus: int = 1
    env: dict[str, str] = field(default_factory=dict)
    #: folders put first on the node's PYTHONPATH (plugins pip-installed with --target)
    paths: list[str] = field(default_factory=list)

    def environ(self) -> dict[str, str]:
        env = {ENV_HOST: self.name, **self.env}
        if self.plugins is not None:
            env["HAL_PLUGINS"] = self.plugins
        if self.paths:
            env["PYTHONPATH"] = os.pathsep.join(
                self.paths + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
        return env


def node_resources(env: dict[str, str]) -> dict[str, float]:
    """What a node with this environment advertises (its own probe, in a subprocess)."""
    out = subprocess.run([sys.executable, "-m", "hal_conformance.lab", "resources"],
                         capture_output=True, text=True, timeout=180, env={**os.environ, **env})
    if out.returncode != 0:
        raise RuntimeError(f"probing a node failed: {out.stderr[-800:]}")
    return json.loads(out.stdout)


class LocalCluster:
    """Start the hosts (the first is the head); ``kill(name)`` takes one away at once."""

    def __init__(self, hosts: list[HostSpec], object_store_mb: int = 100,
                 system_config: dict[str, Any] | None = None) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray = ray_module()
        _stay_on_loopback(ray)
        from ray.cluster_utils import Cluster

        with ThreadPoolExecutor(len(hosts)) as ex:
            self.resources = dict(zip([h.name for h in hosts],
                                      ex.map(lambda h: node_resources(h.environ()), hosts)))
        self.cluster: Any = None
        self.nodes: dict[str, Any] = {}
        try:
            for h in hosts:
                args = {"node_ip_address": "127.0.0.1", "num_cpus": h.cpus,
                        "resources": self.resources[h.name], "env_vars": h.environ(),
                        "object_store_memory": object_store_mb * MB}
                if self.cluster is None:
                    self.cluster = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
                        **args, "include_dashboard": False, "dashboard_host": "127.0.0.1",
                        "_system_config": SYSTEM_CONFIG if system_config is None else system_config})
                    self.nodes[h.name] = self.cluster.head_node
                else:
                    self.nodes[h.name] = self.cluster.add_node(**args)
        except BaseException:
            self.shutdown()
            raise

    @property
    def address(self) -> str:
        return self.cluster.address

    def kill(self, name: str) -> None:
        """The node's processes killed at once, as a host losing power would."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=False)

    def shutdown(self) -> None:
        ray = ray_module()
        if ray.is_initialized():
            ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
