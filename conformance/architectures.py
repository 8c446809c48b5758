"""The conformance suite's architecture tier: real image classifiers with seeded random weights.

Each :class:`Architecture` is a published (small) vision architecture as Hugging Face
``transformers`` implements it, built from a config alone (nothing is downloaded) with weights
drawn from a seed derived from its name. :data:`ONNX_MODELS` adds ONNX-native classics from the
``onnx`` wheel's "light" backend tests, whose stripped weights are refilled from a seed. The
orchestrator imports this module without a framework: torch, transformers and onnx are imported
inside the functions that need them.

Why the weights are not simply HF's default init. A random network is only a useful
conformance workload when every block changes the output, activations keep a sane scale and the
fp64 oracle's top-1 is a real decision. HF's init leaves many tensors at one constant (norm
weights 1, biases 0, layer-scale 1e-5, ConvNeXt-V2's GRN gamma/beta 0, Swin's relative-position
table 0): whole blocks become (near-)identities and the bias/affine paths go untested. Several
conv nets get N(0, 0.02) conv weights, under which the signal shrinks layer by layer until
BatchNorm's eps dominates and every image gives the same logits (EfficientNet, MobileViT). And
a random head reads mostly the image-independent part of the features, so the top-1 is one
class for every image. :meth:`Architecture.build` therefore, after HF's init, under the name's
seed (torch's CPU generator):

1. gives every parameter that HF set to one constant ``c`` the value
   ``c + 0.1 * max(1, |c|) * N(0, 1)`` element-wise, so gates, biases and affines are live;
2. runs one batch of :func:`images` (``CALIBRATION_SEED``, 16 images) through the model with
   LSUV hooks that scale each Conv/Linear (but the head) to unit output RMS in forward order,
   and with BatchNorm in train mode so its running statistics become those of the batch;
3. redraws each classifier head (a ``Linear`` with ``num_labels`` outputs) on the features of
   the same batch: ``W = N(0, 1) / sqrt(D) / s``, ``b = -W @ mean``, with ``s`` the feature's
   std, raised to at least 5 % of its |mean| (a nearly constant feature, weighted by 1/std,
   would cancel against the bias down to fp32 noise) and to 0.1 × the median std.

Two builds in one process are bit-identical. Steps 2–3 run float32 kernels, so another CPU or
thread count can change the calibrated weights in their last bits (~1e-7 relative); calibrating
in float64 would avoid that but costs 20× for depthwise/grouped convs (see the report).

Result over 256 :func:`images` (seed 1): fp32 and fp64 logits differ by at most 7e-5 of the
logit range, top-1 agrees on every image, 56–161 distinct top-1 classes. For 1000 continuous
logits the top-1/top-2 gap has a density at 0, so 1–3.5 % of images have a gap below 1e-3 of the
range (i.i.d. Gaussian logits give 1.8 %); a top-1 comparison should discount images whose
oracle margin (:func:`margins`) is within the compared backend's error.

LeViT is not in the catalogue: it has no LayerNorm, and with random weights the BatchNorm'd
queries and keys of high-contrast images give attention logits with std ~50, a saturated softmax
that turns fp32 rounding into 13–17 % of the logit range.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: :func:`images` seed of the batch that sets BatchNorm statistics and standardises the head;
#: evaluation and int8 calibration should use other seeds.
CALIBRATION_SEED = 7_700_001
CALIBRATION_IMAGES = 16
#: HF's init draws from torch's global RNG: builds take turns so that each sees only its seed
_BUILD_LOCK = threading.Lock()

#: the block vocabulary of :attr:`Architecture.blocks`
BLOCKS = frozenset({
    "residual", "bottleneck", "depthwise", "squeeze-excite", "grouped", "attention",
    "windowed-attention", "inverted-residual", "layer-norm", "batch-norm", "group-norm",
    "patch-embed", "hybrid-conv-attention", "pooling-mixer", "spatial-reduction-attention",
    "separable-attention", "additive-attention", "global-response-norm", "layer-scale",
    "hard-swish", "relative-position-bias",
    # ONNX_MODELS
    "fire", "concat", "channel-shuffle", "dense-concat", "inception", "lrn", "fully-connected",
})


@dataclass(frozen=True)
class Architecture:
    """One transformers image classifier, built from a config with seeded weights."""

    name: str
    description: str
    blocks: tuple[str, ...]
    input_shape: tuple[int, ...] = (3, 224, 224)
    num_labels: int = 1000
    #: torch.export with a dynamic batch Dim works (checked by tests/test_architectures.py)
    dynamic_batch: bool = True
    #: torch.export with dynamic H and W (any size in 96..512) works: the exported program matches
    #: eager at 192x192, 256x256 and 224x288 (checked by tests/test_architectures.py)
    dynamic_spatial: bool = False
    #: the transformers model class and its config class
    hf_class: str = ""
    hf_config: str = ""
    #: config keyword arguments, as (key, value) pairs with tuples for lists (hashable)
    config: tuple[tuple[str, Any], ...] = ()
    #: the output field holding the logits (PP-LCNet names it ``last_hidden_state``)
    output: str = "logits"

    @property
    def seed(self) -> int:
        """The weights' seed: from the name, so stable across runs and machines."""
        return int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:4], "little")

    def build(self):
        """A float32 ``torch.nn.Module`` in eval mode: ``x [N, *input_shape] -> logits [N, num_labels]``."""
        return _build(self)


