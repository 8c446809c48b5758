"""Models with bfloat16 or float8 inputs/outputs on OpenVINO.

OpenVINO's Python API shows such a tensor's ``.data`` as float16/uint8-typed
bits and cannot wrap an ``ml_dtypes`` array in a Tensor: fed or read like any
other port, the value becomes a wrong number without an error (OpenVINO called
directly returns bf16 outputs as float16). Here these ports carry their bits as
unsigned views tagged with the OpenVINO type, and come back as ml_dtypes
arrays. 4-bit types are packed two per byte by OpenVINO and one per byte by
ml_dtypes: hal refuses those ports (:func:`check_ports`).
"""

from __future__ import annotations

import numpy as np

from hal import UnsupportedError

from .executable import OpenVINOExecutable, runtime_error

#: hal dtype name -> (carrier numpy dtype, OpenVINO type name)
BITS = {"bfloat16": (np.uint16, "bf16"), "float8_e4m3fn": (np.uint8, "f8e4m3"),
        "float8_e5m2": (np.uint8, "f8e5m2"), "float8_e8m0fnu": (np.uint8, "f8e8m0")}
PACKED = {"i4", "u4", "f4e2m1", "nf4"}


def check_ports(ov_model) -> None:
    packed = [p.get_any_name() if p.get_names() else f"#{i}"
              for i, p in enumerate(list(ov_model.inputs) + list(ov_model.outputs))
              if p.get_element_type().get_type_name() in PACKED]
    if packed:
        raise UnsupportedError(
            f"the model has 4-bit (int4/uint4/float4) inputs or outputs {packed}, which OpenVINO "
            "packs two per byte and numpy cannot exchange",
            "give the model 8-bit or wider inputs and outputs (unpack inside it), or run it on "
            "another target")


def has_bit_ports(info) -> bool:
    return any(s.dtype in BITS for s in list(info.inputs) + list(info.outputs))


class BitViewExecutable(OpenVINOExecutable):
    """One infer request per call (thread-safe; such models are rare, so the
    pooled fast path is not worth a branch on every other model's call)."""

    def infer(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        import ml_dtypes

        ov = self._o.ov
        req = self.compiled.create_infer_request()
        keep = []  # tensors (and the arrays under them) live until infer returns
        try:
            for i, (a, spec) in enumerate(zip(inputs, self.info.inputs)):
                a = a if a.flags.c_contiguous else np.array(a, order="C")
                if spec.dtype in BITS:
                    carrier, name = BITS[spec.dtype]
                    t = ov.Tensor(a.view(carrier), list(a.shape), getattr(ov.Type, name))
                else:
                    t = ov.Tensor(a)  # a copy
                keep.append((a, t))
                req.set_input_tensor(i, t)
            req.infer()
            outs = []
            for i, spec in enumerate(self.info.outputs):
                d = req.get_output_tensor(i).data
                if spec.dtype in BITS:
                    d = d.view(BITS[spec.dtype][0]).view(getattr(ml_dtypes, spec.dtype))
                outs.append(d.copy())
            return outs
        except RuntimeError as e:
            raise runtime_error(self.core, self.device, e, "inference") from None
