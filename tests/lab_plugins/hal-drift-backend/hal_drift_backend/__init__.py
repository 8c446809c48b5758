"""Test fixture for the conformance lab: the model runs for real in torch eager (fp32,
or fp16 weights and activations), then one output per batch is moved by
``$HAL_DRIFT`` × the batch's largest output magnitude, read from the environment
of the host it runs on. Two hosts with drifts of +0.9e-4 and −0.9e-4 each pass
fp32 (limit 1e-4·max|ref|) yet differ from each other by 1.8e-4·max|ref|: what a
driver or firmware difference between two lab machines looks like, and what only
a cross-host comparison can see.

``$HAL_GATE`` (a folder) lets a test decide what is in flight on which host at a given
moment, whatever the load: see :func:`wait_at_gate`."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import numpy as np

from hal import CompileError, Device
from hal.plugin import Backend, TensorSpec, hookimpl, Runner

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


def wait_at_gate(backend: str, model) -> None:
    """While ``$HAL_GATE/closed`` lists ``backend:*`` or ``backend:ModelClass``, hold this
    compile (after leaving ``waiting-<backend>-<host>-<ModelClass>`` beside it) until the
    file is gone, at most 10 minutes. Used by the wrong fixture too (same site folder)."""
    gate = os.environ.get("HAL_GATE")
    if not gate:
        return
    closed, cls = Path(gate, "closed"), type(model.value).__name__
    try:
        listed = closed.read_text().split()
    except FileNotFoundError:
        return
    if f"{backend}:*" not in listed and f"{backend}:{cls}" not in listed:
        return
    Path(gate, f"waiting-{backend}-{os.environ.get('HAL_LAB_HOST', '')}-{cls}").touch()
    deadline = time.monotonic() + 600
    while closed.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class DriftBackend(Backend):
    name = "drift"
    description = "torch eager with a host-dependent offset (test fixture)"
    formats = ("torch.nn",)
    precisions = ("fp32", "fp16")
    requires = ("torch",)

    def probe(self):
        return [Device(self.name, "cpu", "host CPU, drift $HAL_DRIFT", precisions=self.precisions,
                       host_cpu=True)]

    def compile(self, model, device, options):
        import torch

        wait_at_gate(self.name, model)
        module = copy.deepcopy(model.value).eval()
        dtype = torch.float16 if options.precision == "fp16" else torch.float32
        module = module.to(dtype)
        ins = [TensorSpec.of(f"input_{i}", a, dynamic_batch=True) for i, a in enumerate(model.example_input)]
        info = self.executable_info(device, options.precision, ins,
                              [TensorSpec("output_0", (None, 10), "float32")],
                              conversion_path=["torch eager", f"offset {os.environ.get('HAL_DRIFT', '0')}"])
        return DriftExecutable(info, device, module, dtype)


class DriftExecutable(Runner):
    def __init__(self, info, device, module, dtype):
        super().__init__(info, device)
        self.module = module
        self.dtype = dtype
        self.drift = float(os.environ.get("HAL_DRIFT", "0"))

    def infer(self, inputs):
        import torch

        with torch.inference_mode():
            out = self.module(*[torch.from_numpy(a).to(self.dtype) for a in inputs]).float().numpy()
        out = np.array(out, dtype=np.float32)
        out[0, 0] += self.drift * float(np.abs(out).max())
        return [out]

    def write_artifact(self, directory):
        raise CompileError("the drift backend cannot save artifacts", "do not save")


@hookimpl
def register_backends(register):
    register(DriftBackend())
