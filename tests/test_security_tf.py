"""Issue #10, TensorFlow and TFLite: a SavedModel is a program and a .tflite can
carry TensorFlow ops. Each attack is built for real with TensorFlow (and shown
to work against plain TensorFlow first), then shown to fail against hal: one
hal error, no file written, and the next compile or load works. The tpu and
edgetpu artifacts are also checked against what hal.json claims.
docs/backends/tpu.md and edgetpu.md ("What hal checks before loading") say how."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hal
from hal import ArtifactError, HalError, ModelFormatError

tf = pytest.importorskip("tensorflow", reason="the tpu backend and TFLiteConverter need TensorFlow")
pytest.importorskip("ai_edge_litert", reason="the edgetpu backend's runtime is not installed")
import craft  # noqa: E402  (tests/craft.py)
from hal_backends import tf_graph_guard as guard  # noqa: E402
from hal_backends.edgetpu import graph  # noqa: E402

TPU, ETPU = "tpu:xla-cpu", "edgetpu:emulated"
X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
SPEC = tf.TensorSpec([None, 4], tf.float32, name="x")


# --- building the attacks ----------------------------------------------------------------
class _Writer(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer writes a file: tf.saved_model.load runs it."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="hal_test_writer")

    def _initialize(self):
        tf.io.write_file(self._path, "written while loading")


def saved_model(out: Path, marker: Path, how: str = "honest") -> Path:
    """A SavedModel taking x [None, 4]; ``how`` picks what else it does with ``marker``."""
    m = tf.Module()
    m.w = tf.Variable(np.eye(4, 2, dtype=np.float32))
    if how == "initializer":
        m.writer = _Writer(str(marker))
    if how == "asset":
        (out.parent / "vocab.txt").write_text("a\nb\n")
        m.vocab = tf.saved_model.Asset(str(out.parent / "vocab.txt"))

    @tf.function(input_signature=[SPEC])
    def serve(x):
        if how == "function":
            tf.io.write_file(str(marker), "written by a function")
        if how == "pyfunc":  # Python code behind a token: whatever this process registered
            x = tf.numpy_function(lambda a: (marker.write_text("python ran"), a)[1], [x], tf.float32)
        if how == "saver":  # a checkpoint write outside the saver's own function
            tf.raw_ops.SaveV2(prefix=str(marker), tensor_names=["x"], shape_and_slices=[""],
                              tensors=[x])
        return {"y": tf.matmul(x, m.w)}

    m.serve = serve
    tf.saved_model.save(m, str(out), signatures={"serving_default": serve})
    if how == "asset":  # the asset path now points outside the SavedModel
        from tensorflow.core.protobuf import saved_model_pb2

        pb = out / "saved_model.pb"
        sm = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
        sm.meta_graphs[0].asset_file_def[0].filename = "../../outside.txt"
        pb.write_bytes(sm.SerializeToString())
    return out


def damaged(out: Path, good: Path, how: str) -> Path:
    shutil.copytree(good, out)
    pb = out / "saved_model.pb"
    if how == "garbage":
        pb.write_bytes(np.random.default_rng(0).bytes(4096))
    elif how == "truncated":
        pb.write_bytes(pb.read_bytes()[: pb.stat().st_size // 2])
    elif how == "no_variables":
        shutil.rmtree(out / "variables")
    return out


def written(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.glob("pwned*"))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tfsec")


@pytest.fixture(scope="module")
def good_sm(root) -> Path:
    return saved_model(root / "good", root / "unused")


@pytest.fixture(scope="module")
def evil(root, good_sm):
    """how → (SavedModel dir, marker dir), built once."""
    cache: dict[str, tuple[Path, Path]] = {}

    def get(how: str) -> tuple[Path, Path]:
        if how not in cache:
            d = root / how
            d.mkdir()
            if how in ("garbage", "truncated", "no_variables"):
                cache[how] = damaged(d / "sm", good_sm, how), d
            else:
                cache[how] = saved_model(d / "sm", d / "pwned", how), d
        return cache[how]
    return get


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# --- the attack is real ------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["initializer", "pyfunc"])
def test_plain_tensorflow_runs_the_payload(evil, how):
    sm, d = evil(how)
    loaded = tf.saved_model.load(str(sm))
    if how == "pyfunc":
        loaded.signatures["serving_default"](x=tf.constant(X))
    assert written(d) == ["pwned"], "the crafted SavedModel should act in plain TensorFlow"
    (d / "pwned").unlink()


# --- user SavedModels: refused before TensorFlow loads them ------------------------------------
EVIL = ["initializer", "function", "pyfunc", "saver", "asset", "garbage", "truncated", "no_variables"]
WHY = {"initializer": "WriteFile", "function": "WriteFile", "pyfunc": "PyFunc", "saver": "SaveV2",
       "asset": "outside", "garbage": "", "truncated": "", "no_variables": "variables"}


@pytest.mark.parametrize("how", EVIL)
def test_tpu_compile_refuses_unsafe_or_damaged_saved_models(evil, good_sm, how):
    sm, d = evil(how)
    with pytest.raises(ModelFormatError) as e:
        hal.compile(sm, TPU, example_input=(X,), cache=False)
    assert WHY[how] in one_line(e)
    assert written(d) == []
    exe = hal.compile(good_sm, TPU, example_input=(X,), cache=False)  # and the next one works
    np.testing.assert_allclose(exe(X), X @ np.eye(4, 2, dtype=np.float32), rtol=1e-6)


@pytest.mark.parametrize("how", ["initializer", "pyfunc", "garbage"])
def test_edgetpu_compile_refuses_unsafe_saved_models(evil, how):
    sm, d = evil(how)
    with pytest.raises(ModelFormatError) as e:
        hal.compile(sm, ETPU, precision="int8", calibration=[X[:1]], cache=False)
    one_line(e)
    assert written(d) == []


def test_guard_allows_real_models_and_the_saver(good_sm, root):
    keras = pytest.importorskip("keras")
    inp = keras.Input((6,), dtype="int32")
    y = keras.layers.LSTM(4)(keras.layers.Embedding(20, 4)(inp))  # a While loop and its body
    keras.Model(inp, keras.layers.Dense(2)(y)).export(str(root / "rnn"), verbose=False)
    for sm in (good_sm, root / "rnn"):
        report = guard.check_saved_model(sm, ModelFormatError, "x")
        assert {"SaveV2", "RestoreV2", "VarHandleOp"} <= report.ops  # inside the saver: allowed


def test_saver_function_reached_from_serving_is_refused(good_sm, tmp_path):
    """SaveV2 is allowed only where nothing but the saver reaches it: point the
    serving signature's call at the saver's save function and it is refused."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = shutil.copytree(good_sm, tmp_path / "sm")
    proto = saved_model_pb2.SavedModel.FromString((sm / "saved_model.pb").read_bytes())
    mg = proto.meta_graphs[0]
    save_fn = next(f.signature.name for f in mg.graph_def.library.function
                   if "traced_save" in f.signature.name)
    serving = mg.signature_def["serving_default"].outputs["y"].name.split(":")[0]
    node = next(n for n in mg.graph_def.node if n.name == serving)
    node.attr["f"].func.name = save_fn
    (sm / "saved_model.pb").write_bytes(proto.SerializeToString())
    with pytest.raises(ModelFormatError, match="checkpoint op .* saver's own function") as e:
        guard.check_saved_model(sm, ModelFormatError, "the SavedModel")
    one_line(e)