def _listify(value):
    if isinstance(value, tuple):
        return [_listify(v) for v in value]
    return value


def _a(name, description, blocks, hf_class, hf_config, output="logits", dynamic_spatial=False,
       **config) -> Architecture:
    return Architecture(name, description, tuple(blocks), dynamic_spatial=dynamic_spatial,
                        hf_class=hf_class, hf_config=hf_config, output=output,
                        config=tuple(sorted((k, _freeze(v)) for k, v in config.items())))


def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    _a("resnet18",
       "transformers ResNetForImageClassification, ResNet-18 (basic blocks 2-2-2-2)",
       ("residual", "batch-norm"),
       "ResNetForImageClassification", "ResNetConfig", dynamic_spatial=True,
       hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic"),
    _a("resnet50",
       "transformers ResNetForImageClassification, ResNet-50 (bottleneck blocks 3-4-6-3)",
       ("residual", "bottleneck", "batch-norm"),
       "ResNetForImageClassification", "ResNetConfig", dynamic_spatial=True,
       hidden_sizes=[256, 512, 1024, 2048], depths=[3, 4, 6, 3], layer_type="bottleneck"),
    _a("mobilenet_v1",
       "transformers MobileNetV1ForImageClassification, MobileNet-V1 1.0 (TF 'same' padding)",
       ("depthwise", "batch-norm"),
       "MobileNetV1ForImageClassification", "MobileNetV1Config",
       depth_multiplier=1.0, classifier_dropout_prob=0.0),
    _a("mobilenet_v2",
       "transformers MobileNetV2ForImageClassification, MobileNet-V2 1.0 (ReLU6, TF padding)",
       ("inverted-residual", "depthwise", "batch-norm"),
       "MobileNetV2ForImageClassification", "MobileNetV2Config",
       depth_multiplier=1.0, classifier_dropout_prob=0.0),
    _a("efficientnet_b0",
       "transformers EfficientNetForImageClassification, EfficientNet-B0 (width 1.0, depth 1.0)",
       ("inverted-residual", "depthwise", "squeeze-excite", "batch-norm"),
       "EfficientNetForImageClassification", "EfficientNetConfig", dynamic_spatial=True,
       width_coefficient=1.0, depth_coefficient=1.0, image_size=224, hidden_dim=1280, dropout_rate=0.2),
    _a("regnety_400mf",
       "transformers RegNetForImageClassification, RegNetY-400MF (group width 8, SE)",
       ("residual", "bottleneck", "grouped", "squeeze-excite", "batch-norm"),
       "RegNetForImageClassification", "RegNetConfig", dynamic_spatial=True, embedding_size=32,
       hidden_sizes=[48, 104, 208, 440], depths=[1, 3, 6, 6], groups_width=8, layer_type="y"),
    _a("hgnetv2_b0",
       "transformers HGNetV2ForImageClassification, PP-HGNetV2-B0 stages (light blocks, learnable affine)",
       ("residual", "depthwise", "batch-norm"),
       "HGNetV2ForImageClassification", "HGNetV2Config", dynamic_spatial=True,
       stem_channels=[3, 16, 16], stage_in_channels=[16, 64, 256, 512],
       stage_mid_channels=[16, 32, 64, 128], stage_out_channels=[64, 256, 512, 1024],
       stage_num_blocks=[1, 1, 2, 1], stage_light_block=[False, False, True, True],
       stage_kernel_size=[3, 3, 5, 5], stage_numb_of_layers=[3, 3, 3, 3],
       use_learnable_affine_block=True, hidden_sizes=[64, 256, 512, 1024], depths=[1, 1, 2, 1]),
    _a("pplcnet_x1_0",
       "transformers PPLCNetForImageClassification, PP-LCNet x1.0 (depthwise 3x3/5x5, SE, hard-swish)",
       ("depthwise", "squeeze-excite", "hard-swish", "batch-norm"),
       "PPLCNetForImageClassification", "PPLCNetConfig", dynamic_spatial=True,
       output="last_hidden_state", scale=1.0),
    _a("convnextv2_atto",
       "transformers ConvNextV2ForImageClassification, ConvNeXt-V2 Atto (dims 40-80-160-320, depths 2-2-6-2)",
       ("residual", "depthwise", "inverted-residual", "layer-norm", "global-response-norm", "patch-embed"),
       "ConvNextV2ForImageClassification", "ConvNextV2Config", dynamic_spatial=True,
       hidden_sizes=[40, 80, 160, 320], depths=[2, 2, 6, 2]),
    _a("vit_tiny",
       "transformers ViTForImageClassification, ViT-Ti/16 (hidden 192, 12 layers, 3 heads, eager attention)",
       ("attention", "patch-embed", "layer-norm", "residual"),
       "ViTForImageClassification", "ViTConfig",
       hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
       image_size=224, patch_size=16),
    _a("swin_nano",
       "transformers SwinForImageClassification, Swin at 2/3 of Swin-T's width "
       "(embed 64, depths 2-2-6-2, heads 2-4-8-16, window 7)",
       ("windowed-attention", "relative-position-bias", "patch-embed", "layer-norm", "residual"),
       "SwinForImageClassification", "SwinConfig",
       embed_dim=64, depths=[2, 2, 6, 2], num_heads=[2, 4, 8, 16], window_size=7, drop_path_rate=0.0),
    _a("pvt_v2_b0",
       "transformers PvtV2ForImageClassification, PVT-v2-B0 (spatial-reduction attention, dw-conv MLP)",
       ("spatial-reduction-attention", "attention", "depthwise", "patch-embed", "layer-norm", "residual"),
       "PvtV2ForImageClassification", "PvtV2Config", dynamic_spatial=True),
    _a("mobilevit_xxs",
       "transformers MobileViTForImageClassification, MobileViT-XXS (at 224)",
       ("hybrid-conv-attention", "attention", "inverted-residual", "depthwise", "batch-norm", "layer-norm"),
       "MobileViTForImageClassification", "MobileViTConfig",
       hidden_sizes=[64, 80, 96], neck_hidden_sizes=[16, 16, 24, 48, 64, 80, 320], expand_ratio=2.0,
       image_size=224, classifier_dropout_prob=0.0, hidden_dropout_prob=0.0),
    _a("mobilevitv2_050",
       "transformers MobileViTV2ForImageClassification, MobileViT-V2 0.5 (separable self-attention, at 224)",
       ("hybrid-conv-attention", "separable-attention", "inverted-residual", "depthwise", "batch-norm",
        "group-norm"),
       "MobileViTV2ForImageClassification", "MobileViTV2Config",
       width_multiplier=0.5, image_size=224, classifier_dropout_prob=0.0),
    _a("swiftformer_xs",
       "transformers SwiftFormerForImageClassification, SwiftFormer-XS (additive attention, 2 heads)",
       ("hybrid-conv-attention", "additive-attention", "depthwise", "batch-norm", "layer-scale", "residual"),
       "SwiftFormerForImageClassification", "SwiftFormerConfig", dynamic_spatial=True),
    _a("poolformer_s12",
       "transformers PoolFormerForImageClassification, PoolFormer-S12 (avg-pool token mixer)",
       ("pooling-mixer", "group-norm", "layer-scale", "residual", "patch-embed"),
       "PoolFormerForImageClassification", "PoolFormerConfig", dynamic_spatial=True),
)}


