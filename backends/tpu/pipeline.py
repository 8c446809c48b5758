"""Compile and load flows for the TPU backend (imports TensorFlow).

Every flow ends the same way: a tf.Module with one jit-compiled function per
batch bucket, run once on the example batch at compile time so that XLA
failures (unsupported ops, shape errors) surface here, not at the first call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from hal import (Device, DeviceUnavailableError, HalError, InvalidInputError, NoConversionPath,
                 UnsupportedError, UsageError)
from hal.plugin import CompileOptions, ExecutableInfo, Model, TensorSpec, require

from . import artifact as A
from . import programs as P
from .artifact import PROGRAM_DIR, SAVED
from .buckets import Buckets, batch_of, parse_options, plan
from .executable import TpuExecutable
from .artifact import Lowered

XLA_TARGET = {"hardware": "XLA:TPU (one core, TPUStrategy)", "emulated": "XLA:CPU (emulated TPU)"}


def _platform(device: Device) -> str:
    return "TPU" if device.kind == "hardware" else "CPU"


def full_fp32(device: Device, precision: str) -> list[str]:
    """A TPU runs float32 matmuls/convolutions with bfloat16 passes by default;
    TensorFlow's documented switch for full float32 is disabling TF32 (process-wide)."""
    if device.kind != "hardware" or precision != "fp32":
        return []
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)
    return ["fp32 on TPU: tf.config.experimental.enable_tensor_float_32_execution(False) "
            "(full-precision matmuls/convolutions, process-wide)"]


def _shapes(base: list[tuple[int, ...]], n: int, batched: bool) -> list[tuple[int, ...]]:
    return [((n,) + tuple(s[1:])) if batched else tuple(s) for s in base]


def _batched_outputs(outs: list[np.ndarray], n: int | None) -> bool:
    return n is not None and all(o.ndim >= 1 and o.shape[0] == n for o in outs)


def _specs_of(names: list[str], arrays: list[np.ndarray], batched: bool) -> list[TensorSpec]:
    return [TensorSpec.of(nm, a, dynamic_batch=batched) for nm, a in zip(names, arrays)]


def _first_run(program: P.Program, n: int, arrays: list[np.ndarray], what: str) -> list[np.ndarray]:
    try:
        return program(n, arrays)
    except HalError:
        raise
    except Exception as e:  # noqa: BLE001 - TF raises many error types from XLA
        raise P.xla_error(e, what) from None


def _info(backend, device: Device, options: CompileOptions, ins, outs, path: list[str],
          buckets: Buckets, notes: list[str]) -> ExecutableInfo:
    info = backend.executable_info(device, options.precision, ins, outs, conversion_path=path,
                          backend_options=dict(options.backend_options), notes=notes)
    info.extra.update(batch_buckets=list(buckets.sizes), xla_target=XLA_TARGET[device.kind])
    return info


def _bucket_note(buckets: Buckets) -> str:
    if not buckets.batched:
        return "XLA static shapes: compiled for the example shape only (no batch axis to pad)"
    return (f"XLA static shapes: compiled batch buckets {list(buckets.sizes)}; other batches are "
            f"padded up to the next bucket (padding sliced off), larger ones run in chunks of "
            f"{buckets.sizes[-1]}")


# --- torch ---------------------------------------------------------------------------------
def compile_torch(backend, model: Model, device: Device, options: CompileOptions, system) -> TpuExecutable:
    require(("litert_torch", "jaxlib"), "a torch model on the TPU (through litert-torch's StableHLO "
            "lowering, checked with jaxlib's MLIR parser)", NoConversionPath, extra="tpu")
    from . import torch_lower as TL

    opts = parse_options(options.backend_options)
    precision = options.precision
    module, args = TL.prepare(model, precision)
    arrays = [a.numpy() for a in args]
    b = batch_of(arrays)
    state: dict[str, Any] = {}
    first = b if b is not None else 0  # 0: the example shapes, no batch axis
    lowered = TL.lower(module, args, precision, (first,), state, first)
    batched = b is not None and all(len(s) >= 1 and s[0] == b for s in lowered[first].out_shapes)
    if opts.max_batch is not None and not batched:
        raise UsageError("this model has no batch axis shared by all inputs and outputs, so it "
                         "cannot be compiled for other batch sizes", "drop the max_batch option")
    sizes = plan(b, opts.max_batch) if batched else (first,)
    rest = tuple(n for n in sizes if n != first)
    if rest:
        try:
            lowered.update(TL.lower(module, args, precision, rest, state, first))
        except HalError as e:
            raise type(e)(f"compiling batch bucket(s) {list(rest)}: {e.what}", e.fix) from None
    buckets = Buckets(sizes, batched)
    weights = {k: TL.to_numpy(v) for k, v in state.items()}
    names = sorted(weights)
    in_names = [f"input_{i}" for i in range(len(arrays))]
    base = [tuple(a.shape) for a in arrays]
    dtypes = [str(a.dtype) for a in arrays]
    strategy = system.strategy if system is not None else None

    def specs(n: int):
        return P.tf_specs(_shapes(base, n, batched), dtypes, in_names)

    mod = P.torch_module(weights, strategy)
    program = P.Program(mod, {}, strategy)
    for n in sizes:
        program.add(n, P.call_module_fn(mod, lowered[n], names, specs(n)))
    outs = _first_run(program, first, arrays, "StableHLO module")
    path = ["torch.export (static shape per bucket)",
            "litert-torch StableHLO lowering (exported_program_to_mlir)"]
    if precision == "bf16":
        path.insert(1, "bf16 weights and compute in the program (float32 inputs/outputs)")
    else:
        path.insert(1, "fp32 (dots and convolutions at HIGHEST precision)")
    path.append(f"tf.function(jit_compile=True) → XlaCallModule → {XLA_TARGET[device.kind]}")
    meta = {"kind": "torch", "in_names": in_names, "in_shapes": [list(s) for s in base],
            "in_dtypes": dtypes, "param_names": names, "platform": _platform(device),
            "lowered": {str(n): low.to_dict() for n, low in lowered.items()}}
    info = _info(backend, device, options, _specs_of(in_names, arrays, batched),
                 _specs_of([f"output_{i}" for i in range(len(outs))], outs, batched),
                 path, buckets, [_bucket_note(buckets)])
    info.extra["stablehlo_bytes"] = len(lowered[first].text)
    return TpuExecutable(info, device, program, buckets, meta,
                         {n: low.text for n, low in lowered.items()})


