"""Test fixtures: ``abort`` kills its process with os.abort() on the first
inference (SIGABRT, as a native runtime bug would); ``hang`` never returns."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from hal import Device
from hal.plugin import Backend, TensorSpec, hookimpl, Runner

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


class _Fixture(Backend):
    formats = ("torch.nn",)
    precisions = ("fp32", "int8-dynamic")

    def probe(self):
        return [Device(self.name, "cpu", f"host CPU ({self.description})", precisions=self.precisions,
                       host_cpu=True)]

    def compile(self, model, device, options):
        ins = [TensorSpec.of(f"input_{i}", a, dynamic_batch=True) for i, a in enumerate(model.example_input)]
        info = self.executable_info(device, options.precision, ins,
                              [TensorSpec("output_0", (None, 10), "float32")])
        return _Exe(info, device, self.name)


class _Exe(Runner):
    def __init__(self, info, device, mode):
        super().__init__(info, device)
        self.mode = mode

    def infer(self, inputs):
        if self.mode == "abort":
            os.abort()
        time.sleep(3600)
        raise AssertionError("unreachable")

    def write_artifact(self, directory):
        raise NotImplementedError


class AbortBackend(_Fixture):
    name = "abort"
    description = "calls os.abort() (test fixture)"


class HangBackend(_Fixture):
    name = "hang"
    description = "never returns (test fixture)"


def _plugin(cls):
    @hookimpl
    def register_backends(register):
        register(cls())

    return SimpleNamespace(register_backends=register_backends)


abort_plugin = _plugin(AbortBackend)
hang_plugin = _plugin(HangBackend)
