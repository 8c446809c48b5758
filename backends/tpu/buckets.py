"""Static-shape batch buckets.

XLA compiles one program per input shape, so the backend compiles a few batch
sizes ("buckets") and runs any other batch padded up to the next bucket, then
slices the padding off; a batch beyond the largest bucket runs as several
calls of it. Padding repeats the last real row, so padded rows are
valid inputs; results are exact as long as rows do not interact (true of an
eval-mode model, as every batching server assumes). Pure Python: no framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hal import InvalidInputError, UsageError
from hal.plugin import Option

#: the largest batch bucket (17 buckets at most): each bucket is one XLA program
MAX_BATCH = 1 << 16
#: backend options a caller may pass in ``hal.compile(..., options=...)``.
KNOWN_OPTIONS = {
    "max_batch": Option("also compile power-of-two batch buckets up to this size (default: the "
                        "example batch only); larger batches run in chunks of the largest bucket",
                        int, min=1, max=MAX_BATCH),
}


@dataclass(frozen=True)
class TpuOptions:
    max_batch: int | None = None


def parse_options(options: dict[str, Any]) -> TpuOptions:
    unknown = sorted(set(options) - set(KNOWN_OPTIONS))
    if unknown:
        raise UsageError(f"unknown tpu option(s) {', '.join(unknown)}",
                         "known options: " + "; ".join(f"{k}: {v}" for k, v in KNOWN_OPTIONS.items()))
    mb = options.get("max_batch")
    if mb is not None and (isinstance(mb, bool) or not isinstance(mb, int) or mb < 1):
        raise UsageError(f"tpu option max_batch={mb!r} is not a positive integer",
                         "pass e.g. options={'max_batch': 32}")
    return TpuOptions(max_batch=mb)


def plan(example_batch: int, max_batch: int | None) -> tuple[int, ...]:
    """The batch sizes to compile: the example batch, plus the powers of two up
    to ``max_batch`` when one is given."""
    sizes = {example_batch}
    if max_batch is not None:
        if max_batch < example_batch:
            raise UsageError(f"tpu option max_batch={max_batch} is below the example batch "
                             f"{example_batch}", f"pass max_batch ≥ {example_batch}")
        p = 1
        while p <= max_batch:
            sizes.add(p)
            p *= 2
    return tuple(sorted(sizes))


def batch_of(arrays: list[np.ndarray]) -> int | None:
    """The common leading dimension of every input, or None when there is none."""
    if not arrays or any(a.ndim == 0 for a in arrays):
        return None
    sizes = {int(a.shape[0]) for a in arrays}
    return sizes.pop() if len(sizes) == 1 else None


@dataclass(frozen=True)
class Buckets:
    sizes: tuple[int, ...]
    #: False when the model has no batch axis to pad (then one static shape).
    batched: bool

    def calls(self, n: int) -> list[tuple[int, int]]:
        """How a batch of ``n`` rows runs: ``(rows, bucket)`` per program call,
        chunks of the largest bucket first, the rest padded to the next bucket."""
        if n < 1:
            raise InvalidInputError(f"the batch has {n} rows", "pass at least one row")
        top = self.sizes[-1]
        out = [(top, top)] * (n // top)
        if n % top:
            out.append((n % top, next(s for s in self.sizes if s >= n % top)))
        return out

    def pad(self, arrays: list[np.ndarray], size: int) -> list[np.ndarray]:
        out = []
        for a in arrays:
            extra = size - a.shape[0]
            out.append(a if extra == 0 else np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"sizes": list(self.sizes), "batched": self.batched}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Buckets:
        return cls(tuple(int(s) for s in d["sizes"]), bool(d["batched"]))
