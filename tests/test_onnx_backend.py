"""hal as an ONNX backend: onnx.backend's own test cases through any hal target,
and the suite runner that compares hal with the native runtimes.

CI runs a small deterministic sample plus the cases behind each bug fixed
here; the whole suite is opt-in: ``python -m hal_conformance.onnx_suite``."""

from __future__ import annotations

import numpy as np
import pytest

import hal

onnx = pytest.importorskip("onnx", reason="onnx is not installed")
from onnx import TensorProto, helper  # noqa: E402

from hal_conformance import onnx_suite  # noqa: E402
from hal_conformance.onnx_backend import HalBackend, backend_for  # noqa: E402

#: cases hal once lost to OpenVINO called directly (a 0-d input, an input the
#: frontend drops, fp16 models and a Convert from f16 fused into f32 arithmetic,
#: Col2Im, NaN/Inf inputs, an integer divisor a zero warm-up turned into SIGFPE,
#: a bf16 input) or gets right where OpenVINO's Python API returns bf16 bits as float16
REGRESSIONS = ["node/test_clip_example_cpu", "node/test_reduce_sum_default_axes_keepdims_example_cpu",
               "node/test_isnan_float16_cpu", "node/test_cast_FLOAT_to_FLOAT16_cpu",
               "node/test_range_float16_type_positive_delta_expanded_cpu",
               "node/test_col2im_cpu", "node/test_isinf_cpu", "node/test_mod_mixed_sign_int32_cpu",
               "node/test_cast_BFLOAT16_to_FLOAT_cpu", "node/test_cast_FLOAT_to_BFLOAT16_cpu"]


def installed(backend: str) -> bool:
    return any(b.name == backend and b.missing_runtime is None for b in hal.backends())


def test_device_names_follow_the_target():
    assert backend_for("openvino:CPU").supports_device("CPU")
    assert not backend_for("openvino:CPU").supports_device("CUDA")
    assert backend_for("cuda:0").supports_device("CUDA")
    assert not backend_for("cuda:0").supports_device("CPU")


def test_run_node_and_run_model_on_the_reference_target():
    pytest.importorskip("torch", reason="torch (the reference backend's runtime) is not installed")
    x = np.array([[-1.0, 2.0], [3.0, -4.0]], dtype=np.float32)
    node = helper.make_node("Relu", ["x"], ["y"])
    (y,) = backend_for("reference:cpu").run_node(node, [x])
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    out = HalBackend.run_model(m, [x], target="reference:cpu")
    np.testing.assert_array_equal(out["y"], np.maximum(x, 0))


def test_sequences_are_refused_with_a_hal_error_not_coerced():
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    rep = HalBackend.prepare(helper.make_model(g), target="reference:cpu")
    with pytest.raises(hal.UnsupportedError, match="sequence"):
        rep.run([[np.zeros(2, np.float32), np.ones(2, np.float32)]])


def test_prepare_refuses_unknown_arguments():
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(TypeError, match="precison"):
        HalBackend.prepare(helper.make_model(g), precison="fp32")


def test_suite_sample_loses_nothing_to_native_openvino():
    """ONNX's BackendTest on hal→openvino:CPU and on OpenVINO called directly,
    each in its own worker process: hal loses no case OpenVINO passes."""
    if not installed("openvino"):
        pytest.skip("the openvino backend's runtime is not installed")
    cases = sorted(set(onnx_suite.select(onnx_suite.list_cases(["node"]), None, None, 10)
                       + REGRESSIONS))
    report = onnx_suite.run(["openvino:CPU"], ["openvino"], ["node"], cases=cases, timeout_s=120)
    hal_res = report["runners"]["hal:openvino:CPU"]
    native = report["runners"]["native:openvino"]
    assert sum(hal_res["counts"].values()) == sum(native["counts"].values()) == len(cases)
    (cmp,) = report["comparisons"]
    assert cmp["baseline"] and cmp["lost"] == [], onnx_suite.summary(report)
    for case in REGRESSIONS:
        assert hal_res["results"][case]["result"] == "pass", (case, hal_res["results"][case])
