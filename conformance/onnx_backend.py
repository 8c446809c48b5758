"""hal as an ONNX backend: ``onnx.backend.base.Backend`` over any hal target.

ONNX's own backend test suite (``onnx.backend.test.BackendTest``: every node
case, the real CNNs in the wheel, the simple and PyTorch-converted models) then
runs against any installed backend, built-in or third-party, unchanged::

    import onnx.backend.test
    from hal_conformance.onnx_backend import backend_for

    globals().update(onnx.backend.test.BackendTest(backend_for("openvino:CPU"),
                                                   __name__).test_cases)

The target is, in order: ``prepare(..., target=...)``, the class's ``target``
(``backend_for``), ``$HAL_ONNX_TARGET``, else ``cpu``. Compilation waits for
the first ``run``: the inputs it gets are the example inputs that fix dynamic
shapes, as hal's example inputs only ever do (they may hold NaN or Inf).
"""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

import numpy as np
from onnx.backend.base import Backend, BackendRep, namedtupledict

ENV_TARGET = "HAL_ONNX_TARGET"
#: arguments BackendTest passes to ``prepare`` that are the test's, not the backend's
_TEST_KWARGS = ("rtol", "atol")


def target_of(cls: type[HalBackend], target: str | None = None) -> str:
    return target or cls.target or os.environ.get(ENV_TARGET) or "cpu"


class HalBackendRep(BackendRep):
    """One ONNX model bound to one hal target; compiled on the first run."""

    def __init__(self, model, target: str, precision: str = "fp32",
                 options: dict[str, Any] | None = None, cache: bool = False):
        self.model = model
        self.target = target
        self.precision = precision
        self.options = options
        self.cache = cache
        init = {i.name for i in model.graph.initializer}
        self.input_names = [i.name for i in model.graph.input if i.name not in init]
        self.output_names = [o.name for o in model.graph.output]
        self.exe = None
        self._lock = threading.Lock()

    def executable(self, inputs: list[np.ndarray]):
        import hal

        with self._lock:
            if self.exe is None:
                self.exe = hal.compile(self.model, target=self.target, precision=self.precision,
                                       example_input=tuple(inputs), options=self.options,
                                       cache=self.cache, check_finite=False)
            return self.exe

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, dict):
            inputs = [inputs[n] for n in self.input_names]
        elif isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = [_tensor(a, i) for i, a in enumerate(inputs)]
        outs = self.executable(inputs).run(inputs)
        return namedtupledict("Outputs", self.output_names)(*outs)


def _tensor(a: Any, i: int) -> np.ndarray:
    """hal exchanges tensors: an ONNX sequence (list), map (dict) or empty
    optional (None) is refused with hal's error, never coerced into an array."""
    if isinstance(a, (np.ndarray, np.generic)):
        return np.asarray(a)
    from hal import UnsupportedError

    kind = {list: "a sequence (list)", tuple: "a sequence (tuple)", dict: "a map (dict)",
            type(None): "an empty optional (None)"}.get(type(a), type(a).__name__)
    raise UnsupportedError(f"input {i} is {kind}; hal executables take and return tensors only",
                           "pass numpy arrays (models with sequence/map/optional inputs are out "
                           "of hal's scope)")


class HalBackend(Backend):
    """``onnx.backend`` over hal. Subclass per target with :func:`backend_for`."""

    target: ClassVar[str | None] = None
    precision: ClassVar[str] = "fp32"

    @classmethod
    def prepare(cls, model, device: str = "CPU", target: str | None = None,
                precision: str | None = None, options: dict[str, Any] | None = None,
                cache: bool = False, **kwargs: Any) -> HalBackendRep:
        unknown = sorted(set(kwargs) - set(_TEST_KWARGS))
        if unknown:
            raise TypeError(f"HalBackend.prepare got unknown argument(s) {unknown}")
        super().prepare(model, device)
        if not cls.supports_device(device):
            raise ValueError(f"hal target {target_of(cls, target)} does not run ONNX device {device}")
        return HalBackendRep(model, target_of(cls, target), precision or cls.precision, options, cache)

    @classmethod
    def run_model(cls, model, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs: Any, device: str = "CPU", outputs_info=None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """One node as a one-node model (types from the inputs and shape inference)."""
        from onnx import helper, shape_inference

        super().run_node(node, inputs, device=device, outputs_info=outputs_info,
                         **{k: v for k, v in kwargs.items() if k == "opset_version"})
        arrays = [np.asarray(a) for a in inputs]
        names = [n for n in node.input if n][:len(arrays)]
        ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
               for n, a in zip(names, arrays)]
        outs = [helper.make_empty_tensor_value_info(n) for n in node.output]
        if outputs_info:
            outs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), s)
                    for n, (dt, s) in zip(node.output, outputs_info)]
        opset = kwargs.pop("opset_version", None)
        graph = helper.make_graph([node], "run_node", ins, outs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)] if opset else None)
        model = shape_inference.infer_shapes(model)
        return cls.prepare(model, device, **kwargs).run(arrays)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """ONNX's device names: ``CPU`` for every host-side target, ``CUDA`` for
        hal's cuda backend (the test suite runs each case once per device)."""
        cuda = target_of(cls).split(":")[0] == "cuda"
        return device.split(":")[0].upper() == ("CUDA" if cuda else "CPU")


def backend_for(target: str, precision: str = "fp32") -> type[HalBackend]:
    """A :class:`HalBackend` bound to ``target`` (and ``precision``)."""
    name = "Hal_" + "".join(c if c.isalnum() else "_" for c in target)
    return type(name, (HalBackend,), {"target": target, "precision": precision})


prepare = HalBackend.prepare
run_model = HalBackend.run_model
run_node = HalBackend.run_node
supports_device = HalBackend.supports_device
