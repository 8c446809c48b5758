"""One small seam over the two OpenVINO Python APIs.

Current OpenVINO (2023.1+) is ``import openvino as ov`` with ``ov.convert_model``
and ``ov.save_model``. OpenVINO ≤ 2022.3 — the last release with the MYRIAD
(Movidius NCS2 / Myriad X) plugin — only has ``openvino.runtime`` with
``serialize`` and reads ONNX/IR files itself. Everything else in this backend
talks to :func:`api` and never imports openvino directly, so the rest of the
code is the same on both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from hal import UnsupportedError

from hal.plugin import missing


@dataclass(frozen=True)
class OV:
    """The installed OpenVINO: its namespace and which API generation it is."""

    ov: Any          # ``openvino`` (current) or ``openvino.runtime`` (legacy)
    version: str
    legacy: bool     # True for the ≤ 2022.3 ``openvino.runtime`` API (MYRIAD era)

    @property
    def movidius_device(self) -> str:
        """The device a "movidius" target means: MYRIAD up to 2022.3, then NPU."""
        return "MYRIAD" if self.legacy else "NPU"

    def core(self):
        return self.ov.Core()

    def save_model(self, model, xml: Path) -> None:
        """Write IR without the fp16 weight compression ``save_model`` applies by
        default (an fp32 artifact must keep fp32 weights)."""
        if self.legacy:
            self.ov.serialize(model, str(xml), str(xml.with_suffix(".bin")))
        else:
            self.ov.save_model(model, str(xml), compress_to_fp16=False)

    def convert(self, source: Any, **kwargs) -> Any:
        """``ov.convert_model``; on the legacy API only files ``read_model`` takes."""
        if not self.legacy:
            return self.ov.convert_model(source, **kwargs)
        if isinstance(source, (str, Path)) and str(source).lower().endswith((".onnx", ".xml")):
            return self.core().read_model(str(source))
        raise UnsupportedError(
            f"OpenVINO {self.version} (legacy openvino.runtime API) has no convert_model; "
            "it reads only ONNX and IR files",
            "export the model to ONNX first, or install OpenVINO ≥ 2023.1")

    def export_blob(self, compiled) -> bytes:
        out = compiled.export_model()
        return out if isinstance(out, (bytes, bytearray)) else out.getvalue()

    def import_blob(self, core, blob: bytes, device: str, config: dict):
        return core.import_model(blob, device, config)

    @property
    def infer_kwargs(self) -> dict:
        """Outputs as views (hal copies them once): ``share_outputs`` is 2023.1+."""
        return {} if self.legacy else {"share_outputs": True}


def installed() -> bool:
    return not missing(("openvino",))


ENV_TELEMETRY = "HAL_OPENVINO_TELEMETRY"


def decline_telemetry() -> None:
    """OpenVINO's converter and NNCF report usage to Google Analytics from forked
    processes and write ``~/intel/`` unless the user opted out, and they do it on
    import and on every ``ov.convert_model``. A library call of hal's must not
    reach the network nor write outside hal's own directories, so where the user
    has made no choice (no consent file) hal declines for this process.
    ``HAL_OPENVINO_TELEMETRY=1``, or OpenVINO's own ``opt_in_out --opt_in``, keeps it."""
    if os.environ.get(ENV_TELEMETRY) == "1":
        return
    try:
        from openvino_telemetry.utils import opt_in_checker as oc
    except ImportError:  # no telemetry package: nothing is sent
        return
    try:
        if os.path.exists(oc.OptInChecker().consent_file()):
            return  # the user chose, with OpenVINO's own tool: respect it
    except Exception:  # noqa: BLE001 - no home folder: the checker declines by itself
        return
    oc.OptInChecker.check = lambda self, *a, **k: oc.ConsentCheckResult.DECLINED


@lru_cache(maxsize=1)
def api() -> OV:
    """Import OpenVINO (lazily, once) and tell which API it offers."""
    decline_telemetry()
    import openvino

    if hasattr(openvino, "Core"):  # 2023.1 and later
        ver = openvino.get_version() if hasattr(openvino, "get_version") else openvino.__version__
        return OV(openvino, str(ver).split("-")[0], legacy=False)
    import openvino.runtime as rt  # 2022.x: the runtime lives in a sub-package

    return OV(rt, str(rt.get_version()).split("-")[0], legacy=True)


def to_numpy_dtype(element_type) -> str:
    """An OpenVINO element type as a numpy dtype name."""
    import numpy as np

    narrow = {"bf16": "bfloat16", "f8e4m3": "float8_e4m3fn", "f8e5m2": "float8_e5m2",
              "f8e8m0": "float8_e8m0fnu"}.get(element_type.get_type_name())
    if narrow:  # to_dtype() says float16 / uint8 for these
        import ml_dtypes  # noqa: F401 - registers their numpy dtype names

        return narrow
    try:
        return str(np.dtype(element_type.to_dtype()))
    except (AttributeError, TypeError):  # legacy Type without to_dtype
        names = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64",
                 "i32": "int32", "i8": "int8", "u8": "uint8", "boolean": "bool"}
        return names.get(element_type.get_type_name(), "float32")
