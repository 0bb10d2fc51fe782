"""The call contract, for every method of the registry (`tests/helpers.METHODS`).

Shape and dtype; one compile for repeated calls; vmap over inputs and over
targets equals the loop; the caller's model is untouched; bad target, shape and
dtype raise at trace time, naming the argument.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._registry import methods

from .helpers import (
    METHODS,
    NOT_ON_SMALL_CNN,
    MethodSpec,
    digit_like,
    small_cnn,
    tree_allclose,
)

# ------------------------------------------------------------------------------
# The contract, for every method in the one list.


def _call(spec: MethodSpec, method, x, t, key):
    return method(x, t, key=key) if spec.random else method(x, t)


def _expected_shape(spec: MethodSpec, x):
    return x.shape if spec.output == "input" else x.shape[-2:]


@pytest.mark.parametrize("spec", METHODS, ids=repr)
def test_batched_equals_per_example(spec):
    m = small_cnn()
    method = spec.build(m)
    xs = jax.random.uniform(jax.random.key(7), (3, 1, 28, 28))
    ts = jnp.array([1, 5, 9])
    keys = jax.random.split(jax.random.key(8), 3)
    if spec.random:
        batched = eqx.filter_vmap(lambda x, t, k: method(x, t, key=k))(xs, ts, keys)
    else:
        batched = eqx.filter_vmap(method)(xs, ts)
    assert batched.shape == (3, *_expected_shape(spec, xs[0]))
    for i in range(3):
        single = _call(spec, method, xs[i], int(ts[i]), keys[i])
        np.testing.assert_allclose(batched[i], single, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("spec", METHODS, ids=repr)
def test_vmap_over_targets_equals_loop(spec):
    m = small_cnn(2)
    method = spec.build(m)
    x = digit_like(3)
    key = jax.random.key(9)
    per_class = jax.vmap(lambda t: _call(spec, method, x, t, key))(jnp.arange(10))
    for t in (0, 4, 9):
        np.testing.assert_allclose(
            per_class[t], _call(spec, method, x, t, key), rtol=2e-4, atol=1e-6
        )


@pytest.mark.parametrize("spec", METHODS, ids=repr)
def test_jit_never_retraces(spec):
    traces = []

    class Counting(eqx.Module):
        inner: eqx.Module

        def __call__(self, x):
            traces.append(1)
            return self.inner(x)

    method = eqx.filter_jit(spec.build(Counting(small_cnn())))
    key = jax.random.key(0)
    out1 = _call(spec, method, digit_like(0), jnp.array(3), key)
    n_first = len(traces)
    assert n_first > 0
    for seed, t in ((1, 4), (2, 7), (3, 3)):
        out = _call(spec, method, digit_like(seed), jnp.array(t), key)
    assert len(traces) == n_first
    assert out.shape == out1.shape


@pytest.mark.parametrize("spec", METHODS, ids=repr)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes(spec, dtype):
    m = small_cnn()
    x = digit_like(4)
    ref = _call(spec, spec.build(m), x, 2, jax.random.key(1))
    # A bfloat16 image goes with a bfloat16 model (mixed dtypes are the model's
    # business: a conv refuses them).
    m_cast = jax.tree.map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, m
    )
    out = _call(spec, spec.build(m_cast), x.astype(dtype), 2, jax.random.key(1))
    assert out.shape == _expected_shape(spec, x)
    assert out.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(out.astype(jnp.float32))))
    if dtype == jnp.float32:
        assert tree_allclose(out, ref)
    else:
        # bfloat16 has 8 bits of mantissa: compare in aggregate, not elementwise.
        a = np.asarray(out, np.float32).ravel()
        b = np.asarray(ref, np.float32).ravel()
        if np.linalg.norm(b) > 0:
            cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)
            assert cos > 0.9


@pytest.mark.parametrize("spec", METHODS, ids=repr)
def test_methods_are_pure_and_final(spec):
    m = small_cnn()
    before = jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array))
    method = spec.build(m)
    assert isinstance(method, xa.AbstractAttribution)
    _call(spec, method, digit_like(), 1, jax.random.key(0))
    after = jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array))
    assert all(a is b for a, b in zip(before, after, strict=True))
    if spec.random:
        with pytest.raises(ValueError, match="key"):
            method(digit_like(), 1)


@pytest.mark.parametrize("spec", METHODS, ids=repr)
def test_bad_target_shape_and_dtype_raise(spec):
    method = spec.build(small_cnn())
    x, key = digit_like(), jax.random.key(0)
    with pytest.raises(ValueError, match="target"):
        _call(spec, method, x, 10, key)  # out of range for 10 classes
    with pytest.raises(ValueError, match="target"):
        _call(spec, method, x, jnp.array([1, 2]), key)  # not a single class
    with pytest.raises((ValueError, TypeError), match="x|input|shape"):
        _call(spec, method, jnp.ones((2, 28, 28)), 1, key)  # wrong channels
    with pytest.raises(TypeError, match="dtype|float"):
        _call(spec, method, jnp.ones((1, 28, 28), jnp.int32), 1, key)


def test_every_registry_method_is_covered():
    # The contract above runs every registry entry (or a hand-written variant of
    # its class); entries that SmallCNN cannot run are named, never dropped.
    names = {spec.name for spec in METHODS}
    for entry in methods():
        assert entry.cls.__name__ in names or entry.name in NOT_ON_SMALL_CNN, entry
    assert all(issubclass(e.cls, xa.AbstractAttribution) for e in methods())
