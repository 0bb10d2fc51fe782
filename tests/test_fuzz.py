"""Property-based fuzzing of every method in `helpers.METHODS` with hypothesis.

Each call either returns a finite floating array of the documented shape, or
raises `ValueError`/`TypeError` (trace time) or Equinox's runtime error (checks on
traced values) whose message names the offending argument. Never another
exception type, never NaN/inf output for a finite input, never a silently clamped
target.

Cost: each method is built once and compiled once (float32, one shape) for the
value fuzzing; the call-shape fuzzing only traces (`eqx.filter_eval_shape`), so it
never compiles. The hypothesis profile (derandomised, small `max_examples`) is
registered in `conftest.py`.
"""

import functools
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import eqx_attr as xa

from .helpers import METHODS, MethodSpec

N_CLASSES = 10
SHAPE = (1, 8, 8)  # SmallCNN accepts any (1, H, W) with H, W >= 4
KEY = jax.random.key(0)
# Finite inputs are drawn with magnitudes up to 1e6 (far outside any image range,
# yet every product of two such quantities stays finite in float32).
MAX_MAGNITUDE = 6


@functools.cache
def _model() -> eqx.Module:
    return xa.models.SmallCNN(width=2, n_classes=N_CLASSES, key=jax.random.key(0))


@functools.cache
def _method(spec: MethodSpec):
    return spec.make(_model(), SHAPE)


def _call(method, x, target, key):
    return method(x, target, key=key)


# One jitted function: each method compiles once (its PyTree structure is part of
# the cache key), and every value example of that method reuses the compilation.
_run = eqx.filter_jit(_call)


def _expected_shape(spec: MethodSpec, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    if spec.output == "layer":  # the layer family reads SmallCNN's conv2
        x = jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32)
        layer = lambda m: m.conv2  # noqa: E731
        return eqx.filter_eval_shape(xa.layer_activation, _model(), layer, x).shape
    return tuple(x_shape) if spec.output == "input" else tuple(x_shape[-2:])


def _names(message: str, argument: str) -> bool:
    # The library's own errors quote it as `x`; under the test run, jaxtyping's
    # runtime type check may answer first, naming the parameter as 'x'.
    return re.search(rf"`{argument}\b|parameter '{argument}'", message) is not None


# ---------------------------------------------------------------------------------
# Strategies


def _bad_x():
    """Images that no method may accept: each with the reason it is bad."""
    dims = st.integers(1, 6)
    rank = st.one_of(
        st.just(()),
        st.tuples(dims),
        st.tuples(dims, dims),
        st.tuples(st.just(1), st.just(1), st.just(8), st.just(8)),
        st.tuples(dims, dims, dims, dims, dims),
    ).map(lambda s: ("rank", np.zeros(s, np.float32)))
    channels = st.sampled_from([0, 2, 3]).map(
        lambda c: ("channels", np.ones((c, 8, 8), np.float32))
    )
    empty = st.sampled_from([(1, 0, 8), (1, 8, 0), (0, 0, 0)]).map(
        lambda s: ("empty", np.zeros(s, np.float32))
    )
    small = st.tuples(st.integers(1, 3), st.integers(1, 12)).flatmap(
        lambda hw: st.permutations(hw).map(
            lambda p: ("too small", np.ones((1, *p), np.float32))
        )
    )
    dtype = st.sampled_from([np.bool_, np.int8, np.uint8, np.int32, np.complex64]).map(
        lambda d: ("dtype", np.ones(SHAPE, d))
    )
    not_array = st.sampled_from(
        [[[0.0] * 8] * 8, 1.0, 3, "image", None, (np.ones(SHAPE, np.float32),)]
    ).map(lambda v: ("type", v))
    return st.one_of(rank, channels, empty, small, dtype, not_array)


def _vector(s):
    return s.reshape(-1)[:3]


# Python ints are checked at trace time; array targets (NumPy scalars included) are
# traced, so their range is checked at run time (see the value fuzzing below).
_BAD_TARGETS = [
    -1,
    -100,
    N_CLASSES,
    N_CLASSES + 7,
    3.0,
    np.float32(1.0),
    True,
    np.bool_(False),
    "3",
    [3],
    None,
    np.array([1, 2]),
    np.array([3]),
    np.array(2.0, np.float32),
    np.array(True),
    np.array([[1]], np.int32),
    np.array(1 + 0j),
    _vector,
]


def _good_x():
    """Valid shapes (spatial sizes >= 4) in every floating dtype.

    Returns `(x, exact)`: `exact` when the model (float32) must accept `x`. A
    float16 or bfloat16 image meets float32 weights, which a convolution may
    reject: then the error must name `x` (a low-precision run casts the model too,
    as `test_gradient.py::test_dtypes` does).
    """
    size = st.integers(4, 12)
    dtype = st.sampled_from(
        [np.float32, np.float64, "jax", np.float16, ml_dtypes.bfloat16]
    )

    def build(h, w, d):
        x = np.linspace(0.0, 1.0, h * w, dtype=np.float32).reshape(1, h, w)
        exact = d in (np.float32, np.float64, "jax")
        return (jnp.asarray(x) if d == "jax" else x.astype(d)), exact

    return st.builds(build, size, size, dtype)