def select(names: list[str] | None) -> list[str]:
    """The architecture names matching ``names`` (all when empty), in catalogue order."""
    if not names:
        return list(ARCHITECTURES)
    unknown = [n for n in names if n not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"unknown architecture(s) {', '.join(unknown)}; "
                         f"valid: {', '.join(ARCHITECTURES)}")
    return [n for n in ARCHITECTURES if n in names]


def images(n: int, seed: int, shape: tuple[int, ...] = (3, 224, 224)) -> np.ndarray:
    """``n`` deterministic natural-looking images, ImageNet-normalised float32 ``[n, *shape]``.

    Each image (its own generator, seeded by ``(seed, index)``, so a prefix of a larger
    request is the same images) is a 1/f field of low-frequency colour waves, Gaussian blobs,
    2–4 occluding shapes with sharp anti-aliased edges (half of them striped) and a little
    pixel noise, stretched to an RMS contrast of 0.18–0.24 and clipped to [0, 1]: what a
    classifier's early layers see in photographs (smooth regions, edges, texture, correlated
    colour), not white noise. 3 channels use ImageNet's mean/std; others use 0.45/0.225.
    """
    c, h, w = shape
    mean = np.array(IMAGENET_MEAN if c == 3 else (0.45,) * c, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD if c == 3 else (0.225,) * c, np.float32)[:, None, None]
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    out = np.empty((n, c, h, w), np.float32)
    for i in range(n):
        img = _scene(np.random.default_rng([seed, i]), c, yy, xx, 1.0 / max(h, w))
        out[i] = (np.clip(img, 0.0, 1.0) - mean) / std
    return np.ascontiguousarray(out)


