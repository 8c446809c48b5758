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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..process import BackendRun, WorkerDied, WorkerTimeout
from ..protocol import CellCommand, Status
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
        #: ONNX node corpus records by chunk (its first case)
        self.chunks: dict[str, dict[str, dict[str, Any]]] = {}

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
        """Run one cell command (:class:`~hal_conformance.protocol.CellCommand`) in the
        worker, with this node's copies of its files."""
        c = CellCommand.from_dict(cmd)
        out = self.workdir / "out" / f"{_safe(c.id)}.npy"
        out.unlink(missing_ok=True)
        c = replace(c, data=str(self._file(f"{c.model}.npz", data)), out=str(out),
                    onnx=str(self._file(f"{c.model}.onnx", onnx)) if onnx else None)
        done = self.run.execute(c)
        y = np.load(out, allow_pickle=False) if done.status == Status.RAN and out.exists() else None
        return {"done": done.to_dict(), "out": y, "worker_starts": self.run.starts}

    def onnx_case(self, chunk: list[str], name: str, timeout_s: float) -> dict[str, Any]:
        """One case of ONNX's node corpus: its chunk runs here once, on first need, in
        :mod:`~hal_conformance.onnx_suite`'s crash-isolated workers."""
        from ..onnx_nodes import run_chunk

        key = chunk[0]
        if key not in self.chunks:
            self.chunks[key] = run_chunk(self.target, chunk, self.workdir, timeout_s)
        return {"record": self.chunks[key].get(name), "worker_starts": self.run.starts}

    def close(self) -> int:
        starts = self.run.starts
        self.run.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return starts
