"""The operator tier's catalogue: single-operator cases, each written once in PyTorch.

Every case is one small module around one operator (or one variant of it: strided,
dilated, grouped, broadcast...). The orchestrator exports it, runs it on every backend
at every precision and judges it against the same module run in float64 by torch.
Importing this module imports no framework: torch is imported only when a case is
built, so the orchestrator and the report writers can list cases for free.

Inputs are ranged so the fp64 oracle is meaningful: ops defined on a half-line get
positive inputs, and discontinuous ops (floor, round, sign, argmax, comparisons)
get arguments kept at least 0.1 away from every jump, so rounding an input to
fp16 or int8 cannot flip an output. Coverage follows (and extends) ExecuTorch's
backend operator suite.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["Input", "OpCase", "OPS", "select", "make_inputs"]


@dataclass(frozen=True)
class Input:
    """One input of a case; ``make_inputs`` adds the leading batch dim."""

    shape: tuple[int, ...]
    dtype: str = "float32"       # "float32", or "int64" for indices
    low: float = -3.0            # floats: the clip (normal) or range (uniform) ...
    high: float = 3.0            # ... ints: uniform integers in [low, high)
    dist: str = "normal"         # "normal": N(0, 1) clipped to [low, high]; "uniform"


@dataclass(frozen=True)
class OpCase:
    name: str                    # unique id: "conv2d.dilated"; "sigmoid" for a one-case family
    op: str                      # operator family = row of the coverage matrix
    inputs: tuple[Input, ...]
    description: str             # one line: what exactly is exercised
    dynamic_batch: bool = True   # torch.export with a dynamic batch Dim works for it
    quantizable: bool = True     # False where static int8 makes no sense (says why)
    #: zero-argument callable returning the torch module (torch imported lazily)
    factory: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    def build(self) -> Any:
        """The case's module in eval mode; weights seeded from the name, so the same
        on every run and machine, without touching torch's global RNG state."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(zlib.crc32(self.name.encode()))
            module = self.factory()
        return module.eval()


class _Lazy:
    """A module imported on first attribute access (keeps torch out of import time)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


T = _Lazy("torch")
F = _Lazy("torch.nn.functional")
nn = _Lazy("torch.nn")


@functools.cache
def _fn_class(arity: int) -> type:
    """The module class for bodies of ``arity`` inputs. forward takes exactly that many
    named tensors (not ``*xs``), so torch.export's dynamic_shapes is one spec per input."""
    import torch

    class FnModule(torch.nn.Module):
        """forward(x, ...) = fn(self, x, ...); parts are submodules or (seeded) buffers."""

        def __init__(self, fn: Callable[..., Any], parts: dict[str, Any]) -> None:
            super().__init__()
            self.fn = fn
            for key, part in parts.items():
                if isinstance(part, torch.nn.Module):
                    self.add_module(key, part)
                else:
                    self.register_buffer(key, part)

    forwards = {
        1: lambda self, x: self.fn(self, x),
        2: lambda self, x, y: self.fn(self, x, y),
        3: lambda self, x, y, z: self.fn(self, x, y, z),
    }
    FnModule.forward = forwards[arity]
    FnModule.__name__ = FnModule.__qualname__ = f"FnModule{arity}"
    return FnModule


def fn(body: Callable[..., Any], **parts: Callable[[], Any]) -> Callable[[], Any]:
    """A factory for a module computing ``body(m, *inputs)``; each part is made (in
    keyword order, under the case's seed) and reachable as ``m.<key>``."""
    arity = len(inspect.signature(body).parameters) - 1
    return lambda: _fn_class(arity)(body, {k: make() for k, make in parts.items()})


def _uniform(shape: tuple[int, ...], low: float, high: float) -> Callable[[], Any]:
    return lambda: T.rand(shape) * (high - low) + low


def _half_offsets(shape: tuple[int, ...]) -> Callable[[], Any]:
    """k + 0.5 for random integers k in [-3, 3]: x + this, with |x| <= 0.4, lies at
    least 0.1 from any integer (floor/ceil/trunc jumps)."""
    return lambda: T.randint(-3, 4, shape).float() + 0.5


def _int_offsets(shape: tuple[int, ...]) -> Callable[[], Any]:
    """integers k in [-3, 3]: x + k, with |x| <= 0.4, lies at least 0.1 from k +- 0.5."""
    return lambda: T.randint(-3, 4, shape).float()


def _signed_offsets(shape: tuple[int, ...]) -> Callable[[], Any]:
    """+-0.5..2 (random sign): x + this, with |x| <= 0.4, is at least 0.1 from zero."""
    return lambda: (T.rand(shape) * 1.5 + 0.5) * (T.randint(0, 2, shape).float() * 2 - 1)


def _ramp_offsets(shape: tuple[int, ...]) -> Callable[[], Any]:
    """a random permutation of 0, 1, ... along the last dim: x + this, with |x| <= 0.4,
    has a unique arg-max/min with a margin of 0.2."""
    return lambda: T.stack([T.randperm(shape[-1]).float() for _ in range(int(np.prod(shape[:-1])))]
                           ).reshape(shape)


