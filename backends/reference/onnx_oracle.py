"""The fp64 ONNX oracle: ``onnx.reference`` with its faulty operators replaced,
run at double precision, and cross-checked against onnxruntime.

``onnx.reference.ReferenceEvaluator`` is the obvious independent ONNX runtime,
but as shipped it is wrong on operators every classic CNN uses (LRN loops over
the batch axis instead of the channels; BatchNormalization at opsets 7-13 uses
the batch's statistics; Softmax/LogSoftmax/Hardmax below opset 13 ignore the
2-D coercion and default axis) and spends seconds per call in Python
convolutions and pooling. Its own extension point (``new_ops``) replaces
exactly those operators here: the fixes in numpy, Conv and pooling by torch's
fp64 CPU kernels (independent of every backend hal drives for ONNX).

One implementation is not an oracle: :meth:`OnnxOracle.run` also runs the
original (fp32) model on onnxruntime and says whether the two agree. A caller
that judges anything must refuse to when they do not (``OracleDisagreement``).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field


import numpy as np

from hal import HalError

#: the two implementations agree when every float output satisfies
#: max|fp64 - second| <= AGREE_REL[narrowest float type] * max|fp64|;
#: fp32 rounding over a deep CNN stays near 1e-6 of max|out|, so 1e-4 (the fp32
#: conformance bound) only trips on a semantic difference, never on rounding.
AGREE_REL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}


class OracleDisagreement(HalError):
    """The two implementations disagree, or the second one could not run the
    model: the oracle's answer is not cross-checked and must judge nothing."""


