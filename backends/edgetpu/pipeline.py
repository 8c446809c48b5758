"""Models → full-int8 TFLite with the vendors' own tools, calibrated on the caller's data.

* torch: litert-torch's PT2E static quantization (``PT2EQuantizer`` with the
  symmetric per-channel config, ``prepare_pt2e`` / ``convert_pt2e``, then
  ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))``).
* Keras / SavedModel: ``TFLiteConverter`` with a representative dataset,
  ``TFLITE_BUILTINS_INT8`` only and int8 input/output.

Both freeze the batch size of the example inputs: the Edge TPU needs static shapes.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np

from hal import CompileError, ModelFormatError, NoConversionPath, UsageError
from hal.plugin import CompileOptions, Model, example_leaves, program_module, require, stage

from .devices import short
from .graph import mapping_report


@dataclass
class Converted:
    tflite: bytes
    path: list[str]
    notes: list[str]


def _need(*modules: str) -> None:
    require(modules, "converting this model for the Edge TPU", NoConversionPath, extra="edgetpu")


def example_arrays(model: Model, options: CompileOptions) -> tuple[np.ndarray, ...]:
    """The shapes the model is frozen at: the example inputs, else one row of
    the first calibration sample (batch 1)."""
    if model.example_input:
        return tuple(np.asarray(a) for a in model.example_input)
    if model.format == "torch.export" and model.value.example_inputs:  # keyword inputs too
        return tuple(t.detach().cpu().numpy() for t in example_leaves(model.value))
    if options.calibration:
        return tuple(np.asarray(a)[:1] for a in options.calibration[0])
    raise UsageError("the Edge TPU needs a fixed input shape", "pass example_input=(x,) to hal.compile")


def calibration_batches(options: CompileOptions, example: tuple[np.ndarray, ...]
                        ) -> list[tuple[np.ndarray, ...]]:
    """Calibration samples shaped exactly like the example inputs: a sample
    that stacks several example-sized batches is split along axis 0."""
    out = []
    for i, sample in enumerate(options.calibration or ()):
        if len(sample) != len(example):
            raise UsageError(f"calibration sample {i} has {len(sample)} input(s), the model takes "
                             f"{len(example)}", "pass one array per model input in each sample")
        check_dtypes(i, sample, [e.dtype.name for e in example])
        arrays = [np.ascontiguousarray(a, dtype=e.dtype if a.dtype.kind == e.dtype.kind == "f"
                                       else a.dtype) for a, e in zip(sample, example)]
        if all(a.shape == e.shape for a, e in zip(arrays, example)):
            out.append(tuple(arrays))
            continue
        b = example[0].shape[0] if example[0].ndim else 0
        if b and all(a.ndim == e.ndim and a.shape[1:] == e.shape[1:] and a.shape[0] % b == 0
                     and a.shape[0] == arrays[0].shape[0] for a, e in zip(arrays, example)):
            for s in range(0, arrays[0].shape[0], b):
                out.append(tuple(a[s:s + b] for a in arrays))
            continue
        raise UsageError(
            f"calibration sample {i} has shape(s) {[a.shape for a in arrays]}, the model is compiled "
            f"for {[e.shape for e in example]}",
            "pass calibration samples shaped like the example inputs (or stacks of them)")
    if not out:
        raise UsageError("int8 for the Edge TPU needs calibration data",
                         "pass calibration=[x1, x2, ...] (representative inputs)")
    return out


def check_dtypes(n: int, sample, dtypes: list[str]) -> None:
    """A calibration sample's arrays are of the model's input kinds: float samples
    for an int8 or int64 input would calibrate ranges on the wrong numbers (float
    widths may differ; they are cast)."""
    from hal import InvalidInputError

    for i, (a, dt) in enumerate(zip(sample, dtypes)):
        if a.dtype.name != dt and not (a.dtype.kind == "f" and np.dtype(dt).kind == "f"):
            raise InvalidInputError(f"calibration sample {n} input {i} is {a.dtype.name}, the "
                                    f"model's input is {dt}",
                                    f"pass calibration arrays of dtype {dt}, as the model takes them")


# --- torch ----------------------------------------------------------------------------
#: export variants tried in order; the first fully-int8 result wins.
_TORCH_VARIANTS = (
    ("torch.export (non-strict)", False, False),
    ("torch.export (strict)", True, False),  # unique source partitions for a reused module
    ("torch.export (non-strict) + core ATen decompositions", False, True),  # e.g. softmax → _softmax
    ("torch.export (strict) + core ATen decompositions", True, True),
)


def _pt2e_once(module, args, batches, strict: bool, decompose: bool) -> bytes:
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import (PT2EQuantizer,
                                                      get_symmetric_quantization_config)
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    with stage("export"):
        ep = torch.export.export(module, args, strict=strict)
        if decompose:
            ep = ep.run_decompositions()
    with stage("quantize"):
        prepared = prepare_pt2e(ep.module(), quantizer)
        with torch.no_grad():
            for sample in batches:
                prepared(*[torch.from_numpy(a) for a in sample])
        quantized = convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(quantized)
    with stage("convert"):
        edge = litert_torch.convert(quantized, args, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return bytes(edge.model_content())


def torch_to_int8(model: Model, options: CompileOptions) -> Converted:
    _need("torch", "litert_torch", "torchao")
    import copy

    import torch

    example = example_arrays(model, options)
    batches = calibration_batches(options, example)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in example)
    # a program exported with keyword inputs is called by position, like every model here
    module = (program_module(model.value) if model.format == "torch.export"
              else copy.deepcopy(model.value).eval())
    best: tuple[int, str, bytes] | None = None
    errors = []
    # an ExportedProgram's graph is already traced: a strict (dynamo) re-trace of its
    # module walks the same graph, so only the decomposition variants can differ
    variants = [v for v in _TORCH_VARIANTS if not (model.format == "torch.export" and v[1])]
    for label, strict, decompose in variants:
        try:
            with warnings.catch_warnings(), _quiet_root_logger():
                warnings.simplefilter("ignore")
                data = _pt2e_once(module, args, batches, strict, decompose)
        except Exception as e:  # noqa: BLE001 - try the next export variant
            if _raised_in(e, "_annotate_gru"):  # every variant runs the same annotator
                raise _gru_refused(e) from None
            errors.append(f"{label}: {short(e)}")
            continue
        floats = len(mapping_report(data).float_tensors)
        if best is None or floats < best[0]:
            best = (floats, label, data)
        if floats == 0:
            break
    if best is None:
        if any(_INT_OBSERVED.search(e) for e in errors):
            raise _integers_observed(errors[0])
        raise CompileError(f"litert-torch could not quantize/convert the model ({errors[0]})",
                           "make the model torch.export-able; see litert-torch's supported ops")
    notes = ([f"used {best[1]}; before it failed: " + "; ".join(e[:160] for e in errors)]
             if errors else [])
    return Converted(best[2], [best[1], "litert-torch PT2E static int8 (PT2EQuantizer, symmetric "
                               "per-channel)", "litert_torch.convert → TFLite"], notes)


#: an observer's kernel refusing an integer tensor ('"histogram_cpu" not implemented for 'Int'')
_INT_OBSERVED = re.compile(r"not implemented for '(Int|Long|Short|Char|Byte)'")


def _integers_observed(error: str) -> CompileError:
    """PT2EQuantizer annotates some ops (mul, add, cumsum's users) whatever their dtype; a
    model that computes integers in its graph (RoBERTa's position ids: ``cumsum(ids != pad)
    * mask``) gets an observer on an int tensor, which fails. Not an export problem."""
    return CompileError(
        "litert-torch's int8 quantizer (PT2EQuantizer) put an observer on an integer tensor "
        f"the model computes ({error}): it quantizes integer arithmetic as if it were float",
        "compute that integer tensor outside the model and pass it in (e.g. position_ids for "
        "a RoBERTa-style encoder), or run the model where it runs as it is ('cpu', "
        "'openvino:CPU')")


def _raised_in(e: BaseException, function: str) -> bool:
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name.startswith(function):
            return True
        tb = tb.tb_next
    return False


def _gru_refused(e: BaseException) -> CompileError:
    """litert-torch's GRU annotator reads the GRU's hidden-state input and both of its
    outputs (an IndexError, 'list index out of range', without them); with them,
    the GRU's gates stay float, which the Edge TPU does not run."""
    from hal.plugin import brief

    return CompileError(
        "litert-torch's int8 quantizer (PT2EQuantizer) cannot quantize this model's torch.nn.GRU "
        f"({brief(e, 80, typed=True)} in its GRU annotator, which needs the GRU called with an "
        "initial hidden state and both outputs used; even then the GRU's gates stay float)",
        "run it where GRU runs at int8 or float ('cpu', 'openvino:CPU'); for the Edge TPU, call "
        "it as `y, h = gru(x, h0)`, use both outputs, and compile with allow_host_ops=True "
        "to run the gates on the host CPU in float")


class _quiet_root_logger:
    """litert-torch warns through the root logger (e.g. about training mode) and
    prints a progress tree unless ``LITERT_TORCH_SHOW_PROGRESS`` says no."""

    KEY = "LITERT_TORCH_SHOW_PROGRESS"

    def __enter__(self):
        self.level, self.env = logging.root.level, os.environ.get(self.KEY)
        logging.root.setLevel(logging.ERROR)
        if self.env is None:
            os.environ[self.KEY] = "n"

    def __exit__(self, *exc):
        logging.root.setLevel(self.level)
        if self.env is None:
            os.environ.pop(self.KEY, None)


# --- TensorFlow -----------------------------------------------------------------------
def _tf_int8(converter, batches, what: str) -> bytes:
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.asarray(a) for a in s] for s in batches)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    try:
        return bytes(converter.convert())
    except Exception as e:  # noqa: BLE001 - the converter's errors are long MLIR dumps
        lines = [ln.strip() for ln in str(e).splitlines() if "error" in ln.lower()]
        raise CompileError(f"TFLiteConverter could not make a full-int8 model of the {what} "
                           f"({(lines or [short(e)])[0][:300]})",
                           "use only ops with int8 TFLite kernels (see the Edge TPU op list)") from None


