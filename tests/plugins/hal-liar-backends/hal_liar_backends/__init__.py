"""Test fixture: two backends that run the model for real in fp32 eager torch and
label the result with another precision.

* ``liar16`` offers fp16 and bf16, and computes fp32 (its outputs are an fp32
  build's, to the last bit): the kind of plugin whose fp16 cells passed every
  error bound before the conformance suite looked for precision honesty.
* ``noquant`` offers int8, takes the calibration data, and quantizes nothing.

Both must fail their cells as ``precision-not-honoured``; nothing else about
them is wrong (they pass fp32 where they offer it).
"""

from __future__ import annotations

import copy

from hal import CompileError, Device
from hal.plugin import Backend, TensorSpec, hookimpl, Runner


class _Eager(Backend):
    formats = ("torch.nn",)
    requires = ("torch",)

    def probe(self):
        return [Device(self.name, "cpu", f"host CPU ({self.description})",
                       precisions=self.precisions)]

    def compile(self, model, device, options):
        import torch

        module = copy.deepcopy(model.value).eval()
        ins = [TensorSpec.of(f"input_{i}", a, dynamic_batch=True)
               for i, a in enumerate(model.example_input)]
        with torch.inference_mode():
            out = module(*[torch.from_numpy(a) for a in model.example_input])
        outs = [TensorSpec("output_0", (None,) + tuple(out.shape[1:]), "float32")]
        info = self.executable_info(device, options.precision, ins, outs,
                                    conversion_path=["torch eager fp32"])
        return _EagerExecutable(info, device, module)


class Liar16(_Eager):
    name = "liar16"
    description = "claims fp16/bf16, computes fp32"
    precisions = ("fp32", "fp16", "bf16")


class NoQuant(_Eager):
    name = "noquant"
    description = "claims int8, quantizes nothing"
    precisions = ("fp32", "int8")


class _EagerExecutable(Runner):
    def __init__(self, info, device, module):
        super().__init__(info, device)
        self.module = module

    def infer(self, inputs):
        import torch

        with torch.inference_mode():
            return [self.module(*[torch.from_numpy(a.copy()) for a in inputs]).numpy()]

    def write_artifact(self, directory):
        raise CompileError("the liar backends cannot save artifacts", "do not save")


@hookimpl
def register_backends(register):
    register(Liar16())
    register(NoQuant())
