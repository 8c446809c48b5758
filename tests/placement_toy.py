"""A tiny backend for the core's placement gate (tests/test_placement.py), with no framework.

A ``.toy`` model is a JSON file listing its ops, each with the unit the toy runtime puts
it on: ``{"ops": [{"name": "a", "op": "Add", "host": false}, ...]}`` (``"io": true``: an
edge conversion of the model's I/O). The ``toynpu``
backend's one device, ``toynpu:npu``, is an accelerator (not the host CPU); its runner
doubles its input and reports the ops' placement from the file, as a real runtime reports
from its own record. Module switches let a test change what the runtime reports after
compiling (``HOST_ON_LOAD``: ops that go to the host when an artifact is loaded) or make
``placement()`` fail (``BROKEN``).

``install()`` registers the format and the backend in this process's registry (no entry
point, no pip), so a test or a ``hal`` CLI subprocess can use them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from hal import Device
from hal.formats import Format
from hal.placement import OpPlacement, Placement
from hal.plugin import Backend, Runner, TensorSpec

#: op names that run on the host when an artifact is loaded (the runtime changed its mind);
#: a CLI subprocess sets them in $TOY_HOST_ON_LOAD (comma-separated)
HOST_ON_LOAD: set[str] = set(filter(None, os.environ.get("TOY_HOST_ON_LOAD", "").split(",")))
#: placement() raises
BROKEN = False
#: placement() returns None (the backend cannot tell)
SILENT = False

FORMAT = Format("toy", "toy model: a JSON list of ops (tests only)", suffixes=(".toy",),
                read=lambda p: json.loads(Path(p).read_text()))


def write_model(path: Path, host: tuple[str, ...] = (), ops: tuple[str, ...] = ("a", "b", "c")) -> Path:
    path.write_text(json.dumps({"ops": [{"name": n, "op": f"Op{n.upper()}", "host": n in host}
                                        for n in ops]}))
    return path


class ToyBackend(Backend):
    name = "toynpu"
    description = "a toy accelerator whose runtime reports where each op runs (tests only)"
    formats = ("toy",)
    precisions = ("fp32",)

    def version(self) -> str:
        return "toy 1"

    def probe(self):
        return [Device(self.name, "npu", "Toy NPU", precisions=self.precisions)]

    def compile(self, model, device, options):
        ops = model.value["ops"]
        x = model.example_input[0]
        spec = TensorSpec("x", tuple(x.shape), str(x.dtype))
        info = self.executable_info(device, "fp32", [spec], [TensorSpec("y", spec.shape, spec.dtype)],
                                    conversion_path=["toy"])
        return ToyRunner(info, device, ops)

    def load(self, artifact, info, device):
        ops = json.loads((artifact / "ops.json").read_text())
        for o in ops:
            o["host"] = o["host"] or o["name"] in HOST_ON_LOAD
        return ToyRunner(info, device, ops)


class ToyRunner(Runner):
    thread_safe = True

    def __init__(self, info, device, ops):
        super().__init__(info, device)
        self.ops = ops

    def infer(self, inputs):
        return [inputs[0] * np.float32(2)]

    def write_artifact(self, directory: Path) -> None:
        (directory / "ops.json").write_text(json.dumps(self.ops))

    def placement(self):
        if BROKEN:
            raise RuntimeError("the toy runtime lost its record")
        if SILENT:
            return None
        return Placement([OpPlacement(o["name"], o["op"], "CPU" if o["host"] else "NPU", not o["host"],
                                      io_conversion=o.get("io", False))
                          for o in self.ops], source="the toy runtime's op table")


def install() -> None:
    """Register the toy format and backend in this process (idempotent)."""
    from hal import api
    from hal.plugin import registry

    reg = registry()
    reg.formats.setdefault(FORMAT.name, FORMAT)
    if ToyBackend.name not in reg.backends:
        reg.backends[ToyBackend.name] = ToyBackend()
    api._probed.pop(ToyBackend.name, None)