# --- Keras and SavedModel ----------------------------------------------------------------------
def _static_inputs(names: list[str], shapes: list[tuple], dtypes: list[str],
                   example: tuple | None, what: str) -> list[np.ndarray]:
    """The example arrays, or zeros of the declared shapes (batch 1) when the
    shapes are static apart from the batch axis."""
    if example:
        if len(example) != len(names):
            raise InvalidInputError(f"the {what} takes {len(names)} input(s) {names}, "
                                    f"example_input has {len(example)}",
                                    "pass one example array per model input")
        return [np.ascontiguousarray(a) for a in example]
    out = []
    for name, shape, dt in zip(names, shapes, dtypes):
        if shape is None or any(d is None for d in list(shape)[1:]):
            dyn = [i for i, d in enumerate(shape or []) if d is None and i > 0]
            raise InvalidInputError(
                f"input {name!r} of the {what} has dynamic dimension(s) "
                f"{dyn or 'of unknown rank'} (shape {shape}); XLA needs static shapes and only the "
                f"batch axis can be bucketed", "pass example_input to fix the other dimensions")
        out.append(np.zeros((1,) + tuple(shape)[1:] if len(shape) else (), dtype=dt))
    return out


def _finish_tf(backend, device, options, program: P.Program, make_fn: Callable, in_names,
               arrays, path: list[str], meta: dict[str, Any], what: str) -> TpuExecutable:
    opts = parse_options(options.backend_options)
    notes = full_fp32(device, options.precision)
    b = batch_of(arrays)
    first = b if b is not None else 0
    base = [tuple(a.shape) for a in arrays]
    dtypes = [str(a.dtype) for a in arrays]

    def specs(n: int, batched: bool):
        return P.tf_specs(_shapes(base, n, batched), dtypes, in_names)

    program.add(first, make_fn(specs(first, False)))
    outs = _first_run(program, first, arrays, what)
    batched = _batched_outputs(outs, b)
    if opts.max_batch is not None and not batched:
        raise UsageError("this model has no batch axis shared by all inputs and outputs, so it "
                         "cannot be compiled for other batch sizes", "drop the max_batch option")
    sizes = plan(b, opts.max_batch) if batched else (first,)
    for n in sizes:
        if n != first:
            program.add(n, make_fn(specs(n, True)))
    buckets = Buckets(sizes, batched)
    meta.update(in_names=in_names, in_shapes=[list(s) for s in base], in_dtypes=dtypes)
    path.append(f"tf.function(jit_compile=True) → {XLA_TARGET[device.kind]}")
    info = _info(backend, device, options, _specs_of(in_names, arrays, batched),
                 _specs_of([f"output_{i}" for i in range(len(outs))], outs, batched),
                 path, buckets, [_bucket_note(buckets)] + notes)
    return TpuExecutable(info, device, program, buckets, meta)


def compile_keras(backend, model: Model, device: Device, options: CompileOptions, system) -> TpuExecutable:
    keras_model = model.value
    strategy = system.strategy if system is not None else None
    try:
        declared = list(keras_model.inputs)
    except Exception:  # noqa: BLE001 - an unbuilt Sequential has no inputs yet
        declared = []
    names = [getattr(t, "name", None) or f"input_{i}" for i, t in enumerate(declared)] or \
        [f"input_{i}" for i in range(len(model.example_input or ()))]
    if not names:
        raise UsageError("this Keras model declares no inputs (it was never built)",
                         "pass example_input, or build the model with keras.Input")
    arrays = _static_inputs(names, [tuple(t.shape) for t in declared] or [None] * len(names),
                            [str(t.dtype) for t in declared] or ["float32"] * len(names),
                            model.example_input, "Keras model")
    mod = P.keras_module(keras_model, options.precision, strategy)
    program = P.Program(mod, {}, strategy)
    path = []
    if options.precision == "bf16":
        path.append("clone_model under DTypePolicy('bfloat16') (bf16 weights and compute, "
                    "float32 inputs/outputs)")
    return _finish_tf(backend, device, options, program, lambda s: P.keras_fn(mod, s), names,
                      arrays, path, {"kind": "keras"}, "Keras model")


