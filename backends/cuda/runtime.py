"""The torch side of one GPU: precision switches, out-of-memory reporting, and a
replica (a module on one device, eager, ``torch.compile``d or CUDA-graphed).

Imported only from ``compile``/``load``/``probe_gemm``; it imports torch.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from hal import HalError, UnsupportedError

from .. import torch_common as tc
from .options import Recipe

#: CUDA graphs kept per replica (one per distinct input shape), oldest dropped first.
MAX_GRAPHS = 8

#: every fp32 precision switch: cuBLAS matmuls and cuDNN (all, convolutions, RNNs).
_SWITCHES = (torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.cudnn.conv,
             torch.backends.cudnn.rnn)


@contextmanager
def fp32_mode(tf32: bool) -> Iterator[None]:
    """IEEE fp32 (or TF32 when asked) for matmuls and cuDNN inside the block, and the
    caller's settings restored after it. Uses only the ``fp32_precision`` API:
    torch refuses reads of the legacy ``allow_tf32`` flags once the two are mixed,
    and this round trip leaves either style of caller setting readable."""
    want = "tf32" if tf32 else "ieee"
    saved = [s.fp32_precision for s in _SWITCHES]
    try:
        for s in _SWITCHES:
            s.fp32_precision = want
        yield
    finally:
        for s, v in zip(_SWITCHES, saved):
            s.fp32_precision = v


class CudaOutOfMemoryError(UnsupportedError):
    """The GPU could not hold the model or this call's tensors."""


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def oom_error(e: BaseException, what: str, fallback_index: int) -> HalError:
    msg = str(e)
    m = re.search(r"GPU (\d+)", msg)
    idx = int(m.group(1)) if m else fallback_index
    asked = re.search(r"[Tt]ried to allocate ([\d.]+ [KMGTP]?i?B)", msg)
    torch.cuda.empty_cache()
    try:
        free, total = torch.cuda.mem_get_info(idx)
        have = f"{_gib(free)} free of {_gib(total)}"
    except Exception:  # noqa: BLE001 - the device may be wedged
        have = "free memory unreadable"
    try:
        name = torch.cuda.get_device_name(idx)
    except Exception:  # noqa: BLE001
        name = "unreadable name"
    return CudaOutOfMemoryError(
        f"{what} ran out of GPU memory on cuda:{idx} ({name}): asked for "
        f"{asked.group(1) if asked else 'more than was free'}, {have}",
        "lower the batch size, compile at fp16/bf16, free memory held by other processes, "
        "or split the batch across GPUs with target 'cuda:*'")


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


@contextmanager
def oom_guard(what: str, index: int) -> Iterator[None]:
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is an OOM
        if is_oom(e):
            raise oom_error(e, what, index) from None
        raise


def runnable(program, module, device: torch.device) -> torch.nn.Module:
    """The module that runs on ``device``: the saved program when there is one
    (so a compile and a reload run the same graph), else the eager module."""
    import copy
    import warnings

    if program is None:
        return copy.deepcopy(module).to(device)

    from torch.export.passes import move_to_device_pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = move_to_device_pass(_copy(program), str(device))
    # the bare graph, one tensor per input; the program's shape rules (two inputs sharing a
    # Dim), which hal's per-input check cannot see, checked once per set of shapes
    return tc.fast_module(ep)


def _copy(program):
    """An independent copy of an ExportedProgram (each GPU's pass moves its own). Not
    ``copy.deepcopy``: with torch 2.13 it breaks the graph signature of any program whose
    input is named ``input`` (every ``nn.Sequential``: SpecViolationError "Input spec
    name input does not match node name input_1"); a save/load round trip is exact."""
    import io

    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    return torch.export.load(buf)


class Replica:
    """One model on one GPU. ``forward`` takes device tensors in the caller's dtypes
    and returns device tensors (fp16/bf16 outputs widened to float32); it only
    queues work, so replicas on several GPUs overlap."""

    def __init__(self, module: torch.nn.Module, device: torch.device, recipe: Recipe):
        self.device = device
        self.recipe = recipe
        self.dtype = tc.DTYPES[recipe.precision]
        self.module = module
        fn = module
        if recipe.torch_compile:  # the bare graph; the once-per-shape guard check stays Python
            fn = tc.compile_graph(module, lambda m: torch.compile(m, mode=recipe.torch_compile))
        self.fn = fn
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()

    def _call(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        if self.dtype is not torch.float32:
            xs = tuple(x.to(self.dtype) if x.is_floating_point() else x for x in xs)
        outs = tc.flatten(self.fn(*xs))
        return [o.float() if o.dtype in (torch.float16, torch.bfloat16) else o for o in outs]

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        with fp32_mode(self.recipe.tf32), torch.inference_mode(), torch.cuda.device(self.device):
            if not self.recipe.cuda_graphs:
                return self._call(*xs)
            key = tuple((tuple(x.shape), x.dtype) for x in xs)
            g = self.graphs.get(key)
            if g is None:
                g = self.graphs[key] = _Graph(self._call, xs, self.device)
                while len(self.graphs) > MAX_GRAPHS:
                    self.graphs.popitem(last=False)
            else:
                self.graphs.move_to_end(key)
            return g.run(xs)


class _Graph:
    """One captured CUDA graph with static input/output buffers. The outputs are
    overwritten by the next replay: callers copy them out first."""

    def __init__(self, call: Callable, xs: list[torch.Tensor], device: torch.device):
        self.static_in = [x.clone() for x in xs]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up: cuBLAS handles, autotuning, lazy init
                call(*self.static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # an explicit stream: torch.cuda.graph's default capture stream is created once,
        # on whichever GPU was current then, and would be wrong for a second GPU
        with torch.cuda.graph(self.graph, stream=side):
            self.static_out = call(*self.static_in)

    def run(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        for s, x in zip(self.static_in, xs):
            s.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.static_out