def _index(values: list[int]) -> Callable[[], Any]:
    return lambda: T.tensor(values, dtype=T.int64)


def _with_stats(make: Callable[[], Any]) -> Callable[[], Any]:
    """A BatchNorm with non-trivial running stats and affine (eval uses them)."""
    def factory() -> Any:
        bn = make()
        c = bn.num_features
        with T.no_grad():
            bn.running_mean.copy_(T.rand(c) * 2 - 1)
            bn.running_var.copy_(T.rand(c) * 1.5 + 0.5)
            bn.weight.copy_(T.rand(c) + 0.5)
            bn.bias.copy_(T.rand(c) - 0.5)
        return bn
    return factory


def _affine(make: Callable[[], Any]) -> Callable[[], Any]:
    """A norm layer whose affine weight/bias are random, not the 1/0 init."""
    def factory() -> Any:
        layer = make()
        with T.no_grad():
            for name in ("weight", "bias"):
                p = getattr(layer, name, None)
                if p is not None:
                    p.copy_(T.rand(p.shape) + (0.5 if name == "weight" else -0.5))
        return layer
    return factory


def _first(make: Callable[[], Any]) -> Callable[[], Any]:
    """Element 0 of a one-input module's tuple output (an RNN's output sequence)."""
    return fn(lambda m, x: m.sub(x)[0], sub=make)


def _x(shape: tuple[int, ...], low: float = -3.0, high: float = 3.0, dist: str = "normal") -> Input:
    return Input(tuple(shape), "float32", low, high, dist)


def _pos(shape: tuple[int, ...], low: float = 0.25, high: float = 4.0) -> Input:
    return Input(tuple(shape), "float32", low, high, "uniform")


def _near0(shape: tuple[int, ...]) -> Input:
    """|x| <= 0.4, for the discontinuous ops' offset construction."""
    return Input(tuple(shape), "float32", -0.4, 0.4, "uniform")


def _ids(shape: tuple[int, ...], vocab: int) -> Input:
    return Input(tuple(shape), "int64", 0, vocab, "uniform")


_C = (4, 8, 8)          # the default activation tensor: 4 channels of 8x8
_V = (6, 16)            # the default "rows of features" tensor
_NOINT8 = "; int64 index input, so static int8 does not apply"

_CASES: list[OpCase] = []


def case(name: str, inputs: Input | tuple[Input, ...], description: str,
         factory: Callable[[], Any], **kw: Any) -> None:
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    _CASES.append(OpCase(name, name.split(".")[0], inputs, description, factory=factory, **kw))


# ---------------------------------------------------------------- convolution
case("conv1d.basic", _x((4, 32)), "Conv1d 4->8, k3, no padding", lambda: nn.Conv1d(4, 8, 3))
case("conv1d.depthwise", _x((8, 32)), "Conv1d depthwise (groups=8), k3, padding 1",
     lambda: nn.Conv1d(8, 8, 3, padding=1, groups=8))
case("conv2d.basic", _x((3, 16, 16)), "Conv2d 3->8, k3, no padding", lambda: nn.Conv2d(3, 8, 3))
case("conv2d.strided_padded", _x((3, 16, 16)), "Conv2d 3->8, k3, stride 2, padding 1",
     lambda: nn.Conv2d(3, 8, 3, stride=2, padding=1))
case("conv2d.dilated", _x((4, 16, 16)), "Conv2d 4->8, k3, dilation 2, padding 2",
     lambda: nn.Conv2d(4, 8, 3, dilation=2, padding=2))
case("conv2d.depthwise", _x((8, 12, 12)), "Conv2d depthwise (groups=8, 8->8), k3, padding 1",
     lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8))
case("conv2d.depthwise_multiplier", _x((8, 12, 12)),
     "Conv2d depthwise with channel multiplier 2 (groups=8, 8->16), k3, padding 1",
     lambda: nn.Conv2d(8, 16, 3, padding=1, groups=8))
case("conv2d.grouped", _x((8, 12, 12)), "Conv2d grouped (groups=4, 8->12), k3, padding 1",
     lambda: nn.Conv2d(8, 12, 3, padding=1, groups=4))
case("conv2d.pointwise", _x((16, 8, 8)), "Conv2d 1x1, 16->8", lambda: nn.Conv2d(16, 8, 1))
case("conv2d.reflect_padding", _x((4, 12, 12)), "Conv2d 4->8, k3, padding 1 in reflect mode",
     lambda: nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"))
case("conv3d.strided_padded", _x((2, 8, 8, 8)), "Conv3d 2->4, k3, stride 2, padding 1",
     lambda: nn.Conv3d(2, 4, 3, stride=2, padding=1))
case("conv_transpose1d.strided", _x((4, 16)), "ConvTranspose1d 4->6, k4, stride 2, padding 1",
     lambda: nn.ConvTranspose1d(4, 6, 4, stride=2, padding=1))
case("conv_transpose2d.basic", _x((4, 8, 8)), "ConvTranspose2d 4->6, k3",
     lambda: nn.ConvTranspose2d(4, 6, 3))
case("conv_transpose2d.strided", _x((4, 8, 8)),
     "ConvTranspose2d 4->6, k3, stride 2, padding 1, output_padding 1 (exact 2x upsampling)",
     lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1))
