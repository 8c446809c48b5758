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
    #: share of samples whose argmax equals the oracle's (None: not judged)
    min_top1: float | None
    #: digits accuracy may be at most this many points below the oracle's
    max_accuracy_drop_pts: float | None
    why: str
    #: (emulated precision, factor): where the model's own sensitivity is known (torch
    #: autocast at that precision, measured per model), an error within factor × that
    #: emulated error passes, whatever SNR and top-1 say: on an ill-conditioned model any
    #: honest implementation of the precision loses them too
    relative_to: tuple[str, float] | None = None

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

#: the operator tier: outputs are tensors, not class scores, so only the error size is
#: judged, at the zoo's float limits; int8 by SNR, since the error of quantizing one
#: operator's inputs and outputs is the whole point (per-tensor int8 of inputs in [-3, 3]
#: gives ~40 dB on an identity; 15 dB is ~18% RMS error, far beyond any honest quantizer)
OPS_POLICY: dict[str, Tolerance] = {t.precision: t for t in (
    Tolerance("fp32", 1e-4, 80.0, None, None,
              "as the zoo's fp32; 80 dB because a single transcendental op in fp32 sits "
              "nearer its rounding than a whole network does"),
    Tolerance("fp16", 1e-2, 40.0, None, None, "as the zoo's fp16, no classes to agree on"),
    Tolerance("bf16", 5e-2, 25.0, None, None, "as the zoo's bf16, no classes to agree on"),
    Tolerance("int8", None, 15.0, None, None,
              "one quantized operator: SNR ≥ 15 dB (≈18% RMS error) catches a wrong scale, "
              "zero point or layout, and leaves room for ops whose output range is wide"),
    Tolerance("int8-dynamic", None, 15.0, None, None, "as int8"),
)}

#: the architecture tier: real networks with seeded weights and no labels, judged on
#: 16 images. Float precisions as the zoo's but with the looser SNR a deep network's
#: accumulated rounding needs; int8 by an SNR floor that catches a broken quantizer and
#: a top-1 agreement floor (random weights leave small top-1 margins over 1000 classes).
MODELS_POLICY: dict[str, Tolerance] = {t.precision: t for t in (
    Tolerance("fp32", 1e-4, 70.0, 0.999, None,
              "single precision over a deep network: still 1e-4 of max|ref|, which fp16-sized "
              "error (1e-3) breaks"),
    Tolerance("fp16", 2e-2, 30.0, 0.9, None,
              "half precision through ~50-200 layers: within 2e-2 (30 dB, 90% top-1), or "
              "within 4× of what fp16 arithmetic (torch autocast) gives on this model",
              ("fp16", 4.0)),
    Tolerance("bf16", 1e-1, 15.0, 0.8, None,
              "8 mantissa bits through a deep network: within 1e-1 (15 dB, 80% top-1), or "
              "within 4× of what bf16 arithmetic gives on this model", ("bf16", 4.0)),
    Tolerance("int8", None, 12.0, 0.5, None,
              "static int8 calibrated on 16 images: SNR ≥ 12 dB and top-1 agreement ≥ 50% on "
              "16 images, or an error within 4× of bf16 arithmetic's on this model (int8 keeps "
              "8 bits, as bf16's mantissa does; per-tensor activation scales lose a little "
              "more). A wrong scale, zero point or layout breaks both", ("bf16", 4.0)),
    Tolerance("int8-dynamic", None, 12.0, 0.5, None, "as int8", ("bf16", 4.0)),
)}

#: the tolerance policy of each suite (``full`` judges each case by its own suite's)
POLICIES: dict[str, dict[str, Tolerance]] = {"quick": POLICY, "ops": OPS_POLICY,
                                              "models": MODELS_POLICY}

#: precision honesty: an fp16/bf16 cell must show at least 1/HONESTY_MARGIN of the error
#: that arithmetic at that precision gives on this model (torch autocast on the oracle's
#: host, where data movement stays fp32 and matmul/conv/linear/attention round). A
#: backend computing fp32 sits 100-10000x below that; an honest one within a few x.
HONESTY_MARGIN = 30.0
#: below this emulated error the model has too little rounding arithmetic to tell
HONESTY_MIN_EMULATED = 1e-4
#: a static int8 cell closer than this to the oracle (relative to max|ref|) quantized
#: nothing: one int8 step of an activation alone is ~1e-2 of its range
INT8_EXACT = 1e-5


