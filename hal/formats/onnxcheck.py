"""Reading an ONNX file: refuse what is broken, accept what ONNX Runtime runs.

``onnx.checker`` is stricter than the runtimes: an IR-3 model whose initializer
is not also a graph input fails it ("in initializer but not in graph input"),
yet ONNX Runtime and OpenVINO run it, and IR 4 dropped that rule. So a file
that parses but fails the checker is accepted when ONNX Runtime (the format's
own runtime) loads it, with its IR raised to 4 for the tools below when that
rule is the only complaint; otherwise the checker's words are the error, and
"corrupt" is said only of a file that does not parse.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelFormatError, brief

#: ONNX ops that compute on quantized integers: a model with any is pre-quantized
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
             "QLinearMatMul", "ConvInteger", "MatMulInteger")


def quantized_ops(proto) -> dict[str, int]:
    """The quantized ops of an ONNX graph (QDQ pairs, QLinear*, *Integer), by count:
    such a model runs int8 on every runtime, so only an int8 label is true."""
    found: dict[str, int] = {}
    for n in proto.graph.node:
        if n.domain in ("", "ai.onnx") and n.op_type in QUANT_OPS:
            found[n.op_type] = found.get(n.op_type, 0) + 1
    return found


def read(path: Path):
    import onnx

    try:
        m = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ModelFormatError(f"{path} is not a valid ONNX model (empty, truncated or "
                               f"corrupt: {brief(e, 160)})",
                               "re-export it, e.g. with torch.onnx.export") from None
    try:
        onnx.checker.check_model(m)
    except Exception as e:  # noqa: BLE001 - onnx.checker.ValidationError
        why = ort_refuses(path)
        if why is not None:
            raise ModelFormatError(f"{path} is not a valid ONNX model: it fails the ONNX "
                                   f"checker ({brief(e, 160)})"
                                   + (f" and ONNX Runtime refuses it ({why})" if why else ""),
                                   "re-export it with a current exporter (torch.onnx.export, "
                                   "tf2onnx)") from None
        if "in initializer but not in graph input" in str(e) and m.ir_version < 4:
            m.ir_version = 4  # the rule IR 4 dropped; the graph is unchanged
    if not m.graph.node:
        raise ModelFormatError(f"{path} is an ONNX model with an empty graph", "re-export it")
    return m


def ort_refuses(path: Path) -> str | None:
    """Why ONNX Runtime cannot load ``path`` ('' when it is not installed), or None."""
    try:
        import onnxruntime as ort
    except ImportError:
        return ""
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT's own loader errors
        return brief(e, 160)
    return None
