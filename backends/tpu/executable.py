"""The TPU executable: pads batches to a compiled bucket, runs the XLA program,
profiles it, and writes its artifact (see :mod:`.artifact`)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hal import Device, InvalidInputError
from hal.plugin import ExecutableInfo, Runner, brief

from .artifact import META, PROGRAM_DIR, SAVED, WEIGHTS, write_weights
from .buckets import Buckets, batch_of


class TpuExecutable(Runner):
    thread_safe = True  # a tf.function takes concurrent calls (see infer)

    def __init__(self, info: ExecutableInfo, device: Device, program, buckets: Buckets,
                 meta: dict[str, Any], stablehlo: dict[int, str] | None = None):
        super().__init__(info, device)
        self.program = program
        self.buckets = buckets
        self.meta = meta  # kind, names, per-bucket call layout: what load() needs
        self.stablehlo = dict(stablehlo or {})  # torch path: the module given to call-module

    # --- running ---------------------------------------------------------------------------
    def calls_for(self, inputs: list[np.ndarray]) -> list[tuple[int, int]]:
        """The (rows, bucket) program calls these inputs take."""
        if not self.buckets.batched:
            return [(self.buckets.sizes[0], self.buckets.sizes[0])]
        n = batch_of(inputs)
        if n is None:
            raise InvalidInputError(
                f"inputs have different batch sizes {[a.shape[:1] for a in inputs]}",
                "pass the same number of rows for every input")
        return self.buckets.calls(n)

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Thread-safe without a lock: a tf.function may be called from many threads
        (TensorFlow locks its own tracing), each call gets fresh input and output
        tensors (``tf.constant`` copies or pins the array for the call; outputs are
        new tensors, never reused), and padding builds new arrays. The only shared
        state, the program's lazily built per-bucket runners, can at worst be
        built twice, identically."""
        calls = self.calls_for(inputs)
        if len(calls) == 1 and calls[0][0] == calls[0][1]:
            return self.program(calls[0][1], inputs)
        parts, start = [], 0
        for rows, m in calls:
            chunk = [a[start:start + rows] for a in inputs]
            start += rows
            outs = self.program(m, chunk if rows == m else self.buckets.pad(chunk, m))
            parts.append([o[:rows] for o in outs])
        return parts[0] if len(parts) == 1 else [np.concatenate(p) for p in zip(*parts)]

    # --- profiling ---------------------------------------------------------------------------
    def profile_extras(self, inputs: list[np.ndarray]) -> dict[str, Any]:
        calls = self.calls_for(inputs)
        n = sum(r for r, _ in calls)
        ran = sum(m for _, m in calls)
        m = calls[0][1]
        out: dict[str, Any] = {"batch_buckets": list(self.buckets.sizes), "bucket": m,
                               "bucket_calls": [list(c) for c in calls], "padded_rows": ran - n,
                               "notes": [], "unavailable": {}}
        how = " + ".join(f"{r} row{'s' * (r != 1)} in bucket {b}" if r == b else
                         f"{r} row{'s' * (r != 1)} padded to bucket {b}"
                         for r, b in calls)
        pad = (f" ({ran - n} of {ran} rows, {100 * (ran - n) / ran:.0f}%, are padding and were "
               f"sliced off)" if ran != n else " (no padding)")
        out["notes"].append(f"XLA static shapes: compiled batch buckets {list(self.buckets.sizes)}; "
                            f"batch {n} ran as {how}{pad}" if self.buckets.batched else
                            f"XLA static shapes: one compiled shape (batch {m}), no padding")
        try:
            from .cost import analyse

            cost = analyse(self.program.ir(m, "hlo"))
            cost["bucket"] = m  # per call of this bucket's program
            cost["calls_per_inference"] = len(calls)
            cost["source"] = ("XLA HloCostAnalysis of the HLO TensorFlow built for this bucket "
                              "(stage='hlo', run through jaxlib's binding)")
            out["xla_cost_analysis"] = cost
        except Exception as e:  # noqa: BLE001 - jaxlib missing or its binding changed
            out["unavailable"]["xla_cost_analysis"] = (
                "XLA cost analysis needs jaxlib's HloCostAnalysis binding: "
                f"{brief(e, 160, typed=True)}")
        if self.device.kind == "hardware":
            out.update(self._hardware_extras(inputs))
        else:
            out["unavailable"].update({
                "tpu_profiler_trace": "needs a TPU; this is XLA:CPU (emulated)",
                "peak_memory_bytes": "TPU HBM usage needs a TPU; XLA:CPU host memory is not "
                                     "tracked per program",
            })
        out["unavailable"].setdefault(
            "layers", "XLA fuses the model into one program; per-op times are in the TPU "
                      "profiler trace (hardware only)")
        out["unavailable"]["energy_j_per_inference"] = "Cloud TPU exposes no power telemetry to TensorFlow"
        return out

    def _hardware_extras(self, inputs: list[np.ndarray]) -> dict[str, Any]:
        import tensorflow as tf

        got: dict[str, Any] = {"unavailable": {}}
        logdir = tempfile.mkdtemp(prefix="hal-tpu-trace-")
        try:
            tf.profiler.experimental.start(logdir)
            for _ in range(5):
                self.infer(inputs)
            tf.profiler.experimental.stop()
            got["tpu_profiler_trace"] = logdir
        except Exception as e:  # noqa: BLE001
            got["unavailable"]["tpu_profiler_trace"] = f"tf.profiler failed: {type(e).__name__}: {e}"
        try:
            got["peak_memory_bytes"] = int(tf.config.experimental.get_memory_info("TPU:0")["peak"])
        except Exception as e:  # noqa: BLE001
            got["unavailable"]["peak_memory_bytes"] = f"TPU memory info unavailable: {type(e).__name__}"
        return got

    # --- placement ---------------------------------------------------------------------------
    def placement(self):
        """Every op of each bucket's XLA program: on the device, or on the host for
        host transfers and callbacks (:mod:`.placement`)."""
        from ..placement_once import once
        from .placement import placement

        return once(self, lambda: placement(self))

    # --- artifact ------------------------------------------------------------------------------
    def write_artifact(self, directory: Path) -> None:
        """Per-bucket StableHLO and HLO text + tpu.json, and the program: for
        torch its weights (data; the StableHLO is the program), else a SavedModel."""
        meta = dict(self.meta, buckets=self.buckets.to_dict())
        if self.meta["kind"] == "torch":
            import tensorflow as tf

            params = self.program.module.params
            meta["param_dtypes"] = [v.dtype.name for v in params]
            # bfloat16 is stored as float32 (exact); load casts it back
            write_weights(directory / WEIGHTS, [np.asarray(
                (tf.cast(v, tf.float32) if v.dtype == tf.bfloat16 else v).numpy()) for v in params])
        else:
            self.program.save(str(directory / SAVED))
        prog = directory / PROGRAM_DIR
        prog.mkdir()
        for n in self.buckets.sizes:
            shlo = self.stablehlo.get(n)
            if shlo is None:
                shlo = self.program.ir(n, "stablehlo")
            (prog / f"b{n}.stablehlo.mlir").write_text(shlo)
            (prog / f"b{n}.hlo.txt").write_text(self.program.ir(n, "hlo"))
        (directory / META).write_text(json.dumps(meta, indent=1))