def compile_saved_model(backend, model: Model, device: Device, options: CompileOptions,
                        system) -> TpuExecutable:
    if options.precision != "fp32":
        raise UnsupportedError(
            f"the tpu backend runs SavedModels at fp32 only, not {options.precision}: a "
            f"SavedModel's graph has fixed dtypes that hal does not rewrite",
            "pass the Keras or torch model for bf16, or use precision='fp32'")
    strategy = system.strategy if system is not None else None
    mod, key, specs, out_keys = P.load_signature(str(model.value), strategy)
    in_keys = [s.name for s in specs]
    arrays = _static_inputs(in_keys, [tuple(s.shape.as_list()) if s.shape.rank is not None
                                      else None for s in specs],
                            [s.dtype.name for s in specs], model.example_input, "SavedModel")
    program = P.Program(mod, {}, strategy)
    return _finish_tf(backend, device, options, program,
                      lambda s: P.saved_fn(mod, key, in_keys, out_keys, s), in_keys, arrays,
                      [f"tf.saved_model.load (signature {key!r})"],
                      {"kind": "savedmodel", "signature": key, "out_keys": out_keys}, "SavedModel")


# --- load ----------------------------------------------------------------------------------------
DT_BFLOAT16 = 14  # tensorflow.core.framework.types_pb2.DT_BFLOAT16


def _claimed_precision(info: ExecutableInfo, kind: str, has_bf16: bool) -> None:
    """hal.json's precision must be what the program computes in."""
    if info.precision not in ("fp32", "bf16"):
        raise A.bad(f"hal.json claims precision {info.precision}, which the tpu backend never builds")
    if info.precision == "bf16" and (kind == "savedmodel" or not has_bf16):
        raise A.bad("program has no bfloat16 computation, but hal.json claims bf16")
    if info.precision == "fp32" and kind == "torch" and has_bf16:
        raise A.bad("program computes in bfloat16, but hal.json claims fp32")


def load(backend, artifact: Path, info: ExecutableInfo, device: Device, meta: dict[str, Any],
         system) -> TpuExecutable:
    """Rebuild the executable from a checked artifact: ``meta`` is
    :func:`.artifact.read_meta`'s, the SavedModel (if any) passes the graph guard."""
    buckets = Buckets.from_dict(meta["buckets"])
    base = [tuple(s) for s in meta["in_shapes"]]

    def specs(n: int):
        return P.tf_specs(_shapes(base, n, buckets.batched), meta["in_dtypes"], meta["in_names"])

    strategy = system.strategy if system is not None else None
    stablehlo: dict[int, str] = {}
    if meta["kind"] == "torch":
        require(("jaxlib",), "loading a torch model's tpu artifact (its StableHLO is parsed with "
                "jaxlib's MLIR before XLA sees it)", DeviceUnavailableError, extra="tpu-runtime")
        from .. import mlir_guard

        lowered: dict[int, Lowered] = {}
        sigs, bf16 = {}, False
        for n in buckets.sizes:
            text = A.read_text(artifact / PROGRAM_DIR / f"b{n}.stablehlo.mlir",
                               f"StableHLO of batch bucket {n}")
            # parsed and checked; XLA gets the re-print, never the file's text
            checked = mlir_guard.check(text, lambda why, n=n: A.bad(f"StableHLO of batch bucket "
                                                                    f"{n} {why}"))
            lowered[n] = Lowered.from_dict(meta["lowered"][str(n)], checked.text)
            sigs[n], bf16 = checked.main_args, bf16 or checked.bf16
        _claimed_precision(info, "torch", bf16)
        weights = A.read_weights(artifact / A.WEIGHTS, meta)
        for n, low in lowered.items():
            A.check_call_layout(n, low, sigs[n], weights, [(tuple(s), d) for s, d in
                                                           zip(_shapes(base, n, buckets.batched),
                                                               meta["in_dtypes"])])
        program = P.rebuild_torch(weights, lowered, meta["param_names"], specs, strategy)
        stablehlo = {n: low.text for n, low in lowered.items()}
    else:
        full_fp32(device, info.precision)
        program, report = P.restore(str(artifact / SAVED), buckets.sizes, specs, strategy)
        _claimed_precision(info, meta["kind"], DT_BFLOAT16 in report.dtypes)
    info.target, info.device_kind = device.target, device.kind
    info.extra["xla_target"] = XLA_TARGET[device.kind]
    return TpuExecutable(info, device, program, buckets, meta, stablehlo)
