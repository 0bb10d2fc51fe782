"""The max-pool rewrite (`eqx_attr/_engine/_max_pool.py`, applied by
`_fast_derivatives.py`): same values, same
derivatives (first maximum of each window), far less memory than XLA:CPU's
expansion of select-and-scatter."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._engine._fast_derivatives import fast_derivatives

from .helpers import assert_close, close_mask

POOLS = [  # (window, stride, padding): SmallCNN/VGG, ResNet's stem, overlapping
    (2, 2, 0),
    (3, 2, 1),
    (3, 1, 1),
    (2, 1, 0),
    (3, 3, 0),
]


def _tied_input(key, shape=(3, 9, 11)):
    # Half-integers clipped at zero: most windows hold several equal maxima.
    return jnp.maximum(jnp.round(jax.random.normal(key, shape) * 2) / 2, 0.0)


def _readout(pool):
    def f(x):
        y = pool(x)
        return jnp.sum(jnp.sin(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape) * y)

    return f


@pytest.mark.parametrize("window,stride,padding", POOLS)
def test_values_and_derivatives_equal_jax_with_ties(window, stride, padding):
    f = _readout(eqx.nn.MaxPool2d(window, stride, padding=padding))
    g = fast_derivatives(f)
    x = _tied_input(jax.random.key(window * 10 + stride))
    t = jax.random.normal(jax.random.key(1), x.shape)

    @jax.jit
    def both(x, t):
        rev = jax.grad(f)(x), jax.grad(g)(x)
        fwd = jax.jvp(f, (x,), (t,)), jax.jvp(g, (x,), (t,))
        batched = (
            jax.vmap(jax.grad(f))(jnp.stack([x, 2 * x])),
            jax.vmap(jax.grad(g))(jnp.stack([x, 2 * x])),
        )
        # Second order: a Hessian-vector product (zero almost everywhere, but it
        # must trace and agree).
        hvp = [jax.jvp(jax.grad(h), (x,), (t,))[1] for h in (f, g)]
        return rev, fwd, batched, hvp

    rev, fwd, batched, hvp = both(x, t)
    # The rewrite selects the same element (exactly), so the results are equal.
    # Exact on every CPU: both sides copy the same selected values, and the
    # gradients add them elementwise (no product, no reduction XLA may vectorise);
    # the primal is the same pool and the same reduction in one program; the
    # Hessian-vector products are exact zeros. (The tangent sums products, which
    # a CPU may fuse or reorder: compared under the tolerance policy.)
    np.testing.assert_array_equal(rev[0], rev[1])
    np.testing.assert_array_equal(fwd[0][0], fwd[1][0])
    assert_close(fwd[0][1], fwd[1][1])
    np.testing.assert_array_equal(batched[0], batched[1])
    np.testing.assert_array_equal(hvp[0], hvp[1])
    # The first maximum takes the whole gradient: no window splits it. Every
    # value of ours is one of XLA's (computed eagerly: compared under the policy).
    theirs = np.unique(np.asarray(jax.grad(f)(x)))
    for value in np.unique(np.asarray(rev[1])):
        assert close_mask(value, theirs, scale=np.abs(theirs).max()).any(), value


def test_first_maximum_in_row_major_order_by_hand():
    # One 2x2 window, all four equal: the top-left element gets the gradient.
    pool = eqx.nn.MaxPool2d(2, 2)
    g = jax.grad(fast_derivatives(lambda x: pool(x).sum()))(jnp.ones((1, 2, 2)))
    # Exact: the gradient is a copied 1 or a 0.
    np.testing.assert_array_equal(g, [[[1.0, 0.0], [0.0, 0.0]]])
    # Ties only in the second row: its first element.
    x = jnp.array([[[0.0, -1.0], [2.0, 2.0]]])
    g = jax.grad(fast_derivatives(lambda x: pool(x).sum()))(x)
    np.testing.assert_array_equal(g, [[[0.0, 0.0], [1.0, 0.0]]])


def test_rewrite_reaches_jit_bodies_and_leaves_others_alone():
    pool = eqx.nn.MaxPool2d(2, 2)

    def model(x):
        inner = jax.jit(lambda z: pool(z))(x)  # replaced (inlined)
        _, looped = jax.lax.scan(lambda c, _: (c, pool(c)), x, None, length=1)
        ints = jax.lax.reduce_window(  # integer pools carry no derivative
            x.astype(jnp.int32), -(2**31), jax.lax.max, (1, 2, 2), (1, 2, 2), "VALID"
        )
        return inner.sum() + looped.sum() + ints.sum()

    x = _tied_input(jax.random.key(3), (2, 8, 8))
    rewritten = jax.make_jaxpr(jax.grad(fast_derivatives(model)))(x)
    text = str(rewritten)
    assert "custom_jvp_call" in text  # the jit body's pool
    assert text.count("select_and_scatter_add") == 1  # the scan body keeps its own
    # Exact: non-overlapping windows, so each gradient is a sum of copied ones.
    np.testing.assert_array_equal(
        jax.jit(jax.grad(model))(x), jax.jit(jax.grad(fast_derivatives(model)))(x)
    )


def test_functions_without_pools_are_called_unchanged():
    calls = []

    def f(x):
        calls.append(1)
        return jnp.sum(x**2)

    out = fast_derivatives(f)(jnp.ones(3))
    assert float(out) == 3.0  # exact: a sum of three ones
    assert len(calls) == 2  # traced once to look, then called as it is


def test_gradient_methods_use_it_and_save_memory():
    model = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (1, 28, 28))
    ig = xa.IntegratedGradients(model, n_steps=8)
    program = str(jax.make_jaxpr(jax.vmap(lambda x: ig(x, 3)))(x[None]))
    assert "select_and_scatter_add" not in program
    assert "custom_jvp_call" in program

    # The gradients of a batch of path points, as IG computes them: XLA's plan
    # without the rewrite holds select-and-scatter's index arrays (one s32 array
    # per operand dimension).
    points = jax.random.uniform(jax.random.key(2), (32, 1, 28, 28))
    f = lambda z: model(z)[3]

    def planned(fn):
        compiled = jax.jit(jax.vmap(jax.grad(fn))).lower(points).compile()
        return compiled.memory_analysis().temp_size_in_bytes, compiled(points)

    cheap_bytes, cheap = planned(fast_derivatives(f, convs=False))
    plain_bytes, plain = planned(f)
    # Exact: the same operations on the same values but for the pools' backward
    # pass, which copies each cotangent to its window's first maximum in both
    # (SmallCNN's 2x2 windows do not overlap: nothing is summed).
    np.testing.assert_array_equal(cheap, plain)
    assert cheap_bytes < 0.6 * plain_bytes