# --- .hal artifacts ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_exe():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    return hal.compile(m, TPU, example_input=(X,), cache=False)


@pytest.fixture(scope="module")
def torch_bf16_exe():
    torch = pytest.importorskip("torch")
    pytest.importorskip("litert_torch", reason="torch reaches XLA through litert-torch")
    torch.manual_seed(0)
    return hal.compile(torch.nn.Linear(4, 3).eval(), TPU, precision="bf16", example_input=(X,), cache=False)


def resave(exe, path: Path, edit) -> Path:
    """Save ``exe`` with ``edit(artifact_dir)`` applied to its files: an attacker
    writing a .hal with hal's own writer (so its digests are right)."""
    honest = exe.runner.write_artifact

    def patched(directory: Path) -> None:
        honest(directory)
        edit(directory)

    exe.runner.write_artifact = patched
    try:
        return exe.save(path)
    finally:
        del exe.runner.write_artifact


def test_tpu_artifact_with_a_writing_saved_model_is_refused(keras_exe, evil, tmp_path):
    sm, d = evil("initializer")

    def swap(art: Path) -> None:
        shutil.rmtree(art / "saved_model")
        shutil.copytree(sm, art / "saved_model")

    bad = resave(keras_exe, tmp_path / "evil.hal", swap)
    with pytest.raises(ArtifactError, match="WriteFile") as e:
        hal.load(bad)
    one_line(e)
    assert written(d) == []
    # the CLI: `hal run` of the crafted artifact exits 2 with one line (it used to exit 0)
    p = subprocess.run([sys.executable, "-m", "hal.cli", "run", str(bad)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(lines) == 1 and "WriteFile" in lines[0], p.stderr[-2000:]
    assert written(d) == []
    good = hal.load(keras_exe.save(tmp_path / "good.hal"))
    np.testing.assert_array_equal(good(X), keras_exe(X))


def test_tpu_torch_artifact_custom_call_is_refused(torch_bf16_exe, tmp_path):
    def inject(art: Path) -> None:
        for f in (art / "program").glob("*.stablehlo.mlir"):
            text = f.read_text().replace(
                "return", '%cb = stablehlo.custom_call @xla_python_cpu_callback() : () -> tensor<i32>\n'
                          "    return", 1)
            f.write_text(text)

    with pytest.raises(ArtifactError, match="xla_python_cpu_callback") as e:
        hal.load(resave(torch_bf16_exe, tmp_path / "cc.hal", inject))
    one_line(e)


def test_lying_precision_is_refused(keras_exe, torch_bf16_exe, tmp_path):
    def claim(p):
        return lambda m: m["info"].update(precision=p)

    k = craft.repack_hal(keras_exe.save(tmp_path / "k.hal"), tmp_path / "k2.hal", meta=claim("bf16"))
    with pytest.raises(ArtifactError, match="claims bf16"):
        hal.load(k)
    k = craft.repack_hal(tmp_path / "k.hal", tmp_path / "k3.hal", meta=claim("int8"))
    with pytest.raises(ArtifactError, match="claims precision int8"):
        hal.load(k)
    t = craft.repack_hal(torch_bf16_exe.save(tmp_path / "t.hal"), tmp_path / "t2.hal",
                         meta=claim("fp32"))
    with pytest.raises(ArtifactError, match="claims fp32"):
        hal.load(t)
    back = hal.load(tmp_path / "t.hal")  # the honest one loads, bit-exact
    np.testing.assert_array_equal(back(X), torch_bf16_exe(X))


def _tpu_json_edits():
    def drop(k):
        return lambda m: m.pop(k)

    def put(k, v):
        return lambda m: m.__setitem__(k, v)

    return {
        "not json": b"{not json", "a list": b"[1, 2]", "no kind": drop("kind"),
        "bad kind": put("kind", "pickle"), "no buckets": drop("buckets"),
        "string sizes": put("buckets", {"sizes": ["2"], "batched": True}),
        "empty sizes": put("buckets", {"sizes": [], "batched": True}),
        "in_names count": put("in_names", ["a", "b"]), "bad dtype": put("in_dtypes", ["object"]),
        "shape": put("in_shapes", [[2, 5]]), "lowered missing": put("lowered", {}),
        "param outside": lambda m: m["lowered"]["2"]["args"].append(["param", "nope"]),
        "input index": lambda m: m["lowered"]["2"]["args"].append(["input", 7]),
        "param_dtypes": lambda m: m.__setitem__("param_dtypes", ["complex64"] * len(m["param_names"])),
    }


def _tpu_json(src: Path) -> dict:
    return json.loads(dict((i.filename, b) for i, b in craft.members(src))["artifact/tpu.json"])


@pytest.mark.parametrize("case", list(_tpu_json_edits()))
def test_bad_tpu_json_is_one_artifact_error(torch_bf16_exe, tmp_path, case):
    src = torch_bf16_exe.save(tmp_path / "t.hal")
    edit = _tpu_json_edits()[case]
    if isinstance(edit, bytes):
        data = edit
    else:
        meta = _tpu_json(src)
        edit(meta)
        data = json.dumps(meta).encode()
    bad = craft.repack_hal(src, tmp_path / "bad.hal", replace={"artifact/tpu.json": data})
    with pytest.raises(ArtifactError) as e:
        hal.load(bad)
    assert "tpu.json" in one_line(e)


def test_torch_weights_are_checked_data(torch_bf16_exe, tmp_path):
    """weights.npz is read without pickle, and every weight must have the shape
    and dtype the StableHLO takes (else XLA would fail at the first call)."""
    import io

    def npz(**arrays) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    src = torch_bf16_exe.save(tmp_path / "t.hal")
    w = np.load(io.BytesIO(dict((i.filename, b) for i, b in craft.members(src))["artifact/weights.npz"]))
    honest = {k: w[k] for k in w.files}
    cases = {"pickle": dict(honest, p0=np.array([craft.Payload(tmp_path / "pwned")], dtype=object)),
             "shape": dict(honest, p0=np.zeros(7, np.float32)),
             "dtype": dict(honest, p0=honest["p0"].astype(np.float64)),
             "missing": {"p0": honest["p0"]}}
    for case, arrays in cases.items():
        bad = craft.repack_hal(src, tmp_path / f"{case}.hal",
                               replace={"artifact/weights.npz": npz(**arrays)})
        with pytest.raises(ArtifactError, match="weights.npz|StableHLO takes") as e:
            hal.load(bad)
        one_line(e)
    assert written(tmp_path) == []


# --- TFLite: Flex and custom ops ---------------------------------------------------------------
#: the int8 TFLite takes int8 (its own dtype); these tests feed it floats through hal's quantizer
FLOAT_IO = {"raw_io": False}


@pytest.fixture(scope="module")
def tflites(root):
    """name → bytes: an int8 model, a float one, one with a Flex WriteFile op,
    and the same with its custom op renamed to an unknown one."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((4,), batch_size=1), keras.layers.Dense(3)])
    c = tf.lite.TFLiteConverter.from_keras_model(m)
    out = {"float": c.convert()}
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = lambda: ([X[i:i + 1]] for i in range(2))
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = c.inference_output_type = tf.int8
    out["int8"] = c.convert()

    marker = str(root / "pwned_tflite")

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def f(x):
        tf.io.write_file(marker, tf.strings.as_string(x[0, 0]))
        return x * 2.0

    c = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()])
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    out["flex"] = c.convert()
    out["custom"] = _rename_custom_ops(out["flex"], "MyVendorOp")
    return out


def _rename_custom_ops(data: bytes, name: str) -> bytes:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    m = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
    for oc in m.operatorCodes:
        if oc.customCode:
            oc.customCode = name
    b = flatbuffers.Builder(len(data))
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.mark.parametrize("case,needle", [("flex", "FlexWriteFile"), ("custom", "MyVendorOp")])
def test_tflite_flex_and_custom_ops_refused(tflites, root, case, needle):
    with pytest.raises(ModelFormatError, match=needle) as e:
        hal.compile(tflites[case], ETPU, precision="int8", calibration=[X[:1]], cache=False)
    one_line(e)
    assert not (root / "pwned_tflite").exists()
    exe = hal.compile(tflites["int8"], ETPU, precision="int8", calibration=[X[:1]], cache=False,
                      options=FLOAT_IO)
    assert exe(X[:1]).shape == (1, 3)


@pytest.fixture(scope="module")
def etpu_hal(tflites, root) -> Path:
    exe = hal.compile(tflites["int8"], ETPU, precision="int8", calibration=[X[:1]], cache=False,
                      options=FLOAT_IO)
    return exe.save(root / "etpu.hal")


@pytest.mark.parametrize("case", ["flex", "float", "edgetpu.json not json", "edgetpu.json list",
                                  "no options", "num_threads text", "raw_io int", "unknown option",
                                  "claims fp32", "no model"])
def test_edgetpu_artifact_checked_before_any_interpreter(etpu_hal, tflites, tmp_path, case):
    replace, meta = {}, None
    if case in ("flex", "float"):
        replace["artifact/model_int8.tflite"] = tflites[case]
    elif case == "claims fp32":
        meta = lambda m: m["info"].update(precision="fp32")  # noqa: E731
    elif case == "no model":
        meta = lambda m: None  # noqa: E731
    else:
        replace["artifact/edgetpu.json"] = {
            "edgetpu.json not json": b"{", "edgetpu.json list": b"[]", "no options": b"{}",
            "num_threads text": b'{"options": {"num_threads": "2"}}',
            "raw_io int": b'{"options": {"raw_io": 1}}',
            "unknown option": b'{"options": {"exec": "rm -rf /"}}'}[case]
    src = etpu_hal
    if case == "no model":  # an artifact holding only edgetpu.json
        items = [(i.filename, d) for i, d in craft.members(src) if not i.filename.endswith(".tflite")]
        src = craft.write_zip(tmp_path / "nomodel.hal", items)
    bad = craft.repack_hal(src, tmp_path / "bad.hal", replace=replace, meta=meta)
    with pytest.raises(ArtifactError) as e:
        hal.load(bad)
    one_line(e)
    assert not (tmp_path / "pwned_tflite").exists()
    assert hal.load(etpu_hal)(X[:1]).shape == (1, 3)


# --- property-based: whatever the bytes, a hal error or a good load --------------------------
hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("HAL_FUZZ_EXAMPLES", "25")), deadline=None,
                suppress_health_check=list(HealthCheck), derandomize=True)
_cut = st.integers(0, 1 << 20)
_flips = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 7)), min_size=1, max_size=4)


def _mutate(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    b = bytearray(data[: max(1, cut % (len(data) + 1))] if cut % 3 == 0 else data)
    for pos, bit in flips:
        b[pos % len(b)] ^= 1 << bit
    return bytes(b)


def _files(d: Path) -> set[str]:
    return {str(p) for p in d.rglob("*")}


@FUZZ
@given(cut=_cut, flips=_flips)
def test_fuzz_saved_model_pb(good_sm, tmp_path_factory, cut, flips):
    d = tmp_path_factory.mktemp("fzsm")
    sm = shutil.copytree(good_sm, d / "sm")
    (sm / "saved_model.pb").write_bytes(_mutate((good_sm / "saved_model.pb").read_bytes(), cut, flips))
    before = _files(d)
    try:
        exe = hal.compile(sm, TPU, example_input=(X,), cache=False)
        exe(X)
    except HalError as e:
        assert "\n" not in str(e)
    assert _files(d) == before


@FUZZ
@given(cut=_cut, flips=_flips)
def test_fuzz_tflite_bytes(tflites, cut, flips):
    data = _mutate(tflites["int8"], cut, flips)
    try:
        exe = hal.compile(data, ETPU, precision="int8", calibration=[X[:1]], cache=False,
                          options=FLOAT_IO)
        exe(X[:1])
    except HalError as e:
        assert "\n" not in str(e)


_json = st.recursive(st.none() | st.booleans() | st.integers(-3, 1 << 31) | st.text(max_size=6),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                          max_size=3), max_leaves=6)


@FUZZ
@given(field=st.sampled_from(["kind", "buckets", "in_names", "in_shapes", "in_dtypes",
                              "param_names", "param_dtypes", "platform", "lowered"]), value=_json)
def test_fuzz_tpu_json_fields(torch_bf16_exe, tmp_path_factory, field, value):
    d = tmp_path_factory.mktemp("fzj")
    src = torch_bf16_exe.save(d / "t.hal")
    meta = _tpu_json(src)
    meta[field] = value
    bad = craft.repack_hal(src, d / "j.hal", replace={"artifact/tpu.json": json.dumps(meta).encode()})
    try:
        exe = hal.load(bad)
    except HalError as e:
        assert "\n" not in str(e)
    else:
        np.testing.assert_array_equal(exe(X), torch_bf16_exe(X))
