"""Issue #22: the program inside a SavedModel's ``XlaCallModule`` op is parsed,
not pattern-matched. jax2tf (and Keras' JAX export) put a StableHLO program in
the op's ``module`` attribute as MLIR bytecode; an attacker may put text there
instead, spelling a custom call with MLIR's ``\\XX`` escapes in generic form,
which the old regex check passed and XLA resolves by name (native code).
Built for real here: a jax2tf SavedModel, its ``module`` rewritten and
``saved_model.pb`` re-serialized; ``hal.compile`` of it, and ``hal.load`` of a
tpu ``.hal`` carrying it (digests recomputed), are one hal error, while the
honest model compiles and matches TensorFlow. docs/security.md and
docs/backends/tpu.md say what is checked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import hal
from hal import ArtifactError, ModelFormatError

tf = pytest.importorskip("tensorflow", reason="the tpu backend needs TensorFlow")
pytest.importorskip("jaxlib", reason="XlaCallModule programs are parsed with jaxlib's MLIR")
jax2tf = pytest.importorskip("jax.experimental.jax2tf", reason="jax2tf builds the SavedModels")
import craft  # noqa: E402  (tests/craft.py)
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402

from hal_backends import tf_graph_guard as guard  # noqa: E402
from hal_backends import mlir_guard  # noqa: E402

TPU = "tpu:xla-cpu"
X = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
#: generic form with \XX escapes: neither "custom_call" nor "call_target_name" appears
ESCAPED_CC = ('"stablehlo.custom\\5Fcall"({x}) {{"call\\5Ftarget_name" = '
              '"xla_python_cpu_callback", has_side_effect = true}} : ({t}) -> {t}')


# --- the check hal used before (verbatim from tf_graph_guard, text path) -------------------
_OLD_CC_OP = re.compile(r"\b(?:stablehlo|mhlo)\.custom_call\b")
_OLD_CC_TARGET = re.compile(r"custom_call\"?\s*@(?:\"([^\"]*)\"|([\w.$\-]+))|"
                            r"call_target_name\s*=\s*\"([^\"]*)\"")
_OLD_OK = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "tf.call_tf_function"}


def old_regex_check(text: str) -> None:
    """Raise ValueError where the old regex check refused ``text``."""
    targets = [next(g for g in m.groups() if g is not None) for m in _OLD_CC_TARGET.finditer(text)]
    if len(_OLD_CC_OP.findall(text)) > len(targets):
        raise ValueError("custom call with unreadable target")
    for t in targets:
        if t not in _OLD_OK:
            raise ValueError(f"custom call {t}")


# --- building the SavedModels ---------------------------------------------------------------
def export(out: Path, batch: int | None) -> Path:
    """A two-layer MLP in JAX, exported through jax2tf as Keras' JAX export does
    (weights as tf.Variables, ``batch=None``: a dynamic batch, with shape assertions)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    m = tf.Module()
    m.params = [tf.Variable(rng.standard_normal(s).astype(np.float32) * 0.3)
                for s in ((8, 16), (16,), (16, 3))]

    def fwd(params, x):
        w1, b1, w2 = params
        return jnp.tanh(x @ w1 + b1) @ w2

    # with_gradient=False: a serving export (jax2tf's gradient function captures
    # the variables in a way tf.saved_model.save cannot re-save in the tpu .hal)
    conv = jax2tf.convert(fwd, polymorphic_shapes=(None, "(b, 8)") if batch is None else None,
                          with_gradient=False)

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([batch, 8], tf.float32, name="x")])
    def serve(x):
        return {"y": conv(list(m.params), x)}

    m.serve = serve
    tf.saved_model.save(m, str(out), signatures={"serving_default": serve})
    return out


def xla_nodes(sm) -> list:
    """Every forward XlaCallModule node (graph and functions; jax2tf's
    gradient copies, named ``jax2tf_vjp/...``, left alone)."""
    out = []
    for mg in sm.meta_graphs:
        for n in [*mg.graph_def.node, *(n for f in mg.graph_def.library.function for n in f.node_def)]:
            if n.op == "XlaCallModule" and "vjp" not in n.name:
                out.append(n)
    return out