# --- fp64 rewrite -------------------------------------------------------------------
def to_double(model):
    """A copy of ``model`` with every float32 tensor, type and dtype attribute
    turned into float64 (fp16/bf16 are left alone: an explicit narrow type is
    part of the model, as ``module.double()`` leaves an explicit ``.half()``)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    _graph(m.graph)
    for f in m.functions:
        for n in f.node:
            _node(n)
        for vi in f.value_info:
            _type(vi.type)
    return m


_F, _D = 1, 11  # TensorProto.FLOAT, TensorProto.DOUBLE
#: ops whose output float type is an attribute (default float32 when absent)
_DTYPE_ATTR = {"Cast": "to", "EyeLike": "dtype", "RandomNormal": "dtype", "RandomUniform": "dtype",
               "RandomNormalLike": "dtype", "RandomUniformLike": "dtype", "Multinomial": "dtype",
               "Bernoulli": "dtype"}
_DEFAULT_FLOAT = {"RandomNormal", "RandomUniform"}


def _tensor(t) -> None:
    if t.data_type != _F:
        return
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t).astype(np.float64)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def _type(tp) -> None:
    which = tp.WhichOneof("value")
    if which == "tensor_type" and tp.tensor_type.elem_type == _F:
        tp.tensor_type.elem_type = _D
    elif which == "sparse_tensor_type" and tp.sparse_tensor_type.elem_type == _F:
        tp.sparse_tensor_type.elem_type = _D
    elif which == "sequence_type":
        _type(tp.sequence_type.elem_type)
    elif which == "optional_type":
        _type(tp.optional_type.elem_type)
    elif which == "map_type":
        _type(tp.map_type.value_type)


def _graph(g) -> None:
    for t in g.initializer:
        _tensor(t)
    for s in g.sparse_initializer:
        _tensor(s.values)
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        _type(vi.type)
    for n in g.node:
        _node(n)


def _node(n) -> None:
    from onnx import AttributeProto, helper, numpy_helper

    attrs = {a.name: a for a in n.attribute}
    for a in n.attribute:
        if a.type == AttributeProto.TENSOR:
            _tensor(a.t)
        elif a.type == AttributeProto.TENSORS:
            for t in a.tensors:
                _tensor(t)
        elif a.type == AttributeProto.GRAPH:
            _graph(a.g)
        elif a.type == AttributeProto.GRAPHS:
            for g in a.graphs:
                _graph(g)
        elif a.type == AttributeProto.TYPE_PROTO:
            _type(a.tp)
    if n.domain not in ("", "ai.onnx"):
        return
    if n.op_type == "Constant" and ("value_float" in attrs or "value_floats" in attrs):
        a = attrs.get("value_float") or attrs["value_floats"]
        v = np.array(a.f if a.name == "value_float" else list(a.floats), dtype=np.float64)
        n.attribute.remove(a)
        n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(v)))
    elif n.op_type == "ConstantOfShape" and "value" not in attrs:
        n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(
            np.zeros(1, dtype=np.float64))))
    key = _DTYPE_ATTR.get(n.op_type)
    if key:
        if key in attrs and attrs[key].i == _F:
            attrs[key].i = _D
        elif key not in attrs and n.op_type in _DEFAULT_FLOAT:
            n.attribute.append(helper.make_attribute(key, _D))


def narrowest_float(model) -> str:
    """The narrowest float type the model declares (sets the agreement bound)."""
    seen: set[int] = set()

    def walk(tp):
        which = tp.WhichOneof("value")
        if which == "tensor_type":
            seen.add(tp.tensor_type.elem_type)
        elif which in ("sequence_type", "optional_type"):
            walk(getattr(tp, which).elem_type)

    g = model.graph
    seen |= {t.data_type for t in g.initializer}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        walk(vi.type)
    return "bfloat16" if 16 in seen else "float16" if 10 in seen else "float32"


# --- corrected and fast operators -------------------------------------------------------
def _ops() -> list[type]:
    """The ``new_ops`` classes (built lazily: ``onnx.reference`` is imported here)."""
    from onnx import defs
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops import load_op

    class _Op(OpRun):
        """Attributes and defaults from the schema of the model's opset (the
        evaluator's own classes take defaults from the newest schema)."""

        op_domain = ""

        def __init__(self, onnx_node, run_params, schema=None):
            self.opset = int(run_params["opsets"].get("", 1) or 1)
            schema = defs.get_schema(onnx_node.op_type, self.opset, "")
            super().__init__(onnx_node, run_params, schema=schema)
            self.since = schema.since_version
            self._stock = None
            self._lock = threading.Lock()

        def stock(self, *args, **kwargs):
            """The evaluator's own implementation (for cases not replaced here)."""
            with self._lock:
                if self._stock is None:
                    cls = load_op("", self.onnx_node.op_type, self.opset,
                                  evaluator_cls=self.run_params.get("evaluator_cls"))
                    self._stock = cls(self.onnx_node, self.run_params)
            return self._stock._run(*args, **kwargs)

    class LRN(_Op):
        def _run(self, x, alpha=None, beta=None, bias=None, size=None):
            lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
            c = x.shape[1]
            pad = [(0, 0)] * x.ndim
            pad[1] = (lo, hi)
            sq = np.pad(np.square(x), pad)
            win = sum(sq[:, j:j + c] for j in range(lo + hi + 1))  # channels c-lo .. c+hi
            return ((x / (bias + (alpha / size) * win) ** beta).astype(x.dtype),)

    class BatchNormalization(_Op):
        def _run(self, x, scale, bias, mean, var, **att):
            training = (att.get("training_mode") if self.since >= 14
                        else len(self.onnx_node.output) > 1)
            if training:
                return self.stock(x, scale, bias, mean, var, **att)
            eps = att.get("epsilon", 1e-5)
            shape = (-1,) + (1,) * (x.ndim - 2) if scale.ndim == 1 else (1,) + scale.shape
            s, b, m, v = (np.asarray(a).reshape(shape) for a in (scale, bias, mean, var))
            y = (x - m) * (s / np.sqrt(v + eps)) + b
            return (y.astype(x.dtype),)

    def _coerced(op, x, axis, opset):
        """opset < 13: Softmax-family ops work on x seen as 2-D at ``axis``."""
        if x.size == 0:
            return x
        if opset >= 13:
            return op(x, axis)
        axis = axis % x.ndim if x.ndim else 0
        two = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        return op(two, 1).reshape(x.shape)

    def _softmax(x, axis):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    def _log_softmax(x, axis):
        t = x - x.max(axis=axis, keepdims=True)
        return t - np.log(np.exp(t).sum(axis=axis, keepdims=True))

    def _hardmax(x, axis):
        y = np.zeros_like(x)
        np.put_along_axis(y, np.expand_dims(np.argmax(x, axis=axis), axis), 1, axis=axis)
        return y

    class Softmax(_Op):
        def _run(self, x, axis=None):
            return (_coerced(_softmax, x, axis, self.since).astype(x.dtype),)

    class LogSoftmax(_Op):
        def _run(self, x, axis=None):
            return (_coerced(_log_softmax, x, axis, self.since).astype(x.dtype),)

    class Hardmax(_Op):
        def _run(self, x, axis=None):
            return (_coerced(_hardmax, x, axis, self.since).astype(x.dtype),)

    class Conv(_Op):
        def _run(self, x, w, b=None, **att):
            if x.dtype not in _FAST or w.dtype != x.dtype or not 3 <= x.ndim <= 5 or \
                    (b is not None and b.dtype != x.dtype):
                return self.stock(x, w, b, **att)
            torch, F = _torch()
            nd = x.ndim - 2
            k = w.shape[2:]
            strides = list(att.get("strides") or [1] * nd)
            dil = list(att.get("dilations") or [1] * nd)
            pads = _pads(att, x.shape[2:], k, strides, dil)
            xt = _t(x)
            xt, sym = _pad(F, xt, pads, 0.0)
            group = int(att.get("group") or 1)
            with torch.inference_mode():
                if nd == 2 and group > 1:
                    y = _grouped_conv2d(torch, F, xt, _t(w), strides, sym, dil, group)
                    if b is not None:
                        y = y + _t(b).view(1, -1, 1, 1)
                else:
                    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
                    y = conv(xt, _t(w), None if b is None else _t(b), strides, sym, dil, group)
            return (y.numpy(),)

    class MaxPool(_Op):
        def _run(self, x, **att):
            if x.dtype not in _FAST or not 3 <= x.ndim <= 5 or att.get("ceil_mode") or \
                    len(self.onnx_node.output) > 1:
                return self.stock(x, **att)
            torch, F = _torch()
            nd = x.ndim - 2
            k = list(att["kernel_shape"])
            strides = list(att.get("strides") or [1] * nd)
            dil = list(att.get("dilations") or [1] * nd)
            pads = _pads(att, x.shape[2:], k, strides, dil)
            xt, _ = _pad(F, _t(x), pads, -math.inf, force=True)
            pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
            with torch.inference_mode():
                return (pool(xt, k, strides, 0, dil).numpy(),)

    class AveragePool(_Op):
        def _run(self, x, **att):
            nd = x.ndim - 2
            dil = list(att.get("dilations") or [1] * max(nd, 0))
            if x.dtype not in _FAST or not 3 <= x.ndim <= 5 or att.get("ceil_mode") or \
                    any(d != 1 for d in dil):
                return self.stock(x, **att)
            torch, F = _torch()
            k = list(att["kernel_shape"])
            strides = list(att.get("strides") or [1] * nd)
            pads = _pads(att, x.shape[2:], k, strides, dil)
            pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
            xt, _ = _pad(F, _t(x), pads, 0.0, force=True)
            with torch.inference_mode():
                y = pool(xt, k, strides, 0)
                if any(pads) and not att.get("count_include_pad"):
                    ones = torch.ones((1, 1) + x.shape[2:], dtype=xt.dtype)
                    frac = pool(_pad(F, ones, pads, 0.0, force=True)[0], k, strides, 0)
                    y = y / frac
            return (y.numpy(),)

    class GatherElements(_Op):
        """The stock one gathers through ``np.choose`` (at most 64 choices) and falls back
        to a loop whose reshape fails when ``indices`` is smaller than ``data`` off the
        axis, which the spec allows (torch.onnx writes it for a position-id buffer)."""

        def _run(self, data, indices, axis=None):
            axis = int(axis or 0) % data.ndim
            idx = np.asarray(indices).astype(np.int64)
            idx = np.where(idx < 0, idx + data.shape[axis], idx)
            view = data[tuple(slice(None) if d == axis else slice(0, n)
                              for d, n in enumerate(idx.shape))]
            return (np.take_along_axis(view, idx, axis=axis),)

    return [LRN, BatchNormalization, Softmax, LogSoftmax, Hardmax, Conv, MaxPool, AveragePool,
            GatherElements, *_qdq_ops()]


