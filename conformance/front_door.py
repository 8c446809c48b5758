"""The front-door corpus (#21): models nobody here wrote, through ``hal.compile`` on every
device, each answer held to the model's **native runtime called directly** on the same input.

    python -m conformance.front_door [--full] [--md reports/front_door.md] [--targets T,...]

Without ``--full`` it runs the CI sample (:data:`SAMPLE`, what tests/test_front_door_corpus.py
runs by default); ``--full`` runs every case of :data:`CASES`. Everything is built here from
configs and seeds (no download): transformers text models with int64 ``input_ids`` and
``attention_mask`` (fixed and dynamic sequence, a causal LM, an encoder with two outputs),
detection-like heads returning a dict and a tuple, a QDQ int8 ONNX from onnxruntime's
``quantize_static`` and full-int8 TFLites from ``TFLiteConverter`` (compiled at ``int8`` with no
calibration), a Keras application as an object, a ``.keras`` file and a SavedModel, an OpenVINO
IR saved with ``ov.save_model``'s defaults (f16-stored weights), ONNX files shipped inside the
installed wheels, and models with control flow and unusual operators.

The native runtime of each format (:func:`Built.native`): torch eager for torch models,
onnxruntime for ONNX, ``openvino.Core().compile_model`` for IR, LiteRT's interpreter for
``.tflite``, Keras ``model(x)`` for Keras and the serving signature for a SavedModel.

Each case × device cell gets one verdict:

``match``
    every output within :data:`TOLERANCES` of the native answer, on every probe input;
``wrong``
    hal answered, and the answer differs from the native one (values, shapes, or the number of
    outputs);
``refused``
    a hal error (its one-line message is recorded), judged: **true** where the device or the
    backend's own runtime cannot take the model either (a precision the device does not offer,
    a format its runtime does not read, a native conversion that fails or answers wrongly, a
    shape the backend's documented rule fixes), **false** where the backend's native runtime,
    called directly, runs the model right — a false refusal is a lost cell, not a refusal;
    ``unverified`` where no native check applies (said in the report);
``lost``
    a raw (non-hal) exception, or a false refusal.

Across devices: for every device that compiled a case, the input names, output names, input
dtypes and the structure of what ``exe(...)`` returns (container types and dict keys) must be
the same; a difference is a ``structure`` failure of the case.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import site
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .policy import MODELS_POLICY

VERDICTS = ("match", "wrong", "refused", "lost")
#: the failures: a cell with one of these verdicts, or a case with a structure mismatch,
#: fails the corpus
FAILING = ("wrong", "lost")


# --- tolerances ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """How close hal's answer must be to the native one. Float outputs: each output's
    ``max|hal - native| ≤ max_rel · max|native|`` and, where set, ``SNR ≥ min_snr_db``.
    Integer outputs: equal (``int_steps`` 0), or within ``int_steps`` quantization steps
    (int8 outputs of a quantized model), or not judged (``None``: an argmax of quantized
    scores says nothing more than the scores)."""

    max_rel: float | None
    min_snr_db: float | None
    int_steps: int | None
    why: str


TOLERANCES: dict[str, Tolerance] = {
    # the same fp32 arithmetic in another runtime: conformance's fp32 limit for deep networks
    "fp32": Tolerance(MODELS_POLICY["fp32"].max_rel_err, None, 0,
                      "fp32 against the native fp32 run: max|err| ≤ 1e-4·max|native| per output "
                      "(conformance's fp32 limit, policy.MODELS_POLICY; another summation order "
                      "leaves ~1e-6), integer outputs equal"),
    # the same quantized graph, another runtime's int8 kernels
    "int8": Tolerance(None, 30.0, 0,
                      "a pre-quantized model against its native runtime: SNR ≥ 30 dB per output "
                      "(an int8 output dequantized with its own scale and zero point first), "
                      "other integer outputs equal. The quantized graph is the same; runtimes "
                      "differ in where they requantize and round (OpenVINO runs QDQ and TFLite "
                      "quantization as FakeQuantize around f32 kernels, ORT and LiteRT use "
                      "integer kernels with fixed-point requantization). Measured here on 50 "
                      "inputs: OpenVINO against onnxruntime on the QDQ CNN ≥ 36.6 dB; OpenVINO "
                      "against LiteRT on the TFLite CNN 23.7 dB at worst, 34.6 dB median (so some "
                      "inputs are wrong: OpenVINO's, see the attribution); a wrong scale or zero "
                      "point gives < 20 dB"),
    # a float model quantized by hal (the Edge TPU has int8 only), against the native float run
    "int8<fp32": Tolerance(None, MODELS_POLICY["int8"].min_snr_db, None,
                           "int8 compiled from a float model (the device has no float): SNR ≥ "
                           f"{MODELS_POLICY['int8'].min_snr_db:g} dB per float output against the "
                           "native fp32 run (policy.MODELS_POLICY's int8 floor for networks "
                           "calibrated on a few samples); integer outputs (argmax, top-k "
                           "indices) not judged"),
}


# --- what a case is -----------------------------------------------------------------------
@dataclass
class Built:
    """One case, built: what ``hal.compile`` gets and how to run the native runtime."""

    model: Any
    #: probe inputs in the model's own dtypes; the first is the example
    probes: list[tuple]
    #: the native runtime on one probe → its output (any structure of arrays/tensors)
    native: Callable[[tuple], Any]
    native_name: str
    #: "fp32" for float models, "int8" for pre-quantized ones (compiled with no calibration)
    precision: str = "fp32"
    #: passed as example_input (object models); files declare their own shapes
    example: tuple | None = None
    #: samples for a device that has no float (edgetpu): int8 calibrated by hal
    calibration: list[tuple] | None = None
    #: per input/output (scale, zero point) of a model with int8 I/O, so that a device whose
    #: executable takes float (edgetpu's default) is fed the same values, and compared
    in_quant: list[tuple[float, int] | None] | None = None
    out_quant: list[tuple[float, int] | None] | None = None
    #: the format hal reads it as (for the refusal checks)
    kind: str = "torch"
    #: extra facts for the refusal checks (a torch module behind a file, paths, ...)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.calibration is None and self.precision == "fp32":
            self.calibration = list(self.probes)


@dataclass
class Case:
    name: str
    what: str
    build: Callable[[Path], Built]
    group: str


# --- small helpers ------------------------------------------------------------------------
def _np(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        return v.numpy()
    if hasattr(v, "numpy") and not isinstance(v, np.ndarray):
        return np.asarray(v.numpy())
    return np.asarray(v)


def flatten(out: Any) -> list[np.ndarray]:
    """The leaves of an output structure in depth-first order: dict values (a transformers
    ``ModelOutput`` included, ``None`` fields skipped), tuple and list items, arrays."""
    if out is None:
        return []
    if isinstance(out, dict) or (hasattr(out, "keys") and hasattr(out, "__getitem__")
                                 and not hasattr(out, "shape")):
        res = []
        for k in out.keys():
            res += flatten(out[k])
        return res
    if isinstance(out, (list, tuple)):
        res = []
        for v in out:
            res += flatten(v)
        return res
    return [_np(out)]


def structure(out: Any) -> str:
    """What ``exe(...)`` returned, as a short string: ``array``, ``tuple[...]``, ``dict{k: ...}``."""
    if isinstance(out, dict):
        return "dict{" + ", ".join(f"{k}: {structure(v)}" for k, v in out.items()) + "}"
    if isinstance(out, (list, tuple)):
        return f"{type(out).__name__}[" + ", ".join(structure(v) for v in out) + "]"
    return "array" if isinstance(out, np.ndarray) else type(out).__name__


def one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[:limit] + "…"


@contextlib.contextmanager
def quiet():
    """Framework chatter (TF, absl, converters) off the table."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _torch_native(m) -> Callable[[tuple], Any]:
    import torch

    def run(xs):
        with torch.inference_mode():
            return m(*[torch.from_numpy(np.array(x)) for x in xs])
    return run


def _ort_native(path: Path) -> Callable[[tuple], Any]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]

    def run(xs):
        res = sess.run(None, dict(zip(names, xs)))
        return dict(zip(outs, res))
    return run


