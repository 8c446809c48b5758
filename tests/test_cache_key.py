"""Issue #21: the compile cache key hashes what runs. Two models that differ
only in a plain attribute, a non-persistent buffer, a config flag or a
submodule's hyper-parameter never share an entry (and each gets its own
outputs); two separately built identical models do. Through the API on the
reference backend and OpenVINO, and through the CLI on files; plus a .pt2
that declares terabytes it does not store (#22)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import hal

torch = pytest.importorskip("torch", reason="torch (the reference backend's runtime) is not installed")
from torch import nn  # noqa: E402

import craft  # noqa: E402  (tests/craft.py)


def _targets() -> list:
    ov = [d for d in hal.devices() if d.target == "openvino:CPU" and d.available]
    return ["cpu", pytest.param("openvino:CPU", marks=pytest.mark.skipif(
        not ov, reason="OpenVINO's CPU device is not available (install hal-accel[openvino])"))]


TARGETS = _targets()
X = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)


class Scaled(nn.Module):
    """``scale`` is a plain attribute: not in ``repr`` or ``state_dict``."""

    def __init__(self, scale: float = 1.0, act: nn.Module | None = None, up: str = "nearest"):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = act or nn.LeakyReLU(0.01)
        self.up = nn.Upsample(scale_factor=2, mode=up)
        self.register_buffer("shift", torch.zeros(4, 1, 1), persistent=False)
        self.scale = scale

    def forward(self, x):
        return self.up(self.act(self.conv(x) * self.scale + self.shift))


def build(**kw) -> nn.Module:
    torch.manual_seed(0)
    return Scaled(**kw).eval()


def shifted() -> nn.Module:
    m = build()
    m.shift.fill_(0.5)  # a non-persistent buffer: not in state_dict either
    return m


VARIANTS = {
    "plain attribute": lambda: build(scale=3.0),
    "non-persistent buffer": shifted,
    "LeakyReLU slope": lambda: build(act=nn.LeakyReLU(0.3)),
    "Upsample mode": lambda: build(up="bilinear"),
}


def eager(m: nn.Module, *xs) -> np.ndarray:
    with torch.no_grad():
        return m(*(torch.from_numpy(x) for x in xs)).numpy()


def compile_(m, x, target, cache_dir, **kw):
    return hal.compile(m, target, example_input=(x,), cache_dir=cache_dir, **kw)


@pytest.mark.parametrize("target", TARGETS)
def test_identical_models_hit_and_each_variant_misses(target, tmp_path):
    base = compile_(build(), X, target, tmp_path)
    again = compile_(build(), X, target, tmp_path)  # a second instance, same seed
    assert not base.info.cache_hit and again.info.cache_hit
    np.testing.assert_array_equal(base(X), again(X))
    ref = eager(build(), X)
    np.testing.assert_allclose(base(X), ref, rtol=1e-4, atol=1e-4)
    for name, make in VARIANTS.items():
        m = make()
        want = eager(m, X)
        assert np.abs(want - ref).max() > 1e-2, f"{name}: the variant should compute something else"
        exe = compile_(m, X, target, tmp_path)
        assert not exe.info.cache_hit, f"{name} shared the base model's cache entry"
        np.testing.assert_allclose(exe(X), want, rtol=1e-4, atol=1e-4, err_msg=name)
        hit = compile_(make(), X, target, tmp_path)
        assert hit.info.cache_hit, f"{name}: a rebuilt identical variant should hit"
        np.testing.assert_allclose(hit(X), want, rtol=1e-4, atol=1e-4, err_msg=name)


def test_training_flag_is_keyed_and_compiles_in_eval(tmp_path):
    """Every backend compiles in eval mode, so a model given in train mode gives
    eval outputs; the flag is still in the key (a submodule's ``training`` may
    change what runs), so the two never share an entry."""
    m = build(act=nn.Sequential(nn.Dropout(0.5), nn.LeakyReLU(0.01)))
    ev = compile_(m, X, "cpu", tmp_path)
    tr = build(act=nn.Sequential(nn.Dropout(0.5), nn.LeakyReLU(0.01))).train()
    exe = compile_(tr, X, "cpu", tmp_path)
    assert not exe.info.cache_hit
    np.testing.assert_allclose(exe(X), ev(X), rtol=1e-5, atol=1e-5)


def gpt2(scale_attn_weights: bool):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")

    class LastHidden(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.gpt = transformers.GPT2Model(cfg)

        def forward(self, ids):
            return self.gpt(input_ids=ids, use_cache=False).last_hidden_state

    cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=64,
                                  bos_token_id=0, eos_token_id=0,
                                  scale_attn_weights=scale_attn_weights)
    torch.manual_seed(0)
    return LastHidden(cfg).eval()


@pytest.mark.parametrize("target", TARGETS)
def test_transformers_config_flag(target, tmp_path):
    """On OpenVINO through ``torch.export`` (ov.convert_model's TorchScript path
    cannot convert GPT-2's None constants): so ExportedProgram keys are checked too."""
    ids = np.arange(8, dtype=np.int64).reshape(1, 8) % 64

    def model(flag: bool):
        m = gpt2(flag)
        return m if target == "cpu" else torch.export.export(m, (torch.from_numpy(ids),))

    on = compile_(model(True), ids, target, tmp_path)
    assert compile_(model(True), ids, target, tmp_path).info.cache_hit
    want = eager(gpt2(False), ids)
    assert np.abs(want - eager(gpt2(True), ids)).max() > 1e-3
    off = compile_(model(False), ids, target, tmp_path)
    assert not off.info.cache_hit
    np.testing.assert_allclose(off(ids), want, rtol=1e-3, atol=1e-3)
    assert not np.allclose(off(ids), on(ids), atol=1e-3)


def test_unreadable_state_compiles_uncached_with_a_note(tmp_path):
    import random

    m = build()
    m.rng = random.Random(0)  # C state (its own __reduce__) the key cannot read
    exe = compile_(m, X, "cpu", tmp_path)
    assert not exe.info.cache_hit and any("not cached" in n and "model.rng" in n for n in exe.info.notes)
    assert not list(tmp_path.glob("*.hal"))
    assert not compile_(m, X, "cpu", tmp_path).info.cache_hit


# --- files: the key is the stored bytes of every file the model consists of ----------
def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hal.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def cli_compile(model: Path, out: Path, cache: Path) -> dict:
    p = cli("compile", str(model), "-t", "cpu", "-o", str(out), "--json",
            env={"HAL_CACHE_DIR": str(cache)})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_pt2_and_onnx_files_differing_in_one_value_miss(tmp_path):
    """``.pt2`` through the CLI (two processes, one cache), ``.onnx`` through the API."""
    pytest.importorskip("onnxscript", reason="ONNX export needs onnxscript (hal-accel[cpu])")
    x = X[:1]
    a, b = build(), build(scale=3.0)
    for name, m in (("a", a), ("b", b)):
        torch.export.save(torch.export.export(m, (torch.from_numpy(x),)), str(tmp_path / f"{name}.pt2"))
        torch.onnx.export(m, (torch.from_numpy(x),), str(tmp_path / f"{name}.onnx"), dynamo=True)
    cache = tmp_path / "cache"
    first = cli_compile(tmp_path / "a.pt2", tmp_path / "a.hal", cache)
    other = cli_compile(tmp_path / "b.pt2", tmp_path / "b.hal", cache)
    assert (first["cache_hit"], other["cache_hit"]) == (False, False)
    np.testing.assert_allclose(hal.load(tmp_path / "a.hal")(x), eager(a, x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(hal.load(tmp_path / "b.hal")(x), eager(b, x), rtol=1e-4, atol=1e-4)
    assert hal.compile(tmp_path / "a.pt2", "cpu", cache_dir=cache).info.cache_hit
    for name, m in (("a", a), ("b", b)):
        exe = hal.compile(tmp_path / f"{name}.onnx", "cpu", cache_dir=cache)
        assert not exe.info.cache_hit, name
        np.testing.assert_allclose(exe(x), eager(m, x), rtol=1e-4, atol=1e-4)
    assert hal.compile(tmp_path / "a.onnx", "cpu", cache_dir=cache).info.cache_hit


def test_onnx_external_data_is_in_the_key(tmp_path):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (hal-accel[cpu])")
    from onnx import helper, numpy_helper

    def save(w: np.ndarray, d: Path) -> Path:
        d.mkdir()
        g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(w, "w")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save_model(m, str(d / "m.onnx"), save_as_external_data=True, location="w.data",
                        size_threshold=0)
        return d / "m.onnx"

    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    path = save(w, tmp_path / "a")
    x = rng.standard_normal((1, 64)).astype(np.float32)
    first = hal.compile(path, "cpu", cache_dir=tmp_path / "c")
    (path.parent / "w.data").write_bytes((w * 2).tobytes())  # same .onnx file, new weights
    second = hal.compile(path, "cpu", cache_dir=tmp_path / "c")
    assert not second.info.cache_hit
    np.testing.assert_allclose(second(x), 2 * first(x), rtol=1e-4, atol=1e-4)
    assert hal.compile(path, "cpu", cache_dir=tmp_path / "c").info.cache_hit


def test_openvino_ir_whose_bin_changed_misses(tmp_path):
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (hal-accel[openvino])")
    if not any(d.target == "openvino:CPU" and d.available for d in hal.devices()):
        pytest.skip("OpenVINO's CPU device is not available")
    x = X[:1]
    a, b = build(), build()
    with torch.no_grad():
        b.conv.weight.mul_(-1)  # same graph, so the same .xml; other weights, so another .bin
    for name, m in (("a", a), ("b", b)):
        ov.save_model(ov.convert_model(m, example_input=torch.from_numpy(x)), tmp_path / f"{name}.xml",
                      compress_to_fp16=False)
    first = hal.compile(tmp_path / "a.xml", "openvino:CPU", cache_dir=tmp_path / "c")
    np.testing.assert_allclose(first(x), eager(a, x), rtol=1e-4, atol=1e-4)
    assert (tmp_path / "a.bin").stat().st_size == (tmp_path / "b.bin").stat().st_size
    # a new file in place of the .bin (OpenVINO may map the old one); a.xml unchanged
    os.replace(tmp_path / "b.bin", tmp_path / "a.bin")
    second = hal.compile(tmp_path / "a.xml", "openvino:CPU", cache_dir=tmp_path / "c")
    assert not first.info.cache_hit and not second.info.cache_hit
    np.testing.assert_allclose(second(x), eager(b, x), rtol=1e-4, atol=1e-4)
    assert hal.compile(tmp_path / "a.xml", "openvino:CPU", cache_dir=tmp_path / "c").info.cache_hit


# --- #22: a .pt2 that declares terabytes it does not store ---------------------------
BOUNDED = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # torch alone maps ~2 GiB
    sys.argv = ["hal", *sys.argv[1:]]
    from hal.cli import main
    main()
""")


def _terabyte_pt2(tmp_path: Path, empty: bool) -> Path:
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(build(), (torch.from_numpy(X),)), str(good))
    evil = craft.huge_weight_pt2(good, tmp_path / "evil.pt2", 1 << 40, empty=empty)
    assert evil.stat().st_size < 64_000
    return evil


@pytest.mark.parametrize("empty", [False, True], ids=["stride-0", "empty-record"])
def test_pt2_declaring_terabytes_is_refused_before_it_is_read(tmp_path, empty):
    evil = _terabyte_pt2(tmp_path, empty)
    with pytest.raises(hal.ModelFormatError, match="memory budget") as e:
        hal.compile(evil, "cpu", cache_dir=tmp_path / "cache")
    assert "\n" not in str(e.value)


# a process under RLIMIT_AS each (~10 s): the default run starts one; both variants are refused
# through the API above
@pytest.mark.parametrize("empty", [False, pytest.param(True, marks=pytest.mark.full)],
                         ids=["stride-0", "empty-record"])
def test_pt2_declaring_terabytes_is_one_hal_error_in_bounded_memory(tmp_path, empty):
    evil = _terabyte_pt2(tmp_path, empty)
    p = subprocess.run([sys.executable, "-c", BOUNDED, "compile", str(evil), "-t", "cpu",
                        "-o", str(tmp_path / "o.hal")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HAL_CACHE_DIR": str(tmp_path / "cache")})
    lines = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert p.returncode != 0 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("error:") and "declares weights of" in lines[0], lines[0]
    with pytest.raises(hal.ModelFormatError, match="memory budget"):
        hal.compile(evil, "cpu", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "o.hal").exists()