def _qdq_ops() -> list[type]:
    """QuantizeLinear/DequantizeLinear at every opset: onnx.reference ships them only
    from opset 19 (a QDQ model of opset 13-18, what ORT's quantizer writes, fails with
    'No implementation'); the older opsets' semantics are a subset of the newest."""
    from onnx.reference.ops import op_dequantize_linear as dq, op_quantize_linear as q

    newest = lambda mod, stem: max((getattr(mod, n) for n in dir(mod) if n.startswith(stem + "_")  # noqa: E731
                                    and n[len(stem) + 1:].isdigit()), key=lambda c: int(c.__name__.rsplit("_", 1)[1]))
    return [type("DequantizeLinear", (newest(dq, "DequantizeLinear"),), {"op_domain": ""}),
            type("QuantizeLinear", (newest(q, "QuantizeLinear"),), {"op_domain": ""})]


_FAST = (np.dtype(np.float32), np.dtype(np.float64))
_OPS: list[type] | None = None


def new_ops() -> list[type]:
    """The replacement operators, for ``ReferenceEvaluator(..., new_ops=new_ops())``."""
    global _OPS
    if _OPS is None:
        _OPS = _ops()
    return _OPS


def _torch():
    import torch
    import torch.nn.functional as F

    return torch, F


def _t(a: np.ndarray):
    import torch

    return torch.from_numpy(np.require(a, requirements=["C", "W"]))