case("conv_transpose2d.grouped", _x((4, 8, 8)), "ConvTranspose2d grouped (groups=2, 4->8), k3, padding 1",
     lambda: nn.ConvTranspose2d(4, 8, 3, padding=1, groups=2))
case("conv_transpose3d.strided", _x((2, 4, 4, 4)),
     "ConvTranspose3d 2->4, k3, stride 2, padding 1, output_padding 1",
     lambda: nn.ConvTranspose3d(2, 4, 3, stride=2, padding=1, output_padding=1))

# ---------------------------------------------------------------- pooling
case("max_pool1d.overlap_padded", _x((4, 32)), "MaxPool1d k3, stride 2, padding 1",
     lambda: nn.MaxPool1d(3, stride=2, padding=1))
case("max_pool2d.basic", _x((4, 16, 16)), "MaxPool2d k2 (stride 2)", lambda: nn.MaxPool2d(2))
case("max_pool2d.overlap_padded", _x((4, 16, 16)), "MaxPool2d k3, stride 2, padding 1",
     lambda: nn.MaxPool2d(3, stride=2, padding=1))
case("max_pool2d.ceil_mode", _x((4, 15, 15)), "MaxPool2d k3, stride 2, ceil_mode on an odd size",
     lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True))
case("max_pool3d.basic", _x((2, 8, 8, 8)), "MaxPool3d k2 (stride 2)", lambda: nn.MaxPool3d(2))
case("avg_pool1d.padded", _x((4, 32)), "AvgPool1d k3, stride 2, padding 1, count_include_pad=False",
     lambda: nn.AvgPool1d(3, stride=2, padding=1, count_include_pad=False))
case("avg_pool2d.basic", _x((4, 16, 16)), "AvgPool2d k2 (stride 2)", lambda: nn.AvgPool2d(2))
case("avg_pool2d.padded_exclude", _x((4, 16, 16)),
     "AvgPool2d k3, stride 2, padding 1, count_include_pad=False (border divisors < 9)",
     lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False))
case("avg_pool2d.padded_include", _x((4, 16, 16)),
     "AvgPool2d k3, stride 2, padding 1, count_include_pad=True (zeros averaged in)",
     lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True))
case("avg_pool3d.basic", _x((2, 8, 8, 8)), "AvgPool3d k2 (stride 2)", lambda: nn.AvgPool3d(2))
case("adaptive_avg_pool1d", _x((4, 16)), "AdaptiveAvgPool1d 16->5 (uneven, overlapping windows)",
     lambda: nn.AdaptiveAvgPool1d(5))
case("adaptive_avg_pool2d.global", _x((8, 7, 7)), "AdaptiveAvgPool2d to 1x1 (global average pooling)",
     lambda: nn.AdaptiveAvgPool2d(1))
case("adaptive_avg_pool2d.uneven", _x((4, 10, 10)),
     "AdaptiveAvgPool2d 10x10->3x3 (uneven, overlapping windows)", lambda: nn.AdaptiveAvgPool2d(3))
case("adaptive_avg_pool3d", _x((2, 6, 7, 7)), "AdaptiveAvgPool3d 6x7x7->2x3x3",
     lambda: nn.AdaptiveAvgPool3d((2, 3, 3)))
case("adaptive_max_pool1d", _x((4, 16)), "AdaptiveMaxPool1d 16->5 (uneven windows)",
     lambda: nn.AdaptiveMaxPool1d(5))
case("adaptive_max_pool2d", _x((4, 10, 10)), "AdaptiveMaxPool2d 10x10->3x3 (uneven windows)",
     lambda: nn.AdaptiveMaxPool2d(3))
case("adaptive_max_pool3d", _x((2, 6, 6, 6)), "AdaptiveMaxPool3d 6x6x6->2x2x2",
     lambda: nn.AdaptiveMaxPool3d(2))

# ---------------------------------------------------------------- activations
_WIDE = _x(_C, -8.0, 8.0, "uniform")   # reaches the kinks at +-3 and 6
case("relu", _x(_C), "ReLU", lambda: nn.ReLU())
case("relu6", _WIDE, "ReLU6 on inputs in [-8, 8] (both kinks hit)", lambda: nn.ReLU6())
case("leaky_relu", _x(_C), "LeakyReLU, negative slope 0.1", lambda: nn.LeakyReLU(0.1))
case("prelu", _x(_C), "PReLU with one learned slope per channel (4, random in [-0.25, 0.5])",
     fn(lambda m, x: F.prelu(x, m.slope), slope=_uniform((4,), -0.25, 0.5)))