def _ids(rng, batch: int, seq: int, vocab: int, pad_from: int | None = None):
    ids = rng.integers(2, vocab, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    if pad_from is not None:
        mask[:, pad_from:] = 0
    return ids, mask


# --- transformers text models -------------------------------------------------------------
def _bert_cls():
    import torch
    import transformers

    cfg = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64, num_labels=3)
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg).eval()


def bert_cls(tmp: Path) -> Built:
    """BertForSequenceClassification (2 layers, 3 labels) at a fixed sequence of 12."""
    m = _bert_cls()
    rng = _rng(11)
    probes = [_ids(rng, 1, 12, 96, pad_from=9), _ids(rng, 1, 12, 96)]
    calib = [_ids(rng, 1, 12, 96, pad_from=int(rng.integers(6, 13))) for _ in range(8)]
    return Built(m, probes, _torch_native(m), "torch eager (transformers)", example=probes[0],
                 calibration=calib)


def _seq_dims():
    import torch

    seq = torch.export.Dim("seq", min=2, max=64)
    return seq


def bert_cls_dyn_export(tmp: Path) -> Built:
    """The same classifier exported with torch.export, batch and sequence free (Dim)."""
    import torch

    m = _bert_cls()
    rng = _rng(12)
    ex = _ids(rng, 2, 12, 96, pad_from=9)  # batch 2: an example of 1 specializes the batch
    batch, seq = torch.export.Dim("batch", min=1, max=8), _seq_dims()
    with quiet():
        ep = torch.export.export(m, (), kwargs={"input_ids": torch.from_numpy(ex[0]),
                                                "attention_mask": torch.from_numpy(ex[1])},
                                 dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                                 "attention_mask": {0: batch, 1: seq}})
    probes = [ex, _ids(rng, 1, 7, 96, pad_from=5), _ids(rng, 3, 20, 96)]
    return Built(ep, probes, _torch_native(m), "torch eager (transformers)", example=ex,
                 calibration=[ex], meta={"module": m})


def bert_cls_dyn_onnx(tmp: Path) -> Built:
    """The same classifier as ONNX (torch.onnx.export, dynamo) with symbolic batch and sequence."""
    import torch

    m = _bert_cls()
    rng = _rng(13)
    ex = _ids(rng, 1, 12, 96, pad_from=9)
    batch, seq = torch.export.Dim("batch", min=1, max=8), _seq_dims()
    path = tmp / "bert_dyn.onnx"
    with quiet():
        torch.onnx.export(m, (torch.from_numpy(ex[0]), torch.from_numpy(ex[1])), str(path),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), dynamo=True,
                          external_data=False)
    probes = [ex, _ids(rng, 1, 7, 96, pad_from=5), _ids(rng, 2, 20, 96)]
    return Built(path, probes, _ort_native(path), "onnxruntime", kind="onnx", calibration=[ex],
                 meta={"module": m})


def gpt2_lm(tmp: Path) -> Built:
    """GPT2LMHeadModel from GPT-2 small's config shrunk (2 layers, 64 wide), no KV cache, called
    with ids and a mask. Its ``forward`` takes ``past_key_values`` second, and hal takes
    example inputs by position only, so the mask goes through a two-line wrapper that calls
    the model by keyword (what a user of hal writes; the model and its output are untouched)."""
    import torch
    import transformers

    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=128,
                                  use_cache=False, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(1)
    lm = transformers.GPT2LMHeadModel(cfg).eval()

    class CausalLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask)

    m = CausalLM().eval()
    rng = _rng(14)
    probes = [_ids(rng, 1, 10, 128, pad_from=8), _ids(rng, 1, 10, 128)]
    return Built(m, probes, _torch_native(m), "torch eager (transformers)", example=probes[0],
                 calibration=[_ids(rng, 1, 10, 128) for _ in range(8)])


def roberta_encoder(tmp: Path) -> Built:
    """RobertaModel: last_hidden_state + pooler_output (position ids from the padding)."""
    import torch
    import transformers

    cfg = transformers.RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=40, pad_token_id=1)
    torch.manual_seed(2)
    m = transformers.RobertaModel(cfg).eval()
    rng = _rng(15)
    probes = [_ids(rng, 1, 16, 100, pad_from=12), _ids(rng, 1, 16, 100)]
    return Built(m, probes, _torch_native(m), "torch eager (transformers)", example=probes[0],
                 calibration=[_ids(rng, 1, 16, 100) for _ in range(8)])


# --- heads with dict / tuple outputs ------------------------------------------------------
def _images(rng, n: int, c: int = 3, hw: int = 32) -> np.ndarray:
    return rng.standard_normal((n, c, hw, hw)).astype(np.float32)


def _detector(dict_out: bool):
    import torch
    from torch import nn

    class Detector(nn.Module):
        """A tiny SSD-like head: per-anchor boxes (sigmoid cx,cy,w,h → x1,y1,x2,y2) and class
        scores (softmax), from a two-stage conv backbone."""

        def __init__(self, anchors: int = 3, classes: int = 5):
            super().__init__()
            self.a, self.c = anchors, classes
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16),
                                      nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                                      nn.ReLU())
            self.box = nn.Conv2d(32, anchors * 4, 1)
            self.cls = nn.Conv2d(32, anchors * classes, 1)

        def forward(self, images):
            f = self.body(images)
            n = f.shape[0]
            b = torch.sigmoid(self.box(f)).permute(0, 2, 3, 1).reshape(n, -1, 4)
            xy, wh = b[..., :2], b[..., 2:] * 0.5
            boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
            scores = self.cls(f).permute(0, 2, 3, 1).reshape(n, -1, self.c).softmax(-1)
            if dict_out:
                return {"boxes": boxes, "scores": scores}
            best, idx = scores.max(-1).values.topk(5, dim=-1)
            return boxes, scores, best, idx

    torch.manual_seed(3 if dict_out else 4)
    m = Detector()
    with torch.no_grad():  # BatchNorm with live statistics
        m.body[1].running_mean.uniform_(-0.2, 0.2)
        m.body[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def det_dict(tmp: Path) -> Built:
    """Detection-like head returning {"boxes", "scores"}."""
    m = _detector(True)
    rng = _rng(16)
    probes = [(_images(rng, 1),), (_images(rng, 1),)]
    return Built(m, probes, _torch_native(m), "torch eager", example=probes[0],
                 calibration=[(_images(rng, 1),) for _ in range(8)])


def det_tuple(tmp: Path) -> Built:
    """Detection-like head returning (boxes, scores, top-5 scores, top-5 indices: int64)."""
    m = _detector(False)
    rng = _rng(17)
    probes = [(_images(rng, 1),), (_images(rng, 1),)]
    return Built(m, probes, _torch_native(m), "torch eager", example=probes[0],
                 calibration=[(_images(rng, 1),) for _ in range(8)])


def mlp_heads(tmp: Path) -> Built:
    """A two-head MLP (an embedding-to-{logits, offsets} head, as on a re-identification or
    keypoint model): Linear/ReLU only, so even the Edge TPU runs all of it at int8."""
    import torch
    from torch import nn

    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(11)
            self.trunk = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
            self.logits, self.offsets = nn.Linear(32, 6), nn.Linear(32, 2)

        def forward(self, features):
            h = self.trunk(features)
            return {"logits": self.logits(h), "offsets": self.offsets(h)}

    m = Heads().eval()
    rng = _rng(30)
    probes = [(rng.standard_normal((1, 16)).astype(np.float32),) for _ in range(3)]
    return Built(m, probes, _torch_native(m), "torch eager", example=probes[0],
                 calibration=[(rng.standard_normal((1, 16)).astype(np.float32),) for _ in range(16)])


# --- pre-quantized -------------------------------------------------------------------------
def _fp32_cnn_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = _rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.15, "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32) * 0.1, "b2")
    fc = numpy_helper.from_array(rng.standard_normal((16 * 4 * 4, 10)).astype(np.float32) * 0.05,
                                 "fc")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c2"], ["r2"]),
         helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Flatten", ["p2"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"])],
        "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w1, b1, w2, b2, fc])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(path))


