"""A worker subprocess seen from the orchestrator: start, talk, time out, kill.

Each worker runs in its own session (process group) so that a timeout kills
it and anything it started; a death is described from its exit status
(signal name) and the tail of its log.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .protocol import CellCommand, Outcome, Status


class WorkerDied(Exception):
    """The worker exited (segfault, abort, OOM kill, …) while we waited."""


class WorkerTimeout(Exception):
    """The worker sent nothing in time."""


class WorkerProcess:
    def __init__(self, backend: str, log_path: Path, source: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.backend = backend
        self.log_path = log_path
        #: the stage the current cell last entered (a crash or a timeout names it)
        self.stage: str | None = None
        r, w = os.pipe()
        cmd = [sys.executable, "-m", "hal_conformance.worker", "--backend", backend, "--fd", str(w)]
        if source:
            cmd += ["--source", source]
        with open(log_path, "ab") as log:
            self.log_start = log.tell()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log,
                                         stderr=subprocess.STDOUT, pass_fds=(w,),
                                         start_new_session=True, env=env)
        os.close(w)
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(os.fdopen(r, "r"),), daemon=True).start()

    def _read(self, f) -> None:
        with f:
            for line in f:
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    self.events.put({"event": "garbage", "line": line[:200]})
        self.events.put(None)

    def send(self, cmd: dict[str, Any]) -> None:
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerDied(self.death()) from None

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next ``event`` message; WorkerDied or WorkerTimeout otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerTimeout(f"nothing from the {self.backend} worker in {timeout:g}s")
            try:
                msg = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty():
                    # died, but a grandchild may still hold the pipe open
                    raise WorkerDied(self.death()) from None
                continue
            if msg is None:
                raise WorkerDied(self.death())
            if msg.get("event") == "stage":
                self.stage = msg.get("stage")
            if msg.get("event") == event:
                return msg

    def death(self) -> str:
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.returncode
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            why = f"killed by {name}" + (" (out of memory?)" if -rc == signal.SIGKILL else "")
        else:
            why = f"exited with status {rc}"
        return f"the {self.backend} worker {why}" + self._where()

    def _where(self) -> str:
        """Where it died: the innermost frame faulthandler logged, else the log's last line."""
        text = self.log_tail(lines=200, chars=20000).split(" | ")
        fatal = [i for i, ln in enumerate(text) if ln.startswith("Fatal Python error")]
        if fatal:
            frame = next((ln for ln in text[fatal[-1]:] if ln.startswith("File ")), None)
            return f" ({text[fatal[-1]]}" + (f"; innermost {frame}" if frame else "") + ")"
        last = [ln for ln in text if ln and not ln.startswith("Extension modules")]
        return f"; log: {last[-1][:240]}" if last else ""

    def log_tail(self, lines: int = 4, chars: int = 400) -> str:
        """The last lines of this worker's log (its own part of the shared file)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.log_start)
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        keep = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
        return " | ".join(keep)[-chars:]

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"op": "quit"})
                self.proc.stdin.close()
                self.proc.wait(timeout=15)
            except (WorkerDied, OSError, subprocess.TimeoutExpired):
                self.kill()


class BackendRun:
    """One backend's worker, restarted after a crash or a timeout."""

    def __init__(self, name: str, log_path: Path, source: str | None, startup_timeout_s: float,
                 timeout_s: float, threads: int | None = None) -> None:
        self.name = name
        #: intra-op threads for the worker's runtimes when several workers share the cores
        #: (None: each runtime's default, all cores)
        self.threads = threads
        self.log_path = log_path
        self.source = source
        self.startup_timeout_s = startup_timeout_s
        self.timeout_s = timeout_s
        self.worker: WorkerProcess | None = None
        self.ready: dict[str, Any] | None = None
        self.starts = 0
        self.dead: str | None = None  # the worker cannot be restarted: why

    def ensure_started(self) -> dict[str, Any]:
        """The worker's ``ready`` message (devices, what each can run), starting it if needed."""
        if self.worker is not None and self.ready is not None:
            return self.ready
        self.starts += 1
        w = WorkerProcess(self.name, self.log_path, self.source, self.worker_env())
        try:
            ready = w.expect("ready", self.startup_timeout_s)
        except (WorkerDied, WorkerTimeout):
            w.kill()
            raise
        self.worker, self.ready = w, ready
        return ready

    def worker_env(self) -> dict[str, str]:
        """The worker's environment: this process's, and when workers share the cores
        (``threads``), each one's share, for OpenMP and MKL and for runtimes with a
        thread pool of their own (``HAL_THREADS``, which ``hal.plugin.host_threads()``
        reads); a value the caller set is kept."""
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.threads:  # threads that spin on a shared core slow everyone down
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "HAL_THREADS"):
                env.setdefault(var, str(self.threads))
        return env

    def execute(self, cmd: CellCommand, timeout_s: float | None = None) -> Outcome:
        """Run one cell command; a death or a timeout becomes the cell's outcome
        (``timeout_s``: this command's own bound instead of the per-cell one)."""
        timeout_s = timeout_s or self.timeout_s
        if self.dead:
            return Outcome(Status.CRASH, self.dead)
        try:
            self.ensure_started()
        except (WorkerDied, WorkerTimeout) as e:
            self.dead = f"the worker could not be restarted: {e}"
            return Outcome(Status.CRASH if isinstance(e, WorkerDied) else Status.TIMEOUT, self.dead)
        w = self.worker
        assert w is not None
        t0 = time.monotonic()
        w.stage = None
        try:
            w.send(cmd.to_dict())
            w.expect("start", timeout_s)
            return Outcome.from_dict(w.expect("done", timeout_s))
        except WorkerTimeout:
            w.kill()
            self.worker = None
            return Outcome(Status.TIMEOUT, f"no result within {timeout_s:g}s; the worker was "
                           f"killed and restarted for the remaining cells", w.stage,
                           duration_s=time.monotonic() - t0, detail=w.log_tail(lines=40, chars=6000))
        except WorkerDied as e:
            self.worker = None
            return Outcome(Status.CRASH, str(e), w.stage, duration_s=time.monotonic() - t0,
                           detail=w.log_tail(lines=40, chars=6000))

    def request(self, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send a non-cell command and wait for its ``done`` (no restart on failure)."""
        self.ensure_started()
        assert self.worker is not None
        try:
            self.worker.send(cmd)
            return self.worker.expect("done", timeout)
        except (WorkerDied, WorkerTimeout) as e:
            self.worker.kill()
            self.worker = None
            return {"status": Status.CRASH.value, "message": str(e)}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
            self.ready = None


def safe_name(s: str) -> str:
    """``s`` as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


class WorkerPool:
    """The workers of one orchestrator, by key (a backend's name, or another worker of
    it), with the scratch folder their inputs and outputs go through."""

    def __init__(self, workdir: Path | None, source: str | None, startup_timeout_s: float,
                 timeout_s: float, jobs: int = 1) -> None:
        import tempfile

        self.own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hal-conformance-"))
        (self.workdir / "out").mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        self.source = source
        self.startup_timeout_s = startup_timeout_s
        self.timeout_s = timeout_s
        #: OpenMP threads per worker when several share the cores (None: the default)
        self.threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
        self.runs: dict[str, BackendRun] = {}
        self.lock = threading.Lock()

    def get(self, name: str, key: str | None = None) -> BackendRun:
        """``name``'s worker (``key``: another worker of the same backend)."""
        key = key or name
        with self.lock:
            if key not in self.runs:
                self.runs[key] = BackendRun(name, self.workdir / f"worker-{safe_name(key)}.log",
                                            self.source, self.startup_timeout_s, self.timeout_s,
                                            self.threads)
            return self.runs[key]

    def data(self, model: str) -> Path:
        """The model's inputs as an .npz (written once)."""
        from . import cases

        path = self.workdir / "data" / f"{safe_name(model)}.npz"
        with self.lock:
            if not path.exists():
                np.savez(path, **cases.data(model))
        return path

    def out_path(self, cell_id: str) -> Path:
        return self.workdir / "out" / f"{safe_name(cell_id)}.npy"

    def close(self, key: str) -> None:
        run = self.runs.get(key)
        if run is not None:
            run.close()

    def close_all(self, remove: bool = True) -> None:
        """Stop every worker; remove the scratch folder when it is ours."""
        import shutil

        for run in list(self.runs.values()):
            run.close()
        if remove and self.own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
