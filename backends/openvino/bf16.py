"""Models with bfloat16 inputs or outputs on OpenVINO.

OpenVINO's Python API shows a bf16 tensor's ``.data`` as float16-typed bits and
cannot wrap an ``ml_dtypes.bfloat16`` array in a Tensor: fed or read like any
other port, a bf16 value becomes a wrong number without an error (OpenVINO
called directly returns such outputs as float16). Here bf16 ports carry their
bits as uint16 views tagged ``Type.bf16``, and come back as bfloat16 arrays.
"""

from __future__ import annotations

import numpy as np

from .executable import OpenVINOExecutable, runtime_error


def has_bf16_ports(info) -> bool:
    return any(s.dtype == "bfloat16" for s in list(info.inputs) + list(info.outputs))


class Bf16PortsExecutable(OpenVINOExecutable):
    """One infer request per call (thread-safe; such models are rare, so the
    pooled fast path is not worth a bf16 branch on every other model's call)."""

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import ml_dtypes

        ov = self._o.ov
        req = self.compiled.create_infer_request()
        keep = []  # tensors (and the arrays under them) live until infer returns
        try:
            for i, (a, spec) in enumerate(zip(inputs, self.info.inputs)):
                a = a if a.flags.c_contiguous else np.array(a, order="C")
                if spec.dtype == "bfloat16":
                    t = ov.Tensor(a.view(np.uint16), list(a.shape), ov.Type.bf16)
                else:
                    t = ov.Tensor(a)  # a copy
                keep.append((a, t))
                req.set_input_tensor(i, t)
            req.infer()
            outs = []
            for i, spec in enumerate(self.info.outputs):
                d = req.get_output_tensor(i).data
                outs.append((d.view(ml_dtypes.bfloat16) if spec.dtype == "bfloat16" else d).copy())
            return outs
        except RuntimeError as e:
            raise runtime_error(self.core, self.device, e, "inference") from None