def qdq_onnx(tmp: Path) -> Built:
    """A Conv-Pool-Conv-Pool-MatMul ONNX made QDQ int8 by onnxruntime's quantize_static."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rng = _rng(18)
    _fp32_cnn_onnx(tmp / "cnn_fp32.onnx")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = iter([{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                              for _ in range(16)])

        def get_next(self):
            return next(self.data, None)

    path = tmp / "cnn_qdq.onnx"
    with quiet():
        quantize_static(str(tmp / "cnn_fp32.onnx"), str(path), Reader(),
                        quant_format=QuantFormat.QDQ)
    probes = [(rng.standard_normal((1, 3, 16, 16)).astype(np.float32),) for _ in range(3)]
    return Built(path, probes, _ort_native(path), "onnxruntime", precision="int8", kind="onnx")


def _keras_small(tf, seed: int):
    tf.keras.utils.set_random_seed(seed)
    inp = tf.keras.Input((16, 16, 3), batch_size=1, name="image")
    y = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    y = tf.keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6")(y)
    y = tf.keras.layers.MaxPooling2D()(y)
    y = tf.keras.layers.Conv2D(16, 1, activation="relu")(y)
    y = tf.keras.layers.GlobalAveragePooling2D()(y)
    y = tf.keras.layers.Dense(10)(y)
    return tf.keras.Model(inp, y)


def _int8_tflite(path: Path, int8_io: bool) -> None:
    import tensorflow as tf

    rng = _rng(19)
    conv = tf.lite.TFLiteConverter.from_keras_model(_keras_small(tf, 5))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([rng.standard_normal((1, 16, 16, 3)).astype(np.float32)]
                                           for _ in range(32))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
        conv.inference_input_type = conv.inference_output_type = tf.int8
    with quiet():
        path.write_bytes(conv.convert())


def _litert(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    ins, outs = it.get_input_details(), it.get_output_details()

    def run(xs):
        for d, x in zip(ins, xs):
            it.set_tensor(d["index"], np.ascontiguousarray(x))
        it.invoke()
        return tuple(it.get_tensor(d["index"]).copy() for d in outs)

    def q(details):
        return [(float(d["quantization"][0]), int(d["quantization"][1]))
                if d["dtype"] in (np.int8, np.uint8) and d["quantization"][0] else None
                for d in details]
    return run, q(ins), q(outs), ins


def tflite_int8_io(tmp: Path) -> Built:
    """A Keras CNN converted to full-int8 TFLite (representative dataset, int8 in and out)."""
    path = tmp / "int8_io.tflite"
    _int8_tflite(path, True)
    run, qi, qo, ins = _litert(path)
    rng = _rng(20)
    s, z = qi[0]
    probes = [(np.clip(np.round(rng.standard_normal((1, 16, 16, 3)) / s) + z, -128, 127)
               .astype(np.int8),) for _ in range(3)]
    return Built(path, probes, run, "LiteRT interpreter", precision="int8", kind="tflite",
                 in_quant=qi, out_quant=qo)


def tflite_int8_float_io(tmp: Path) -> Built:
    """The same converted full-int8 with float input and output (quantize/dequantize ops inside)."""
    path = tmp / "int8_fio.tflite"
    _int8_tflite(path, False)
    run, _, _, _ = _litert(path)
    rng = _rng(21)
    probes = [(rng.standard_normal((1, 16, 16, 3)).astype(np.float32),) for _ in range(3)]
    return Built(path, probes, run, "LiteRT interpreter", precision="int8", kind="tflite")


# --- Keras applications ---------------------------------------------------------------------
def _mobilenet():
    """MobileNetV3Small with seeded random weights and BatchNorm statistics set, layer by
    layer, from a batch of inputs: at Keras' initial statistics (mean 0, variance 1) the
    signal of a random network shrinks to ~1e-10 by the head, every input gives the same
    uniform softmax, and any runtime would "match" it."""
    import keras

    keras.utils.set_random_seed(6)
    with quiet():
        m = keras.applications.MobileNetV3Small(weights=None, input_shape=(96, 96, 3), classes=10)
        batch = _rng(60).uniform(0, 255, (8, 96, 96, 3)).astype(np.float32)
        for bn in [layer for layer in m.layers if isinstance(layer, keras.layers.BatchNormalization)]:
            a = np.asarray(keras.Model(m.input, bn.input)(batch))
            bn.moving_mean.assign(a.mean(axis=(0, 1, 2)))
            bn.moving_variance.assign(a.var(axis=(0, 1, 2)))
    return m


def _keras_probes(seed: int):
    rng = _rng(seed)
    probes = [(rng.uniform(0, 255, (1, 96, 96, 3)).astype(np.float32),) for _ in range(2)]
    calib = [(rng.uniform(0, 255, (1, 96, 96, 3)).astype(np.float32),) for _ in range(8)]
    return probes, calib


def keras_app(tmp: Path) -> Built:
    """keras.applications.MobileNetV3Small(weights=None, 96×96, 10 classes) as an object."""
    m = _mobilenet()
    probes, calib = _keras_probes(22)
    return Built(m, probes, lambda xs: m(xs[0], training=False), "Keras model(x)", example=probes[0],
                 calibration=calib, kind="keras", meta={"keras": m})


def keras_file(tmp: Path) -> Built:
    """The same MobileNetV3Small saved as .keras (native: keras.saving.load_model, model(x))."""
    import keras

    m = _mobilenet()
    path = tmp / "mnv3s.keras"
    m.save(str(path))
    back = keras.saving.load_model(str(path))
    probes, calib = _keras_probes(23)
    return Built(path, probes, lambda xs: back(xs[0], training=False), "Keras load_model + model(x)",
                 example=probes[0], calibration=calib, kind="keras", meta={"keras": back})


def keras_savedmodel(tmp: Path) -> Built:
    """The same MobileNetV3Small exported as a TF SavedModel (native: the serving signature)."""
    import tensorflow as tf

    m = _mobilenet()
    path = tmp / "mnv3s_savedmodel"
    with quiet():
        m.export(str(path), format="tf_saved_model", verbose=False)
    sig = tf.saved_model.load(str(path)).signatures["serving_default"]
    name = list(sig.structured_input_signature[1])[0]
    probes, calib = _keras_probes(24)
    return Built(path, probes, lambda xs: sig(**{name: tf.constant(xs[0])}),
                 "tf.saved_model.load → serving_default", example=probes[0], calibration=calib,
                 kind="savedmodel", meta={"keras": m})


# --- OpenVINO IR ----------------------------------------------------------------------------
def ir_fp16_weights(tmp: Path) -> Built:
    """The BERT classifier as ONNX, read by OpenVINO and saved by ov.save_model with its
    defaults (compress_to_fp16=True: f16-stored weights); int64 ids and mask."""
    import openvino as ov
    import torch

    m = _bert_cls()
    rng = _rng(25)
    ex = _ids(rng, 1, 12, 96, pad_from=9)
    with quiet():
        torch.onnx.export(m, (torch.from_numpy(ex[0]), torch.from_numpy(ex[1])),
                          str(tmp / "bert_ir_src.onnx"), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamo=True, external_data=False)
    core = ov.Core()
    path = tmp / "bert_ir.xml"
    ov.save_model(core.read_model(str(tmp / "bert_ir_src.onnx")), str(path))
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

    def run(xs):
        res = compiled(list(xs))
        return {o.get_any_name(): res[o] for o in compiled.outputs}
    probes = [ex, _ids(rng, 1, 12, 96)]
    return Built(path, probes, run, "openvino Core.compile_model (CPU, f32 hint)", kind="openvino.ir",
                 example=None, calibration=[ex], meta={"module": m})


# --- ONNX files shipped in the installed wheels -------------------------------------------
def _site_file(rel: str) -> Path:
    for d in site.getsitepackages() + [site.getusersitepackages()]:
        p = Path(d) / rel
        if p.is_file():
            return p
    raise FileNotFoundError(f"{rel} is not in site-packages")


def _wheel_onnx(rel: str, seed: int, dtype_override: dict | None = None):
    def build(tmp: Path) -> Built:
        import onnx

        path = _site_file(rel)
        model = onnx.load(str(path))
        init = {i.name for i in model.graph.initializer}
        rng = _rng(seed)
        probes = []
        for _ in range(2):
            xs = []
            for i in model.graph.input:
                if i.name in init:
                    continue
                shape = [d.dim_value or 1 for d in i.type.tensor_type.shape.dim]
                xs.append(rng.standard_normal(shape).astype(np.float32))
            probes.append(tuple(xs))
        return Built(path, probes, _ort_native(path), "onnxruntime", kind="onnx")
    return build


WHEEL_ONNX = {
    "ort-sigmoid": ("onnxruntime/datasets/sigmoid.onnx", "onnxruntime's sample: Sigmoid, IR 3"),
    "ort-mul": ("onnxruntime/datasets/mul_1.onnx", "onnxruntime's sample: Mul by a constant, IR 3"),
    "ort-logreg-iris": ("onnxruntime/datasets/logreg_iris.onnx",
                        "onnxruntime's sample: ai.onnx.ml LinearClassifier + ZipMap "
                        "(a sequence-of-maps output)"),
    "onnx-convtranspose2d": ("onnx/backend/test/data/pytorch-converted/test_ConvTranspose2d/model.onnx",
                             "onnx wheel, pytorch-converted: ConvTranspose2d"),
    "onnx-pixelshuffle": ("onnx/backend/test/data/pytorch-converted/test_PixelShuffle/model.onnx",
                          "onnx wheel, pytorch-converted: PixelShuffle (Reshape/Transpose)"),
}


# --- control flow and unusual operators ------------------------------------------------------
def _cond_model():
    import torch

    class Cond(torch.nn.Module):
        """torch.cond on the input's sign: both branches are in the exported graph."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(7)
            self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda t: torch.tanh(self.a(t)),
                              lambda t: torch.relu(self.b(t)) - 1.0, (x,))
    return Cond().eval()


