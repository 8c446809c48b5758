"""The zoo's model list, without importing a framework.

The orchestrator, the report writers and the goldens checker only need names
and shapes; the PyTorch definitions live in :mod:`hal_conformance.zoo` and are
imported only by the worker processes and by ``train.py``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    #: one sample's shape; every model takes a batch of these (float32).
    input_shape: tuple[int, ...]
    #: what the single output holds: "logits" or "probabilities" (after softmax).
    output: str = "logits"


MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("convnet", "the seed's ConvNet: conv 3→32, conv 32→64, two 2×2 max-pools, "
              "FC 128, FC 10 (flatten 64·8·8 on 32×32 input)", (3, 32, 32)),
    ModelSpec("mlp", "the seed's TPU MLP: dense 256 ReLU, dropout 0.3, dense 128 ReLU, "
              "dense 10 softmax", (64,), output="probabilities"),
    ModelSpec("digits_cnn", "a small CNN for the 8×8 digits upscaled to 16×16", (1, 16, 16)),
    ModelSpec("resnet", "a residual net: BatchNorm, two basic blocks (one strided, 1×1 "
              "projection), global average pooling", (1, 16, 16)),
    ModelSpec("mobilenet", "MobileNet-style depthwise-separable blocks with BatchNorm and "
              "ReLU6 (the typical Edge TPU / NPU workload)", (3, 16, 16)),
)}


def weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.safetensors"


def weights_digest(name: str) -> str:
    """sha256 of the shipped weights file (goldens record it)."""
    return hashlib.sha256(weights_path(name).read_bytes()).hexdigest()