def _scene(rng: np.random.Generator, c: int, yy: np.ndarray, xx: np.ndarray, px: float) -> np.ndarray:
    img = np.broadcast_to(rng.uniform(0.25, 0.75, (c, 1, 1)), (c,) + yy.shape).copy()
    for _ in range(8):  # 1/f colour waves, 0.5–5 cycles per image
        f = rng.uniform(0.5, 5.0)
        theta, phase = rng.uniform(0, 2 * np.pi, 2)
        wave = np.cos(2 * np.pi * f * (np.cos(theta) * xx + np.sin(theta) * yy) + phase)
        img += (0.18 / f) * rng.normal(0, 1, (c, 1, 1)) * wave
    for _ in range(rng.integers(2, 6)):  # soft blobs
        cy, cx = rng.uniform(0, 1, 2)
        sigma = rng.uniform(0.03, 0.2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
        img += rng.uniform(-0.4, 0.4, (c, 1, 1)) * blob
    for _ in range(rng.integers(2, 5)):  # occluding shapes with sharp edges
        mask = _shape_mask(rng, yy, xx, px)
        colour = rng.uniform(0, 1, (c, 1, 1))
        if rng.random() < 0.5:  # a striped texture inside
            f, theta = rng.uniform(6, 20), rng.uniform(0, np.pi)
            colour = colour + 0.15 * np.sin(2 * np.pi * f * (np.cos(theta) * xx + np.sin(theta) * yy))
        alpha = rng.uniform(0.6, 1.0) * mask
        img = img * (1 - alpha) + colour * alpha
    img += rng.normal(0, 0.02, img.shape)
    # photographs are exposed to a similar contrast; without this a few high-contrast images
    # carry activations several times the calibration batch's through the whole network
    return img.mean() + (img - img.mean()) * (rng.uniform(0.18, 0.24) / max(float(img.std()), 1e-6))


def _shape_mask(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, px: float) -> np.ndarray:
    """A half-plane, rectangle or ellipse, anti-aliased over about one pixel."""
    def edge(d):
        return 1.0 / (1.0 + np.exp(-np.clip(d / px, -30, 30)))

    kind = rng.integers(3)
    if kind == 0:
        theta, off = rng.uniform(0, 2 * np.pi), rng.uniform(-0.3, 0.3)
        return edge(np.cos(theta) * (xx - 0.5) + np.sin(theta) * (yy - 0.5) - off)
    cy, cx = rng.uniform(0.15, 0.85, 2)
    ry, rx = rng.uniform(0.08, 0.35, 2)
    if kind == 1:
        return edge(ry - np.abs(yy - cy)) * edge(rx - np.abs(xx - cx))
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return edge((1 - r) * min(ry, rx))


def margins(logits: np.ndarray) -> np.ndarray:
    """Each row's top-1 minus top-2 logit, as a fraction of its logit range (max − min)."""
    top = np.sort(np.asarray(logits, np.float64), axis=-1)
    return (top[..., -1] - top[..., -2]) / np.maximum(top[..., -1] - top[..., 0], 1e-300)


# --- building (torch / transformers imported here only) ---------------------------------

@lru_cache(maxsize=1)
def _logits_wrapper():
    import torch

    class Logits(torch.nn.Module):
        """Calls the HF model with ``pixel_values`` and returns one plain logits tensor."""

        def __init__(self, model, output: str):
            super().__init__()
            self.model = model
            self.output = output

        def forward(self, x):
            return getattr(self.model(pixel_values=x), self.output)

    return Logits


def _build(arch: Architecture):
    import torch
    import transformers

    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(arch.seed)
        config = getattr(transformers, arch.hf_config)(
            num_labels=arch.num_labels, attn_implementation="eager",
            **{k: _listify(v) for k, v in arch.config})
        model = getattr(transformers, arch.hf_class)(config).to(torch.float32)
        module = _logits_wrapper()(model, arch.output).eval()
        with torch.no_grad():
            _perturb_constants(module)
            x = torch.from_numpy(images(CALIBRATION_IMAGES, CALIBRATION_SEED, arch.input_shape))
            heads = _heads(module, arch.num_labels)
            _calibrate(module, x, heads)
            _standardise_heads(module, x, heads)
    return module.eval()


def _perturb_constants(module) -> None:
    import torch

    for p in module.parameters():
        flat = p.detach().reshape(-1)
        if p.is_floating_point() and bool((flat == flat[0]).all()):
            c = float(flat[0])
            p.add_(0.1 * max(1.0, abs(c)) * torch.randn_like(p))


def _calibrate(module, x, heads) -> None:
    """One pass over ``x``: LSUV rescaling of every Conv/Linear (but the heads), then BN statistics.

    Each Conv/Linear's weight and bias are scaled by one scalar so that its output has unit RMS
    on ``x`` (layer-sequential unit variance, Mishkin & Matas 2016): HF initialises many conv
    nets with N(0, 0.02), under which the signal shrinks layer by layer until BatchNorm's eps
    dominates and the output no longer depends on the image. The hooks rescale in forward
    order during the pass, so every layer sees its inputs already rescaled, and each BatchNorm
    (train mode, cumulative average) records the statistics of the rescaled network.
    """
    import torch

    skip = {id(h) for h in heads}
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
              and id(m) not in skip]
    done: set[int] = set()

    def rescale(layer, args, out):
        if id(layer) in done or not isinstance(out, torch.Tensor):
            return None
        done.add(id(layer))
        rms = float(out.double().pow(2).mean().sqrt())
        if not rms > 0:
            return None
        layer.weight.div_(rms)
        if layer.bias is not None:
            layer.bias.div_(rms)
        return out / rms

    hooks = [layer.register_forward_hook(rescale) for layer in layers]
    bns = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly its statistics
        bn.train()
    try:
        module(x)
    finally:
        for hook in hooks:
            hook.remove()
        module.eval()