def torch_cond(tmp: Path) -> Built:
    """torch.cond on a data-dependent predicate (both branches probed)."""
    m = _cond_model()
    rng = _rng(26)
    x = np.abs(rng.standard_normal((2, 8))).astype(np.float32)
    probes = [(x,), (-x,)]
    return Built(m, probes, _torch_native(m), "torch eager", example=probes[0],
                 calibration=[(x,), (-x,), (x * 0.5,), (-x * 0.5,)])


def py_branch(tmp: Path) -> Built:
    """A Python `if` on the data (torch.export refuses it; a trace would bake one side in)."""
    import torch

    class Branch(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(8)
            self.lin = torch.nn.Linear(8, 4)

        def forward(self, x):
            if x.mean() > 0:
                return self.lin(x) * 2
            return self.lin(x) - 10

    m = Branch().eval()
    rng = _rng(27)
    x = np.abs(rng.standard_normal((2, 8))).astype(np.float32)
    return Built(m, [(x,), (-x,)], _torch_native(m), "torch eager", example=(x,),
                 calibration=[(x,), (-x,)])


def warp_ops(tmp: Path) -> Built:
    """grid_sample (bilinear, border padding) on a predicted affine grid, then cumsum and roll."""
    import torch
    import torch.nn.functional as F

    class Warp(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(9)
            self.theta = torch.nn.Linear(3 * 16 * 16, 6)
            with torch.no_grad():
                self.theta.weight.mul_(0.01)
                self.theta.bias.copy_(torch.tensor([0.9, 0.1, 0.0, -0.1, 0.9, 0.0]))

        def forward(self, img):
            t = self.theta(img.flatten(1)).view(-1, 2, 3)
            grid = F.affine_grid(t, list(img.shape), align_corners=False)
            w = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
            return torch.roll(torch.cumsum(w, dim=-1), shifts=3, dims=-2)

    m = Warp().eval()
    rng = _rng(28)
    probes = [(rng.standard_normal((1, 3, 16, 16)).astype(np.float32),) for _ in range(2)]
    return Built(m, probes, _torch_native(m), "torch eager", example=probes[0],
                 calibration=[(rng.standard_normal((1, 3, 16, 16)).astype(np.float32),)
                              for _ in range(8)])


def spectral(tmp: Path) -> Built:
    """|rfft| of a signal (a complex intermediate), then a Linear on the magnitudes."""
    import torch

    class Spectral(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(10)
            self.head = torch.nn.Linear(33, 4)

        def forward(self, signal):
            return self.head(torch.fft.rfft(signal, dim=-1).abs())

    m = Spectral().eval()
    rng = _rng(29)
    probes = [(rng.standard_normal((2, 64)).astype(np.float32),) for _ in range(2)]
    return Built(m, probes, _torch_native(m), "torch eager", example=probes[0],
                 calibration=[(rng.standard_normal((2, 64)).astype(np.float32),)
                              for _ in range(8)])


CASES: list[Case] = [
    Case("bert-cls", "BertForSequenceClassification, int64 ids + mask, fixed sequence 12",
         bert_cls, "text"),
    Case("bert-cls-dyn-export", "the same, torch.export with batch and sequence Dims",
         bert_cls_dyn_export, "text"),
    Case("bert-cls-dyn-onnx", "the same, ONNX (torch.onnx dynamo) with symbolic batch and sequence",
         bert_cls_dyn_onnx, "text"),
    Case("gpt2-lm", "GPT2LMHeadModel (GPT-2 small config, 2×64), use_cache=False, ids + mask "
         "by keyword through a wrapper (forward's 2nd parameter is past_key_values)", gpt2_lm, "text"),
    Case("roberta-encoder", "RobertaModel: last_hidden_state + pooler_output", roberta_encoder,
         "text"),
    Case("det-dict", "detection-like head → {boxes, scores}", det_dict, "heads"),
    Case("det-tuple", "detection-like head → (boxes, scores, top-5 values, top-5 int64 indices)",
         det_tuple, "heads"),
    Case("mlp-heads", "two-head MLP → {logits, offsets} (Linear/ReLU: full int8 on the Edge TPU)",
         mlp_heads, "heads"),
    Case("qdq-onnx", "QDQ int8 ONNX (onnxruntime quantize_static), int8, no calibration",
         qdq_onnx, "quantized"),
    Case("tflite-int8-io", "full-int8 TFLite, int8 input/output, int8, no calibration",
         tflite_int8_io, "quantized"),
    Case("tflite-int8-fio", "full-int8 TFLite, float input/output, int8, no calibration",
         tflite_int8_float_io, "quantized"),
    Case("keras-mnv3s", "keras.applications.MobileNetV3Small (96², 10 classes) object",
         keras_app, "keras"),
    Case("keras-mnv3s-file", "the same saved as .keras", keras_file, "keras"),
    Case("keras-mnv3s-savedmodel", "the same exported as a SavedModel", keras_savedmodel, "keras"),
    Case("ir-fp16", "OpenVINO IR by ov.save_model defaults (f16 weights): the BERT classifier",
         ir_fp16_weights, "ir"),
    *[Case(n, what, _wheel_onnx(rel, 30 + i), "wheel-onnx")
      for i, (n, (rel, what)) in enumerate(WHEEL_ONNX.items())],
    Case("torch-cond", "torch.cond on a data-dependent predicate", torch_cond, "control-flow"),
    Case("py-branch", "a Python if on the data (torch.export refuses it)", py_branch,
         "control-flow"),
    Case("warp-ops", "affine_grid + grid_sample + cumsum + roll", warp_ops, "unusual-ops"),
    Case("spectral", "torch.fft.rfft magnitude (complex intermediate) + Linear", spectral,
         "unusual-ops"),
]
#: what building and running this corpus found in hal and fixed (each with a regression test);
#: the report lists them, since a run after the fixes no longer shows them
FIXED = (
    "openvino: every compile raised TypeError (pipeline.check_options called itself after an "
    "import renamed hal.plugin.check_options into its name) — backends/openvino/pipeline.py",
    "reference ONNX: a dynamic-sequence BERT ONNX raised a raw ValueError at run: onnx.reference's "
    "GatherElements fails when indices are smaller than data off the axis; a corrected operator "
    "(take_along_axis) — backends/reference/onnx_oracle.py, tests/test_onnx_oracle.py",
    "openvino: an IR saved by ov.save_model's defaults (f16-stored weights) with an embedding table "
    "was refused at fp32 ('Gather at f16 although INFERENCE_PRECISION_HINT=f32'): a layer that only "
    "moves stored weights into f32 computes nothing — backends/openvino/pipeline.py (MOVES), "
    "tests/test_front_door.py",
    "core: a full-int8 TFLite compiled at int8 without calibration was refused ('int8 (static) needs "
    "calibration data', which nothing would use): the tflite format now says it is pre-quantized, "
    "as a QDQ ONNX does — hal/formats/builtin.py, tests/test_front_door.py",
    "reference: a torch.export program exported with keyword inputs (how transformers models are "
    "exported) was refused ('kwarg keyword mismatch'); the program's module is called by position "
    "through its in_spec — backends/torch_common.py, backends/reference/pipeline.py, "
    "tests/test_front_door.py",
    "edgetpu: a 0-d output came back as a numpy scalar, which the core refuses as a plugin bug — "
    "backends/edgetpu/executable.py (tests/test_security_tflite.py's loop model)",
    "edgetpu, tflite-int8-fio (lost): a full-int8 TFLite with float input/output was refused as "
    "'not full-int8' unless allow_host_ops, and the predicted mapping put every op after the "
    "leading QUANTIZE on the CPU; its edge QUANTIZE/DEQUANTIZE only convert the model's own float "
    "I/O (edgetpu_compiler leaves just them on the CPU), so they no longer cut the partition and "
    "placement lists them on the host as io_conversion ops, which the core does not refuse — "
    "backends/edgetpu/graph.py (edge_conversions), hal/placement.py",
    "contract, tflite-int8-io: the same int8-I/O TFLite took float32 on edgetpu (hal quantized) "
    "and int8 on openvino; a given TFLite now takes and returns its own dtypes on edgetpu by "
    "default (options={'raw_io': False} asks for hal's float interface) — backends/edgetpu/backend.py",
    "edgetpu, bert-cls-dyn-export: a program exported with keyword inputs failed in the Edge TPU "
    "converter ('kwarg keyword mismatch'); positional/program_module/example_leaves moved into "
    "hal.plugin and the converter calls the program by position — hal/formats/torchexport.py",
    "reference, int8 of a static torch.export program: a size export specialised (a constant "
    "SymInt) was read as free, so the executable claimed any batch, its artifact did not load and "
    "the cache rebuilt it on every compile — hal/formats/torchexport.py (program_dim)",
    "front door: example inputs were positional only, so GPT2LMHeadModel(input_ids, "
    "attention_mask) bound the mask to past_key_values and the error did not say so; "
    "example_input may now be a dict (a tokenizer's output) that binds by name (an nn.Module is "
    "exported by keyword), and a failing positional binding names the parameters it landed on — "
    "hal/api.py (_bind), hal/formats/torchexport.py (export_by_name)",
    "core: the placement refusal named ops by whole TFLite tensor names hundreds of characters "
    "long; it names each by the end of its name and its type — hal/placement.py",
)
#: what the corpus found and hal does not fix yet (tests/test_front_door_corpus.py's KNOWN
#: expects the failing ones to fail exactly so)
OPEN = (
    "openvino, tflite-int8-fio (wrong, the runtime's): OpenVINO's own execution of an int8 TFLite "
    "differs from LiteRT's (26.7 dB on one probe; 23.7 dB at worst over 50 inputs); "
    "Core.read_model + compile_model called directly gives hal's answer bit for bit, and LiteRT "
    "is closer to the float Keras model (37-44 dB against OpenVINO's 24-35 dB over 50 inputs). "
    "hal keeps OpenVINO's answer and its executable's notes say it is not LiteRT's arithmetic "
    "(backends/openvino/convert.py); refusing would lose a cell that OpenVINO runs",
    "edgetpu, bert-cls-dyn-export: compiles now, but is refused at int8 because litert-torch's "
    "PT2E quantizer leaves 121 float tensors in BERT (ADD, BATCH_MATMUL, EMBEDDING_LOOKUP, MEAN, "
    "MUL, ...): the Edge TPU runs full-int8 models only",
)
#: the CI sample (tests/test_front_door_corpus.py, and this module without --full): a torch
#: model with dict outputs that every device here runs (the Edge TPU at int8), a pre-quantized
#: ONNX on two runtimes, and an ONNX file from a wheel; the text models cost a minute or more
#: each on the TPU emulation and the Edge TPU's converter, so they are in the full corpus only
SAMPLE = ("mlp-heads", "qdq-onnx", "ort-sigmoid")


# --- running a cell -------------------------------------------------------------------------
@dataclass
class Cell:
    case: str
    target: str
    #: the precision hal was asked for
    precision: str
    verdict: str
    #: the refusal's one-line message, what differs, or the raw exception
    message: str = ""
    #: for a refusal: "true", "false" (then the verdict is lost) or "unverified"; and why
    truth: str | None = None
    truth_why: str = ""
    #: the worst error over the probes: max|err|/max|native| (fp32) or SNR in dB (int8)
    metric: str = ""
    seconds: float = 0.0
    probes: str = ""
    #: the contract as this device's executable states it
    inputs: list[str] | None = None
    outputs: list[str] | None = None
    dtypes: list[str] | None = None
    tree: str | None = None
    notes: list[str] = field(default_factory=list)
    #: for a wrong cell: whether the backend's runtime called directly answers as hal does
    attribution: str = ""
    #: the probe a wrong cell failed on
    failed_probe: int | None = None


@dataclass
class CaseResult:
    case: Case
    cells: list[Cell]
    #: None when every compiled device agrees on the contract, else what differs
    structure: str | None = None
    build_error: str | None = None
    native: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.structure or self.build_error
                    or any(c.verdict in FAILING for c in self.cells))


def _float_in(x: np.ndarray, q: tuple[float, int] | None, want: str) -> np.ndarray:
    """The probe as the executable takes it: an int8 probe dequantized with the model's own
    input scale where the executable takes float (the Edge TPU's float interface), so that
    hal's quantizer gives back exactly the native int8 input."""
    if q is not None and np.dtype(want).kind == "f" and x.dtype.kind in "iu":
        s, z = q
        return ((x.astype(np.float32) - z) * s).astype(want)
    return x


def compare(got: list[np.ndarray], want: list[np.ndarray], tol: Tolerance,
            out_quant: list | None) -> tuple[str | None, float | None, float | None]:
    """(what differs or None, worst relative error, worst SNR) of hal's flat outputs
    against the native ones."""
    if len(got) != len(want):
        return f"{len(got)} outputs, the native runtime returns {len(want)}", None, None
    worst_rel, worst_snr = 0.0, float("inf")
    for j, (g, w) in enumerate(zip(got, want)):
        g, w = np.asarray(g), np.asarray(w)
        if g.shape != w.shape:
            return f"output {j}: shape {g.shape}, native {w.shape}", None, None
        q = out_quant[j] if out_quant and j < len(out_quant) else None
        if q is not None:  # quantized int8 outputs are compared as the values they stand for
            if w.dtype.kind in "iu":
                w = (w.astype(np.float64) - q[1]) * q[0]
            if g.dtype.kind in "iu":
                g = (g.astype(np.float64) - q[1]) * q[0]
        if g.dtype.kind in "iub" and w.dtype.kind in "iub":
            if tol.int_steps is None:
                continue
            d = int(np.abs(g.astype(np.int64) - w.astype(np.int64)).max()) if g.size else 0
            if d > tol.int_steps:
                return (f"output {j} ({w.dtype}): differs by {d} (allowed {tol.int_steps}) at "
                        f"{int((g != w).sum())}/{g.size} elements"), None, None
            continue
        g64, w64 = g.astype(np.float64), w.astype(np.float64)
        fin = np.isfinite(w64)
        if not np.array_equal(fin, np.isfinite(g64)):
            return f"output {j}: NaN/Inf where the native answer has none (or the reverse)", None, None
        if not fin.any():
            continue
        e = np.abs(g64[fin] - w64[fin])
        scale = max(float(np.abs(w64[fin]).max()), 1e-30)
        rel = float(e.max()) / scale
        noise = float((e ** 2).sum())
        snr = float("inf") if noise == 0 else 10 * np.log10(max(float((w64[fin] ** 2).sum()), 1e-300)
                                                             / noise)
        worst_rel, worst_snr = max(worst_rel, rel), min(worst_snr, snr)
        if tol.max_rel is not None and rel > tol.max_rel:
            return f"output {j}: max|err| {rel:.2e}·max|native| > {tol.max_rel:g}", rel, snr
        if tol.min_snr_db is not None and snr < tol.min_snr_db:
            return f"output {j}: SNR {snr:.1f} dB < {tol.min_snr_db:g} dB", rel, snr
    return None, worst_rel, worst_snr


class _Natives:
    """The native answers per probe, computed once per case (every device compares with them)."""

    def __init__(self, built: Built):
        self.built = built
        self.cache: dict[int, Any] = {}

    def __call__(self, i: int):
        if i not in self.cache:
            try:
                with quiet():
                    self.cache[i] = ("ok", flatten(self.built.native(self.built.probes[i])))
            except Exception as e:  # noqa: BLE001
                self.cache[i] = ("error", one_line(e))
        return self.cache[i]


def _precision_for(built: Built, device) -> tuple[str, str, list | None]:
    """(precision to ask, tolerance key, calibration): a float model at fp32; on a device with
    int8 only, at int8 calibrated on the case's samples (judged against the float run)."""
    offers = tuple(device.precisions)
    if built.precision == "fp32" and "fp32" not in offers and "int8" in offers:
        return "int8", "int8<fp32", built.calibration
    return built.precision, built.precision, None


def run_cell(case: Case, built: Built, natives: _Natives, device, errors=None) -> tuple[Cell, Any]:
    """Compile ``built`` for ``device`` through hal's front door and judge every probe."""
    import hal

    precision, mode, calib = _precision_for(built, device)
    tol = TOLERANCES[mode]
    cell = Cell(case.name, device.target, precision, "match")
    t0 = time.perf_counter()
    try:
        with quiet():
            exe = hal.compile(built.model, device.target, precision=precision,
                              example_input=built.example, calibration=calib, cache=False)
    except hal.HalError as e:
        cell.verdict, cell.message = "refused", one_line(e)
        cell.notes.append(f"stage: {getattr(e, 'hal_stage', None) or 'compile'}")
        cell.seconds = time.perf_counter() - t0
        return cell, None
    except Exception as e:  # noqa: BLE001
        cell.verdict, cell.message = "lost", "raw exception at compile: " + one_line(e)
        cell.notes.append(traceback.format_exc(limit=-3).strip().splitlines()[-3].strip())
        cell.seconds = time.perf_counter() - t0
        return cell, None
    info = exe.info
    cell.inputs = [s.name for s in info.inputs]
    cell.outputs = [s.name for s in info.outputs]
    cell.dtypes = [str(np.dtype(s.dtype)) if s.dtype != "bfloat16" else s.dtype for s in info.inputs]
    cell.notes += [n for n in info.notes if "dimension" in n.lower()]
    worst_rel, worst_snr, ran = 0.0, float("inf"), []
    for i, probe in enumerate(built.probes):
        status, want = natives(i)
        shape = "×".join(str(d) for d in probe[0].shape)
        if status != "ok":
            cell.notes.append(f"probe {i} ({shape}): the native runtime fails ({want}); not judged")
            continue
        xs = [_float_in(np.asarray(x), (built.in_quant or [None] * len(probe))[k]
                        if k < len(built.in_quant or []) else None,
                        info.inputs[k].dtype if k < len(info.inputs) else "float32")
              for k, x in enumerate(probe)]
        try:
            out = exe(*xs)
        except hal.HalError as e:
            if cell.verdict == "match":
                cell.verdict, cell.message = "refused", f"probe {i} ({shape}): " + one_line(e)
                cell.notes.append("stage: run")
            ran.append(f"{shape} refused")
            continue
        except Exception as e:  # noqa: BLE001
            cell.verdict, cell.message = "lost", f"raw exception at run, probe {i} ({shape}): " \
                + one_line(e)
            break
        if i == 0 or cell.tree is None:
            cell.tree = structure(out)
        diff, rel, snr = compare(flatten(out), want, tol, built.out_quant)
        if rel is not None:
            worst_rel = max(worst_rel, rel)
        if snr is not None:
            worst_snr = min(worst_snr, snr)
        if diff is not None:
            cell.verdict, cell.message = "wrong", f"probe {i} ({shape}): {diff}"
            cell.failed_probe = i
            break
        ran.append(f"{shape} ✓")
    cell.probes = ", ".join(ran)
    if mode == "fp32":
        cell.metric = f"{worst_rel:.1e}"
    elif worst_snr != float("inf"):
        cell.metric = f"{worst_snr:.0f} dB"
    else:
        cell.metric = "exact"
    cell.seconds = time.perf_counter() - t0
    return cell, exe


# --- the backend's own runtime, called directly ---------------------------------------------
@dataclass
class Direct:
    """What a backend's runtime does with the model when called without hal: ``runs`` (with
    ``run``, one probe → flat outputs), ``cannot`` (it cannot take the model) or ``unknown``
    (no direct call applies); ``why`` says which call was made."""

    status: str
    why: str
    run: Callable[[tuple], list] | None = None


def _direct_reference(built: Built, precision: str) -> Direct:
    if built.kind == "torch":
        return Direct("runs", "PyTorch eager (the native answer itself)",
                      lambda xs: flatten(built.native(xs)))
    if built.kind == "onnx":
        import onnx
        from onnx.reference import ReferenceEvaluator

        try:
            ev = ReferenceEvaluator(onnx.load(str(built.model)))
        except Exception as e:  # noqa: BLE001
            return Direct("cannot", f"onnx.reference cannot load it ({one_line(e, 160)})")
        g = ev.proto_.graph
        names = [i.name for i in g.input if i.name not in {t.name for t in g.initializer}]
        return Direct("runs", "onnx.reference", lambda xs: flatten(ev.run(None, dict(zip(names, xs)))))
    return Direct("cannot", f"PyTorch and onnx.reference read no {built.kind}")


def _direct_openvino(built: Built, precision: str) -> Direct:
    import openvino as ov

    core = ov.Core()
    try:
        with quiet():
            if built.kind in ("onnx", "openvino.ir", "tflite"):
                m, how = core.read_model(str(built.model)), "Core.read_model"
            elif built.kind == "savedmodel":
                m, how = ov.convert_model(str(built.model)), "ov.convert_model(SavedModel)"
            elif built.kind == "keras":
                m, how = ov.convert_model(built.meta["keras"]), "ov.convert_model(keras model)"
            else:
                import torch

                if isinstance(built.model, torch.export.ExportedProgram):
                    m, how = ov.convert_model(built.model), "ov.convert_model(ExportedProgram)"
                else:
                    m = ov.convert_model(built.model, example_input=tuple(
                        torch.from_numpy(np.asarray(x)) for x in built.probes[0]))
                    how = "ov.convert_model(module, example_input)"
            cfg = {"INFERENCE_PRECISION_HINT": "f32"} if precision == "fp32" else {}
            c = core.compile_model(m, "CPU", cfg)
    except Exception as e:  # noqa: BLE001
        return Direct("cannot", f"OpenVINO itself cannot convert or compile it ({one_line(e, 160)})")

    def run(xs):
        res = c(list(xs))
        return [np.asarray(res[o]) for o in c.outputs]
    return Direct("runs", f"OpenVINO called directly ({how}, compile_model CPU)", run)


def _direct_tpu(built: Built, precision: str) -> Direct:
    if built.kind in ("onnx", "tflite", "openvino.ir"):
        return Direct("cannot", f"TensorFlow/XLA reads no {built.kind}")
    if built.kind in ("keras", "savedmodel"):
        import tensorflow as tf

        if built.kind == "keras":
            m = built.meta["keras"]
            fn = tf.function(lambda x: m(x, training=False), jit_compile=True)
        else:
            sig = tf.saved_model.load(str(built.model)).signatures["serving_default"]
            name = list(sig.structured_input_signature[1])[0]
            fn = tf.function(lambda x: sig(**{name: x}), jit_compile=True)
        return Direct("runs", "tf.function(jit_compile=True) on XLA:CPU",
                      lambda xs: flatten(fn(tf.constant(xs[0]))))
    import torch

    if not isinstance(built.model, torch.export.ExportedProgram):
        try:
            with quiet():
                torch.export.export(built.model, tuple(torch.from_numpy(np.asarray(x))
                                                       for x in built.probes[0]))
        except Exception as e:  # noqa: BLE001
            return Direct("cannot", "torch.export (where every XLA lowering of a torch model starts) "
                                    f"refuses it ({one_line(e, 160)})")
    return Direct("unknown", "torch.export captures it; its StableHLO lowering was not tried by hand")


def _direct_edgetpu(built: Built, precision: str) -> Direct:
    if built.kind == "tflite":
        return Direct("runs", "LiteRT's interpreter", lambda xs: flatten(built.native(xs)))
    if built.kind in ("onnx", "openvino.ir"):
        return Direct("cannot", f"the Edge TPU toolchain (TFLite) has no converter from {built.kind}")
    if built.kind in ("keras", "savedmodel"):
        return Direct("unknown", "TFLiteConverter's full-int8 conversion was not tried by hand")
    try:
        import litert_torch
        import torch

        module = built.meta.get("module", built.model)
        with quiet():
            litert_torch.convert(module.eval(), tuple(torch.from_numpy(np.asarray(x))
                                                      for x in built.probes[0]))
    except Exception as e:  # noqa: BLE001
        return Direct("cannot", f"litert_torch.convert (float) refuses it too ({one_line(e, 160)})")
    return Direct("unknown", "litert_torch converts the float model; its int8 quantization was not "
                             "tried by hand")


DIRECT = {"reference": _direct_reference, "openvino": _direct_openvino, "tpu": _direct_tpu,
          "edgetpu": _direct_edgetpu}


def direct(backend: str, built: Built, precision: str) -> Direct:
    fn = DIRECT.get(backend)
    if fn is None:
        return Direct("unknown", f"no direct call of {backend}'s runtime is known here")
    try:
        return fn(built, precision)
    except Exception as e:  # noqa: BLE001
        return Direct("unknown", f"the direct call itself failed ({one_line(e, 160)})")


def judge_refusal(cell: Cell, built: Built, device, natives: _Natives) -> None:
    """Is the refusal true? Sets ``cell.truth``; a false one makes the cell lost."""
    offers = tuple(device.precisions)
    if cell.precision not in offers:
        cell.truth, cell.truth_why = "true", f"the device offers {', '.join(offers)} only"
        return
    if "stage: run" in cell.notes and "Fix:" in cell.message \
            and any("declares a free size" in n for n in cell.notes):
        cell.truth, cell.truth_why = "true", ("a size the executable does not take: the compile "
                                              "notes said which free dimension this backend fixes "
                                              "(docs/architecture.md, Shapes) and the error names "
                                              "the fix")
        return
    d = direct(device.backend, built, cell.precision)
    if d.status == "runs":
        tol = TOLERANCES["fp32" if cell.precision == "fp32" else "int8"]
        try:
            for i, probe in enumerate(built.probes):
                status, want = natives(i)
                if status != "ok":
                    continue
                with quiet():
                    diff, _, _ = compare(d.run(probe), want, tol, built.out_quant)
                if diff is not None:
                    cell.truth, cell.truth_why = "true", f"{d.why} answers probe {i} wrongly ({diff})"
                    return
        except Exception as e:  # noqa: BLE001
            cell.truth, cell.truth_why = "true", f"{d.why} fails to run it ({one_line(e, 160)})"
            return
        cell.truth, cell.truth_why = "false", f"{d.why} runs it and matches on every probe"
        cell.verdict, cell.message = "lost", "false refusal: " + cell.message
    elif d.status == "cannot":
        cell.truth, cell.truth_why = "true", d.why
    else:
        cell.truth, cell.truth_why = "unverified", d.why


#: hal's answer against the backend's runtime called directly: hal adds nothing to the
#: runtime's arithmetic, so the two agree to rounding (the same kernels: usually exactly)
SAME_RUNTIME = Tolerance(1e-5, None, 0, "hal against its backend's runtime called directly")


def attribute(cell: Cell, built: Built, device, exe, probe_index: int) -> None:
    """For a wrong cell: is the difference the backend runtime's own (the runtime called
    directly gives hal's answer) or hal's? Recorded in ``cell.attribution``."""
    d = direct(device.backend, built, cell.precision)
    if d.status != "runs":
        cell.attribution = f"not attributed: {d.why}"
        return
    probe = built.probes[probe_index]
    xs = [_float_in(np.asarray(x), (built.in_quant or [None] * len(probe))[k]
                    if k < len(built.in_quant or []) else None, exe.info.inputs[k].dtype)
          for k, x in enumerate(probe)]
    try:
        with quiet():
            mine, theirs = flatten(exe(*xs)), d.run(probe)
    except Exception as e:  # noqa: BLE001
        cell.attribution = f"not attributed: {d.why} fails ({one_line(e, 160)})"
        return
    diff, _, _ = compare(mine, theirs, SAME_RUNTIME, built.out_quant)
    if diff is None:
        cell.attribution = (f"the runtime's: {d.why} gives hal's answer (within "
                            f"{SAME_RUNTIME.max_rel:g}) on probe {probe_index}")
    else:
        cell.attribution = f"hal's: {d.why} answers otherwise ({diff})"


# --- a case on every device -----------------------------------------------------------------
def contract_of(c: Cell) -> dict:
    return {"input names": c.inputs, "output names": c.outputs, "input dtypes": c.dtypes,
            "structure": c.tree}


def check_structure(cells: list[Cell]) -> str | None:
    """What differs between the devices that compiled the case, or None."""
    done = [c for c in cells if c.inputs is not None]
    if len(done) < 2:
        return None
    diffs = []
    for key in ("input names", "output names", "input dtypes", "structure"):
        seen: dict[str, list[str]] = {}
        for c in done:
            v = contract_of(c)[key]
            if v is None:
                continue
            seen.setdefault(str(v), []).append(c.target)
        if len(seen) > 1:
            diffs.append(f"{key}: " + "; ".join(f"{', '.join(t)} → {v}" for v, t in seen.items()))
    return " | ".join(diffs) or None


def run_case(case: Case, devices: list, on_cell=None) -> CaseResult:
    with tempfile.TemporaryDirectory(prefix=f"hal-front-door-{case.name}-") as d:
        try:
            with quiet():
                built = case.build(Path(d))
        except Exception as e:  # noqa: BLE001
            return CaseResult(case, [], build_error=one_line(e))
        natives = _Natives(built)
        status, what = natives(0)
        if status != "ok":
            return CaseResult(case, [], build_error=f"the native runtime fails on the example: {what}",
                              native=built.native_name)
        cells = []
        for dev in devices:
            cell, exe = run_cell(case, built, natives, dev)
            if cell.verdict == "refused":
                judge_refusal(cell, built, dev, natives)
            elif cell.verdict == "wrong" and cell.failed_probe is not None:
                attribute(cell, built, dev, exe, cell.failed_probe)
            cells.append(cell)
            if on_cell:
                on_cell(cell)
        return CaseResult(case, cells, structure=check_structure(cells), native=built.native_name)


def corpus_devices(targets: list[str] | None = None) -> list:
    """The available devices, or the named ones. A router (``openvino:AUTO``, ``cuda:*``:
    ``Device.routes_to``) is left out by default: it dispatches to devices that are columns
    already."""
    import hal

    devs = [d for d in hal.devices() if d.available]
    if targets:
        by = {d.target: d for d in devs}
        missing = [t for t in targets if t not in by]
        if missing:
            raise hal.UsageError(f"not available here: {', '.join(missing)}",
                                 f"pick from {', '.join(by)}")
        return [by[t] for t in targets]
    return [d for d in devs if not d.routes_to]


def select(full: bool, names: list[str] | None = None) -> list[Case]:
    if names:
        by = {c.name: c for c in CASES}
        unknown = [n for n in names if n not in by]
        if unknown:
            raise KeyError(f"unknown case(s) {unknown}; cases: {', '.join(by)}")
        return [by[n] for n in names]
    return list(CASES) if full else [c for c in CASES if c.name in SAMPLE]


def run(cases: list[Case], devices: list, on_cell=None) -> list[CaseResult]:
    return [run_case(c, devices, on_cell) for c in cases]


# --- reports --------------------------------------------------------------------------------
def counts(results: list[CaseResult]) -> dict[str, dict[str, int]]:
    """verdict counts per device (and "all")."""
    out: dict[str, dict[str, int]] = {}
    for r in results:
        for c in r.cells:
            for key in (c.target, "all"):
                out.setdefault(key, dict.fromkeys(VERDICTS, 0))[c.verdict] += 1
    return out


def _cell_text(c: Cell) -> str:
    if c.verdict == "match":
        return f"✓ {c.metric}"
    if c.verdict == "refused":
        return {"true": "refused", "unverified": "refused?"}.get(c.truth or "", "refused")
    return "✗ " + c.verdict


def rich_table(results: list[CaseResult], devices: list):
    from rich.table import Table

    t = Table(title="hal front door: each model through hal.compile vs its native runtime",
              show_lines=False)
    t.add_column("case", no_wrap=True)
    t.add_column("native")
    for d in devices:
        t.add_column(d.target, no_wrap=True)
    t.add_column("contract")
    style = {"match": "green", "wrong": "red", "lost": "red bold", "refused": "yellow"}
    for r in results:
        if r.build_error:
            t.add_row(r.case.name, "[red]build failed[/]", *["" for _ in devices], r.build_error[:60])
            continue
        by = {c.target: c for c in r.cells}
        row = []
        for d in devices:
            c = by.get(d.target)
            row.append("" if c is None else f"[{style[c.verdict]}]{_cell_text(c)}[/]")
        t.add_row(r.case.name, r.native, *row,
                  "[red]✗ differs[/]" if r.structure else ("same" if sum(
                      c.inputs is not None for c in r.cells) > 1 else "–"))
    return t


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(results: list[CaseResult], devices: list, elapsed_s: float, full: bool) -> str:
    import hal

    cn = counts(results)
    lines = ["# hal front door: foreign models vs their native runtimes", "",
             f"`python -m conformance.front_door{' --full' if full else ''}` — "
             f"{len(results)} cases × {len(devices)} devices, {sum(len(r.cells) for r in results)} "
             f"cells in {elapsed_s:.0f} s (hal {hal.__version__}).", "",
             "Each model is compiled with `hal.compile(..., cache=False)` on every device and its "
             "answer compared with the native runtime called directly on the same inputs. A "
             "refusal is judged true or false by calling that backend's own runtime on the model "
             "(see `conformance/front_door.py`); a false refusal counts as lost.", "",
             "## Counts", "", "| device | " + " | ".join(VERDICTS) + " |",
             "|---|" + "---:|" * len(VERDICTS)]
    for key in [d.target for d in devices] + ["all"]:
        row = cn.get(key, dict.fromkeys(VERDICTS, 0))
        lines.append(f"| {key} | " + " | ".join(str(row[v]) for v in VERDICTS) + " |")
    bad = [r for r in results if r.structure]
    lines += ["", f"Contract across devices (input/output names, input dtypes, output structure): "
              f"{len(bad)} case(s) differ" + (":" if bad else "."), ""]
    for r in bad:
        lines.append(f"- **{r.case.name}**: {_md_escape(r.structure)}")
    broken = [r for r in results if r.build_error]
    for r in broken:
        lines.append(f"- **{r.case.name}** could not be built here: {_md_escape(r.build_error)}")
    failing = [(r, c) for r in results for c in r.cells if c.verdict in FAILING]
    lines += ["", "## Failures", ""]
    if not failing and not bad:
        lines.append("None.")
    for r, c in failing:
        lines.append(f"- **{r.case.name}** on {c.target} ({c.verdict}): {_md_escape(c.message)}"
                     + (f" — refusal {c.truth}: {_md_escape(c.truth_why)}" if c.truth else "")
                     + (f" — attribution: {_md_escape(c.attribution)}" if c.attribution else ""))
    unverified = [(r, c) for r in results for c in r.cells if c.truth == "unverified"]
    if unverified:
        lines += ["", "## Refusals no direct call could check", "",
                  "Each is recorded with its message; the direct call named says how far the "
                  "check went.", ""]
        for r, c in unverified:
            lines.append(f"- **{r.case.name}** on {c.target}: {_md_escape(c.message[:300])} — "
                         f"{_md_escape(c.truth_why)}")
    lines += ["", "## Found by this corpus and fixed in hal", ""]
    lines += [f"- {_md_escape(f)}" for f in FIXED]
    lines += ["", "## Found by this corpus and not fixed here", ""]
    lines += [f"- {_md_escape(f)}" for f in OPEN]
    lines += ["", "## Tolerances", ""]
    for k, t in TOLERANCES.items():
        lines.append(f"- `{k}`: {t.why}")
    lines += ["", "## Cells", "",
              "| case | device | precision | verdict | metric | probes / message |",
              "|---|---|---|---|---|---|"]
    for r in results:
        for c in r.cells:
            msg = c.probes if c.verdict == "match" else c.message
            if c.verdict in ("refused", "lost") and c.truth:
                msg += f" — **refusal {c.truth}**: {c.truth_why}"
            if c.attribution:
                msg += f" — **attribution**: {c.attribution}"
            lines.append(f"| {r.case.name} | {c.target} | {c.precision} | {c.verdict} | {c.metric} "
                         f"| {_md_escape(msg)} |")
    lines += ["", "## Cases", "", "| case | group | what | native runtime |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.case.name} | {r.case.group} | {_md_escape(r.case.what)} | {r.native} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance.front_door",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="every case (default: the CI sample)")
    ap.add_argument("--md", type=Path, help="write the markdown summary here")
    ap.add_argument("--targets", help="comma-separated targets (default: every available device)")
    ap.add_argument("--cases", help="comma-separated case names (default: the sample or --full)")
    a = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from rich.console import Console

    con = Console()
    if not con.is_terminal:
        con.width = max(con.width, 150)  # logs: do not squeeze the table
    devices = corpus_devices(a.targets.split(",") if a.targets else None)
    cases = select(a.full, a.cases.split(",") if a.cases else None)
    t0 = time.perf_counter()

    def on_cell(c: Cell) -> None:
        extra = c.metric if c.verdict == "match" else (c.message[:150] + (
            f" [{c.truth} refusal: {c.truth_why[:100]}]" if c.truth else "")
            + (f" [{c.attribution[:150]}]" if c.attribution else ""))
        con.print(f"{c.seconds:6.1f}s {c.case:<24} {c.target:<18} {c.verdict:<8} {extra}",
                  highlight=False, markup=False, soft_wrap=True)

    results = []
    for case in cases:
        r = run_case(case, devices, on_cell)
        if r.build_error:
            con.print(f"{case.name}: not built: {r.build_error}", highlight=False, markup=False,
                      soft_wrap=True)
        results.append(r)
    elapsed = time.perf_counter() - t0
    con.print(rich_table(results, devices))
    cn = counts(results).get("all", dict.fromkeys(VERDICTS, 0))
    con.print(" · ".join(f"{v} {cn[v]}" for v in VERDICTS)
              + f" · contract differs in {sum(bool(r.structure) for r in results)} case(s)"
              + f" · {elapsed:.0f} s")
    for r in results:
        if r.structure:
            con.print(f"[red]contract differs[/] {r.case.name}: {r.structure}", highlight=False)
    if a.md:
        a.md.parent.mkdir(parents=True, exist_ok=True)
        a.md.write_text(markdown(results, devices, elapsed, a.full))
        con.print(f"wrote {a.md}")
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
