"""The TPU executable: pads batches to a compiled bucket, runs the XLA program,
profiles it, and writes/reads its artifact (SavedModel + program text)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hal import ArtifactError, Device, Executable, ExecutableInfo, InvalidInputError

from .buckets import Buckets, batch_of

META = "tpu.json"
SAVED = "saved_model"
PROGRAM_DIR = "program"


class TpuExecutable(Executable):
    def __init__(self, info: ExecutableInfo, device: Device, program, buckets: Buckets,
                 meta: dict[str, Any], stablehlo: dict[int, str] | None = None):
        super().__init__(info, device)
        self.program = program
        self.buckets = buckets
        self.meta = meta  # kind, names, per-bucket call layout: what load() needs
        self.stablehlo = dict(stablehlo or {})  # torch path: the module given to call-module

    # --- running ---------------------------------------------------------------------------
    def bucket_for(self, inputs: list[np.ndarray]) -> tuple[int, int]:
        """(rows, bucket) for these inputs."""
        if not self.buckets.batched:
            return self.buckets.sizes[0], self.buckets.sizes[0]
        n = batch_of(inputs)
        if n is None:
            raise InvalidInputError(
                f"inputs have different batch sizes {[a.shape[:1] for a in inputs]}",
                "pass the same number of rows for every input")
        return n, self.buckets.pick(n)

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        n, m = self.bucket_for(inputs)
        if m == n:
            return self.program(m, inputs)
        return [o[:n] for o in self.program(m, self.buckets.pad(inputs, m))]

    # --- profiling ---------------------------------------------------------------------------
    def profile_extras(self, inputs: list[np.ndarray]) -> dict[str, Any]:
        n, m = self.bucket_for(inputs)
        out: dict[str, Any] = {"batch_buckets": list(self.buckets.sizes), "bucket": m,
                               "padded_rows": m - n, "notes": [], "unavailable": {}}
        pad = (f"; batch {n} was padded to bucket {m} ({m - n} of {m} rows, "
               f"{100 * (m - n) / m:.0f}%, are padding and were sliced off)" if m != n
               else f"; batch {n} ran unpadded")
        out["notes"].append(f"XLA static shapes: compiled batch buckets {list(self.buckets.sizes)}"
                            + pad if self.buckets.batched else
                            f"XLA static shapes: one compiled shape (batch {m}), no padding")
        try:
            from .cost import analyse

            cost = analyse(self.program.ir(m, "hlo"))
            cost["bucket"] = m
            cost["source"] = ("XLA HloCostAnalysis of the HLO TensorFlow built for this bucket "
                              "(stage='hlo', run through jaxlib's binding)")
            out["xla_cost_analysis"] = cost
        except Exception as e:  # noqa: BLE001 - jaxlib missing or its binding changed
            out["unavailable"]["xla_cost_analysis"] = (
                "XLA cost analysis needs jaxlib's HloCostAnalysis binding: "
                f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
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

    # --- artifact ------------------------------------------------------------------------------
    def write_artifact(self, directory: Path) -> None:
        """SavedModel + per-bucket StableHLO and HLO text + tpu.json."""
        self.program.save(str(directory / SAVED))
        prog = directory / PROGRAM_DIR
        prog.mkdir()
        for n in self.buckets.sizes:
            shlo = self.stablehlo.get(n)
            if shlo is None:
                shlo = self.program.ir(n, "stablehlo")
            (prog / f"b{n}.stablehlo.mlir").write_text(shlo)
            (prog / f"b{n}.hlo.txt").write_text(self.program.ir(n, "hlo"))
        meta = dict(self.meta, buckets=self.buckets.to_dict())
        (directory / META).write_text(json.dumps(meta, indent=1))


def read_meta(artifact: Path) -> dict[str, Any]:
    try:
        return json.loads((artifact / META).read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"the tpu artifact has no readable {META} ({type(e).__name__})",
                            "re-create it with hal compile") from None
