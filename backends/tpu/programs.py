"""The TensorFlow side: one ``tf.Module`` per executable, holding the weights
and one ``tf.function(jit_compile=True)`` per batch bucket (attribute ``b<n>``).

* torch models: the function calls litert-torch's StableHLO through XLA's
  call-module op (``XlaCallModule``), with the weights as ``tf.Variable``s.
* Keras models: the function calls the model (cloned to a bfloat16 dtype
  policy for bf16).
* SavedModels: the function calls the serving signature.

Keras and SavedModel executables are saved with ``tf.saved_model.save``; a
torch executable is saved as data (its StableHLO text and weights) and rebuilt
by :func:`rebuild_torch` from the text :mod:`hal_backends.mlir_guard` re-printed. Every SavedModel is checked by
:mod:`hal_backends.tf_graph_guard` before ``tf.saved_model.load`` sees it: a
TensorFlow graph is code. On a TPU every call goes through the one-core
``TPUStrategy`` and variables are created under its scope.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from hal import ArtifactError, CompileError, HalError, ModelFormatError, UnsupportedError
from hal.plugin import brief

from .. import tf_graph_guard as guard

from .artifact import Lowered


def _scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def tf_specs(shapes: list[tuple[int, ...]], dtypes: list[str], names: list[str]) -> list[tf.TensorSpec]:
    return [tf.TensorSpec(list(s), tf.as_dtype(d), name=_tf_name(n))
            for s, d, n in zip(shapes, dtypes, names)]


def _tf_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-/]", "_", name)
    return name if re.match(r"[A-Za-z0-9.]", name) else "x" + name


def _to_f32(t):
    return tf.cast(t, tf.float32) if t.dtype in (tf.bfloat16, tf.float16) else t


# --- torch: StableHLO through XLA's call-module op --------------------------------------
def torch_module(state: dict[str, tuple[np.ndarray, str]], strategy) -> tf.Module:
    """A tf.Module holding the weights as variables, in sorted-name order."""
    mod = tf.Module(name="hal_tpu_torch")
    names = sorted(state)
    with _scope(strategy):
        mod.params = [tf.Variable(tf.cast(tf.constant(state[n][0]), state[n][1]), trainable=False,
                                  name=f"p{i}") for i, n in enumerate(names)]
    return mod


def call_module_fn(mod: tf.Module, low: Lowered, names: list[str],
                   specs: list[tf.TensorSpec]) -> Callable:
    """The jit-compiled function that runs one bucket's StableHLO module.

    ``low.text`` passed :mod:`hal_backends.mlir_guard` (no custom calls, nothing
    platform-specific), so it is marked as lowered for TPU with the platform
    check disabled: the very same program runs on the TPU and on XLA:CPU."""
    from tensorflow.compiler.tf2xla.python import xla as tfxla

    index = {n: i for i, n in enumerate(names)}
    version = tfxla.call_module_maximum_supported_version()
    tout = [tf.as_dtype(d) for d in low.out_dtypes]
    sout = [list(s) for s in low.out_shapes]
    disabled = [tfxla.call_module_disable_check_platform()]

    def run(*xs):
        args = [xs[v] if kind == "input" else mod.params[index[v]] for kind, v in low.args]
        return tuple(tfxla.call_module(args, version=version, module=low.text, Tout=tout,
                                       Sout=sout, platforms=["TPU"], function_list=[],
                                       disabled_checks=disabled))

    return tf.function(run, jit_compile=True, input_signature=specs, reduce_retracing=False)


# --- Keras ---------------------------------------------------------------------------------
def keras_module(model, precision: str, strategy) -> tf.Module:
    """Holds the model; for bf16 (or on a TPU) a clone built under the right
    dtype policy / strategy scope, with the caller's weights."""
    import keras

    mod = tf.Module(name="hal_tpu_keras")
    if precision == "bf16" or strategy is not None:
        at: list[str] = []

        def rebuild(layer):
            at[:] = [f"{type(layer).__name__} {layer.name!r}"]
            cfg = layer.get_config()
            if precision == "bf16":
                cfg["dtype"] = keras.DTypePolicy("bfloat16")
            if isinstance(layer, keras.layers.Lambda):
                # its config holds the function as code, which safe mode (rightly) will not
                # deserialize: rebuild it from the live function instead
                return keras.layers.Lambda(layer.function, output_shape=layer._output_shape,
                                           mask=layer.mask, arguments=layer.arguments,
                                           name=layer.name, dtype=cfg.get("dtype"))
            return layer.__class__.from_config(cfg)

        try:
            with _scope(strategy):
                clone = keras.models.clone_model(model, clone_function=rebuild, recursive=True)
                clone.set_weights(model.get_weights())
        except Exception as e:  # noqa: BLE001 - subclassed models cannot be cloned
            what = "bfloat16 policy" if precision == "bf16" else "TPU strategy scope"
            if _subclassed(model):
                fix = ("pass a Functional or Sequential Keras model (a subclassed model cannot be "
                       "cloned), or use precision='fp32'")
            else:
                fix = (f"give {at[0] if at else 'the layer'} a get_config()/from_config() that "
                       "round-trip (keras.saving.register_keras_serializable), or use precision='fp32'")
            raise UnsupportedError(
                f"could not rebuild the Keras model under a {what}"
                + (f" at layer {at[0]}" if at and not _subclassed(model) else "")
                + f": {brief(e, 160, typed=True)}", fix) from None
        model = clone
    mod.model = model
    return mod


