"""The architecture tier's catalogue (hal_conformance.architectures), checked with the real libraries.

Every architecture is built (twice), run in fp32 and in a float64 copy, and exported with
torch.export; every ONNX model is loaded and run in onnxruntime. That takes minutes for the
whole catalogue on 2 cores, so the default run checks a fixed sample (a grouped-conv/SE net
exported with a dynamic batch, height and width, which takes every path of these tests, and two
ONNX models); the others are marked ``full`` (``python -m pytest --full``), and
``HAL_TEST_ALL_ARCHITECTURES=1`` runs all of them in the default run too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest

from hal_conformance.architectures import (ARCHITECTURES, BLOCKS, ONNX_MODELS, images, margins,
                                           select)

ALL = os.environ.get("HAL_TEST_ALL_ARCHITECTURES") == "1"
#: the default run's sample: one architecture that takes every path of these tests (its export
#: has a dynamic batch and a dynamic height and width); every other entry is ``full``. vit_tiny
#: and swin_nano were in it too: the same paths, about a minute each on 2 cores, and the
#: conformance tier (test_conformance_tiers.py) runs mobilenet_v1, the contract tests BERT
#: and GPT-2.
SAMPLE = ("regnety_400mf",)
ONNX_SAMPLE = ("onnx_squeezenet", "onnx_shufflenet")


def _params(names, sample):
    return [pytest.param(n, marks=() if ALL or n in sample else pytest.mark.full) for n in names]


NAMES = _params(ARCHITECTURES, SAMPLE)
ONNX_NAMES = _params(ONNX_MODELS, ONNX_SAMPLE)

N_EVAL = 32
EVAL_SEED = 11
#: fp32 vs fp64: max |difference| per image as a fraction of that image's fp64 logit range.
#: fp32 rounding (6e-8 relative) accumulates over 20-100 layers; the catalogue measures at most
#: 7e-5 (EfficientNet-B0, 256 images). 5e-4 leaves 7x headroom and is still 60x below the
#: median top-1 margin (3 % of the range), so fp32 can only flip near-ties, which are counted
#: separately.
FP32_TOLERANCE = 5e-4
#: a top-1 margin below this fraction of the logit range counts as a near-tie ...
TIE = 1e-3
#: ... and at most this fraction of the images may be near-ties (i.i.d. Gaussian logits over
#: 1000 classes give 1.8 %; the catalogue measures 1-3.5 %)
MAX_TIES = 0.10


def _torch():
    pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("transformers", reason="transformers (which defines the architectures) is not installed")
    import torch

    return torch


@lru_cache(maxsize=None)
def _reference(name: str):
    """(module, fp32 logits, fp64 logits) on the evaluation images, built once per run."""
    import copy

    import torch

    module = ARCHITECTURES[name].build()
    x = torch.from_numpy(images(N_EVAL, EVAL_SEED, ARCHITECTURES[name].input_shape))
    with torch.no_grad():
        y32 = module(x).numpy()
        y64 = copy.deepcopy(module).double()(x.double()).numpy()
    return module, y32, y64


# --- the catalogue itself (no framework) ---------------------------------------------------

def test_catalogue_covers_the_block_kinds():
    assert len(ARCHITECTURES) >= 12
    assert all(name == a.name for name, a in ARCHITECTURES.items())
    assert not set(ARCHITECTURES) & set(ONNX_MODELS)
    for a in [*ARCHITECTURES.values(), *ONNX_MODELS.values()]:
        assert a.blocks and set(a.blocks) <= BLOCKS, (a.name, set(a.blocks) - BLOCKS)
        assert a.description and "\n" not in a.description
        assert a.input_shape == (3, 224, 224) and a.num_labels == 1000
    covered = {b for a in ARCHITECTURES.values() for b in a.blocks}
    assert {"residual", "depthwise", "squeeze-excite", "grouped", "attention",
            "windowed-attention"} <= covered
    assert len({a.seed for a in ARCHITECTURES.values()}) == len(ARCHITECTURES)


def test_select():
    assert select(None) == select([]) == list(ARCHITECTURES)
    assert select(["vit_tiny", "resnet18"]) == ["resnet18", "vit_tiny"]  # catalogue order
    with pytest.raises(ValueError, match="nope") as info:
        select(["resnet18", "nope"])
    assert "resnet50" in str(info.value)  # names the valid ones


def test_import_needs_no_framework():
    code = ("import sys, hal_conformance.architectures as a; a.ARCHITECTURES; a.ONNX_MODELS; "
            "a.images(1, 0, (3, 32, 32)); "
            "print(sorted(m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_images_are_deterministic_natural_and_normalised():
    a = images(5, 3)
    assert a.dtype == np.float32 and a.shape == (5, 3, 224, 224) and a.flags.c_contiguous
    assert np.array_equal(a, images(5, 3))
    assert np.array_equal(a[:2], images(2, 3))  # image i depends on (seed, i) only
    assert not np.allclose(a, images(5, 4))
    # ImageNet-normalised pixels of [0, 1] images
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    raw = a * std + mean
    assert raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6
    assert 0.1 < raw.std() < 0.4
    # natural-looking: neighbouring pixels correlate strongly (white noise would give ~0)
    dx = np.corrcoef(raw[..., :-1].ravel(), raw[..., 1:].ravel())[0, 1]
    assert dx > 0.9
    # and the images differ from each other
    assert min(np.abs(a[i] - a[j]).mean() for i in range(5) for j in range(i)) > 0.1
    assert images(2, 0, (1, 16, 16)).shape == (2, 1, 16, 16)


# --- each architecture, with torch + transformers ------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_build_is_deterministic_and_leaves_the_global_rng(name):
    torch = _torch()
    state = torch.random.get_rng_state()
    module, _, _ = _reference(name)
    again = ARCHITECTURES[name].build()
    assert torch.equal(state, torch.random.get_rng_state())
    assert not module.training and not again.training
    a, b = module.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{name}: two builds differ in {different[:5]}"
    assert all(t.dtype == torch.float32 for t in a.values() if t.is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_logits_are_finite_fp32_exact_enough_and_decisive(name):
    _torch()
    _, y32, y64 = _reference(name)
    assert y32.shape == (N_EVAL, ARCHITECTURES[name].num_labels)
    assert np.isfinite(y32).all() and np.isfinite(y64).all()
    spread = y64.max(1) - y64.min(1)
    err = np.abs(y32 - y64).max(1) / spread
    assert err.max() <= FP32_TOLERANCE, f"{name}: fp32 is {err.max():.2e} of the logit range off fp64"
    ties = margins(y64) < TIE
    assert ties.mean() <= MAX_TIES, f"{name}: {ties.sum()} of {N_EVAL} images are near-ties"
    top1 = y64.argmax(1)
    assert len(set(top1)) >= N_EVAL // 4, f"{name}: only {len(set(top1))} distinct top-1 classes"
    assert (y32.argmax(1) == top1)[~ties].all()
    # the logits depend on the image as much as on the class (not a constant offset)
    assert y64.std(0).mean() > 0.25 * y64.std(1).mean()


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_with_dynamic_batch(name):
    torch = _torch()
    from torch.export import Dim

    arch = ARCHITECTURES[name]
    module, _, _ = _reference(name)
    example = (torch.from_numpy(images(2, 5, arch.input_shape)),)
    batch = Dim("batch", min=1, max=64)
    ep = torch.export.export(module, example, dynamic_shapes={"x": {0: batch}} if arch.dynamic_batch else None)
    sizes = [(b, arch.input_shape[1:]) for b in ((1, 3) if arch.dynamic_batch else (2,))]
    if arch.dynamic_spatial:
        ep_hw = torch.export.export(module, example, dynamic_shapes={"x": {
            0: batch, 2: Dim("h", min=96, max=512), 3: Dim("w", min=96, max=512)}})
        sizes += [(2, hw) for hw in ((192, 192), (256, 256), (224, 288))]
    with torch.no_grad():
        for b, hw in sizes:
            x = torch.from_numpy(images(b, 9, (arch.input_shape[0], *hw)))
            program = ep if tuple(hw) == arch.input_shape[1:] else ep_hw
            got, want = program.module()(x), module(x)
            assert got.shape == (b, arch.num_labels)
            scale = float((want.max(1).values - want.min(1).values).min())
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * scale,
                                       msg=lambda m, b=b, hw=hw: f"{name} at {b}x{hw}: {m}")


# --- the ONNX models, with onnx + onnxruntime ----------------------------------------------

@pytest.mark.parametrize("name", ONNX_NAMES)
def test_onnx_model_loads_deterministically_and_runs(name):
    pytest.importorskip("onnx", reason="onnx (which ships the light models) is not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import onnx

    arch = ONNX_MODELS[name]
    blob = arch.load()
    assert blob == arch.load()
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] and len(model.graph.input) == 1
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    x = images(16, EVAL_SEED, arch.input_shape)
    y = np.concatenate([session.run(None, {feed: x[i:i + 8]})[0] for i in (0, 8)])
    one = session.run(None, {feed: x[:1]})[0]
    assert y.shape == (16, *arch.output_shape) and one.shape == (1, *arch.output_shape)
    y, one = y.reshape(16, -1), one.reshape(1, -1)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(one[0], y[0], rtol=1e-4, atol=1e-6 * np.abs(y).max())  # batch-independent
    if arch.output == "probabilities":
        np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-4)
    assert (margins(y) < TIE).mean() <= MAX_TIES
    assert len(set(y.argmax(1))) >= 4