def keras_to_int8(model: Model, options: CompileOptions) -> Converted:
    _need("tensorflow")
    import tensorflow as tf

    example = example_arrays(model, options)
    batches = calibration_batches(options, example)
    import keras

    m = model.value
    # re-wrap at a fixed batch: the Edge TPU needs static shapes
    fixed = [keras.Input(batch_shape=a.shape, dtype=str(a.dtype)) for a in example]
    try:
        outs = m(fixed[0] if len(fixed) == 1 else fixed)
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"the Keras model cannot be called at the example shape(s) "
                           f"{[a.shape for a in example]} ({short(e)})",
                           "pass example inputs the model accepts") from None
    conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(fixed, outs))
    return Converted(_tf_int8(conv, batches, "Keras model"),
                     ["keras.Model at the example shape", "TFLiteConverter full-int8 "
                      "(representative_dataset, TFLITE_BUILTINS_INT8, int8 I/O)"], [])


def saved_model_to_int8(model: Model, options: CompileOptions) -> Converted:
    _need("tensorflow")
    import tensorflow as tf

    example = example_arrays(model, options)
    batches = calibration_batches(options, example)
    from .. import tf_graph_guard

    loaded, _ = tf_graph_guard.load_saved_model(model.value, ModelFormatError,
                                                f"the SavedModel at {model.value}")
    sig = loaded.signatures.get("serving_default")
    if sig is None:
        raise CompileError(f"{model.value} has no serving_default signature",
                           "export it with a serving_default signature")
    names = list(sig.structured_input_signature[1])
    if len(names) != len(example):
        raise UsageError(f"the SavedModel takes {len(names)} input(s) {names}, got {len(example)}",
                         "pass one example/calibration array per input, in that order")
    fn = tf.function(lambda *xs: sig(**dict(zip(names, xs))))
    cf = fn.get_concrete_function(*[tf.TensorSpec(a.shape, tf.as_dtype(a.dtype)) for a in example])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([cf], loaded)
    return Converted(_tf_int8(conv, batches, "SavedModel"),
                     ["serving_default at the example shape", "TFLiteConverter full-int8 "
                      "(representative_dataset, TFLITE_BUILTINS_INT8, int8 I/O)"], [])


def to_int8(model: Model, options: CompileOptions) -> Converted:
    if model.format == "tflite":
        return Converted(bytes(model.value), ["given TFLite flatbuffer"], [])
    if model.format in ("torch.nn", "torch.export"):
        return torch_to_int8(model, options)
    if model.format == "keras":
        return keras_to_int8(model, options)
    if model.format == "savedmodel":
        return saved_model_to_int8(model, options)
    raise NoConversionPath(f"the edgetpu backend cannot take a {model.format} model",
                           "pass a torch module, a Keras model, a SavedModel or an int8 .tflite")