def _heads(module, num_labels: int) -> list:
    import torch

    heads = [m for m in module.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    if not heads:
        raise RuntimeError("no Linear classifier head with num_labels outputs found")
    return heads


def _standardise_heads(module, x, heads) -> None:
    import torch

    features: dict[int, torch.Tensor] = {}
    hooks = [h.register_forward_pre_hook(lambda m, args, i=i: features.__setitem__(i, args[0].detach()))
             for i, h in enumerate(heads)]
    try:
        module(x)
    finally:
        for hook in hooks:
            hook.remove()
    for i, head in enumerate(heads):
        f = features[i].reshape(-1, head.in_features).double()
        mean, std = f.mean(0), f.std(0)
        # a feature nearly constant over images would otherwise be amplified until W @ f and
        # the bias cancel to fp32 noise: cap |mean| / s at 20, and floor dead features
        s = torch.clamp(torch.sqrt(std ** 2 + (0.05 * mean) ** 2), min=0.1 * float(std.median()) + 1e-12)
        w = torch.randn(head.out_features, head.in_features, dtype=torch.float64)
        w = w / head.in_features ** 0.5 / s
        head.weight.copy_(w.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_((-(w @ mean)).to(head.bias.dtype))


# --- ONNX-native models: the onnx wheel's "light" backend tests, refilled ------------------

@dataclass(frozen=True)
class OnnxArchitecture:
    """A classic ONNX model zoo graph from ``onnx/backend/test/data/light``, with seeded weights.

    Those files keep the graph of the real model but replace every large tensor by
    ``ConstantOfShape(<name>__SHAPE, value=0.02)`` (and keep some small trained tensors, which
    mean nothing next to new weights). :meth:`load` redraws every float parameter from the
    name's seed, by role: Conv/Gemm weights He-normal (``N(0, 2/fan_in)``), biases
    ``N(0, 0.02)``, BatchNorm (and the Mul/Add form DenseNet and Inception-v2 use) scale
    ``U(0.8, 1.2)`` — × 0.25 where the BatchNorm ends a residual branch, so the sum does not
    double each block — shift ``N(0, 0.05)``, mean 0, variance 1; then the classifier is
    standardised on :func:`images` as in :meth:`Architecture.build` (one onnxruntime run).
    The batch dimension is made symbolic (``N``) and each Reshape's hard-coded leading batch 1
    becomes -1, so any batch size runs. Output: ``probabilities`` (the graph ends in Softmax)
    or ``logits``; ``output_shape`` is one sample's. The redrawn tensors are the same on every
    machine; the head, fitted to an onnxruntime fp32 run, may differ in the last bits between
    CPUs with different kernels.
    """

    name: str
    description: str
    blocks: tuple[str, ...]
    file: str
    output: str = "probabilities"
    output_shape: tuple[int, ...] = (1000,)
    input_shape: tuple[int, ...] = (3, 224, 224)
    num_labels: int = 1000
    dynamic_batch: bool = True

    @property
    def seed(self) -> int:
        return int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:4], "little")

    def path(self):
        import os

        import onnx

        return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", self.file)

    def load(self) -> bytes:
        """The serialized ``ModelProto`` (IR 7, opset as shipped), one float32 input ``[N, *input_shape]``."""
        return _load_onnx(self)


