"""One device on one node, as a Ray actor: the node's own conformance worker process
for that device's backend (``hal_conformance.process.BackendRun``), so a segfault or a
hang is a ``crash`` / ``timeout`` cell there and the actor carries on.

The actor holds the device's Ray resource while it lives, so Ray places it only on a
node that advertises the device, and one device runs one cell at a time. Outputs go
back to the driver as arrays and are judged there; nothing a node finished is kept
only on the node.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..process import BackendRun, WorkerDied, WorkerTimeout
from ..runner import ENV_SOURCE, _safe
from .probe import host_label


class DeviceRunner:
    def __init__(self, backend: str, target: str, startup_timeout_s: float, timeout_s: float) -> None:
        self.target = target
        self.workdir = Path(tempfile.mkdtemp(prefix="hal-lab-"))
        (self.workdir / "data").mkdir()
        (self.workdir / "out").mkdir()
        # the node's own choice of source (torch.nn, or the goldens' ONNX), as on one host
        self.run = BackendRun(backend, self.workdir / f"worker-{_safe(backend)}.log",
                              os.environ.get(ENV_SOURCE) or None, startup_timeout_s, timeout_s)
        self.files: dict[str, Path] = {}

    def start(self) -> dict[str, Any]:
        """Start the backend's worker; its ``ready`` record, or why it did not start."""
        import ray

        info = {"host": host_label(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid()}
        try:
            return {**info, "ready": self.run.ensure_started()}
        except (WorkerDied, WorkerTimeout) as e:
            return {**info, "error": f"the {self.run.name} worker did not start: {e}"}

    def _file(self, name: str, content: bytes) -> Path:
        if name not in self.files:
            p = self.workdir / "data" / _safe(name)
            p.write_bytes(content)
            self.files[name] = p
        return self.files[name]

    def cell(self, cmd: dict[str, Any], data: bytes, onnx: bytes | None) -> dict[str, Any]:
        """Run one cell command (``hal_conformance.worker``'s protocol) in the worker."""
        out = self.workdir / "out" / f"{_safe(cmd['id'])}.npy"
        out.unlink(missing_ok=True)
        cmd = {**cmd, "data": str(self._file(f"{cmd['model']}.npz", data)), "out": str(out),
               "onnx": str(self._file(f"{cmd['model']}.onnx", onnx)) if onnx else None}
        done = self.run.execute(cmd)
        y = np.load(out, allow_pickle=False) if done.get("status") == "ran" and out.exists() else None
        return {"done": done, "out": y, "worker_starts": self.run.starts}

    def close(self) -> int:
        starts = self.run.starts
        self.run.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return starts
