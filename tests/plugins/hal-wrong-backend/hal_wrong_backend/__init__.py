"""Test fixture: runs the torch module in eager fp32, then returns the outputs
with the class axis reversed (the kind of layout bug the kit must catch)."""

from __future__ import annotations

import copy
import os

import numpy as np

from hal import CompileError, Device
from hal.plugin import Backend, TensorSpec, hookimpl, Runner

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


class WrongBackend(Backend):
    name = "wrong"
    description = "deliberately wrong answers (test fixture)"
    formats = ("torch.nn",)
    precisions = ("fp32",)
    requires = ("torch",)

    def probe(self):
        return [Device(self.name, "cpu", "host CPU, wrong answers", precisions=self.precisions,
                       host_cpu=True)]

    def compile(self, model, device, options):
        if os.environ.get("HAL_GATE"):  # the lab test's gate (tests/lab_plugins: the same site)
            from hal_drift_backend import wait_at_gate

            wait_at_gate(self.name, model)
        module = copy.deepcopy(model.value).eval()
        ins = [TensorSpec.of(f"input_{i}", a, dynamic_batch=True) for i, a in enumerate(model.example_input)]
        info = self.executable_info(device, options.precision, ins,
                              [TensorSpec("output_0", (None, 10), "float32")],
                              conversion_path=["torch eager", "class axis reversed"])
        return WrongExecutable(info, device, module)


class WrongExecutable(Runner):
    def __init__(self, info, device, module):
        super().__init__(info, device)
        self.module = module

    def infer(self, inputs):
        import torch

        with torch.inference_mode():
            out = self.module(*[torch.from_numpy(a) for a in inputs]).numpy()
        return [np.ascontiguousarray(out[..., ::-1])]

    def write_artifact(self, directory):
        raise CompileError("the wrong backend cannot save artifacts", "do not save")


@hookimpl
def register_backends(register):
    register(WrongBackend())