case("elu", _x(_C), "ELU, alpha 0.7", lambda: nn.ELU(0.7))
case("selu", _x(_C), "SELU", lambda: nn.SELU())
case("celu", _x(_C), "CELU, alpha 1.5", lambda: nn.CELU(1.5))
case("gelu.exact", _x(_C), "GELU, exact (erf) form", lambda: nn.GELU())
case("gelu.tanh", _x(_C), "GELU, tanh approximation", lambda: nn.GELU(approximate="tanh"))
case("silu", _x(_C), "SiLU (swish)", lambda: nn.SiLU())
case("mish", _x(_C), "Mish", lambda: nn.Mish())
case("hardswish", _WIDE, "Hardswish on inputs in [-8, 8] (both kinks hit)", lambda: nn.Hardswish())
case("hardsigmoid", _WIDE, "Hardsigmoid on inputs in [-8, 8] (both kinks hit)", lambda: nn.Hardsigmoid())
case("hardtanh", _x(_C), "Hardtanh with bounds [-1.5, 2]", lambda: nn.Hardtanh(-1.5, 2.0))
case("sigmoid", _x(_C, -8.0, 8.0, "uniform"), "Sigmoid on [-8, 8] (saturating tails)",
     lambda: nn.Sigmoid())
case("tanh", _x(_C), "Tanh", lambda: nn.Tanh())
case("softplus", _x(_C), "Softplus, beta 2 (threshold 20 never reached)", lambda: nn.Softplus(beta=2.0))
case("softsign", _x(_C), "Softsign", lambda: nn.Softsign())
case("logsigmoid", _x(_C), "LogSigmoid", lambda: nn.LogSigmoid())
case("threshold", _x(_C), "Threshold at 0.5 with value 0.5 (= max(x, 0.5): no jump for rounding "
     "to flip)", lambda: nn.Threshold(0.5, 0.5))
case("glu", _x((4, 16)), "GLU over the last dim (16 -> 8: a * sigmoid(b))", lambda: nn.GLU(-1))

# ---------------------------------------------------------------- elementwise unary
case("abs", _x(_C), "abs", fn(lambda m, x: x.abs()))
case("neg", _x(_C), "neg", fn(lambda m, x: -x))
case("exp", _x(_C), "exp on [-3, 3]", fn(lambda m, x: x.exp()))
case("log", _pos(_C), "natural log on [0.25, 4]", fn(lambda m, x: x.log()))
case("log2", _pos(_C), "log2 on [0.25, 4]", fn(lambda m, x: x.log2()))
case("log10", _pos(_C), "log10 on [0.25, 4]", fn(lambda m, x: x.log10()))
case("log1p", _pos(_C, -0.5, 3.0), "log1p on [-0.5, 3]", fn(lambda m, x: x.log1p()))
case("sqrt", _pos(_C), "sqrt on [0.25, 4]", fn(lambda m, x: x.sqrt()))
case("rsqrt", _pos(_C), "rsqrt on [0.25, 4]", fn(lambda m, x: x.rsqrt()))
case("reciprocal", _pos(_C), "reciprocal on [0.25, 4]", fn(lambda m, x: x.reciprocal()))
case("sin", _x(_C, -6.5, 6.5, "uniform"), "sin on [-6.5, 6.5] (two periods)", fn(lambda m, x: x.sin()))
case("cos", _x(_C, -6.5, 6.5, "uniform"), "cos on [-6.5, 6.5] (two periods)", fn(lambda m, x: x.cos()))
case("erf", _x(_C), "erf", fn(lambda m, x: T.erf(x)))
case("square", _x(_C), "square (x * x)", fn(lambda m, x: x.square()))
case("pow.int_exponent", _x(_C), "x ** 3 (integer exponent, negative bases)", fn(lambda m, x: x ** 3))
case("pow.tensor_exponent", (_pos(_C, 0.5, 2.0), _x(_C, -2.0, 2.0, "uniform")),
     "pow(base in [0.5, 2], exponent tensor in [-2, 2])", fn(lambda m, x, y: T.pow(x, y)))
case("clamp.both", _x(_C), "clamp to [-1, 1.5]", fn(lambda m, x: x.clamp(-1.0, 1.5)))
case("floor", _near0(_C), "floor(x + k + 0.5), |x| <= 0.4, k in [-3, 3]: arguments >= 0.1 from "
     "any jump", fn(lambda m, x: T.floor(x + m.offset), offset=_half_offsets(_C)))
case("ceil", _near0(_C), "ceil(x + k + 0.5), |x| <= 0.4, k in [-3, 3]: arguments >= 0.1 from "
     "any jump", fn(lambda m, x: T.ceil(x + m.offset), offset=_half_offsets(_C)))
case("trunc", _near0(_C), "trunc(x + k + 0.5), |x| <= 0.4, k in [-3, 3] (negatives round to 0): "
     ">= 0.1 from any jump", fn(lambda m, x: T.trunc(x + m.offset), offset=_half_offsets(_C)))