def with_program(pb: bytes, program: bytes) -> bytes:
    """``saved_model.pb`` with each forward XlaCallModule's program replaced."""
    sm = saved_model_pb2.SavedModel.FromString(pb)
    nodes = xla_nodes(sm)
    assert nodes, "the SavedModel has an XlaCallModule"
    for n in nodes:
        n.attr["module"].s = program
    return sm.SerializeToString()


def crafted(good: Path, out: Path, program: bytes) -> Path:
    shutil.copytree(good, out)
    (out / "saved_model.pb").write_bytes(with_program((good / "saved_model.pb").read_bytes(), program))
    return out


def honest_text(sm_dir: Path) -> str:
    """The honest program (bytecode in the file) as StableHLO text."""
    sm = saved_model_pb2.SavedModel.FromString((sm_dir / "saved_model.pb").read_bytes())
    data = xla_nodes(sm)[0].attr["module"].s
    assert data.startswith(mlir_guard.BYTECODE_MAGIC), "jax2tf writes bytecode"
    return mlir_guard.check(data, AssertionError, guard.CUSTOM_CALLS_OK).text


def in_main(text: str, line: str) -> str:
    """``text`` with ``line`` inserted before @main's return."""
    at = text.index("func.func public @main")
    ret = text.index("    return ", at)
    return text[:ret] + f"    {line}\n" + text[ret:]


def attacks(text: str) -> dict[str, tuple[bytes, str]]:
    """name → (program bytes, what the error must name)."""
    from jaxlib.mlir import ir
    from jaxlib.mlir.dialects import stablehlo

    v, t = re.search(r"func\.func public @main.*?\n    return (%\w+) : (tensor<[^>]*>)", text,
                     re.S).groups()
    cc = in_main(text, f'%cc = stablehlo.custom_call @xla_python_cpu_callback({v}) '
                       f'{{has_side_effect = true}} : ({t}) -> {t}')
    # what jax2tf writes, with the custom call: a StableHLO portable artifact
    ctx = mlir_guard._context()
    bytecode = stablehlo.serialize_portable_artifact(
        ir.Module.parse(cc, context=ctx), stablehlo.get_current_version())
    return {
        "escaped custom call": (in_main(text, "%cc = " + ESCAPED_CC.format(x=v, t=t)).encode(),
                                "makes XLA custom call 'xla_python_cpu_callback'"),
        "custom call in bytecode": (bytecode, "makes XLA custom call 'xla_python_cpu_callback'"),
        "outfeed": (in_main(text, f"%tok = stablehlo.create_token : !stablehlo.token\n    "
                                  f'%of = "stablehlo.\\6Futfeed"({v}, %tok) {{outfeed_config = ""}} : '
                                  f"({t}, !stablehlo.token) -> !stablehlo.token").encode(), "outfeed"),
        # XlaCallModule's own parser knows mhlo; hal's allow-list does not
        "mhlo custom call": (in_main(text, f'%mc = "mhlo.custom_call"({v}) {{call_target_name = '
                                           f'"xla_python_cpu_callback"}} : ({t}) -> {t}').encode(),
                             "unregistered dialect"),
        "garbage text": (b'}{ not MLIR "stablehlo.custom\\5Fcall"', "not valid MLIR"),
        "garbage bytecode": (mlir_guard.BYTECODE_MAGIC + bytes(range(256)) * 4, "bytecode"),
        "not utf-8": (b"module {\xff\xfe}", "neither MLIR bytecode nor UTF-8"),
        "nesting bomb": (b"module { " * 100_000 + b"}" * 100_000, "nests brackets"),
    }


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smxla")


@pytest.fixture(scope="module")
def good(root) -> Path:
    return export(root / "good", batch=2)


@pytest.fixture(scope="module")
def text(good) -> str:
    return honest_text(good)


@pytest.fixture(scope="module")
def exe(good):
    return hal.compile(str(good), target=TPU, example_input=(X,), cache=False)


@pytest.fixture(scope="module")
def good_hal(exe, root) -> Path:
    return exe.save(root / "good.hal")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def tf_outputs(sm_dir: Path) -> np.ndarray:
    return tf.saved_model.load(str(sm_dir)).signatures["serving_default"](x=tf.constant(X))["y"].numpy()