# ---------------------------------------------------------------------------------
# Call shapes, dtypes and targets (trace time only)


@pytest.mark.parametrize("spec", METHODS, ids=str)
@settings(max_examples=8)
@given(data=st.data())
def test_fuzz_call_is_valid_or_names_the_argument(spec: MethodSpec, data):
    method = _method(spec)
    key = KEY if spec.random else None
    case = data.draw(st.sampled_from(["x", "target", "good", "key"]), label="case")
    if (case == "key" and not spec.random) or (
        case == "target" and not spec.takes_target
    ):
        case = "good"
    x, target, argument = np.ones(SHAPE, np.float32), 3, None
    if case == "x":
        reason, x = data.draw(_bad_x(), label="bad x")
        argument = "x"
    elif case == "target":
        target = data.draw(st.sampled_from(_BAD_TARGETS), label="bad target")
        # A class-agnostic method ignores a target, or rejects a malformed one.
        argument = "target?" if spec.class_agnostic else "target"
    elif case == "key":
        key, argument = None, "key"
    else:
        x, exact = data.draw(_good_x(), label="good x")
        argument = None if exact else "x?"
        if spec.sized is not None and np.shape(x) != SHAPE:
            argument = "x?"  # its mask or window was made for SHAPE
        target = data.draw(
            st.one_of(
                st.integers(0, N_CLASSES - 1),
                st.integers(0, N_CLASSES - 1).map(np.int32),
                st.just(lambda s: jax.nn.log_softmax(s)[2]),
            ),
            label="good target",
        )
    if not spec.takes_target:  # a neuron method explains its neuron
        target = None
    try:
        out = eqx.filter_eval_shape(_call, method, x, target, key)
    except (ValueError, TypeError) as e:
        assert argument is not None, f"valid call raised {type(e).__name__}: {e}"
        argument = argument.rstrip("?")
        assert _names(str(e), argument) or (
            argument == "key" and "PRNG key" in str(e)
        ), f"the error does not name `{argument}`: {e}"
        return
    assert argument in (None, "x?", "target?"), f"invalid `{argument}` was accepted"
    assert isinstance(out, jax.ShapeDtypeStruct)
    assert out.shape == _expected_shape(spec, np.shape(x))
    assert jnp.issubdtype(out.dtype, jnp.floating)


# ---------------------------------------------------------------------------------
# Values: NaN, inf, huge and tiny magnitudes, traced targets (compiled once)


@st.composite
def _values(draw):
    x = draw(
        hnp.arrays(
            np.float32,
            SHAPE,
            elements=st.floats(-1, 1, width=32),
            fill=st.floats(-1, 1, width=32),
        )
    )
    scale = draw(st.sampled_from([0.0, 1e-30, 1e-6, 1.0, 10.0**MAX_MAGNITUDE]))
    x = x * np.float32(scale)
    bad = draw(st.sampled_from([None, None, np.nan, np.inf, -np.inf]))
    if bad is not None:
        index = draw(st.tuples(*(st.integers(0, d - 1) for d in SHAPE)))
        x[index] = bad
    target = draw(st.integers(-3, N_CLASSES + 2))
    return x, target


@pytest.mark.parametrize("spec", METHODS, ids=str)
@settings(max_examples=10)
@given(values=_values())
def test_fuzz_values_finite_or_runtime_error(spec: MethodSpec, values):
    x, target = values
    key = KEY if spec.random else None
    finite = bool(np.all(np.isfinite(x)))
    in_range = 0 <= target < N_CLASSES or spec.class_agnostic or not spec.takes_target
    t = jnp.asarray(target, jnp.int32) if spec.takes_target else None
    try:
        out = _run(_method(spec), jnp.asarray(x), t, key)
        out = np.asarray(jax.block_until_ready(out), np.float32)
    except eqx.EquinoxRuntimeError as e:
        message = str(e)
        assert not (finite and in_range), f"valid call raised: {message}"
        named = (not finite and _names(message, "x")) or (
            not in_range and _names(message, "target")
        )
        assert named, f"the error does not name the argument: {message}"
        if not finite and in_range:
            assert re.search("NaN or inf", message)
        return
    assert finite, "a non-finite `x` was accepted"
    assert in_range, f"`target={target}` was accepted (clamped?)"
    assert out.shape == _expected_shape(spec, SHAPE)
    assert np.all(np.isfinite(out)), "non-finite attribution for a finite input"