case("round", _near0(_C), "round(x + k), |x| <= 0.4, k in [-3, 3]: >= 0.1 from the .5 jumps "
     "(no ties)", fn(lambda m, x: T.round(x + m.offset), offset=_int_offsets(_C)))
case("sign", _near0(_C), "sign(x + o), |x| <= 0.4, |o| in [0.5, 2] random sign: >= 0.1 from 0",
     fn(lambda m, x: T.sign(x + m.offset), offset=_signed_offsets(_C)))
case("floor_divide", _near0(_C), "floor_divide(x + 2k + 1, 2), |x| <= 0.4: quotients >= 0.3 "
     "from any jump", fn(lambda m, x: T.floor_divide(x + m.offset, 2.0),
                         offset=lambda: T.randint(-3, 4, _C).float() * 2 + 1))

# ---------------------------------------------------------------- elementwise binary
case("add.same_shape", (_x(_C), _x(_C)), "x + y, same shapes", fn(lambda m, x, y: x + y))
case("add.broadcast", (_x(_C), _x((1, 1, 8))), "x + y, y broadcast (1,1,8) over channels and rows",
     fn(lambda m, x, y: x + y))
case("sub.broadcast", (_x(_C), _x((4, 1, 1))), "x - y, y broadcast (4,1,1) per channel",
     fn(lambda m, x, y: x - y))
case("mul.same_shape", (_x(_C), _x(_C)), "x * y, same shapes", fn(lambda m, x, y: x * y))
case("mul.broadcast", (_x(_C), _x((1, 8, 1))), "x * y, y broadcast (1,8,1) over channels and columns",
     fn(lambda m, x, y: x * y))
case("div.same_shape", (_x(_C), _pos(_C, 0.5, 3.0)), "x / y, y in [0.5, 3]",
     fn(lambda m, x, y: x / y))
case("div.scalar", _x(_C), "x / 3", fn(lambda m, x: x / 3.0))
case("maximum", (_x(_C), _x(_C)), "elementwise maximum(x, y)", fn(lambda m, x, y: T.maximum(x, y)))
case("minimum", (_x(_C), _x((4, 1, 8))), "elementwise minimum(x, y), y broadcast (4,1,8)",
     fn(lambda m, x, y: T.minimum(x, y)))
case("where", (_x(_C), _x(_C)), "where(x > y, x - y, 0.5 (y - x)): both branches meet at x = y, "
     "so no jump", fn(lambda m, x, y: T.where(x > y, x - y, 0.5 * (y - x))))
case("gt", _near0(_C), "(x + o > 0) as float, |x| <= 0.4, |o| in [0.5, 2] random sign: >= 0.1 "
     "from the jump", fn(lambda m, x: (x + m.offset > 0).to(x.dtype), offset=_signed_offsets(_C)))
case("masked_fill.constant_mask", _x(_C), "masked_fill(fixed random boolean mask, -1.5)",
     fn(lambda m, x: x.masked_fill(m.mask, -1.5), mask=lambda: T.rand(_C) < 0.3))

# ---------------------------------------------------------------- reductions
case("sum.last_dim", _x(_V), "sum over the last dim (16)", fn(lambda m, x: x.sum(-1)))
case("sum.all", _x(_C), "sum over every non-batch dim (256 terms)", fn(lambda m, x: x.sum((1, 2, 3))))
case("mean.last_dim", _x(_V), "mean over the last dim", fn(lambda m, x: x.mean(-1)))
case("mean.spatial_keepdim", _x(_C), "mean over H, W with keepdim (global pooling as a reduction)",
     fn(lambda m, x: x.mean((2, 3), keepdim=True)))
case("amax", _x(_C), "amax over dims (2, 3)", fn(lambda m, x: x.amax((2, 3))))
case("amin", _x(_V), "amin over the last dim, keepdim", fn(lambda m, x: x.amin(-1, keepdim=True)))
case("max.dim", _x(_V), "max(dim=-1).values", fn(lambda m, x: x.max(dim=-1).values))
case("argmax", _near0(_V), "argmax over the last dim of x + a permutation ramp, |x| <= 0.4 (unique "
     "max, margin 0.2), as float", fn(lambda m, x: (x + m.ramp).argmax(-1).to(x.dtype),
                                      ramp=_ramp_offsets(_V)))
case("argmin", _near0(_V), "argmin over the last dim of x + a permutation ramp, |x| <= 0.4 (unique "
     "min, margin 0.2), as float", fn(lambda m, x: (x + m.ramp).argmin(-1).to(x.dtype),
                                      ramp=_ramp_offsets(_V)))
case("prod", _pos((8, 6), 0.5, 1.5), "prod over the last dim (6 factors in [0.5, 1.5])",
     fn(lambda m, x: x.prod(-1)))