def _grouped_conv2d(torch, F, x, w, strides, padding, dil, group: int):
    """Grouped 2-D convolution as unfold + one batched matmul: torch's CPU fp64
    kernel loops over groups (0.15 s for a 544-group 14x14 layer, 4 ms this way)."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    cols = F.unfold(x, (kh, kw), dilation=dil, padding=padding, stride=strides)
    oh = (h + 2 * padding[0] - dil[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (wd + 2 * padding[1] - dil[1] * (kw - 1) - 1) // strides[1] + 1
    cols = cols.view(n, group, cg * kh * kw, oh * ow)
    y = torch.matmul(w.reshape(1, group, o // group, cg * kh * kw), cols)
    return y.reshape(n, o, oh, ow)


def _pads(att: dict, spatial, k, strides, dil) -> list[int]:
    """ONNX pads (begins then ends) with ``auto_pad`` resolved."""
    nd = len(spatial)
    auto = att.get("auto_pad") or "NOTSET"
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for n, kk, s, d in zip(spatial, k, strides, dil):
            total = max((math.ceil(n / s) - 1) * s + (kk - 1) * d + 1 - n, 0)
            small = total // 2
            begin.append(small if auto == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        return begin + end
    if auto == "VALID":
        return [0] * (2 * nd)
    return list(att.get("pads") or [0] * (2 * nd))


def _pad(F, xt, pads: list[int], value: float, force: bool = False):
    """Pad ``xt`` (torch) by ONNX ``pads``; symmetric pads are returned for the
    kernel's own ``padding`` argument instead, unless ``force``."""
    nd = len(pads) // 2
    begin, end = pads[:nd], pads[nd:]
    if not force and begin == end:
        return xt, begin
    if not any(pads):
        return xt, [0] * nd
    spec: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        spec += [b, e]
    return F.pad(xt, spec, value=value), [0] * nd


# --- the oracle ---------------------------------------------------------------------------
@dataclass
class OracleRun:
    """One call: the fp64 outputs, the second implementation's, and whether they agree."""

    outputs: list[np.ndarray]
    second: list[np.ndarray] | None
    #: "agree", "disagree" or "unchecked" (no second implementation ran)
    verdict: str
    detail: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    #: per output, max|fp64 - second| / max|fp64| (float outputs only)
    rel_err: list[float | None] = field(default_factory=list)

    @property
    def agreed(self) -> bool:
        return self.verdict == "agree"


def evaluator(model, double: bool = True):
    """A ``ReferenceEvaluator`` with the corrected and fast operators, on the
    model rewritten to fp64 when ``double``."""
    import warnings

    from onnx.reference import ReferenceEvaluator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ReferenceEvaluator(to_double(model) if double else model, new_ops=new_ops())