def honesty(precision: str, rel_max_err: float, emulated: dict[str, float | None]) -> str | None:
    """Why the cell's error is impossible for its claimed precision, or None.

    ``emulated`` maps fp16/bf16 to the relative error of the model under autocast
    at that precision (None where it could not be emulated)."""
    if precision in ("fp16", "bf16"):
        e = emulated.get(precision)
        if e is not None and e >= HONESTY_MIN_EMULATED and rel_max_err * HONESTY_MARGIN < e:
            return (f"max|err| {rel_max_err:.2e}·max|ref| is over {HONESTY_MARGIN:g}× below what "
                    f"{precision} arithmetic gives on this model ({e:.2e}, torch autocast): "
                    f"the outputs were computed at a higher precision than {precision}")
    if precision == "int8":
        e = emulated.get("fp16")
        if e is not None and e >= HONESTY_MIN_EMULATED and rel_max_err < INT8_EXACT:
            return (f"max|err| {rel_max_err:.2e}·max|ref| shows no quantization error at all "
                    f"(int8 gives ≥ {INT8_EXACT:g}): nothing was quantized")
    return None


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
    accuracy: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def compare(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None) -> Metrics:
    """How far ``out`` is from the oracle's ``ref``: errors scaled by max|ref|, SNR,
    top-1 agreement with the oracle and, given ``labels``, accuracy."""
    out = np.asarray(out, dtype=np.float64).reshape(ref.shape)
    ref = np.asarray(ref, dtype=np.float64)
    err = np.abs(out - ref)
    max_ref = float(np.abs(ref).max()) if ref.size else 0.0
    max_ref = max_ref or 1.0
    noise = float(np.square(out - ref).sum())
    signal = float(np.square(ref).sum())
    snr = None if noise == 0 else (
        float(10 * np.log10(signal / noise)) if signal > 0 else -300.0)
    top1 = out.argmax(-1) == ref.argmax(-1) if ref.ndim and ref.size else np.ones(1, bool)
    return Metrics(
        max_abs_err=float(err.max()) if err.size else 0.0,
        mean_abs_err=float(err.mean()) if err.size else 0.0, max_abs_ref=max_ref,
        rel_max_err=(float(err.max()) if err.size else 0.0) / max_ref, snr_db=snr,
        top1_agreement=float(np.mean(top1)),
        accuracy=None if labels is None else float((out.argmax(-1) == labels).mean()))


#: the band never passes an output without signal: an all-zero output has an SNR of 0 dB
#: and an unrelated one about -3 dB, while torch's own bf16 autocast keeps 2.4-6.5 dB on
#: the worst-conditioned random-weight architectures (MobileNetV1/V2, EfficientNet-B0,
#: MobileViTV2), whose bf16 error is 40-79% of max|ref|
BAND_MIN_SNR_DB = 1.0


def judge(m: Metrics, precision: str, reference_accuracy: float | None,
          suite: str = "quick", emulated: dict[str, float | None] | None = None) -> list[str]:
    """Every rule the cell breaks (empty: it passes). ``emulated``: the model's error
    under torch autocast per precision (see :attr:`Tolerance.relative_to`)."""
    t = POLICIES[suite][precision]
    broken = []
    if not np.isfinite(m.max_abs_err):
        return ["outputs contain NaN or Inf"]
    relative = None
    if t.relative_to and (emulated or {}).get(t.relative_to[0]) is not None:
        name, factor = t.relative_to
        limit = factor * emulated[name]
        signal = m.snr_db is None or m.snr_db >= BAND_MIN_SNR_DB
        if m.rel_max_err <= limit and signal:
            return []  # within what this precision's arithmetic does to this very model
        relative = (f"and max|err| {m.rel_max_err:.2e}·max|ref| > {limit:.2e}·max|ref| "
                    f"({factor:g}× what {name} arithmetic gives on this model)" if signal else
                    f"and SNR {m.snr_db:.1f} dB < {BAND_MIN_SNR_DB:g} dB: the output carries "
                    f"no signal, whatever {name} arithmetic does to this model")
    if t.max_rel_err is not None and m.rel_max_err > t.max_rel_err:
        broken.append(f"max abs error {m.max_abs_err:.3g} = {m.rel_max_err:.2e}·max|ref| "
                      f"> {t.max_rel_err:g}·max|ref|")
    if t.min_snr_db is not None and m.snr_db is not None and m.snr_db < t.min_snr_db:
        broken.append(f"SNR {m.snr_db:.1f} dB < {t.min_snr_db:g} dB")
    if t.min_top1 is not None and m.top1_agreement < t.min_top1:
        broken.append(f"top-1 agreement {m.top1_agreement:.2%} < {t.min_top1:.1%}")
    if t.max_accuracy_drop_pts is not None and reference_accuracy is not None:
        drop = (reference_accuracy - m.accuracy) * 100
        if drop > t.max_accuracy_drop_pts:
            broken.append(f"accuracy {m.accuracy:.2%} is {drop:.2f} points below the "
                          f"reference's {reference_accuracy:.2%} (max {t.max_accuracy_drop_pts:g})")
    return broken + ([relative] if broken and relative else [])