case("var", _x(_V), "var over the last dim (unbiased)", fn(lambda m, x: x.var(-1)))
case("std", _x(_C), "std over dims (2, 3), correction 0", fn(lambda m, x: x.std((2, 3), correction=0)))
case("logsumexp", _x(_V), "logsumexp over the last dim", fn(lambda m, x: x.logsumexp(-1)))
case("norm.l2", _x(_V), "linalg.vector_norm, ord 2, over the last dim",
     fn(lambda m, x: T.linalg.vector_norm(x, 2, dim=-1)))
case("median", _x((6, 7)), "median(dim=-1).values over 7 values (odd: a true middle element)",
     fn(lambda m, x: x.median(dim=-1).values))
case("cumsum", _x(_V), "cumsum over the last dim", fn(lambda m, x: x.cumsum(-1)))
case("topk", _x(_V), "topk(3, dim=-1).values (largest, sorted)", fn(lambda m, x: x.topk(3, dim=-1).values))
case("sort", _x(_V), "sort(dim=-1, descending).values",
     fn(lambda m, x: x.sort(dim=-1, descending=True).values))

# ---------------------------------------------------------------- matrix products
case("linear.basic", _x((32,)), "Linear 32->16 with bias", lambda: nn.Linear(32, 16))
case("linear.sequence", _x((10, 32)), "Linear 32->16 applied to every step of a (10, 32) sequence",
     lambda: nn.Linear(32, 16))
case("matmul.constant", _x(_V), "x @ W with a constant (16, 8) W", fn(lambda m, x: x @ m.w,
                                                                     w=_uniform((16, 8), -0.5, 0.5)))
case("matmul.two_inputs", (_x((2, 6, 16)), _x((2, 16, 8))), "matmul of two batched inputs "
     "(2,6,16) @ (2,16,8)", fn(lambda m, x, y: T.matmul(x, y)))
case("bmm", (_x((6, 16)), _x((16, 8))), "bmm (batch of (6,16) @ (16,8))", fn(lambda m, x, y: T.bmm(x, y)))
case("addmm", _x((32,)), "addmm(bias, x, W): (32,) -> (16,)",
     fn(lambda m, x: T.addmm(m.b, x, m.w), b=_uniform((16,), -1, 1), w=_uniform((32, 16), -0.3, 0.3)))
case("einsum", (_x((2, 8, 8)), _x((2, 8, 8))), "einsum 'bhqd,bhkd->bhqk' (attention scores)",
     fn(lambda m, q, k: T.einsum("bhqd,bhkd->bhqk", q, k)))

# ---------------------------------------------------------------- normalisation
case("batch_norm.1d", _x((8, 16)), "BatchNorm1d (eval) with random running stats and affine",
     _with_stats(lambda: nn.BatchNorm1d(8)))
case("batch_norm.2d", _x((8, 8, 8)), "BatchNorm2d (eval) with random running stats and affine",
     _with_stats(lambda: nn.BatchNorm2d(8)))
case("batch_norm.3d", _x((4, 4, 6, 6)), "BatchNorm3d (eval) with random running stats and affine",
     _with_stats(lambda: nn.BatchNorm3d(4)))
case("layer_norm.last_dim", _x((6, 32)), "LayerNorm(32), random affine",
     _affine(lambda: nn.LayerNorm(32)))
case("group_norm", _x((8, 6, 6)), "GroupNorm 2 groups of 4 channels, random affine",
     _affine(lambda: nn.GroupNorm(2, 8)))
case("instance_norm.2d", _x(_C), "InstanceNorm2d, affine (random)",
     _affine(lambda: nn.InstanceNorm2d(4, affine=True)))
case("rms_norm", _x((6, 32)), "RMSNorm(32), eps 1e-6, random weight",
     _affine(lambda: nn.RMSNorm(32, eps=1e-6)))
case("local_response_norm", _x((8, 6, 6)), "LocalResponseNorm size 3 (alpha 1e-4, beta 0.75, k 1)",
     lambda: nn.LocalResponseNorm(3))
case("softmax.last_dim", _x(_V), "softmax over the last dim", lambda: nn.Softmax(-1))
case("softmax.channels", _x(_C), "softmax over channels (dim 1)", lambda: nn.Softmax(1))
case("log_softmax", _x(_V), "log_softmax over the last dim", lambda: nn.LogSoftmax(-1))

# ---------------------------------------------------------------- shape and data movement
_S = (4, 6, 8)
case("reshape", _x(_S), "reshape (4,6,8) -> (12,16)", fn(lambda m, x: x.reshape(x.shape[0], 12, 16)))
case("view", _x(_S), "view (4,6,8) -> (-1, 4)", fn(lambda m, x: x.view(x.shape[0], -1, 4)))
case("flatten", _x(_S), "Flatten from dim 1", lambda: nn.Flatten())
case("permute", _x(_S), "permute (N,4,6,8) -> (N,8,4,6) (channels-last style)",
     fn(lambda m, x: x.permute(0, 3, 1, 2)))
