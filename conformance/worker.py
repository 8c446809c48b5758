"""One backend's worker process: ``python -m hal_conformance.worker``.

The orchestrator starts one worker per backend so that a segfault, abort,
hang or out-of-memory kill takes down only that worker. Commands arrive as
JSON lines on stdin; events go back as JSON lines on the file descriptor
``--fd`` (stdout is pointed at stderr, so a runtime that prints cannot
corrupt the protocol). Outputs are written to ``.npy`` files and judged by
the orchestrator, which never imports a framework.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from hal.plugin import missing

from .protocol import Status

#: the profile loop runs this long per cell (after a short warm-up).
PROFILE_SECONDS = 0.2
#: samples per call when the executable takes any batch size
RUN_CHUNK = 100


class Worker:
    def __init__(self, backend: str, source: str, proto) -> None:
        import hal
        import hal.plugin
        from hal.api import backend_status

        self.hal = hal
        self.proto = proto
        self.reg = hal.plugin.registry()
        if backend not in self.reg.backends:
            raise SystemExit(f"backend {backend!r} is not registered")
        self.backend = self.reg.backends[backend]
        self.status = backend_status(self.backend)
        self.source = source
        self.models: dict[str, Any] = {}
        self.stage = "compile"

    def send(self, **event: Any) -> None:
        self.proto.write(json.dumps(event, default=str) + "\n")
        self.proto.flush()

    # --- discovery ------------------------------------------------------------------
    def ready(self) -> None:
        """Report the backend and, per device, which precisions it can attempt
        (``unsupported[p]`` is None) and why not."""
        from hal.formats import plan

        from .policy import JUDGED_PRECISIONS, ORACLE_PRECISION
        from .protocol import BackendInfo, DeviceInfo, Refusal
        from .results import Reason

        st = self.status
        devices = []
        dyn = bool(getattr(self.backend, "dynamic_batch", False))
        for dev in st.devices:
            d = DeviceInfo.from_dict(dev.to_dict(), st.name, dyn)
            offered = self.backend.precisions_for(dev) if dev.available else ()
            for p in JUDGED_PRECISIONS + (ORACLE_PRECISION,):
                if not dev.available:
                    why = Refusal(Reason.NOT_AVAILABLE,
                                  f"{dev.target} is not available: {dev.reason or 'no reason given'}")
                elif p not in offered:
                    why = Refusal(Reason.NOT_OFFERED, f"{dev.target} does not offer {p} "
                                  f"(offers {', '.join(offered) or 'nothing'})")
                else:
                    try:
                        plan(self.source, self.backend.formats_for(dev, p), self.reg.converters)
                        why = None
                    except self.hal.HalError as e:
                        why = Refusal(Reason.NO_CONVERSION, f"no conversion from {self.source}: {e}")
                d.unsupported[p] = why
            # whether ONNX's node corpus can run here (at fp32, as ONNX's expected outputs are)
            try:
                plan("onnx", self.backend.formats_for(dev, "fp32"), self.reg.converters)
                d.takes_onnx = dev.available and "fp32" in offered
            except self.hal.HalError:
                d.takes_onnx = False
            devices.append(d)
        info = BackendInfo(st.name, st.version, st.missing_runtime, st.error, st.description, dyn,
                           self.source, devices)
        self.send(event="ready", pid=os.getpid(), **info.to_dict())

    # --- one cell -------------------------------------------------------------------
    def model(self, name: str, onnx_path: str | None):
        if self.source == "onnx":
            if not onnx_path:
                raise self.hal.UsageError(f"no ONNX file for {name}",
                                          "export goldens with the ONNX models included")
            return onnx_path
        if name not in self.models:
            from .cases import build

            self.models[name] = build(name)
        return self.models[name]

    def exported(self, name: str, module, example: tuple) -> Any:
        """``torch.export`` of the model at the example's shapes, once per model; a
        failure is remembered and raised again for every cell of that model."""
        if (name, "export") not in self.models:
            import torch

            from hal.formats.builtin import export_static

            try:
                self.models[(name, "export")] = export_static(
                    module, tuple(torch.from_numpy(a) for a in example))
            except self.hal.CompileError as e:  # the export is the stage that broke
                self.models[(name, "export")] = e
        got = self.models[(name, "export")]
        if isinstance(got, Exception):
            raise got
        return got

    def at(self, cmd, stage: str) -> None:
        """Enter a stage: the orchestrator hears it, so a crash or a timeout names it too."""
        self.stage = stage
        self.send(event="stage", id=cmd.id, stage=stage)

    def cell(self, command: dict) -> None:
        from hal.errors import stage_of

        from .protocol import CellCommand, Outcome

        hal = self.hal
        cmd = CellCommand.from_dict(command)
        self.send(event="start", id=cmd.id, t=time.time())
        t0 = time.perf_counter()
        self.stage = "compile"
        try:
            res = Outcome.from_dict(self._run(cmd))
        except hal.UnsupportedError as e:
            res = Outcome(Status.UNSUPPORTED, str(e), stage_of(e, self.stage))
        except hal.HalError as e:
            disagree = type(e).__name__ == "OracleDisagreement"  # the fp64 ONNX oracle's refusal
            res = Outcome(Status.ORACLE_DISAGREEMENT if disagree else Status.ERROR,
                          f"{type(e).__name__}: {e}", stage_of(e, self.stage))
        except Exception as e:  # noqa: BLE001 - a backend bug is a result, not our crash
            res = Outcome(Status.ERROR, f"{type(e).__name__}: {str(e)[:500]}", stage_of(e, self.stage),
                          detail="".join(traceback.format_exc(limit=8))[-3000:])
        res.duration_s = time.perf_counter() - t0
        self.send(event="done", id=cmd.id, **res.to_dict())

    def _run(self, cmd) -> dict[str, Any]:
        from .cases import inputs_of

        hal = self.hal
        data = np.load(cmd.data, allow_pickle=False)
        xs = inputs_of(data, "eval")
        precision = cmd.precision
        calib = None
        if precision == "int8":
            cal = inputs_of(data, "calib")
            calib = [tuple(a[i:i + 1] for a in cal) for i in range(len(cal[0]))]
        model = self.model(cmd.model, cmd.onnx)
        dynamic = cmd.shapes == "dynamic"
        example = tuple(a[:1] for a in xs)
        if dynamic:  # the model carries a dynamic batch; no example input pins it
            self.at(cmd, "export")
            model, example = export_dynamic(model, xs), None
        elif cmd.shared_export and self.source != "onnx":
            # one torch.export program per model, handed to every precision's compile (as
            # ExecuTorch's flows share an export): the tiers' time goes to the backends
            self.at(cmd, "export")
            model = self.exported(cmd.model, model, example)
        self.at(cmd, "compile")
        t0 = time.perf_counter()
        exe = hal.compile(model, target=cmd.target, precision=precision,
                          example_input=example, calibration=calib, cache=False)
        wall = time.perf_counter() - t0
        out: dict[str, Any] = {
            "status": Status.RAN, "compile_time_s": exe.info.compile_time_s or wall,
            "conversion_path": list(exe.info.conversion_path), "device_kind": exe.info.device_kind,
            "backend_version": exe.info.backend_version, "notes": list(exe.info.notes),
            "executable_precision": exe.info.precision, "placement": exe.info.placement,
            "placement_later": []}
        if exe.info.target != cmd.target or exe.info.precision != precision:
            raise hal.CompileError(
                f"asked for {cmd.target} at {precision}, got {exe.info.target} at "
                f"{exe.info.precision}", "a backend must never fall back silently")
        if dynamic:
            fixed = [s.shape[0] for s in exe.info.inputs if s.shape and s.shape[0] is not None]
            if fixed:
                raise hal.CompileError(
                    f"the {self.backend.name} backend declares dynamic_batch, but compiled a "
                    f"dynamic-batch model to an executable that takes batch {fixed[0]} only",
                    "keep the batch dimension dynamic, or declare dynamic_batch = False")
        self.at(cmd, "run")
        np.save(cmd.out, run_varied(exe, xs) if dynamic else run_all(exe, xs))
        # a runtime that partitions lazily knows more once it ran: ask again
        self._later(out, "after running", _ask(exe))
        if cmd.profile:
            batch = [a[:_batch_of(exe, 1)] for a in xs]
            prof = exe.profile(*batch, warmup=3, duration_s=PROFILE_SECONDS, extras=False)
            out.update(latency_p50_ms=prof.latency_ms["p50"], latency_batch=int(batch[0].shape[0]),
                       latency_iterations=prof.iterations, timer=prof.timer)
        if cmd.roundtrip:
            self.at(cmd, "save-reload")
            res = self._save_and_reload(exe, xs)
            self._later(out, "of the reloaded artifact", res.pop("placement", None))
            out.update(res)
        return out

    @staticmethod
    def _later(out: dict[str, Any], when: str, summary: dict[str, Any] | None) -> None:
        """Keep a later placement record that lists other host ops than the compile's."""
        first = out.get("placement") or {}
        if summary is not None and (summary.get("host_ops"), summary.get("host")) != (
                first.get("host_ops"), first.get("host")):
            out["placement_later"].append({"when": when, **summary})

    def _save_and_reload(self, exe, xs: list[np.ndarray]) -> dict[str, Any]:
        """Artifact size from a real ``save``; then ``hal.load`` must give back the same model."""
        hal = self.hal
        res: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="hal-conf-") as tmp:
            path = Path(tmp) / "cell.hal"
            try:
                exe.save(path)
            except hal.HalError as e:
                res["notes_save"] = f"not saveable: {e}"
                return res
            res["artifact_size_bytes"] = exe.info.artifact_size_bytes
            res["hal_file_bytes"] = path.stat().st_size
            # the profiled batch: already compiled for, and int8-dynamic scales
            # (which depend on the batch) are the same on both sides
            batch = [a[:_batch_of(exe, 1)] for a in xs]
            try:
                back = hal.load(path)
            except hal.UnsupportedError:
                # the load's placement gate refused host ops the compile did not report:
                # load it allowed, so that the judge sees that record
                back = hal.load(path, allow_host_ops=True)
            res["placement"] = back.info.placement
            a = np.asarray(exe.run(batch)[0], dtype=np.float64)
            b = np.asarray(back.run(batch)[0], dtype=np.float64)
            res["roundtrip_max_abs"] = float(np.abs(a - b).max()) if a.size else 0.0
            del back
        return res

    def emulate(self, cmd: dict) -> None:
        """The model under torch autocast at fp16 and bf16: what arithmetic at those
        precisions does to this model's outputs (data movement stays fp32 under autocast,
        matmul/conv/linear/attention round). Evidence for precision honesty."""
        from .cases import inputs_of

        try:
            import torch

            module = self.model(cmd["model"], None)
            n = cmd.get("samples")  # the error's size is what matters, not every sample
            xs = [torch.from_numpy(a[:n]) for a in inputs_of(np.load(cmd["data"], allow_pickle=False), "eval")]
            done: dict[str, Any] = {}
            for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
                try:
                    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
                        y = module(*xs)
                    np.save(cmd["out"][name], y.float().numpy().astype(np.float64))
                    done[name] = cmd["out"][name]
                except Exception as e:  # noqa: BLE001 - no emulation: that precision is not checked
                    done[name] = None
                    done[f"{name}_why"] = f"{type(e).__name__}: {str(e)[:200]}"
            self.send(event="done", id=cmd["id"], status=Status.RAN.value, **done)
        except Exception as e:  # noqa: BLE001
            self.send(event="done", id=cmd["id"], status=Status.ERROR.value, message=f"{type(e).__name__}: {e}")

    def export_onnx(self, cmd: dict) -> None:
        """The model as ONNX (torch.onnx, dynamic batch) for goldens, so a device
        host without torch can still feed the same model to its backend."""
        try:
            import torch

            from .cases import build, inputs_of

            xs = tuple(torch.from_numpy(a[:2]) for a in inputs_of(np.load(cmd["data"], allow_pickle=False), "eval"))
            batch = torch.export.Dim("batch", min=1, max=4096)
            prog = torch.onnx.export(build(cmd["model"]), xs, dynamo=True, verbose=False,
                                     dynamic_shapes=tuple({0: batch} for _ in xs))
            prog.save(cmd["path"])
            self.send(event="done", id=cmd["id"], status=Status.RAN.value)
        except Exception as e:  # noqa: BLE001
            self.send(event="done", id=cmd["id"], status=Status.ERROR.value, message=f"{type(e).__name__}: {e}")


