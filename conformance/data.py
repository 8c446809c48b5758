"""The zoo's data: scikit-learn's bundled digits, split once and for all.

The split is a fixed permutation, so training, calibration and evaluation
samples are disjoint and the same on every machine. Images are scaled to
[-1, 1] and upsampled by pixel repetition (exact, no interpolation library)
to each model's input shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SPLIT_SEED = 20250101
N_EVAL = 600
N_CALIB = 100


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, 8, 8) float32 in [-1, 1]
    labels: np.ndarray  # (N,) int64


@lru_cache(maxsize=1)
def splits() -> dict[str, Split]:
    """``eval`` (600), ``calib`` (100) and ``train`` (the remaining 1097)."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    images = (d.images.astype(np.float32) / 8.0 - 1.0).astype(np.float32)
    labels = d.target.astype(np.int64)
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    parts = {"eval": perm[:N_EVAL], "calib": perm[N_EVAL:N_EVAL + N_CALIB],
             "train": perm[N_EVAL + N_CALIB:]}
    return {k: Split(images[np.sort(v)], labels[np.sort(v)]) for k, v in parts.items()}


def shape_input(images: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(N, 8, 8) images → (N, *shape) float32: flattened for a vector input,
    else upsampled by an integer factor and repeated over channels."""
    n = images.shape[0]
    if len(shape) == 1:
        if shape[0] != 64:
            raise ValueError(f"a flat input must have 64 features, not {shape[0]}")
        return np.ascontiguousarray(images.reshape(n, 64), dtype=np.float32)
    c, h, w = shape
    if h % 8 or w % 8:
        raise ValueError(f"input {shape} is not an integer multiple of 8×8")
    up = np.repeat(np.repeat(images, h // 8, axis=1), w // 8, axis=2)
    return np.ascontiguousarray(np.repeat(up[:, None], c, axis=1), dtype=np.float32)


def model_data(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Evaluation inputs and labels, and calibration inputs, for one input shape."""
    s = splits()
    return {"x_eval": shape_input(s["eval"].images, shape), "y_eval": s["eval"].labels,
            "x_calib": shape_input(s["calib"].images, shape)}