case("transpose", _x(_S), "transpose dims 1 and 2", fn(lambda m, x: x.transpose(1, 2)))
case("squeeze", _x((4, 1, 8)), "squeeze the unit dim 2", fn(lambda m, x: x.squeeze(2)))
case("unsqueeze", _x(_S), "unsqueeze a new dim 2", fn(lambda m, x: x.unsqueeze(2)))
case("slice", _x((6, 8, 8)), "x[:, 1:5:2, 2:] (strided slice on two dims)",
     fn(lambda m, x: x[:, 1:5:2, 2:]))
case("narrow", _x(_S), "narrow(dim 2, start 1, length 4)", fn(lambda m, x: x.narrow(2, 1, 4)))
case("select", _x(_S), "x[:, 2] (select one channel, dropping the dim)", fn(lambda m, x: x[:, 2]))
case("cat", (_x((4, 8, 8)), _x((2, 8, 8))), "cat two inputs along channels (4 + 2)",
     fn(lambda m, x, y: T.cat([x, y], dim=1)))
case("stack", (_x(_S), _x(_S)), "stack two inputs on a new dim 1", fn(lambda m, x, y: T.stack([x, y], 1)))
case("split", _x((8, 4, 4)), "split channels [2, 3, 3], concatenated back in reverse order",
     fn(lambda m, x: T.cat(T.split(x, [2, 3, 3], dim=1)[::-1], dim=1)))
case("chunk", _x(_S), "chunk(2) along the last dim, halves swapped",
     fn(lambda m, x: T.cat(x.chunk(2, dim=-1)[::-1], dim=-1)))
case("gather", _x(_S), "gather along the last dim with a constant (4,6,5) index (repeats included)",
     fn(lambda m, x: T.gather(x, -1, m.idx.expand(x.shape[0], -1, -1, -1)),
        idx=lambda: T.randint(0, 8, (1, 4, 6, 5))))
case("index_select", _x(_S), "index_select on the last dim, indices [5, 0, 3, 3, 7]",
     fn(lambda m, x: x.index_select(-1, m.idx), idx=_index([5, 0, 3, 3, 7])))
case("index_put", (_x(_S), _x((3, 6, 8))), "x[:, [3, 0, 2]] = y on a copy (index_put, distinct "
     "indices)", fn(lambda m, x, y: x.index_put((T.arange(x.shape[0]).unsqueeze(1), m.idx), y),
                    idx=_index([3, 0, 2])))
case("pad.constant", _x(_C), "F.pad (1,2,0,1) with value 0.5",
     fn(lambda m, x: F.pad(x, (1, 2, 0, 1), value=0.5)))
case("pad.reflect", _x(_C), "F.pad (2,2,1,1) reflect",
     fn(lambda m, x: F.pad(x, (2, 2, 1, 1), mode="reflect")))
case("pad.replicate", _x(_C), "F.pad (2,1,1,2) replicate",
     fn(lambda m, x: F.pad(x, (2, 1, 1, 2), mode="replicate")))
case("repeat", _x(_S), "repeat (1, 2, 1, 3)", fn(lambda m, x: x.repeat(1, 2, 1, 3)))
case("expand", _x((4, 1, 8)), "expand (4,1,8) -> (4,6,8)", fn(lambda m, x: x.expand(-1, -1, 6, -1)))
case("tile", _x(_S), "tile (1, 1, 2, 2)", fn(lambda m, x: x.tile((1, 1, 2, 2))))
case("flip", _x(_S), "flip dims 1 and 3", fn(lambda m, x: x.flip((1, 3))))
case("roll", _x(_S), "roll by (2, -3) on dims (2, 3)", fn(lambda m, x: x.roll((2, -3), (2, 3))))

# ---------------------------------------------------------------- resizing
case("upsample_nearest.scale2", _x(_C), "interpolate nearest, scale 2",
     fn(lambda m, x: F.interpolate(x, scale_factor=2.0, mode="nearest")))
case("upsample_nearest.downscale", _x(_C), "interpolate nearest, scale 0.5 (subsampling)",
     fn(lambda m, x: F.interpolate(x, scale_factor=0.5, mode="nearest")))
case("upsample_bilinear.align_false", _x(_C), "interpolate bilinear, scale 2, align_corners=False",
     fn(lambda m, x: F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)))
case("upsample_bilinear.align_true", _x(_C), "interpolate bilinear to (15, 15), align_corners=True",
     fn(lambda m, x: F.interpolate(x, size=(15, 15), mode="bilinear", align_corners=True)))
case("upsample_bicubic", _x(_C), "interpolate bicubic, scale 2, align_corners=False",
     fn(lambda m, x: F.interpolate(x, scale_factor=2.0, mode="bicubic", align_corners=False)))
case("pixel_shuffle", _x((8, 4, 4)), "PixelShuffle(2): (8,4,4) -> (2,8,8)", lambda: nn.PixelShuffle(2))
case("pixel_unshuffle", _x((2, 8, 8)), "PixelUnshuffle(2): (2,8,8) -> (8,4,4)", lambda: nn.PixelUnshuffle(2))

# ---------------------------------------------------------------- embeddings
case("embedding", _ids((12,), 50), "Embedding 50x16 looked up by 12 int64 ids" + _NOINT8,
     lambda: nn.Embedding(50, 16), quantizable=False)