def _subclassed(model) -> bool:
    """A model defined by its own ``call`` (not Functional or Sequential): not clonable."""
    return not any(c.__name__ in ("Functional", "Sequential") for c in type(model).__mro__)


def keras_fn(mod: tf.Module, specs: list[tf.TensorSpec]) -> Callable:
    multi = len(specs) > 1

    def run(*xs):
        out = mod.model(list(xs) if multi else xs[0], training=False)
        return tuple(_to_f32(t) for t in tf.nest.flatten(out))

    return tf.function(run, jit_compile=True, input_signature=specs, reduce_retracing=False)


# --- SavedModel ----------------------------------------------------------------------------
def load_signature(path: str, strategy) -> tuple[tf.Module, str, list[tf.TensorSpec], list[str]]:
    """Load a SavedModel and pick its serving signature. Returns the holder
    module, the signature key, its input specs (in keyword order) and output keys."""
    mod = tf.Module(name="hal_tpu_savedmodel")
    mod.saved, _ = load_checked(path, strategy, ModelFormatError, f"the SavedModel at {path}")
    sigs = dict(getattr(mod.saved, "signatures", {}) or {})
    if not sigs:
        raise UnsupportedError(f"the SavedModel at {path} has no signatures",
                               "export it with a serving signature (model.export(...) or "
                               "tf.saved_model.save(..., signatures=...))")
    key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
    sig = sigs[key]
    args, kwargs = sig.structured_input_signature
    if args:
        raise UnsupportedError(f"signature {key!r} takes positional inputs", "export keyword inputs")
    specs = [kwargs[k] for k in kwargs]
    outs = sig.structured_outputs
    out_keys = list(outs) if isinstance(outs, dict) else []
    return mod, key, specs, out_keys


def saved_fn(mod: tf.Module, key: str, in_keys: list[str], out_keys: list[str],
             specs: list[tf.TensorSpec]) -> Callable:
    def run(*xs):
        out = mod.saved.signatures[key](**dict(zip(in_keys, xs)))
        flat = [out[k] for k in out_keys] if out_keys else tf.nest.flatten(out)
        return tuple(_to_f32(t) for t in flat)

    return tf.function(run, jit_compile=True, input_signature=specs, reduce_retracing=False)


# --- running and inspecting --------------------------------------------------------------
_UNSUPPORTED = re.compile(r"Detected unsupported operations when trying to compile graph "
                          r".*? on (\S+?):\s*(.+?)(?:\n|$)", re.S)


def xla_error(e: BaseException, what: str) -> Exception:
    """One line naming the ops XLA could not compile, else the first line."""
    msg = str(e)
    m = _UNSUPPORTED.search(msg)
    if m:
        ops = sorted(set(re.findall(r"(\w+) \(No registered", m.group(2))) or [m.group(2)[:120]])
        return UnsupportedError(f"XLA cannot compile op(s) {', '.join(ops)} in the {what} "
                                f"(on {m.group(1)})",
                                "remove or replace those ops (XLA/TPU runs only XLA-compilable "
                                "TensorFlow ops), or use another target")
    first = next((l for l in msg.splitlines() if l.strip()), type(e).__name__)[:240]
    return CompileError(f"XLA failed to compile the {what}: {type(e).__name__}: {first}",
                        "check the model runs under tf.function(jit_compile=True)")