def _ask(exe) -> dict[str, Any] | None:
    """The runner's placement now, as a summary (None when it gives none or fails)."""
    try:
        p = exe.runner.placement()
        return p.summary() if p is not None else None
    except Exception:  # noqa: BLE001 - the compile-time record stands
        return None


def _batch_of(exe, default: int) -> int:
    d = exe.info.inputs[0].shape[0] if exe.info.inputs and exe.info.inputs[0].shape else None
    return default if d is None else int(d)


#: a dynamic-batch cell runs its samples in batches of these sizes, in turn
VARIED_BATCHES = (1, 3, 8)


def export_dynamic(module, xs: list[np.ndarray]):
    """``torch.export`` with a dynamic batch ``Dim`` on every input: what a caller hands
    hal when the executable must take any batch size."""
    import torch

    batch = torch.export.Dim("batch", min=1, max=1024)
    args = tuple(torch.from_numpy(a[:2]) for a in xs)
    return torch.export.export(module, args, dynamic_shapes=tuple({0: batch} for _ in args))


def run_varied(exe, xs: list[np.ndarray]) -> np.ndarray:
    """Every sample, in batches of 1, 3 and 8 in turn: one executable, several batch sizes."""
    outs, i, k = [], 0, 0
    while i < len(xs[0]):
        parts = [x[i:i + VARIED_BATCHES[k % len(VARIED_BATCHES)]] for x in xs]
        y = exe.run(parts)
        outs.append(np.asarray(y[0]).astype(np.float64))
        i, k = i + len(parts[0]), k + 1
    return np.concatenate(outs)