ONNX_MODELS: dict[str, OnnxArchitecture] = {a.name: a for a in (
    OnnxArchitecture("onnx_resnet50", "onnx light_resnet50 (Caffe2 ResNet-50 v1, opset 9)",
                     ("residual", "bottleneck", "batch-norm"), "light_resnet50.onnx"),
    OnnxArchitecture("onnx_squeezenet",
                     "onnx light_squeezenet (SqueezeNet 1.0 fire modules, conv classifier, opset 9)",
                     ("fire", "concat"), "light_squeezenet.onnx", output_shape=(1000, 1, 1)),
    OnnxArchitecture("onnx_shufflenet",
                     "onnx light_shufflenet (ShuffleNet v1 g=4: grouped 1x1, channel shuffle, opset 9)",
                     ("grouped", "depthwise", "channel-shuffle", "residual", "batch-norm"),
                     "light_shufflenet.onnx"),
    OnnxArchitecture("onnx_densenet121", "onnx light_densenet121 (DenseNet-121, BN as Mul/Add, opset 9)",
                     ("dense-concat", "batch-norm"), "light_densenet121.onnx", output="logits",
                     output_shape=(1000, 1, 1)),
    OnnxArchitecture("onnx_inception_v1", "onnx light_inception_v1 (GoogLeNet, LRN, opset 9)",
                     ("inception", "concat", "lrn"), "light_inception_v1.onnx"),
    OnnxArchitecture("onnx_inception_v2", "onnx light_inception_v2 (BN-Inception, opset 9)",
                     ("inception", "concat", "batch-norm"), "light_inception_v2.onnx"),
    OnnxArchitecture("onnx_bvlc_alexnet", "onnx light_bvlc_alexnet (AlexNet, LRN, three FC layers, opset 9)",
                     ("lrn", "fully-connected"), "light_bvlc_alexnet.onnx"),
    OnnxArchitecture("onnx_zfnet512", "onnx light_zfnet512 (ZFNet-512, LRN, three FC layers, opset 9)",
                     ("lrn", "fully-connected"), "light_zfnet512.onnx"),
)}


