"""The tolerance policy: what each precision must achieve against the fp64 oracle.

Errors are scaled by the reference's largest magnitude (``max|ref|`` over the
whole evaluation batch) so that one rule fits logits of ~30 and probabilities
of ≤1. The reasoning behind each number is in docs/conformance.md; the short
version is in ``why``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: the precisions a cell can ask for (fp64 is the oracle's own, never judged).
JUDGED_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-dynamic")
ORACLE_PRECISION = "fp64"
#: the backend that is the oracle when installed; otherwise any backend whose
#: devices offer fp64 serves.
ORACLE_BACKEND = "reference"


@dataclass(frozen=True)
class Tolerance:
    precision: str
    #: max|out - ref| ≤ max_rel_err · max|ref|  (None: not judged)
    max_rel_err: float | None
    #: 10·log10(Σref² / Σ(out-ref)²) ≥ min_snr_db  (None: not judged)
    min_snr_db: float | None
    #: share of samples whose argmax equals the oracle's
    min_top1: float
    #: digits accuracy may be at most this many points below the oracle's
    max_accuracy_drop_pts: float | None
    why: str

    def to_dict(self) -> dict:
        return asdict(self)


POLICY: dict[str, Tolerance] = {t.precision: t for t in (
    Tolerance("fp32", 1e-4, 90.0, 0.999, None,
              "single precision: unit roundoff 6e-8, so even a different summation order or "
              "Winograd leaves ~1e-6 of max|ref| (≈130 dB); 1e-4 and 90 dB leave 100× headroom "
              "yet reject fp16-sized error (~1e-3, 60-75 dB), TF32 and bf16"),
    Tolerance("fp16", 1e-2, 45.0, 0.995, 1.0,
              "half precision: unit roundoff 4.9e-4 per op; measured 4e-4..2e-3 of max|ref| "
              "(57-76 dB) with fp32 accumulation; 1e-2 and 45 dB allow fp16 accumulation"),
    Tolerance("bf16", 5e-2, 30.0, 0.99, 1.0,
              "bfloat16 keeps 8 mantissa bits (unit roundoff 3.9e-3); measured up to 1e-2 of "
              "max|ref| (41-58 dB)"),
    Tolerance("int8", None, None, 0.99, 1.0,
              "static int8: error size depends on the quantizer, so judge what a user keeps: "
              "≥99% top-1 agreement and ≤1 point of accuracy lost (MLPerf's 99%-of-reference spirit)"),
    Tolerance("int8-dynamic", None, None, 0.99, 1.0,
              "dynamic int8 (weights int8, activations quantized per call): as static int8"),
)}

#: a cell whose oracle could not be trusted: its two independent implementations
#: disagreed on the model (or the second could not run it), so nothing is judged
#: against it; never a pass (see hal_backends.reference.onnx_oracle)
ORACLE_DISAGREEMENT = "oracle-disagreement"

#: a reloaded artifact must reproduce the executable it was saved from this closely
#: (relative to max|ref|), whatever the precision: saving must not change the model.
ROUNDTRIP_MAX_REL = 1e-5


@dataclass
class Metrics:
    max_abs_err: float
    mean_abs_err: float
    max_abs_ref: float
    rel_max_err: float
    snr_db: float | None  # None: bit-exact (infinite SNR)
    top1_agreement: float
    accuracy: float

    def to_dict(self) -> dict:
        return asdict(self)


def compare(out: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> Metrics:
    """How far ``out`` is from the oracle's ``ref``: errors scaled by max|ref|, SNR,
    top-1 agreement with the oracle and accuracy against ``labels``."""
    out = np.asarray(out, dtype=np.float64).reshape(ref.shape)
    ref = np.asarray(ref, dtype=np.float64)
    err = np.abs(out - ref)
    max_ref = float(np.abs(ref).max()) or 1.0
    noise = float(np.square(out - ref).sum())
    snr = None if noise == 0 else float(10 * np.log10(float(np.square(ref).sum()) / noise))
    return Metrics(
        max_abs_err=float(err.max()), mean_abs_err=float(err.mean()), max_abs_ref=max_ref,
        rel_max_err=float(err.max()) / max_ref, snr_db=snr,
        top1_agreement=float((out.argmax(-1) == ref.argmax(-1)).mean()),
        accuracy=float((out.argmax(-1) == labels).mean()))


def judge(m: Metrics, precision: str, reference_accuracy: float) -> list[str]:
    """Every rule the cell breaks (empty: it passes)."""
    t = POLICY[precision]
    broken = []
    if not np.isfinite(m.max_abs_err):
        return ["outputs contain NaN or Inf"]
    if t.max_rel_err is not None and m.rel_max_err > t.max_rel_err:
        broken.append(f"max abs error {m.max_abs_err:.3g} = {m.rel_max_err:.2e}·max|ref| "
                      f"> {t.max_rel_err:g}·max|ref|")
    if t.min_snr_db is not None and m.snr_db is not None and m.snr_db < t.min_snr_db:
        broken.append(f"SNR {m.snr_db:.1f} dB < {t.min_snr_db:g} dB")
    if m.top1_agreement < t.min_top1:
        broken.append(f"top-1 agreement {m.top1_agreement:.2%} < {t.min_top1:.1%}")
    if t.max_accuracy_drop_pts is not None:
        drop = (reference_accuracy - m.accuracy) * 100
        if drop > t.max_accuracy_drop_pts:
            broken.append(f"accuracy {m.accuracy:.2%} is {drop:.2f} points below the "
                          f"reference's {reference_accuracy:.2%} (max {t.max_accuracy_drop_pts:g})")
    return broken