def run_all(exe, xs: list[np.ndarray], chunk: int = 0) -> np.ndarray:
    """Run every sample: in chunks when the batch is dynamic, else in the
    compiled batch size (the last chunk padded by repetition and trimmed)."""
    b = _batch_of(exe, chunk or RUN_CHUNK)
    total = len(xs[0])
    outs = []
    for i in range(0, total, b):
        parts = [x[i:i + b] for x in xs]
        n = len(parts[0])
        if n < b and _batch_of(exe, 0):
            parts = [np.concatenate([p, np.repeat(p[-1:], b - n, axis=0)]) for p in parts]
        y = exe.run(parts)
        if len(y) != 1:
            raise ValueError(f"the executable returned {len(y)} outputs; every conformance "
                             "model has one")
        outs.append(np.asarray(y[0])[:n].astype(np.float64))
    return np.concatenate(outs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="hal conformance worker (one backend)")
    p.add_argument("--backend", required=True)
    p.add_argument("--fd", type=int, required=True, help="write protocol events here")
    p.add_argument("--source", choices=("torch.nn", "onnx"), default=None)
    args = p.parse_args(argv)
    proto = os.fdopen(args.fd, "w", buffering=1)
    os.dup2(2, 1)  # anything a runtime prints goes to the log, not into the protocol
    sys.stdout = sys.stderr
    faulthandler.enable()  # a segfault or abort leaves its Python stack in the log
    source = args.source or ("onnx" if missing(("torch",)) else "torch.nn")
    if source == "torch.nn":
        import torch  # noqa: F401 - import torch now, not on the first cell's clock
    w = Worker(args.backend, source, proto)
    w.ready()
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "cell":
            w.cell(cmd)
        elif cmd["op"] == "export_onnx":
            w.export_onnx(cmd)
        elif cmd["op"] == "emulate":
            w.emulate(cmd)
        elif cmd["op"] == "quit":
            break
    proto.close()


if __name__ == "__main__":
    main()
