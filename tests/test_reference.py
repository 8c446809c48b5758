"""The reference CPU backend through the public API (real PyTorch)."""

from __future__ import annotations

import numpy as np
import pytest

import hal

torch = pytest.importorskip("torch", reason="torch is not installed")


def ref(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_fp32_matches_torch_eager(small_cnn, x16):
    exe = hal.compile(small_cnn, target="cpu", precision="fp32", example_input=(x16,), cache=False)
    y = exe(x16)
    np.testing.assert_allclose(y, ref(small_cnn, x16), rtol=1e-5, atol=1e-6)
    assert exe.info.precision == "fp32" and exe.info.device_kind == "hardware"
    assert exe.info.inputs[0].shape == (None, 3, 16, 16)  # eager runs any batch
    xb = np.concatenate([x16, -x16])
    np.testing.assert_allclose(exe(xb), ref(small_cnn, xb), rtol=1e-5, atol=1e-6)


def test_torch_tensors_accepted(small_cnn, x16):
    exe = hal.compile(small_cnn, target="cpu", example_input=(torch.from_numpy(x16),), cache=False)
    np.testing.assert_allclose(exe(torch.from_numpy(x16)), ref(small_cnn, x16), rtol=1e-5, atol=1e-6)


def test_fp64_oracle_runs_in_double(small_cnn, x16):
    exe = hal.compile(small_cnn, target="reference:cpu", precision="fp64", example_input=(x16,),
                      cache=False)
    y = exe(x16)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref(small_cnn, x16), rtol=1e-4, atol=1e-5)
    assert small_cnn[0].weight.dtype == torch.float32  # the caller's module is untouched


def test_int8_dynamic_mlp_compresses_more_than_3x(mlp):
    x = np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)
    exe = hal.compile(mlp, target="cpu", precision="int8-dynamic", example_input=(x,), cache=False)
    assert exe.info.extra["compression_ratio"] > 3
    assert exe.info.extra["model_size_bytes"] < exe.info.extra["fp32_size_bytes"]
    y, r = exe(x), ref(mlp, x)
    assert not np.array_equal(y, r)  # really quantized ...
    np.testing.assert_allclose(y, r, atol=0.05 * np.abs(r).max())  # ... and still close
    assert (y.argmax(1) == r.argmax(1)).all()


def test_int8_static_pt2e(small_cnn, x16):
    rng = np.random.default_rng(2)
    calib = [rng.standard_normal((1, 3, 16, 16)).astype(np.float32) for _ in range(16)]
    exe = hal.compile(small_cnn, target="cpu", precision="int8", example_input=(x16,),
                      calibration=calib, cache=False)
    y, r = exe(x16), ref(small_cnn, x16)
    assert not np.array_equal(y, r)
    np.testing.assert_allclose(y, r, atol=0.1 * np.abs(r).max())
    assert any("PT2E" in p for p in exe.info.conversion_path)


