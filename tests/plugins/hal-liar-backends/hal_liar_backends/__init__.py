"""Test fixture: backends that run the model for real in fp32 eager torch on the
host CPU and say something else about it.

* ``liar16`` offers fp16 and bf16, and computes fp32 (its outputs are an fp32
  build's, to the last bit): the kind of plugin whose fp16 cells passed every
  error bound before the conformance suite looked for precision honesty.
* ``noquant`` offers int8, takes the calibration data, and quantizes nothing.

Both must fail their cells as ``precision-not-honoured``; nothing else about
them is wrong (they pass fp32 where they offer it, on a device that is the host
CPU, which owes no placement).

* ``hostsplit`` claims an accelerator (``Host-split NPU``), and its runner runs
  the second half of the model's layers on the host (all of it, in fact: torch on
  the CPU). ``hostsplit:hidden`` reports no placement; ``hostsplit:late`` says
  every op is on the device until it has run, then tells the truth (the core's
  gate only ever saw the claim). Both must fail as ``placement-not-honoured``.
  ``hostsplit:honest`` reports its host half from the start: the core refuses it
  (``unsupported``, the host ops named), as it refuses any honest host fallback.
"""

from __future__ import annotations

import copy

from hal import CompileError, Device
from hal.placement import OpPlacement, Placement
from hal.plugin import Backend, TensorSpec, hookimpl, Runner

HAL_PLUGIN_API = 2  # the hal plugin API this plugin was written for


class _Eager(Backend):
    formats = ("torch.nn",)
    requires = ("torch",)
    #: the Runner class its compile builds (set once the classes below exist)
    runner: type | None = None

    def probe(self):
        return [Device(self.name, "cpu", f"host CPU ({self.description})",
                       precisions=self.precisions, host_cpu=True)]

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
        return self.runner(info, device, module)


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


_Eager.runner = _EagerExecutable


class HostSplit(_Eager):
    name = "hostsplit"
    description = "claims an NPU, runs the model's second half on the host"
    precisions = ("fp32",)

    def probe(self):
        return [Device(self.name, mode, f"Host-split NPU ({mode})", precisions=self.precisions,
                       rank=0) for mode in ("hidden", "late", "honest")]


class _SplitExecutable(_EagerExecutable):
    """Its ops are the model's leaf modules: the first half on "NPU", the rest on the host."""

    def __init__(self, info, device, module):
        super().__init__(info, device, module)
        self.ran = False

    def infer(self, inputs):
        self.ran = True
        return super().infer(inputs)

    def placement(self):
        mode = self.device.id
        if mode == "hidden":
            return None
        leaves = [(n, type(m).__name__) for n, m in self.module.named_modules()
                  if n and not any(True for _ in m.children())] or [("model", "Module")]
        half = max(1, len(leaves) // 2)
        tell = mode == "honest" or self.ran  # "late" tells the truth only once it has run
        return Placement([OpPlacement(n, op, "NPU" if i < half or not tell else "CPU",
                                      i < half or not tell) for i, (n, op) in enumerate(leaves)],
                         source="the host-split runtime's partition table")


HostSplit.runner = _SplitExecutable


@hookimpl
def register_backends(register):
    register(Liar16())
    register(NoQuant())
    register(HostSplit())
