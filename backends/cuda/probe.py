"""Peak-throughput probe: the time of an n×n by n×n matrix product on one GPU.

2·n³ floating-point operations per product, timed with CUDA events after a
warm-up; fp32 runs as IEEE fp32 unless ``dtype='tf32'`` asks for tensor cores.
"""

from __future__ import annotations

from hal import Device, UsageError

DTYPES = ("fp32", "tf32", "fp16", "bf16")


def probe_gemm(device: Device, n: int = 10000, dtype: str = "fp32", iterations: int = 10,
               warmup: int = 3) -> float:
    """TFLOP/s of ``torch.mm`` on ``device`` (a hal Device of the cuda backend)."""
    if dtype not in DTYPES:
        raise UsageError(f"the GEMM probe has no dtype {dtype!r}", f"use one of {', '.join(DTYPES)}")
    if not isinstance(n, int) or n < 1 or iterations < 1 or warmup < 0:
        raise UsageError(f"GEMM probe sizes must be positive (n={n!r}, iterations={iterations})",
                         "use e.g. n=10000, iterations=10")
    from .devices import gpu_indices

    (index,) = gpu_indices(device)  # raises DeviceUnavailableError with the reason
    if dtype == "bf16" and "bf16" not in device.precisions:
        raise UsageError(f"{device.target} ({device.name}) has no bf16",
                         "probe fp32, tf32 or fp16 on this GPU")
    import torch

    from .runtime import fp32_mode, oom_guard

    tdt = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16,
           "bf16": torch.bfloat16}[dtype]
    dev = torch.device("cuda", index)
    with oom_guard(f"the {n}×{n} {dtype} GEMM probe", index), fp32_mode(dtype == "tf32"), \
            torch.cuda.device(dev), torch.inference_mode():
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(n, n, device=dev, dtype=tdt, generator=g)
        y = torch.randn(n, n, device=dev, dtype=tdt, generator=g)
        out = torch.empty(n, n, device=dev, dtype=tdt)
        for _ in range(warmup):
            torch.mm(x, y, out=out)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(dev)
        start.record()
        for _ in range(iterations):
            torch.mm(x, y, out=out)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1e3
        del x, y, out
    torch.cuda.empty_cache()
    return 2.0 * n ** 3 * iterations / seconds / 1e12