class OnnxOracle:
    """fp64 evaluator + onnxruntime (fp32, the original model) on every call.

    Thread-safe: the evaluator runs under a lock (its Python operators hold
    per-node state); onnxruntime sessions are safe to share."""

    def __init__(self, model, cross_check: bool = True):
        self.model = model
        self.inputs = _real_inputs(model)
        self.outputs = [o.name for o in model.graph.output]
        self.bound = AGREE_REL[narrowest_float(model)]
        self.session = evaluator(model)
        self.cross_check = cross_check
        self._lock = threading.Lock()
        self._ort = None
        self._ort_error: str | None = None

    def _second(self):
        if self._ort is None and self._ort_error is None:
            try:
                import onnxruntime as ort

                so = ort.SessionOptions()
                so.log_severity_level = 3
                # no graph rewrites: the second opinion should compute what the file says
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                self._ort = ort.InferenceSession(self.model.SerializeToString(), so,
                                                 providers=["CPUExecutionProvider"])
            except ImportError:
                self._ort_error = "onnxruntime is not installed"
            except Exception as e:  # noqa: BLE001 - its refusal is a fact, reported
                self._ort_error = f"onnxruntime cannot load the model: {_brief(e)}"
        return self._ort

    def run(self, feeds: dict[str, np.ndarray] | list[np.ndarray]) -> OracleRun:
        if not isinstance(feeds, dict):
            feeds = dict(zip(self.inputs, feeds))
        wide = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in feeds.items()}
        t0 = time.perf_counter()
        with self._lock:
            outs = [np.asarray(o) for o in self.session.run(None, wide)]
        res = OracleRun(outs, None, "unchecked", seconds={"fp64": time.perf_counter() - t0})
        if not self.cross_check:
            res.detail = "cross-check disabled"
            return res
        sess = self._second()
        if sess is None:
            res.detail = self._ort_error or "no second implementation"
            return res
        t0 = time.perf_counter()
        try:
            second = sess.run(None, feeds)
        except Exception as e:  # noqa: BLE001
            res.detail = f"onnxruntime failed: {_brief(e)}"
            return res
        res.seconds["onnxruntime"] = time.perf_counter() - t0
        res.second = [np.asarray(s) for s in second]
        problems = []
        for name, a, b in zip(self.outputs, outs, res.second):
            why, rel = compare(a, b, self.bound)
            res.rel_err.append(rel)
            if why:
                problems.append(f"{name}: {why}")
        res.verdict = "disagree" if problems else "agree"
        res.detail = "; ".join(problems) or (
            f"onnxruntime agrees within {self.bound:g}·max|out| "
            f"(worst {max([r for r in res.rel_err if r is not None] or [0]):.1e})")
        return res


def compare(ref: np.ndarray, other: np.ndarray, bound: float) -> tuple[str | None, float | None]:
    """(why they differ or None, relative max error for float outputs)."""
    ref, other = np.asarray(ref), np.asarray(other)
    if ref.shape != other.shape:
        return f"shape {ref.shape} vs {other.shape}", None
    if ref.dtype.kind not in "fc":
        same = np.array_equal(ref, other)
        return (None if same else f"{int((ref != other).sum())} element(s) differ"), None
    a, b = ref.astype(np.float64), other.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return "NaN in different places", None
    fin = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(a[~fin & ~nan_a], b[~fin & ~nan_b]):
        return "Inf in different places", None
    if not fin.any():
        return None, 0.0
    scale = float(np.abs(a[fin]).max())
    err = float(np.abs(a[fin] - b[fin]).max())
    rel = err / scale if scale else (0.0 if err == 0 else math.inf)
    if rel > bound:
        return f"max|diff| {err:.3g} = {rel:.2e}·max|out| > {bound:g}", rel
    return None, rel


def _real_inputs(model) -> list[str]:
    init = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in init]


def _brief(e: BaseException) -> str:
    s = " ".join(str(e).split())
    if s.startswith("[ONNXRuntimeError]") and "onnxruntime::" in s:  # drop the C++ signature
        s = s.split(" : ", 3)[2] + ": " + s.rsplit(") ", 1)[-1]
    return (s[:240] + "…") if len(s) > 240 else s or type(e).__name__


def logits(model):
    """A copy of ``model`` whose output is the tensor feeding its final Softmax
    (pre-softmax logits, where errors are not squashed); the model itself when
    it does not end in Softmax."""
    import onnx
    from onnx import helper

    outs = {o.name: o for o in model.graph.output}
    last = [n for n in model.graph.node if n.op_type == "Softmax" and n.output[0] in outs]
    if len(outs) != 1 or not last:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    node = [n for n in m.graph.node if n.output[0] == last[0].output[0]][0]
    elem = outs[last[0].output[0]].type.tensor_type.elem_type
    m.graph.node.remove(node)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(node.input[0], elem, None))
    return m