# --- the attack is real ------------------------------------------------------------------------
def test_escaped_custom_call_passes_the_old_check_and_reaches_xla(good, text, root):
    program = attacks(text)["escaped custom call"][0].decode()
    assert "custom_call" not in program and "call_target_name" not in program
    old_regex_check(program)  # the old check passed it: no error
    with pytest.raises(ValueError):  # and refused the plainly written one
        old_regex_check(in_main(text, "stablehlo.custom_call @xla_python_cpu_callback() : () -> ()"))
    # plain TensorFlow loads the crafted SavedModel and XLA looks the target up by name
    bad = crafted(good, root / "plain_tf", program.encode())
    with pytest.raises(Exception, match="custom call to xla_python_cpu_callback"):
        tf_outputs(bad)


# --- hal refuses: one error, for compile and for a tpu .hal ------------------------------------
@pytest.mark.parametrize("case", ["escaped custom call", "custom call in bytecode", "outfeed",
                                  "mhlo custom call", "garbage text", "garbage bytecode",
                                  "not utf-8", "nesting bomb"])
def test_compile_refuses_crafted_programs(good, text, tmp_path, case):
    program, needle = attacks(text)[case]
    bad = crafted(good, tmp_path / "sm", program)
    with pytest.raises(ModelFormatError) as e:
        hal.compile(str(bad), target=TPU, example_input=(X,), cache=False)
    msg = one_line(e)
    assert needle in msg and "XlaCallModule program" in msg, msg


@pytest.mark.parametrize("case", ["escaped custom call", "custom call in bytecode", "garbage text"])
def test_load_refuses_tpu_hal_with_crafted_program(exe, good_hal, text, tmp_path, case):
    program, needle = attacks(text)[case]
    items = {i.filename: d for i, d in craft.members(good_hal)}
    pbs = [n for n in items if n.endswith("saved_model/saved_model.pb")]
    assert len(pbs) == 1, sorted(items)
    bad = craft.repack_hal(good_hal, tmp_path / "bad.hal",
                           replace={pbs[0]: with_program(items[pbs[0]], program)})
    with pytest.raises(ArtifactError) as e:
        hal.load(bad)
    msg = one_line(e)
    assert needle in msg and "tpu artifact's SavedModel" in msg, msg
    np.testing.assert_array_equal(hal.load(good_hal)(X), exe(X))


# --- honest models -----------------------------------------------------------------------------
def test_honest_model_compiles_and_matches_tensorflow(good, exe):
    np.testing.assert_allclose(exe(X), tf_outputs(good), rtol=1e-5, atol=1e-6)


def test_dynamic_batch_export_with_shape_assertions_compiles(root):
    """What Keras' JAX export writes for a None batch: shape_assertion custom
    calls (in CUSTOM_CALLS_OK; the old check refused them)."""
    sm = export(root / "dynamic", batch=None)
    text = honest_text(sm)
    assert "@shape_assertion" in text
    with pytest.raises(ValueError, match="shape_assertion"):
        old_regex_check(text)
    exe = hal.compile(str(sm), target=TPU, example_input=(X,), cache=False)
    np.testing.assert_allclose(exe(X), tf_outputs(sm), rtol=1e-5, atol=1e-6)


def test_the_same_program_as_text_compiles(good, text, tmp_path):
    """Text in the attribute is allowed when it parses and passes: the escape
    is decoded, not refused for its spelling (``\\61dd`` is ``add``)."""
    from jaxlib.mlir import ir

    # the generic form, with one op name written as an escape
    generic = ir.Module.parse(text, context=mlir_guard._context()).operation.get_asm(
        print_generic_op_form=True)
    generic = generic.replace('"stablehlo.tanh"', '"stablehlo.\\74anh"', 1)
    assert '"stablehlo.\\74anh"' in generic
    sm = crafted(good, tmp_path / "sm", generic.encode())
    exe = hal.compile(str(sm), target=TPU, example_input=(X,), cache=False)
    np.testing.assert_allclose(exe(X), tf_outputs(good), rtol=1e-5, atol=1e-6)
