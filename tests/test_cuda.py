"""CUDA backend tests.

The first half runs everywhere (it exercises the backend's real host-side code
and its refusals on a machine without a GPU); the second half needs a CUDA GPU
and is skipped with the reason "CUDA not available" elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")

import hal  # noqa: E402
import hal.plugin  # noqa: E402
from hal.plugin import CompileOptions  # noqa: E402
from hal.formats import Model  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
N_GPUS = torch.cuda.device_count() if HAS_CUDA else 0
gpu = pytest.mark.skipif(not HAS_CUDA, reason="CUDA not available")
no_gpu = pytest.mark.skipif(HAS_CUDA, reason="a CUDA GPU is present: the refusals do not apply")
two_gpus = pytest.mark.skipif(N_GPUS < 2, reason="CUDA not available" if not HAS_CUDA
                              else "needs 2 or more CUDA GPUs")


class Net(torch.nn.Module):
    """Small conv + MLP: a convolution (cuDNN) and matmuls (cuBLAS)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = torch.nn.Linear(8 * 8 * 8, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = torch.nn.functional.avg_pool2d(h, 2).flatten(1)
        return self.fc2(torch.relu(self.fc1(h)))


class Hog(torch.nn.Module):
    """Allocates 256 MiB of activations per batch row: batch 1 fits, batch 4096 does not."""

    def forward(self, x):
        big = x.new_ones((x.shape[0], 1 << 26))
        return x + big.sum(dim=1, keepdim=True)


def x_of(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def backend():
    return hal.plugin.registry().backends["cuda"]


def cuda_device(backend, id_: str = "0") -> hal.Device:
    return next(d for d in backend.probe() if d.id == id_)


# --- runs everywhere -------------------------------------------------------------------
def test_plugin_import_does_not_import_torch():
    code = ("import sys, hal, hal.plugin; reg = hal.plugin.discover(only=['cuda']); "
            "import hal_backends.cuda.backend, hal_backends.cuda.options, hal_backends.cuda.devices; "
            "assert 'cuda' in reg.backends, reg.plugins; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HAL_PLUGINS": "cuda"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_backend_declares_aliases_and_precisions(backend):
    assert backend.name == "cuda" and backend.aliases == ("cuda", "gpu")
    assert backend.precisions == ("fp32", "fp16", "bf16")
    assert backend.formats == ("torch.nn", "torch.export")


@no_gpu
def test_probe_lists_cuda0_unavailable_with_reason(backend):
    devs = {d.id: d for d in backend.probe()}
    d0 = devs["0"]
    assert d0.target == "cuda:0" and d0.kind == "hardware" and not d0.available
    assert d0.reason and d0.rank == 100
    assert {"cuda:0", "gpu:0"} <= set(d0.aliases)
    if torch.version.cuda is None:
        assert "CPU-only build" in d0.reason and torch.__version__ in d0.reason
    everyone = devs["*"]
    assert not everyone.available and "2 or more CUDA GPUs" in everyone.reason


@no_gpu
@pytest.mark.parametrize("target", ["cuda", "gpu", "cuda:0", "gpu:0", "cuda:*"])
def test_compile_without_cuda_names_the_reason(target, backend):
    reason = cuda_device(backend).reason
    with pytest.raises(hal.DeviceUnavailableError) as e:
        hal.compile(Net(), target, example_input=(x_of(1),), cache=False)
    assert reason in str(e.value)


@pytest.mark.parametrize("precision,why", [("int8", "no verified GPU int8 path"),
                                           ("int8-dynamic", "no verified GPU int8 path"),
                                           ("fp64", "reference backend")])
def test_unsupported_precisions_are_refused_with_a_reason(backend, precision, why):
    dev = cuda_device(backend)
    assert precision not in backend.precisions_for(dev)
    model = Model("torch.nn", Net(), example_input=(x_of(1),))
    with pytest.raises(hal.UnsupportedError) as e:
        backend.compile(model, dev, CompileOptions(precision=precision))
    assert why in str(e.value) and "fp16" in str(e.value)


@pytest.mark.parametrize("opts,msg", [
    ({"torch_compile": "turbo"}, "not a torch.compile mode"),
    ({"cuda_graph": True}, "unknown CUDA option"),
    ({"cuda_graphs": "yes"}, "is not a bool"),
    ({"torch_compile": "reduce-overhead", "cuda_graphs": True}, "already captures CUDA graphs"),
])
def test_bad_options_are_named_before_the_device_is_needed(backend, opts, msg):
    model = Model("torch.nn", Net(), example_input=(x_of(1),))
    with pytest.raises(hal.UsageError, match=msg):
        backend.compile(model, cuda_device(backend), CompileOptions(backend_options=opts))


def test_tf32_only_for_fp32(backend):
    model = Model("torch.nn", Net(), example_input=(x_of(1),))
    with pytest.raises(hal.UsageError, match="tf32=True only affects fp32"):
        backend.compile(model, cuda_device(backend), CompileOptions(precision="fp16",
                                                                    backend_options={"tf32": True}))


def test_recipe_round_trips():
    from hal_backends.cuda.options import Recipe, parse

    r = parse("fp32", {"torch_compile": True, "cuda_graphs": True, "tf32": True})
    assert r.torch_compile == "default" and r.cuda_graphs and r.tf32
    assert Recipe.from_json(r.to_json()) == r


def test_fp32_mode_sets_and_restores_the_global_switches():
    from hal_backends.cuda.runtime import fp32_mode

    mm, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    old_legacy = mm.allow_tf32
    try:
        mm.allow_tf32 = True  # a caller using the legacy flag
        for tf32, want in ((False, "ieee"), (True, "tf32")):
            with fp32_mode(tf32):
                assert mm.fp32_precision == want and cudnn.conv.fp32_precision == want
                assert cudnn.rnn.fp32_precision == want
            assert mm.allow_tf32 is True  # still readable, still the caller's value
            assert cudnn.allow_tf32 is True
    finally:
        mm.allow_tf32 = old_legacy


@no_gpu
def test_gemm_probe_refuses_without_cuda(backend):
    with pytest.raises(hal.DeviceUnavailableError, match="not available"):
        backend.probe_gemm("cuda:0")
    with pytest.raises(hal.UsageError, match="one GPU at a time"):
        backend.probe_gemm("cuda:*")
    with pytest.raises(hal.UsageError, match="no dtype"):
        backend.probe_gemm(cuda_device(backend), dtype="fp8")


@pytest.mark.parametrize("precision,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_prepare_exports_at_the_precision_on_the_host(precision, dtype, tmp_path):
    """The artifact is the model cast to its precision, exported with a free batch
    dimension, and placed on a device by ``runnable`` (meta here: no GPU needed)."""
    from hal_backends import torch_common as tc
    from hal_backends.cuda import pipeline, runtime

    p = pipeline.prepare(Model("torch.nn", Net(), example_input=(x_of(1),)), precision)
    assert p.dynamic and p.not_saveable is None
    assert p.args[0].dtype == torch.float32  # the caller keeps float32 inputs
    assert all(v.dtype == dtype for v in p.program.state_dict.values())
    tc.save_program(p.program, tmp_path)
    back = tc.load_program(tmp_path)
    gm = runtime.runnable(back, None, torch.device("meta"))
    assert all(t.device.type == "meta" for t in gm.state_dict().values())
    out, = gm(torch.zeros(5, 3, 16, 16, dtype=dtype, device="meta"))  # flat outputs
    assert out.shape == (5, 10) and out.dtype == dtype


# --- needs a GPU -----------------------------------------------------------------------
def rel_close(got: np.ndarray, ref: np.ndarray, rtol: float) -> None:
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


@pytest.fixture(scope="module")
def net():
    return Net().eval()


@pytest.fixture(scope="module")
def fp64_ref(net):
    """(x, the fp64 CPU output, the fp32 CPU output)."""
    import copy

    x = x_of(4)
    with torch.no_grad():
        ref64 = copy.deepcopy(net).double()(torch.from_numpy(x).double()).numpy()
        ref32 = net(torch.from_numpy(x)).numpy()
    return x, ref64, ref32


@pytest.fixture(scope="module")
def exe32(net):
    return hal.compile(net, "cuda", precision="fp32", example_input=(x_of(1),), cache=False)


@gpu
def test_probe_lists_every_gpu(backend):
    devs = [d for d in backend.probe() if d.id != "*"]
    assert len(devs) == N_GPUS
    for i, d in enumerate(devs):
        p = torch.cuda.get_device_properties(i)
        assert d.available and d.id == str(i) and d.name == p.name
        assert d.memory_bytes == p.total_memory
        assert d.properties["compute_capability"] == f"{p.major}.{p.minor}"
        assert d.properties["cuda_runtime"] == torch.version.cuda
        assert d.properties["driver_version"] != "unknown"
    assert hal.plugin.resolve("gpu")[1].target == "cuda:0"


@gpu
def test_fp32_matches_cpu_with_tf32_off(exe32, net, fp64_ref):
    x, _, cpu = fp64_ref
    before = torch.backends.cuda.matmul.fp32_precision
    got = exe32(x)
    assert torch.backends.cuda.matmul.fp32_precision == before  # no leaked global state
    assert got.dtype == np.float32 and got.shape == (4, 10)
    rel_close(got, cpu, 1e-5)
    assert exe32.info.backend_options["tf32"] is False


@gpu
@pytest.mark.parametrize("precision,rtol", [("fp16", 1e-2), ("bf16", 4e-2)])
def test_half_precisions_within_tolerance(net, fp64_ref, precision, rtol, backend):
    if precision not in backend.precisions_for(cuda_device(backend)):
        pytest.skip(f"{precision} is not offered on this GPU")
    x, ref, _ = fp64_ref
    exe = hal.compile(net, "cuda:0", precision=precision, example_input=(x_of(1),), cache=False)
    assert exe.info.inputs[0].dtype == "float32" and exe.info.outputs[0].dtype == "float32"
    got = exe(x)
    assert got.dtype == np.float32
    rel_close(got, ref, rtol)


@gpu
def test_cuda_graphs_equal_eager(net, exe32):
    exe = hal.compile(net, "cuda", precision="fp32", example_input=(x_of(1),), cache=False,
                      options={"cuda_graphs": True})
    for b in (1, 3, 3):
        x = x_of(b, seed=b)
        np.testing.assert_allclose(exe(x), exe32(x), rtol=1e-6, atol=1e-6)
    assert len(exe.runner.replicas[0].graphs) == 2  # one graph per input shape


@gpu
def test_torch_compile_matches_eager(net, exe32):
    pytest.importorskip("triton", reason="torch.compile on CUDA needs triton")
    exe = hal.compile(net, "cuda", precision="fp32", example_input=(x_of(2),), cache=False,
                      options={"torch_compile": "default"})
    x = x_of(2, seed=5)
    rel_close(exe(x), exe32(x), 1e-4)


@gpu
def test_cuda_tensor_inputs_stay_on_the_gpu(exe32):
    x = x_of(2)
    t = torch.from_numpy(x).cuda()
    np.testing.assert_array_equal(exe32(t), exe32(x))
    with pytest.raises(hal.InvalidInputError, match="dtype float64"):
        exe32(t.double())
    with pytest.raises(hal.InvalidInputError, match="NaN or Inf"):
        exe32(torch.full_like(t, float("nan")))


@gpu
@two_gpus
def test_cuda_tensor_on_another_gpu_is_refused(exe32):
    t = torch.from_numpy(x_of(1)).to("cuda:1")
    with pytest.raises(hal.InvalidInputError, match="is on cuda:1"):
        exe32(t)


@gpu
@two_gpus
def test_multi_gpu_splits_the_batch_in_order(net, fp64_ref):
    x = x_of(7, seed=3)  # uneven split on purpose
    exe = hal.compile(net, "cuda:*", precision="fp32", example_input=(x_of(1),), cache=False)
    assert len(exe.runner.replicas) == N_GPUS
    with torch.no_grad():
        cpu = net(torch.from_numpy(x)).numpy()
    rel_close(exe(x), cpu, 1e-5)
    rel_close(exe(x[:1]), cpu[:1], 1e-5)  # fewer rows than GPUs


@gpu
def test_profile_reports_device_time_peak_memory_and_energy(exe32):
    prof = exe32.profile(x_of(8), iterations=20, warmup=2)
    assert prof.timer == "device" and prof.latency_ms["p50"] > 0
    weights = sum(p.numel() * 4 for p in Net().parameters())
    assert prof.peak_memory_bytes and prof.peak_memory_bytes >= weights
    assert (prof.energy_j_per_inference or 0) > 0 or prof.unavailable.get("energy_j_per_inference")
    tp = exe32.profile(x_of(8), iterations=20, warmup=2, mode="throughput")
    assert tp.throughput_per_s > 0


@gpu
def test_save_and_load(net, tmp_path):
    exe = hal.compile(net, "cuda", precision="fp16", example_input=(x_of(1),), cache=False,
                      options={"cuda_graphs": True})
    path = exe.save(tmp_path / "net.hal")
    back = hal.load(path)
    assert back.info.precision == "fp16" and back.runner.recipe.cuda_graphs
    x = x_of(3)
    np.testing.assert_allclose(back(x), exe(x), rtol=1e-3, atol=1e-3)


@gpu
def test_out_of_memory_says_asked_and_free():
    from hal_backends.cuda.runtime import CudaOutOfMemoryError

    x = np.ones((1, 1), np.float32)
    exe = hal.compile(Hog(), "cuda", example_input=(x,), cache=False)
    with pytest.raises(CudaOutOfMemoryError) as e:
        exe(np.ones((4096, 1), np.float32))
    msg = str(e.value)
    assert "asked for" in msg and "GiB free of" in msg and "batch size" in msg
    assert exe(x)[0, 0] == 1 + (1 << 26)  # still usable afterwards


@gpu
def test_gemm_probe(backend):
    before = torch.backends.cuda.matmul.fp32_precision
    tflops = backend.probe_gemm("cuda:0", dtype="fp32", n=4096)
    assert 0 < tflops < 10_000
    assert torch.backends.cuda.matmul.fp32_precision == before


def test_each_gpu_gets_its_own_copy_of_a_sequential_program():
    """runnable() copies the program before moving it to a GPU. copy.deepcopy breaks an
    nn.Sequential's program on torch 2.13 (its input is named `input`), so every
    Sequential failed on a GPU; the copy is checked here on the meta device (no GPU)."""
    from hal_backends.cuda.runtime import runnable

    m = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU()).eval()
    ep = torch.export.export(m, (torch.randn(2, 4),))
    moved = runnable(ep, None, torch.device("meta"))
    assert moved(torch.randn(2, 4, device="meta"))[0].device.type == "meta"
    assert ep.module()(torch.ones(2, 4)).device.type == "cpu"  # the original stays where it was


def test_a_replica_keeps_the_programs_shape_rules():
    """runnable() used to drop the program's guards (check_guards=False): hal checks each
    input alone, so a second input of length 1 where both share a Dim broadcast silently.
    The rules are checked once per set of shapes, also around a torch.compile'd graph
    (backend "eager" here: no GPU or C compiler needed)."""
    from hal_backends import torch_common as tc
    from hal_backends.cuda.runtime import runnable

    class Mul(torch.nn.Module):
        def forward(self, a, m):
            return a * m

    s = torch.export.Dim("s")
    ep = torch.export.export(Mul(), (torch.randn(2, 5), torch.randn(2, 5)),
                             dynamic_shapes=({1: s}, {1: s}))
    moved = runnable(ep, None, torch.device("cpu"))
    compiled = tc.compile_graph(moved, lambda m: torch.compile(m, backend="eager"))
    a = torch.randn(2, 7)
    for fn in (moved, compiled):
        torch.testing.assert_close(fn(a, a)[0], a * a)
        with pytest.raises(hal.InvalidInputError, match="shape rules"):
            fn(a, torch.ones(2, 1))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_program_cast_to_half_leaves_no_float32_behind(precision):
    """Found on an H200: compiling a float32 ExportedProgram at fp16/bf16 cast its weights
    (``.to``) but not the float32 its graph has baked in: an LSTM's zero initial state
    (``aten.zeros(dtype=float32)``: "Input and hidden tensors are not the same dtype"), and
    a transformers ViT's ``finfo(float32).min`` mask fill, which CUDA refuses to overflow
    into half. ``prepare`` casts the whole graph (on a copy: the caller's program keeps its
    float32 weights); checked here by running the prepared program on the CPU."""
    from hal.plugin import Model
    from hal_backends.cuda.pipeline import prepare

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(8, 12, num_layers=2, bidirectional=True, batch_first=True)

        def forward(self, x):
            y = self.rnn(x)[0]
            mask = torch.where(y > 0.5, torch.zeros(()), torch.finfo(torch.float32).min)
            return torch.softmax(y + mask, -1) + torch.zeros(y.shape[-1])

    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(2, 10, 8)
    ep = torch.export.export(net, (x,))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    p = prepare(Model(value=ep, format="torch.export", example_input=(x.numpy(),)), precision)
    with torch.no_grad():
        got, want = p.program.module()(x.to(dtype)), net(x)
    assert got.dtype == dtype
    assert float((got.float() - want).abs().max()) < 0.05 * float(want.abs().max())
    assert all(t.dtype == torch.float32 for t in ep.state_dict.values())
    assert all(t.dtype == torch.float32 for t in net.parameters())