class Program:
    """The functions of a tf.Module by bucket, run on the TPU (through the
    strategy) or on XLA:CPU."""

    def __init__(self, module: tf.Module, fns: dict[int, Callable], strategy=None):
        self.module = module
        self.fns = dict(fns)
        self.strategy = strategy
        self._runners: dict[int, Callable] = {}
        self._ir: dict[tuple[int, str], str] = {}

    def add(self, n: int, fn: Callable) -> None:
        setattr(self.module, f"b{n}", fn)
        self.fns[n] = fn

    def _runner(self, n: int) -> Callable:
        if n not in self._runners:
            fn = self.fns[n]
            if self.strategy is None:
                self._runners[n] = fn
            else:
                s = self.strategy

                @tf.function
                def on_tpu(*xs):
                    return s.experimental_local_results(s.run(fn, args=xs))[0]

                self._runners[n] = on_tpu
        return self._runners[n]

    def __call__(self, n: int, arrays: list[np.ndarray]) -> list[np.ndarray]:
        outs = self._runner(n)(*[tf.constant(a) for a in arrays])
        return [np.asarray(o.numpy()) for o in tf.nest.flatten(outs)]

    def ir(self, n: int, stage: str) -> str:
        """The compiler IR of bucket ``n`` ('hlo', 'stablehlo', 'optimized_hlo', ...)."""
        if (n, stage) not in self._ir:
            fn = self.fns[n]
            self._ir[(n, stage)] = fn.experimental_get_compiler_ir(*fn.input_signature)(stage=stage)
        return self._ir[(n, stage)]

    def save(self, path: str) -> None:
        tf.saved_model.save(self.module, path)


def load_checked(path: str, strategy, error: type[HalError], what: str
                 ) -> tuple[Any, guard.GraphReport]:
    """``tf.saved_model.load`` under the strategy's scope, after the graph guard."""
    return guard.load_saved_model(path, error, what, _scope(strategy))


def _traced(fn: Callable, what: str) -> Callable:
    """Trace ``fn`` now, so that a program that does not fit its signature is
    an ArtifactError at load, not an error at the first call."""
    try:
        fn.get_concrete_function()
    except Exception as e:  # noqa: BLE001 - TF raises many types while tracing
        raise ArtifactError(f"{what} does not trace ({brief(e, 160, typed=True)})",
                            "re-create the artifact with hal compile") from None
    return fn


def restore(path: str, sizes: tuple[int, ...], specs: Callable[[int], list[tf.TensorSpec]],
            strategy=None) -> tuple[Program, guard.GraphReport]:
    """Check and ``tf.saved_model.load`` the module, then re-wrap each bucket's
    function in ``tf.function(jit_compile=True)``, so it is XLA-compiled exactly
    as built. Returns the program and what the graph check saw."""
    what = "the tpu artifact's SavedModel"
    mod, report = load_checked(path, strategy, ArtifactError, what)
    fns: dict[int, Any] = {}
    for n in sizes:
        restored = getattr(mod, f"b{n}", None)
        if restored is None or not callable(restored):
            raise ArtifactError(f"{what} has no function b{n} for batch bucket {n}",
                                "re-create the artifact with hal compile")
        fns[n] = _traced(_rewrap(restored, specs(n)), f"{what}'s function b{n}")
    return Program(mod, fns, strategy), report


def rebuild_torch(weights: dict[str, tuple[np.ndarray, str]], lowered: dict[int, Lowered],
                  names: list[str], specs: Callable[[int], list[tf.TensorSpec]],
                  strategy=None) -> Program:
    """A torch executable from data: the weights as variables and each bucket's
    StableHLO through XLA's call-module op, exactly as compile built it."""
    mod = torch_module(weights, strategy)
    program = Program(mod, {}, strategy)
    for n, low in lowered.items():
        program.add(n, _traced(call_module_fn(mod, low, names, specs(n)),
                               f"the tpu artifact's StableHLO for batch bucket {n}"))
    return program


def _rewrap(restored, specs: list[tf.TensorSpec]) -> Callable:
    def run(*xs):
        return restored(*xs)

    return tf.function(run, jit_compile=True, input_signature=specs, reduce_retracing=False)
