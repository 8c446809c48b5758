"""The operator tier's catalogue (hal_conformance.ops): every case builds, exports and is
well-posed, so a backend's disagreement with the fp64 oracle is the backend's, not the case's.

Real torch throughout (skipped with the reason where torch is missing); no hal internals.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import numpy as np
import pytest

from hal_conformance.ops import OPS, Input, OpCase, make_inputs, select

NAMES = list(OPS)

# fp32 vs fp64 of the same module. fp32's unit roundoff is 2**-24 ~ 6e-8; every case is a
# short computation (sums of at most a few hundred terms, a handful of transcendental
# evaluations, 10-step recurrences), whose forward error bound is a small multiple of
# n * u relative to the output's scale: at most ~2e-5 for n = 300, and in practice
# (errors grow like sqrt(n) * u) the worst case measured is 3e-7. 1e-5 of the output's
# scale leaves 30x headroom while still failing any case that cancels catastrophically.
FP32_TOL = 1e-5
# inputs snapped to 256 levels over their declared range (what static int8 does to them) may
# move the fp64 output by at most this fraction of its scale. Continuous ops pass (worst
# measured: reciprocal, sin/cos, log at ~2.6%); a discontinuous op evaluated near a jump
# moves by a whole step and fails (floor of raw normal inputs: 33%, argmax of raw
# normal rows: 53%), so the margins the catalogue claims are checked, not just stated.
INT8_INPUT_TOL = 0.1


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch (the catalogue's framework) is not installed")


def _as_tensors(torch, arrays, double=False):
    ts = [torch.from_numpy(a) for a in arrays]
    return [t.double() if double and t.is_floating_point() else t for t in ts]


def _snap(x: np.ndarray, spec: Input) -> np.ndarray:
    """float inputs rounded to 256 levels over [low, high]; index inputs unchanged."""
    if spec.dtype != "float32":
        return x
    step = (spec.high - spec.low) / 255
    return np.round((x.astype(np.float64) - spec.low) / step) * step + spec.low


def _rel_err(torch, y, ref) -> float:
    scale = ref.abs().max().clamp_min(1e-12)
    return ((y.double() - ref.double()).abs().max() / scale).item()


# ---------------------------------------------------------------- catalogue shape (no torch)

def test_import_pulls_in_no_framework():
    code = ("import hal_conformance.ops, sys; "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_names_unique_valid_and_grouped_by_family():
    assert len(NAMES) == len(set(NAMES))
    fams: list[str] = []
    for name, case in OPS.items():
        assert isinstance(case, OpCase) and case.name == name
        assert re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)*", name), name
        assert name == case.op or name.startswith(case.op + "."), name
        assert case.description and "\n" not in case.description, name
        assert case.inputs and all(isinstance(i, Input) for i in case.inputs), name
        if fams and fams[-1] == case.op:
            continue
        assert case.op not in fams, f"family {case.op} is split in the catalogue order"
        fams.append(case.op)
    assert len({c.op for c in OPS.values()}) >= 60


def test_required_families_present():
    required = """conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d
        max_pool1d max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d
        adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d adaptive_max_pool2d
        adaptive_max_pool3d relu relu6 leaky_relu prelu elu selu celu gelu silu mish hardswish
        hardsigmoid hardtanh sigmoid tanh softplus softsign logsigmoid threshold abs neg exp log
        sqrt rsqrt reciprocal sin cos floor ceil round clamp pow erf sign add sub mul div maximum
        minimum where gt sum mean amax amin prod var std logsumexp norm matmul linear bmm addmm
        einsum batch_norm layer_norm group_norm instance_norm rms_norm local_response_norm softmax
        log_softmax reshape view flatten permute transpose squeeze unsqueeze slice narrow cat
        stack split chunk gather index_select pad repeat expand flip roll tile upsample_nearest
        upsample_bilinear upsample_bicubic pixel_shuffle pixel_unshuffle embedding embedding_bag
        lstm gru rnn multihead_attention scaled_dot_product_attention cumsum topk sort max""".split()
    have = {c.op for c in OPS.values()}
    assert not set(required) - have
    assert {"pad.constant", "pad.reflect", "pad.replicate", "gelu.exact", "gelu.tanh",
            "upsample_bilinear.align_true", "upsample_bilinear.align_false",
            "scaled_dot_product_attention.causal", "scaled_dot_product_attention.basic",
            "conv2d.depthwise", "conv2d.grouped", "conv2d.dilated", "conv2d.strided_padded"} <= set(OPS)


def test_int_inputs_only_where_needed_and_not_quantized():
    for case in OPS.values():
        ints = [i for i in case.inputs if i.dtype != "float32"]
        assert all(i.dtype == "int64" for i in ints), case.name
        if ints:
            assert case.op in {"embedding", "embedding_bag"}, case.name
            assert not case.quantizable and "int8" in case.description, case.name


def test_select():
    assert select(None) == NAMES and select([]) == NAMES
    conv2d = select(["conv2d"])
    assert conv2d and all(OPS[n].op == "conv2d" for n in conv2d)
    assert conv2d == [n for n in NAMES if n.startswith("conv2d.")]
    # a family and a case of another family, returned in catalogue order, without repeats
    assert select(["relu", "conv2d.dilated", "conv2d"]) == conv2d + ["relu"]
    with pytest.raises(ValueError, match="nosuchop.*conv2d"):
        select(["conv2d", "nosuchop"])


@pytest.mark.parametrize("name", NAMES)
def test_make_inputs(name):
    case = OPS[name]
    a = make_inputs(case, 8, seed=3)
    b = make_inputs(case, 8, seed=3)
    head = make_inputs(case, 3, seed=3)
    other = make_inputs(case, 8, seed=4)
    assert len(a) == len(case.inputs)
    for spec, x, y, h, o in zip(case.inputs, a, b, head, other):
        assert x.shape == (8, *spec.shape) and x.dtype == np.dtype(spec.dtype)
        assert x.flags.c_contiguous
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x[:3], h)          # a prefix is a smaller draw
        assert not np.array_equal(x, o)                   # the seed matters
        if spec.dtype == "int64":
            assert x.min() >= spec.low and x.max() < spec.high
        else:
            assert x.min() >= spec.low and x.max() <= spec.high
            assert x.std() > 0.05 * (spec.high - spec.low) / 2   # not collapsed on a clip


# ---------------------------------------------------------------- every case under torch

@pytest.mark.parametrize("name", NAMES)
def test_case_builds_is_well_posed_and_exports(torch, name):
    case = OPS[name]
    m = case.build()
    assert isinstance(m, torch.nn.Module)
    assert not any(sub.training for sub in m.modules()), "build() must return an eval module"
    # weights come from the name only: a second build is identical
    again = case.build().state_dict()
    for key, value in m.state_dict().items():
        assert torch.equal(value, again[key]), key

    xs = make_inputs(case, 5, seed=0)
    with torch.no_grad():
        y = m(*_as_tensors(torch, xs))
        assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
        assert y.shape[0] == 5 and y.numel() > 0
        assert torch.isfinite(y).all()
        m64 = copy.deepcopy(m).double()
        y64 = m64(*_as_tensors(torch, xs, double=True))
        assert y64.dtype == torch.float64
        assert _rel_err(torch, y, y64) <= FP32_TOL
        # well-posed at low precision: inputs on an int8-like grid barely move the exact output
        snapped = [_snap(x, spec) for x, spec in zip(xs, case.inputs)]
        assert _rel_err(torch, m64(*_as_tensors(torch, snapped)), y64) <= INT8_INPUT_TOL

    from torch.export import Dim, export

    example = tuple(torch.from_numpy(x[:2]) for x in xs)
    if case.dynamic_batch:
        batch = Dim("batch", min=1, max=1024)
        ep = export(m, example, dynamic_shapes=tuple({0: batch} for _ in example))
        sizes = (1, 5)
    else:
        ep = export(m, example)
        sizes = (2,)
    run = ep.module()
    with torch.no_grad():
        for n in sizes:
            args = [torch.from_numpy(x[:n]) for x in xs]
            torch.testing.assert_close(run(*args), m(*args), rtol=FP32_TOL, atol=FP32_TOL)
