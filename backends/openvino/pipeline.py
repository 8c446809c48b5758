"""Precision → OpenVINO properties, NNCF quantization, and the post-compile check.

The CPU plugin on AMX / avx512_bf16 machines compiles at bf16 unless told
otherwise, so every precision sets ``INFERENCE_PRECISION_HINT`` explicitly and
:func:`verify` then reads the *runtime* graph of the compiled model: a request
for fp32 that the plugin ran partly at bf16 is a CompileError, not a surprise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import io
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from hal import CompileError, Device, InvalidInputError, UnsupportedError, UsageError
from hal.plugin import Option, host_cores, mapping
from hal.plugin import check_options as check_declared

from .convert import prequantized, short
from .devices import host_vnni, kind_of

HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32", "int8-dynamic": "f32"}
_YES_NO = ("YES", "NO", True, False, "True", "False", "true", "false")
#: the OpenVINO properties a user may set through ``options={"config": {...}}``: an
#: allow-list, checked for the caller's options and for an artifact's alike. Nothing
#: that names a path (CACHE_DIR, WEIGHTS_PATH), a nested property set
#: (DEVICE_PROPERTIES), a cache or load mode, or what hal itself sets
#: (INFERENCE_PRECISION_HINT, PERF_COUNT) can pass.
CONFIG = {
    "PERFORMANCE_HINT": Option("latency or throughput tuning",
                               choices=("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")),
    "PERFORMANCE_HINT_NUM_REQUESTS": Option("requests the hint tunes for", (int, str), min=0, max=1024,
                                            check=lambda v: _digits(v, 1024)),
    "NUM_STREAMS": Option("parallel streams", (int, str), min=1, max=host_cores,
                          check=lambda v: None if v in ("AUTO", "NUMA") else _digits(v, host_cores())),
    "INFERENCE_NUM_THREADS": Option("threads (0: the plugin decides)", (int, str), min=0, max=host_cores,
                                    check=lambda v: _digits(v, host_cores())),
    "ENABLE_CPU_PINNING": Option("pin threads to cores", (bool, str), choices=_YES_NO),
    "ENABLE_HYPER_THREADING": Option("use SMT siblings", (bool, str), choices=_YES_NO),
    "SCHEDULING_CORE_TYPE": Option("core type on hybrid CPUs",
                                   choices=("ANY_CORE", "PCORE_ONLY", "ECORE_ONLY")),
    "EXECUTION_MODE_HINT": Option("performance or accuracy", choices=("PERFORMANCE", "ACCURACY")),
    "MODEL_PRIORITY": Option("priority among models on a device", choices=("LOW", "MEDIUM", "HIGH")),
    "CPU_DENORMALS_OPTIMIZATION": Option("flush denormals to zero", (bool, str), choices=_YES_NO),
}
_NNCF = {
    "preset": Option("nncf.QuantizationPreset", choices=("performance", "mixed", "PERFORMANCE", "MIXED")),
    "model_type": Option("nncf.ModelType", choices=("transformer", "TRANSFORMER")),
    "fast_bias_correction": Option("fast bias correction", bool),
    "overflow_fix": Option("nncf OverflowFix (default: enable on a CPU without VNNI, NNCF's "
                           "first_layer_only elsewhere)",
                           choices=("enable", "disable", "first_layer_only")),
}


def _digits(v, hi: int) -> str | None:
    """An integer property may also be given as its decimal text (OpenVINO's own form)."""
    if isinstance(v, str) and not (v.isdigit() and int(v) <= hi):
        return f"is {v[:20]!r}, not a whole number up to {hi}"
    return None


OPTIONS = {
    "config": Option("extra OpenVINO compile properties, e.g. {'NUM_STREAMS': 2}; allowed: "
                     + ", ".join(CONFIG), dict, check=mapping(CONFIG, "OpenVINO property", {
                         "INFERENCE_PRECISION_HINT": "choose the precision with precision=...",
                         "PERF_COUNT": "Executable.profile turns it on", "CACHE_DIR": "hal's compile cache "
                         "sets it (HAL_CACHE_DIR)"})),
    "dynamic_quantization_group_size": Option("int8-dynamic activation group size (default 32)",
                                              int, min=1, max=1 << 16),
    "nncf": Option("nncf.quantize arguments: preset, model_type, fast_bias_correction", dict,
                   check=mapping(_NNCF, "nncf argument")),
}
OPTION_KEYS = tuple(OPTIONS)
#: runtime-graph layer types that do the arithmetic int8 is meant for
COMPUTE = {"Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution",
           "ConvolutionBackpropData"}


def check_options(options: dict[str, Any]) -> None:
    """The declaration above, for callers outside the core's own check."""
    check_declared("openvino", OPTIONS, options)


def config_for(precision: str, device: Device, options: dict[str, Any]) -> dict[str, str]:
    """The compile properties for ``precision`` on ``device`` (without CACHE_DIR)."""
    kind = kind_of(device.id)
    cfg: dict[str, str] = {"PERFORMANCE_HINT": "LATENCY"}
    if kind == "MYRIAD":
        cfg = {}  # fp16-only plugin: it has no precision hint to set
    elif precision in ("int8", "int8-dynamic") and "fp32" not in device.precisions:
        pass  # e.g. NPU: layers NNCF left in float run at the device's native fp16
    else:
        cfg["INFERENCE_PRECISION_HINT"] = HINTS[precision]
    if precision == "int8-dynamic":
        cfg["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(int(options.get("dynamic_quantization_group_size", 32)))
    cfg.update({k: _prop_text(v) for k, v in (options.get("config") or {}).items()})
    return cfg


def _prop_text(v) -> str:
    return ("YES" if v else "NO") if isinstance(v, bool) else str(v)


def with_cache(config: dict[str, str], cache_dir: Path | None) -> dict[str, str]:
    """Point OpenVINO's own model cache into hal's cache directory (``None``:
    no cache, nothing persistent is written), one sub-directory per set of
    properties: OpenVINO 2026.4's CPU cache key leaves out
    INFERENCE_PRECISION_HINT, so an fp32 compile of a model cached at f16 came
    back running f16 layers while reporting f32."""
    if cache_dir is None:
        return dict(config)
    tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    return {**config, "CACHE_DIR": str(Path(cache_dir) / "openvino" / tag)}


# --- quantization -----------------------------------------------------------------------
def _nncf():
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


def _quiet(fn, *args, **kwargs):
    """NNCF draws rich progress bars on stdout; a library call should not."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def check_calibration(ov_model, calibration) -> None:
    """Each sample has one array per input, of the input's shape and dtype: NNCF
    feeds float32 samples to an int8 input without a word (12x the error)."""
    from .compat import to_numpy_dtype

    specs = [(p.get_partial_shape(), i) for i, p in enumerate(ov_model.inputs)]
    dtypes = [to_numpy_dtype(p.get_element_type()) for p in ov_model.inputs]
    for n, sample in enumerate(calibration):
        if len(sample) != len(specs):
            raise InvalidInputError(f"calibration sample {n} has {len(sample)} array(s), "
                                    f"the model takes {len(specs)}", "pass one array per input")
        for a, (ps, i), dt in zip(sample, specs, dtypes):
            if a.dtype.name != dt:
                raise InvalidInputError(
                    f"calibration sample {n} input {i} is {a.dtype.name}, the model's input is {dt}",
                    f"pass calibration arrays of the model's input dtype ({dt}), preprocessed as "
                    "at run time")
            if ps.rank.is_static and (a.ndim != ps.rank.get_length() or any(
                    d.is_static and d.get_length() != s for d, s in zip(ps, a.shape))):
                raise InvalidInputError(
                    f"calibration sample {n} input {i} has shape {tuple(a.shape)}, the model "
                    f"takes {ps}", "pass calibration arrays shaped like the example inputs")


def quantize_int8(ov_model, calibration: list[tuple[np.ndarray, ...]], options,
                  device: Device) -> tuple[Any, str]:
    """Static int8 by NNCF post-training quantization on the caller's data.

    On a CPU without VNNI, NNCF's overflow fix goes on every layer: there the CPU
    plugin's u8×s8 kernels sum pairs of products in int16, which saturates, and NNCF's
    default fixes the first layer only (its docs: "inaccurate int8 results ... on
    non-VNNI machines"). Measured on such a host (AVX2 EPYC): conformance's linear.basic
    14.5 → 27.1 dB, conv_transpose2d 13.9 → 39.7 dB, multihead_attention 8.1 → 17.1 dB."""
    nncf = _nncf()
    check_calibration(ov_model, calibration)
    kw: dict[str, Any] = {}
    given = dict(options.get("nncf") or {})
    fix = given.pop("overflow_fix", None)
    why = ""
    runs_on = {kind_of(d) for d in (device.id, *(device.routes_to or ()))}  # AUTO may pick the CPU
    if fix is None and "CPU" in runs_on and host_vnni() is False:
        fix, why = "enable", ": this CPU has no VNNI"
    if fix is not None:
        from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters,
                                                            OverflowFix)

        kw["advanced_parameters"] = AdvancedQuantizationParameters(
            overflow_fix=getattr(OverflowFix, str(fix).upper()))
    for k, v in given.items():
        if k == "preset":
            kw[k] = getattr(nncf.QuantizationPreset, str(v).upper())
        elif k == "model_type":
            kw[k] = getattr(nncf.ModelType, str(v).upper())
        elif k == "fast_bias_correction":
            kw[k] = bool(v)
        else:
            raise UsageError(f"unknown nncf option {k!r}",
                             "use preset, model_type, fast_bias_correction or overflow_fix")
    try:
        q = _quiet(nncf.quantize, ov_model.clone(), nncf.Dataset(calibration, list),
                          subset_size=len(calibration), **kw)
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"nncf.quantize failed: {short(e)}",
                           "check the calibration data matches the model inputs") from None
    return q, (f"nncf.quantize (static int8, {len(calibration)} calibration sample(s)"
               + (f", overflow_fix={fix}{why}" if fix else "") + ")")


def compress_int8(ov_model, options) -> tuple[Any, str]:
    """int8-dynamic: int8 weights by ``nncf.compress_weights``; the CPU plugin
    then quantizes FullyConnected activations per call
    (``DYNAMIC_QUANTIZATION_GROUP_SIZE``)."""
    nncf = _nncf()
    try:
        q = _quiet(nncf.compress_weights, ov_model.clone(), mode=nncf.CompressWeightsMode.INT8_ASYM)
    except Exception as e:  # noqa: BLE001
        raise CompileError(f"nncf.compress_weights failed: {short(e)}", "use precision='int8'") from None
    g = int(options.get("dynamic_quantization_group_size", 32))
    return q, f"nncf.compress_weights (int8 weights) + CPU dynamic activation quantization (group {g})"


# --- the post-compile check -------------------------------------------------------------
def _tokens(v: str) -> list[str]:
    return [t for t in v.replace(",", " ").split() if t]


def runtime_layers(compiled) -> list[tuple[str, set[str], list[str]]] | None:
    """(layer type, precisions, original op names) per layer of the compiled
    runtime graph, or None where the plugin does not annotate it."""
    out = []
    try:
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            if "runtimePrecision" not in rt:
                continue
            layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
            precs = set(_tokens(rt["runtimePrecision"].astype(str)))
            if layer not in ("Const", "Input", "Output", "Parameter", "Result"):
                if "outputPrecisions" in rt:
                    precs |= set(_tokens(rt["outputPrecisions"].astype(str)))
            names = (rt["originalLayersNames"].astype(str).split(",")
                     if "originalLayersNames" in rt else [])
            out.append((layer, precs, [n for n in names if n]))
    except Exception:  # noqa: BLE001 - some plugins (e.g. MYRIAD) expose no runtime graph
        return None
    return out or None


def check_prequantized(ov_model, precision: str, device: Device) -> str | None:
    """A pre-quantized model runs int8 whatever the hint: refuse any other label;
    at int8 return what was found (hal then does not quantize it again)."""
    found = prequantized(ov_model)
    if found and precision != "int8":
        raise UnsupportedError(
            f"the model is already quantized ({found}): {device.target} runs it at int8, so "
            f"it cannot be compiled as {precision}",
            "use precision='int8' (no calibration needed: hal runs the model's own quantization "
            "and does not quantize it again)")
    return found


def f16_weights(ov_model) -> bool:
    """Weights stored f16 and decompressed to f32 (``ov.save_model``'s default
    ``compress_to_fp16=True``): f16 Constants feeding a decompression Convert."""
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() == "Convert" and \
                any(k.startswith("decompression") for k in op.get_rt_info().keys()):
            src = op.input(0).get_source_output().get_node()
            if src.get_type_name() == "Constant" and op.get_input_element_type(0).get_type_name() == "f16":
                return True
    return False


#: runtime layers that move values and compute nothing: one reading f16-stored weights and
#: giving f32 is exact whatever its kernel is called (the CPU plugin's Gather of an
#: embedding table saved by ov.save_model is ``ref_any_f16`` with f32 outputs)
MOVES = {"Gather", "GatherND", "GatherElements", "Reshape", "Transpose", "Concatenation", "Split",
         "StridedSlice", "Broadcast", "Tile"}


def _f32_compute(compiled) -> set[tuple[str, ...]]:
    """Runtime layers (by original names) that report f16 only for their weights: an
    f32 kernel with f32 outputs reading f16-stored weights it decompresses, or a layer
    that only moves those weights (:data:`MOVES`) into f32 outputs."""
    out = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "runtimePrecision" not in rt or "outputPrecisions" not in rt:
            continue
        kernel = rt["primitiveType"].astype(str).lower() if "primitiveType" in rt else ""
        layer = rt["layerType"].astype(str) if "layerType" in rt else op.get_type_name()
        if set(_tokens(rt["outputPrecisions"].astype(str))) == {"f32"} \
                and ("16" not in kernel or layer in MOVES) \
                and "f16" in _tokens(rt["runtimePrecision"].astype(str)):
            names = rt["originalLayersNames"].astype(str) if "originalLayersNames" in rt else ""
            out.add(tuple(n for n in names.split(",") if n))
    return out


def runtime_precisions(compiled) -> Counter | None:
    """(layer type, precision) counts of the compiled runtime graph, or None
    where the plugin does not annotate it."""
    layers = runtime_layers(compiled)
    return None if layers is None else Counter((l, p) for l, ps, _ in layers for p in ps)


def model_types(ov_model) -> dict[str, set[str]]:
    """Each op of the model (by friendly name) with the element types it takes
    and gives: where a model is fp16 or bf16 *by itself*."""
    out: dict[str, set[str]] = {}
    for op in ov_model.get_ordered_ops():
        ts = {op.get_output_element_type(i).get_type_name() for i in range(op.get_output_size())}
        ts |= {op.get_input_element_type(i).get_type_name() for i in range(op.get_input_size())}
        out[op.get_friendly_name()] = ts
    return out


def _lowered(layers, own: dict[str, set[str]] | None) -> list[tuple[str, str]]:
    """(layer, precision) of every layer at f16/bf16 that the model does not ask
    for itself. With ``own`` (the source model's op types), a layer is the
    model's when a source op fused into it takes or gives that type (a Convert
    from an f16 input fused with f32 arithmetic reports f16), or, for a layer
    of plugin-inserted ops only, when the model declares the type at all. A
    model with no f16/bf16 anywhere (the AMX bf16 case) is checked as before."""
    declared = {t for ts in (own or {}).values() for t in ts} & {"f16", "bf16"}
    out = []
    for layer, precs, names in layers:
        known = [n for n in names if own and n in own]
        for p in sorted(precs & {"f16", "bf16"}):
            if p in declared and (not known or any(p in own[n] for n in known)):
                continue
            out.append((layer, p))
    return out


def _hint(compiled) -> str | None:
    try:
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        return hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    except Exception:  # noqa: BLE001 - AUTO and MYRIAD do not report it
        return None


def verify(compiled, precision: str, device: Device, config: dict[str, str],
           model=None) -> dict[str, Any]:
    """Raise CompileError unless the compiled model really runs at ``precision``;
    return what was checked (for ``ExecutableInfo.extra``). With the source
    ``model``, f16/bf16 layers that the model itself is typed in (an fp16 ONNX
    model, a Cast to float16) are the model's, not a plugin down-conversion."""
    layers = runtime_layers(compiled)
    hint = _hint(compiled)
    facts: dict[str, Any] = {"inference_precision_hint": hint}
    if layers is None:
        facts["runtime_precisions"] = "not reported by this plugin"
        return facts
    if model is not None and f16_weights(model):
        # f16-stored weights are the model's, and a layer that only reads them computes f32
        facts["weights_stored"] = "f16 (decompressed to f32 at compile)"
        weights_only = _f32_compute(compiled)
        layers = [(l, ps - {"f16"} if tuple(names) in weights_only else ps, names)
                  for l, ps, names in layers]
    seen = Counter((l, p) for l, ps, _ in layers for p in ps)
    facts["runtime_precisions"] = sorted({p for _, p in seen})
    lowered = _lowered(layers, model_types(model) if model is not None else None)
    if model is not None and len(lowered) < sum(len(ps & {"f16", "bf16"}) for _, ps, _ in layers):
        facts["model_low_precision"] = "the model itself is typed f16/bf16 in places"
    low = {p for _, p in lowered}
    where = lambda ps: sorted({l for (l, p) in lowered if p in ps})[:6]  # noqa: E731
    fix = f"report it; or compile with precision='{'bf16' if 'bf16' in low else 'fp16'}' if that is acceptable"
    if precision in ("fp32", "int8", "int8-dynamic") and "INFERENCE_PRECISION_HINT" in config and low:
        raise CompileError(
            f"{device.target} compiled layers {where(low)} at {'/'.join(sorted(low))} although "
            f"INFERENCE_PRECISION_HINT=f32 was set (plugin reports {hint})", fix)
    want = {"fp16": "f16", "bf16": "bf16"}.get(precision)
    if want and want not in facts["runtime_precisions"]:
        raise UnsupportedError(f"{device.target} ran no layer at {want} for precision {precision} "
                               f"(runtime precisions: {facts['runtime_precisions']}), so it "
                               f"cannot honour {precision} for this model",
                               "use precision='fp32' for it on this device")
    if precision in ("int8", "int8-dynamic"):
        q = sorted({l for (l, p) in seen if p in ("i8", "u8") and l in COMPUTE})
        if precision == "int8-dynamic":
            q = [l for l in q if l == "FullyConnected"]
            group = compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")
            facts["dynamic_quantization_group_size"] = int(group)
            if int(group) <= 0:
                raise UsageError("int8-dynamic needs dynamic_quantization_group_size > 0",
                                 "leave it at the default (32)")
            if not q:
                raise UnsupportedError(
                    "int8-dynamic found no MatMul/Linear layer to quantize dynamically (the CPU "
                    "plugin applies dynamic activation quantization to FullyConnected layers only)",
                    "use precision='int8' with calibration data for convolution models")
        elif not q:
            raise UnsupportedError(f"{device.target} ran no compute layer at int8 after "
                                   f"quantization (runtime precisions: {facts['runtime_precisions']})",
                                   "int8 needs Convolution/MatMul layers NNCF can quantize; use fp32")
        facts["int8_layer_types"] = q
    return facts