def test_int8_of_a_static_program_stays_static_and_is_cached(tmp_path):
    """Quantizing a static torch.export program re-exports it; export specialises the
    batch Dim to the example's size (a constant SymInt, not an int). It used to be read
    as free: the executable claimed any batch, its artifact failed to load ('hal.json's
    inputs [(None, 3)] are not the program's [(2, 3)]') and the cache rebuilt it every time."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU()).eval()
    ep = torch.export.export(m, (torch.randn(2, 3),))
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((2, 3)).astype(np.float32) for _ in range(8)]
    a = hal.compile(ep, target="cpu", precision="int8", calibration=calib, cache_dir=tmp_path)
    assert [s.shape for s in a.info.inputs] == [(2, 3)]
    b = hal.compile(ep, target="cpu", precision="int8", calibration=calib, cache_dir=tmp_path)
    assert b.info.cache_hit
    x = calib[0]
    np.testing.assert_array_equal(b(x), a(x))
    np.testing.assert_array_equal(hal.load(a.save(tmp_path / "a.hal"))(x), a(x))


def test_compile_cache_hit_and_bypass(small_cnn, x16, tmp_path):
    a = hal.compile(small_cnn, target="cpu", example_input=(x16,), cache_dir=tmp_path)
    b = hal.compile(small_cnn, target="cpu", example_input=(x16,), cache_dir=tmp_path)
    assert not a.info.cache_hit and b.info.cache_hit
    np.testing.assert_array_equal(a(x16), b(x16))
    c = hal.compile(small_cnn, target="cpu", example_input=(x16,), cache_dir=tmp_path, cache=False)
    assert not c.info.cache_hit
    d = hal.compile(small_cnn, target="cpu", precision="fp64", example_input=(x16,), cache_dir=tmp_path)
    assert not d.info.cache_hit  # precision is part of the key
    assert len(list(tmp_path.glob("*.hal"))) == 2


def test_cache_key_follows_weights(x16, tmp_path):
    from torch import nn

    torch.manual_seed(5)
    m = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).eval()
    hal.compile(m, target="cpu", example_input=(x16,), cache_dir=tmp_path)
    with torch.no_grad():
        m[1].weight.add_(1.0)
    e = hal.compile(m, target="cpu", example_input=(x16,), cache_dir=tmp_path)
    assert not e.info.cache_hit
    np.testing.assert_allclose(e(x16), ref(m, x16), rtol=1e-5, atol=1e-5)


def test_save_load_roundtrip(small_cnn, x16, tmp_path):
    for precision in ("fp32", "int8-dynamic"):
        exe = hal.compile(small_cnn, target="cpu", precision=precision, example_input=(x16,),
                          cache=False)
        path = exe.save(tmp_path / f"m-{precision}.hal")
        again = hal.load(path)
        assert again.info.precision == precision
        np.testing.assert_array_equal(again(x16), exe(x16))
        assert exe.info.artifact_size_bytes and exe.info.artifact_size_bytes > 0


def test_profile_reports_percentiles(small_cnn, x16):
    exe = hal.compile(small_cnn, target="cpu", example_input=(x16,), cache=False)
    p = exe.profile(x16, iterations=20, warmup=2, batch_size=4)
    assert p.batch_size == 4 and p.iterations == 20
    lat = p.latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert p.throughput_per_s > 0
    assert "energy_j_per_inference" in p.unavailable  # never estimated
    d = exe.profile(x16, duration_s=0.05, warmup=0)
    assert d.iterations >= 1


def test_onnx_model_runs_on_onnx_reference(small_cnn, x16, tmp_path):
    pytest.importorskip("onnxscript", reason="torch.onnx export needs onnxscript")
    path = tmp_path / "m.onnx"
    torch.onnx.export(small_cnn, (torch.from_numpy(x16),), str(path), dynamo=True, verbose=False)
    exe = hal.compile(path, target="cpu", cache=False)
    np.testing.assert_allclose(exe(x16), ref(small_cnn, x16), rtol=1e-5, atol=1e-5)
    assert exe.info.conversion_path[0] == "onnx"


def test_exported_program_file(small_cnn, x16, tmp_path):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(small_cnn, (torch.from_numpy(x16),)), str(path))
    exe = hal.compile(path, target="cpu", cache=False)
    np.testing.assert_allclose(exe(x16), ref(small_cnn, x16), rtol=1e-5, atol=1e-6)


def test_concurrent_compiles_share_one_entry(tmp_path):
    """Two processes compiling the same model at once: one builds, one waits and hits."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import numpy as np, torch, hal
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
        x = np.ones((1, 3, 2, 2), np.float32)
        e = hal.compile(m, target="cpu", example_input=(x,), cache_dir={str(tmp_path)!r})
        print("HIT" if e.info.cache_hit else "MISS", float(e(x).sum()))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert sorted(o[0] for o in outs) == ["HIT", "MISS"]
    assert outs[0][1] == outs[1][1]
    assert len(list(tmp_path.glob("*.hal"))) == 1
    assert not list(tmp_path.glob(".*.hal.*"))  # no half-written temp files left


def test_auto_measures_candidates_against_a_latency_requirement(small_cnn, x16):
    exe = hal.compile(small_cnn, target="auto", example_input=(x16,),
                      requirements=hal.Requirements(max_latency_ms=10_000))
    assert exe.info.device_kind == "hardware"
    assert any("measured" in n and "p50" in n for n in exe.info.notes)
    with pytest.raises(hal.DeviceUnavailableError, match="no device meets 1e-06 ms"):
        hal.compile(small_cnn, target="auto", example_input=(x16,),
                    requirements=hal.Requirements(max_latency_ms=1e-6))


def test_onnx_string_outputs_are_object_arrays(tmp_path):
    """ONNX STRING tensors are numpy object arrays, as onnxruntime gives them and the
    executable declares them; onnx.reference returns StringNormalizer's as fixed-width
    unicode, which the core's output check refused (ONNX's strnormalizer node cases)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("StringNormalizer", ["x"], ["y"], case_change_action="UPPER")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.STRING, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.STRING, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "s.onnx")
    exe = hal.compile(tmp_path / "s.onnx", target="reference", cache=False)
    y = exe(np.array(["monday", "tuesday", "x"], dtype=object))
    assert y.dtype == object and y.tolist() == ["MONDAY", "TUESDAY", "X"]


class _Scaled(torch.nn.Module):
    def forward(self, a, m):
        return a * m, {"sum": (a + m).sum(dim=1)}


def test_loaded_program_runs_bare_graph_and_keeps_guards(tmp_path):
    """A loaded (or torch.export) program runs its graph without program.module()'s per-call
    pytree and hooks (tc.fast_module), with the same outputs in the same order; its shape
    rules still hold: a mask of length 1 where the sequence Dim is shared would broadcast
    silently if the guards were dropped, and is one InvalidInputError instead."""
    b, s = torch.export.Dim("batch"), torch.export.Dim("seq")
    ep = torch.export.export(_Scaled(), (torch.randn(2, 5), torch.randn(2, 5)),
                             dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}))
    exe = hal.compile(ep, target="reference", cache=False)
    loaded = hal.load(exe.save(tmp_path / "two.hal"))
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = np.full((3, 4), 2, np.float32)
    want = [t.numpy() for t in torch.utils._pytree.tree_leaves(
        ep.module()(torch.from_numpy(a), torch.from_numpy(m)))]
    for e in (exe, loaded):
        assert type(e.runner.module).__name__ == "_Checked"
        got = e.run([a, m])
        assert len(got) == 2
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        for bad in (np.ones((3, 1), np.float32), np.ones((2, 4), np.float32)):
            with pytest.raises(hal.InvalidInputError, match="shape rules"):
                e(a, bad)
        np.testing.assert_array_equal(e.run([a, m])[0], want[0])  # a refusal leaves it usable