case("embedding_bag.mean", _ids((6,), 50), "EmbeddingBag 50x16, mean of one 6-id bag per sample" + _NOINT8,
     lambda: nn.EmbeddingBag(50, 16, mode="mean"), quantizable=False)
case("embedding_bag.max", _ids((6,), 50), "EmbeddingBag 50x16, max of one 6-id bag per sample" + _NOINT8,
     lambda: nn.EmbeddingBag(50, 16, mode="max"), quantizable=False)

# ---------------------------------------------------------------- recurrent
_SEQ = _x((10, 8))
case("lstm.basic", _SEQ, "LSTM 8->16, one layer, batch_first, zero initial state: the output sequence",
     _first(lambda: nn.LSTM(8, 16, batch_first=True)))
case("lstm.bidirectional_2layer", _SEQ, "LSTM 8->12, two layers, bidirectional, batch_first: the output "
     "sequence", _first(lambda: nn.LSTM(8, 12, num_layers=2, bidirectional=True, batch_first=True)))
case("gru", _SEQ, "GRU 8->16, one layer, batch_first: the output sequence",
     _first(lambda: nn.GRU(8, 16, batch_first=True)))
case("rnn.tanh", _SEQ, "Elman RNN (tanh) 8->16, batch_first: the output sequence",
     _first(lambda: nn.RNN(8, 16, batch_first=True)))

# ---------------------------------------------------------------- attention
case("multihead_attention.self", _x((10, 16)), "nn.MultiheadAttention 16 wide, 4 heads, batch_first, "
     "self-attention (q = k = v), output only",
     fn(lambda m, x: m.mha(x, x, x, need_weights=False)[0],
        mha=lambda: nn.MultiheadAttention(16, 4, batch_first=True)))
case("multihead_attention.cross", (_x((6, 16)), _x((10, 16))), "nn.MultiheadAttention 16 wide, 4 heads, "
     "batch_first, cross-attention (6 queries over 10 keys/values), output only",
     fn(lambda m, q, kv: m.mha(q, kv, kv, need_weights=False)[0],
        mha=lambda: nn.MultiheadAttention(16, 4, batch_first=True)))
_QKV = (_x((2, 8, 8)), _x((2, 8, 8)), _x((2, 8, 8)))
case("scaled_dot_product_attention.basic", _QKV, "F.scaled_dot_product_attention, 2 heads, 8 steps, "
     "head dim 8, no mask", fn(lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v)))
case("scaled_dot_product_attention.causal", _QKV, "F.scaled_dot_product_attention with is_causal=True",
     fn(lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)))
case("scaled_dot_product_attention.additive_mask", (_x((2, 6, 8)), _x((2, 10, 8)), _x((2, 10, 8))),
     "F.scaled_dot_product_attention, 6 queries over 10 keys, constant additive float mask",
     fn(lambda m, q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=m.mask),
        mask=_uniform((6, 10), -2.0, 0.0)))

OPS: dict[str, OpCase] = {c.name: c for c in _CASES}
_bad = [c.name for c in _CASES if not re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)*", c.name)]
if len(OPS) != len(_CASES) or _bad:  # a catalogue edit error, caught at import
    raise ValueError(f"operator case names must be unique and [a-z0-9_.]: {_bad or 'duplicates'}")


def families() -> list[str]:
    """Operator families in catalogue order."""
    return list(dict.fromkeys(c.op for c in OPS.values()))


def select(names: list[str] | None) -> list[str]:
    """Case names for ``names`` (case names or families; all when empty), in catalogue order."""
    if not names:
        return list(OPS)
    fams = set(families())
    unknown = [n for n in names if n not in OPS and n not in fams]
    if unknown:
        raise ValueError(f"unknown operator case(s) {', '.join(unknown)}; use a family "
                         f"({', '.join(families())}) or a case ({', '.join(OPS)})")
    wanted = set(names)
    return [n for n, c in OPS.items() if n in wanted or c.op in wanted]


def make_inputs(case: OpCase, n: int, seed: int) -> list[np.ndarray]:
    """``n`` samples of every input of ``case``, deterministic in (case name, seed). Each
    input draws from its own stream, so a prefix of n samples equals a smaller draw."""
    out = []
    for i, spec in enumerate(case.inputs):
        rng = np.random.default_rng([seed, zlib.crc32(case.name.encode()), i])
        shape = (n, *spec.shape)
        if np.dtype(spec.dtype).kind in "iu":
            arr = rng.integers(int(spec.low), int(spec.high), size=shape)
        elif spec.dist == "uniform":
            arr = rng.uniform(spec.low, spec.high, size=shape)
        elif spec.dist == "normal":
            arr = np.clip(rng.standard_normal(shape), spec.low, spec.high)
        else:
            raise ValueError(f"{case.name}: unknown input distribution {spec.dist!r}")
        out.append(np.ascontiguousarray(arr, dtype=spec.dtype))
    return out
