"""Ordinary numpy arrays in every layout give the right answer on every backend.

The core hands ``infer`` C-contiguous, aligned, native-byte-order arrays of the
exact dtype (``hal.executable.conform``); backends may share them zero-copy for
the call and never write into them. Each layout below goes to a two-input model
(one input over 256 KiB) on every available device, several times with garbage
allocated in between (a backend reading freed memory shows up as changing
answers), and must equal the answer for contiguous copies of the same values —
or be refused with a one-line InvalidInputError.
"""

from __future__ import annotations

import numpy as np
import pytest

import hal
import two_input as ti
from hal import InvalidInputError


def _transposed(x: np.ndarray) -> np.ndarray:
    """Same values, reversed strides: a view of a transposed copy."""
    return np.ascontiguousarray(x.T).T


def _strided(x: np.ndarray) -> np.ndarray:
    """Same values, every other element of a wider array."""
    wide = np.repeat(x, 2, axis=-1)
    return wide[..., ::2]


def _read_only(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y.flags.writeable = False
    return y


def _immutable_bytes(x: np.ndarray) -> np.ndarray:
    """Read-only memory owned by a bytes object (np.frombuffer)."""
    return np.frombuffer(x.tobytes(), dtype=x.dtype).reshape(x.shape)


def _unaligned(x: np.ndarray) -> np.ndarray:
    buf = np.empty(x.nbytes + 1, np.uint8)
    y = buf[1:].view(x.dtype).reshape(x.shape)
    y[...] = x
    assert not y.flags.aligned
    return y


def _broadcast(x: np.ndarray) -> np.ndarray:
    """Read-only, zero strides: one row repeated."""
    return np.broadcast_to(x[..., :1], x.shape)


LAYOUTS = {
    "transposed view": _transposed,
    "strided view": _strided,
    "Fortran order": np.asfortranarray,
    "read-only": _read_only,
    "np.frombuffer (immutable)": _immutable_bytes,
    "big-endian": lambda x: x.astype(x.dtype.newbyteorder(">")),
    "unaligned": _unaligned,
    "broadcast (zero strides)": _broadcast,
}


def _one_line_refusal(e: InvalidInputError) -> None:
    assert "\n" not in str(e), f"not one line: {e}"


def _check_layouts(exe, inputs: tuple[np.ndarray, ...], what: str) -> None:
    assert any(x.nbytes > 256 * 1024 for x in inputs), "one input must exceed 256 KiB"
    for name, layout in LAYOUTS.items():
        given = tuple(layout(x) for x in inputs)
        kept = [x.copy() for x in given]
        # fresh, writable, contiguous copies: the layout hal has always handled
        want = exe(*[np.array(x, x.dtype.newbyteorder("="), order="C") for x in given])
        for _ in range(4):
            try:
                got = exe(*given)
            except InvalidInputError as e:
                _one_line_refusal(e)
                break
            garbage = [np.full(x.shape, 7.0, np.float32) for x in given for _ in range(4)]
            del garbage
            assert np.array_equal(got, want), (
                f"{what}: {name} inputs gave a different answer than contiguous copies "
                f"(max error {np.abs(got - want).max():g})")
        for x, k in zip(given, kept):
            assert np.array_equal(x, k), f"{what}: the backend wrote into the caller's {name} input"


@pytest.mark.parametrize("target", ti.device_params())
def test_every_layout_gives_the_contiguous_answer(target):
    exe = ti.compiled(target)
    _check_layouts(exe, ti.sample(1), target)


@pytest.mark.parametrize("target", ti.device_params())
def test_torch_tensor_views(target):
    torch = pytest.importorskip("torch")
    exe = ti.compiled(target)
    a, b = ti.sample(2)
    ta = torch.from_numpy(np.ascontiguousarray(a.T)).permute(3, 2, 1, 0)  # non-contiguous
    tb = torch.from_numpy(b.copy()).requires_grad_()
    assert np.array_equal(exe(ta, tb), exe(a, b))


def test_openvino_dynamic_shapes_take_every_layout():
    """A dynamic-shape OpenVINO model shares every input zero-copy (no request
    buffer of fixed size to copy into): the path where freed copies were read."""
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed")
    torch = pytest.importorskip("torch")
    if not any(d.target == "openvino:CPU" for d in ti.available()):
        pytest.skip("openvino:CPU is not available")
    a, b = ti.sample(3)
    m = ov.convert_model(ti.model(), example_input=(torch.from_numpy(a), torch.from_numpy(b)),
                         input=[(-1,) + ti.A_SHAPE[1:], (-1,) + ti.B_SHAPE[1:]])
    exe = hal.compile(m, "openvino:CPU", cache=False)
    assert exe.info.inputs[0].shape[0] is None
    _check_layouts(exe, (a, b), "openvino:CPU, dynamic batch")
    a2, b2 = np.concatenate([a, a[:, ::-1]]), np.concatenate([b, -b])
    _check_layouts(exe, (a2, b2), "openvino:CPU, dynamic batch of 2")


@pytest.mark.parametrize("target", [t for t in ("reference:cpu", "cuda:0")])
def test_a_module_that_writes_into_its_input_never_touches_the_callers(target):
    """Eager backends run the caller's module itself: ``x.sub_()`` or
    ``ReLU(inplace=True)`` first would rewrite the caller's array."""
    torch = pytest.importorskip("torch")
    if not any(d.target == target for d in ti.available()):
        pytest.skip(f"{target} is not available")

    class Writes(torch.nn.Module):
        def forward(self, x):
            x.sub_(1.0)
            return torch.nn.functional.relu(x, inplace=True)

    x = np.linspace(-2, 2, 16, dtype=np.float32).reshape(1, 16)
    exe = hal.compile(Writes(), target, example_input=(x.copy(),), cache=False)
    want = np.maximum(x - 1, 0)
    for given in (x, _read_only(x)):
        before = given.copy()
        for _ in range(3):
            y = exe(given)
            np.testing.assert_array_equal(y, want)
            assert not np.shares_memory(y, given)
        np.testing.assert_array_equal(given, before)


# --- the core's side of the contract ------------------------------------------------
@pytest.fixture(scope="module")
def ref_exe():
    if not any(d.target == "reference:cpu" for d in ti.available()):
        pytest.skip("reference:cpu is not available")
    return ti.compiled("reference:cpu")


def test_check_inputs_hands_infer_the_contract(ref_exe):
    a, b = ti.sample(4)
    f32 = np.dtype(np.float32)
    for name, layout in LAYOUTS.items():
        for x in ref_exe.check_inputs((layout(a), layout(b))):
            assert type(x) is np.ndarray and x.dtype is f32, name
            assert x.flags.c_contiguous and x.flags.aligned and x.dtype.isnative, name
    ok = ref_exe.check_inputs((a, b))
    assert ok[0] is a and ok[1] is b, "contiguous inputs must pass through uncopied"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_nan_and_inf_are_refused_in_every_layout(ref_exe, layout):
    a, b = ti.sample(5)
    for bad in (np.nan, np.inf, -np.inf):
        a2 = a.copy()
        a2[0, 1, 7, 9 if layout != "broadcast (zero strides)" else 0] = bad
        with pytest.raises(InvalidInputError, match="NaN or Inf") as e:
            ref_exe(LAYOUTS[layout](a2), b)
        _one_line_refusal(e.value)


def test_finite_inputs_whose_sum_overflows_are_accepted(ref_exe):
    a, b = ti.sample(6)
    big = np.full_like(a, 3e38)  # finite; its float32 sum is inf
    assert ref_exe(big, b).shape == (1, 10)  # accepted: the slow path finds every value finite
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        ref_exe(np.where(np.arange(a.size).reshape(a.shape) == 5, np.inf, big).astype(np.float32), b)


def test_wrong_dtype_is_still_refused(ref_exe):
    a, b = ti.sample(7)
    for wrong in (a.astype(np.float64), a.astype(">f8"), a.astype(np.float16)):
        with pytest.raises(InvalidInputError, match="dtype") as e:
            ref_exe(wrong, b)
        _one_line_refusal(e.value)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_nan_and_inf_are_refused_in_small_inputs_of_every_float_type(dtype):
    """Small float32/64 inputs take the a·a check, others np.isfinite: all refuse."""
    torch = pytest.importorskip("torch")
    if not any(d.target == "reference:cpu" for d in ti.available()):
        pytest.skip("reference:cpu is not available")

    class Double(torch.nn.Module):
        def forward(self, x):
            return x * 2

    x = np.linspace(-3, 3, 64, dtype=dtype).reshape(1, 64)
    exe = hal.compile(Double(), "cpu", example_input=(x,), cache=False)
    np.testing.assert_array_equal(exe(x), x * 2)
    np.testing.assert_array_equal(exe(np.full_like(x, 1e30 if dtype != "float16" else 6e4)),
                                  np.full_like(x, 2e30 if dtype != "float16" else np.inf))
    for bad in (np.nan, np.inf, -np.inf):
        x2 = x.copy()
        x2[0, 17] = bad
        with pytest.raises(InvalidInputError, match="NaN or Inf"):
            exe(x2)