def _load_onnx(arch: OnnxArchitecture) -> bytes:
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(arch.path())
    graph = model.graph
    rng = np.random.default_rng(arch.seed)
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))

    # the placeholders: ConstantOfShape(<name>__SHAPE) -> <name>
    shapes: dict[str, tuple[int, ...]] = {}
    keep_nodes = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shapes[node.output[0]] = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        else:
            keep_nodes.append(node)
    for t in graph.initializer:
        if t.data_type == TensorProto.FLOAT and t.name in consumers:
            shapes.setdefault(t.name, tuple(t.dims))
    new_inits = []
    for t in graph.initializer:
        if t.name.endswith("__SHAPE") or t.name in shapes or t.name not in consumers:
            continue
        if t.data_type == TensorProto.INT64 and any(n.op_type == "Reshape" and i == 1
                                                     for n, i in consumers[t.name]):
            shape = numpy_helper.to_array(t).copy()
            if shape.size > 1 and shape[0] == 1 and -1 not in shape:
                shape[0] = -1  # the hard-coded batch of 1
            t = numpy_helper.from_array(shape, t.name)
        new_inits.append(t)
    for name, shape in shapes.items():  # graph order, so the draws are reproducible
        new_inits.append(numpy_helper.from_array(_onnx_param(rng, name, shape, consumers), name))
    graph.ClearField("node")
    graph.node.extend(keep_nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(new_inits)
    names = {t.name for t in new_inits}
    data = [i for i in graph.input if i.name not in names and i.name not in inits]
    if len(data) != 1:
        raise RuntimeError(f"{arch.file}: expected one data input, found {[i.name for i in data]}")
    graph.ClearField("input")
    graph.input.extend(data)
    for value in (graph.input[0], *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    graph.ClearField("value_info")
    model.ir_version = 7
    _standardise_onnx_head(model, rng)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _onnx_param(rng: np.random.Generator, name: str, shape: tuple[int, ...], consumers) -> np.ndarray:
    """A seeded value for parameter ``name``, by the role its (first) consumer gives it."""
    node, i = consumers[name][0]
    via = None
    if node.op_type in ("Unsqueeze", "Reshape"):  # look through to the real consumer
        via = node.op_type
        node, i = consumers[node.output[0]][0]
    if node.op_type in ("Conv", "Gemm") and i == 1:
        if node.op_type == "Conv":
            fan_in = int(np.prod(shape[1:]))
        else:  # B is [out, in] with transB (a Reshape of [1, 1, out, in] in inception_v1)
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            fan_in = shape[-1] if trans_b or via == "Reshape" else shape[0]
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    if node.op_type in ("Conv", "Gemm") and i == 2:
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    if node.op_type == "BatchNormalization":
        residual = any(n.op_type in ("Sum", "Add") for n, _ in consumers.get(node.output[0], []))
        if i == 1:
            return (rng.uniform(0.8, 1.2, shape) * (0.25 if residual else 1.0)).astype(np.float32)
        if i == 2:
            return (0.05 * rng.standard_normal(shape)).astype(np.float32)
        return np.full(shape, 0.0 if i == 3 else 1.0, np.float32)
    if via == "Unsqueeze" and node.op_type == "Mul":  # BatchNorm as x * Unsqueeze(scale) ...
        return rng.uniform(0.8, 1.2, shape).astype(np.float32)
    if via == "Unsqueeze" and node.op_type == "Add":  # ... + Unsqueeze(shift)
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)
    raise RuntimeError(f"no rule to fill {name} {shape} (consumed by {node.op_type} input {i})")


def _standardise_onnx_head(model, rng: np.random.Generator) -> None:
    """Redraw the classifier (the last Conv/Gemm) on standardised features; sharpen a softmax.

    As in :meth:`Architecture.build`, plus: where the graph ends in Softmax, the head is scaled
    so that the median top-1 probability over the calibration images is 0.5, as a trained
    classifier's is (with logits of std ~1 over 1000 classes every probability would be near
    1e-3, and an int8 output, in steps of 1/256, would hold only ties).
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    reshaped = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Reshape"}
    head = [n for n in graph.node if n.op_type in ("Conv", "Gemm")][-1]
    w_name = reshaped.get(head.input[1], head.input[1])
    w_shape = tuple(inits[w_name].dims)
    trans_b = head.op_type == "Conv" or any(a.name == "transB" and a.i for a in head.attribute)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.add().name = head.input[0]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    shape = tuple(d.dim_value for d in graph.input[0].type.tensor_type.shape.dim[1:])
    x = images(CALIBRATION_IMAGES // 2, CALIBRATION_SEED, shape)
    feats = session.run([head.input[0]], {graph.input[0].name: x})[0].astype(np.float64)
    # one row per image (Gemm) or per image and position (1x1 Conv)
    rows = np.moveaxis(feats, 1, -1) if feats.ndim == 4 else feats.reshape(len(x), -1)
    flat = rows.reshape(-1, rows.shape[-1])
    mean, std = flat.mean(0), flat.std(0, ddof=1)
    s = np.maximum(np.sqrt(std ** 2 + (0.05 * mean) ** 2), 0.1 * np.median(std) + 1e-12)
    n_out = w_shape[-2] if len(w_shape) == 4 and head.op_type == "Gemm" else (
        w_shape[0] if trans_b else w_shape[-1])  # inception_v1's Gemm weight is [1, 1, out, in]
    w = rng.standard_normal((n_out, flat.shape[1])) / np.sqrt(flat.shape[1]) / s
    b = -(w @ mean)
    after = _ops_after(graph, head.output[0])
    if after and after[-1] == "Softmax":
        w = w * _sharpen(rows @ w.T + b, after[:-1])
        b = -(w @ mean)
    w_new = w if trans_b else w.T
    inits[w_name].CopyFrom(numpy_helper.from_array(w_new.reshape(w_shape).astype(np.float32), w_name))
    if len(head.input) > 2:
        inits[head.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32), head.input[2]))


def _ops_after(graph, name: str) -> list[str]:
    """The op types of the single-consumer chain that starts at tensor ``name``."""
    ops = []
    while True:
        nxt = [n for n in graph.node if name in n.input]
        if len(nxt) != 1:
            return ops
        ops.append(nxt[0].op_type)
        name = nxt[0].output[0]


def _sharpen(z: np.ndarray, between: list[str]) -> float:
    """The factor on the head's logits ``z`` that makes the median top-1 softmax probability 0.5."""
    def median_top1(t: float) -> float:
        y = t * z
        for op in between:
            if op == "Relu":
                y = np.maximum(y, 0)
            elif op == "GlobalAveragePool":
                y = y.reshape(len(y), -1, y.shape[-1]).mean(1)
            else:
                raise RuntimeError(f"cannot follow {op} between the classifier and its softmax")
        y = y.reshape(len(y), -1)
        p = np.exp(y - y.max(1, keepdims=True))
        return float(np.median(p.max(1) / p.sum(1)))

    lo, hi = 1e-2, 1e3  # the top-1 probability grows with the factor
    for _ in range(60):
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if median_top1(mid) < 0.5 else (lo, mid)
    return float(np.sqrt(lo * hi))
