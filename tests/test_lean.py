"""Smooth activations and softmaxes differentiated from one kept array
(`eqx_attr/_engine/_lean.py`, applied by `_fast_derivatives.py`): the same values
and derivatives (first and second order) as JAX's own, fewer arrays kept for the
backward pass, and less planned memory for a transformer block's gradient."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

import eqx_attr as xa
from eqx_attr._attribution import scalar_function
from eqx_attr._engine._fast_derivatives import fast_derivatives

from .helpers import assert_close

V = jax.random.normal(jax.random.key(7), (6, 6))


def _keepdims_softmax(x):
    e = jnp.exp(x - jax.lax.stop_gradient(x.max(-1, keepdims=True)))
    return e / e.sum(-1, keepdims=True)


def _column_sums(x):
    # Each column divided by the sum of the *row* of the same index: not a
    # softmax (the sum is broadcast along the other axis), must not be treated
    # as one.
    e = jnp.exp(x)
    return e / e.sum(1)[None, :]


ACTIVATIONS = {
    "gelu_erf": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": jax.nn.gelu,
    "silu": jax.nn.silu,
    "softplus": jax.nn.softplus,
    "mish_inline": lambda x: x * jnp.tanh(jnp.log1p(jnp.exp(x))),
    "softmax_last": lambda x: jax.nn.softmax(x, axis=-1),
    "softmax_first": lambda x: jax.nn.softmax(x, axis=0),
    "softmax_both_axes": lambda x: jax.nn.softmax(x, axis=(0, 1)),
    "softmax_scaled": lambda x: jax.nn.softmax(0.125 * x, axis=-1),
    "softmax_keepdims_inline": _keepdims_softmax,
    "softmax_unshifted_sum_all": lambda x: jnp.exp(x) / jnp.sum(jnp.exp(x)),
    "not_a_softmax": _column_sums,
    "scaled_by_own_max": lambda x: jnp.tanh(x) * jnp.max(x),
}


def _head(act):
    # The activation between two products, as in an MLP or attention block (the
    # second product needs the activation's output; a tanh makes the readout
    # nonlinear, so second derivatives are not zero).
    return lambda x: jnp.sum(jnp.tanh((act(x) @ V) * x))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_values_and_derivatives_equal_jax(name):
    f = _head(ACTIVATIONS[name])
    g = fast_derivatives(f)
    x = jax.random.normal(jax.random.key(1), (6, 6)) * 2  # square: _column_sums
    t = jax.random.normal(jax.random.key(2), x.shape)

    @jax.jit
    def both(x, t):
        return [
            (h(x), jax.grad(h)(x), jax.jvp(h, (x,), (t,))[1], jax.hessian(h)(x))
            for h in (f, g)
        ]

    theirs, ours = both(x, t)
    for a, b in zip(ours, theirs, strict=True):
        assert_close(a, b)
    xs = jnp.stack([x, -x])
    assert_close(jax.vmap(jax.grad(g))(xs), jax.vmap(jax.grad(f))(xs))


def _kept(fn, x) -> int:
    """How many arrays of `x`'s size the backward pass of `fn` keeps."""
    return sum(r.shape == x.shape for r, _ in saved_residuals(fn, x))


@pytest.mark.parametrize("name", ["gelu_erf", "gelu_tanh", "silu", "softmax_last"])
def test_one_array_kept(name):
    # JAX keeps GELU's product, `erfc` and `exp` (the erf form), SiLU's input and
    # sigmoid, a softmax's `exp` and output: the lean forms keep the activation's
    # input (the softmax: its output).
    act = ACTIVATIONS[name]
    # The readout needs nothing of the activation but its derivative (a product
    # with a constant), except the softmax, whose output a product with another
    # function of x needs (as attention's product with the values does).
    if name.startswith("softmax"):
        f = lambda x: jnp.sum(act(x) @ jnp.sin(x).T)  # noqa: E731
        extra = 1  # sin's derivative: cos(x)
    else:
        f = lambda x: jnp.sum(act(x) @ V)  # noqa: E731
        extra = 0
    x = jax.random.normal(jax.random.key(1), (4, 6))
    assert _kept(fast_derivatives(f), x) == 1 + extra
    assert _kept(f, x) > 1 + extra


class _Block(eqx.Module):
    """A pre-norm transformer block with `eqx.nn.MultiheadAttention` and a GELU
    MLP, as users write them."""

    norm1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    norm2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(self, d, key):
        k = jax.random.split(key, 4)
        self.norm1, self.norm2 = eqx.nn.LayerNorm(d), eqx.nn.LayerNorm(d)
        self.attn = eqx.nn.MultiheadAttention(4, d, key=k[0])
        self.fc1 = eqx.nn.Linear(d, 4 * d, key=k[1])
        self.fc2 = eqx.nn.Linear(4 * d, d, key=k[2])
        self.head = eqx.nn.Linear(d, 10, key=k[3])

    def __call__(self, x):  # x: (tokens, d)
        h = jax.vmap(self.norm1)(x)
        x = x + self.attn(h, h, h)
        h = jax.vmap(self.fc1)(jax.vmap(self.norm2)(x))
        x = x + jax.vmap(self.fc2)(jax.nn.gelu(h, approximate=False))
        return self.head(x.mean(0))


def test_transformer_block_gradient_keeps_less():
    # XLA's planned temporary memory for the batched input gradient: the lean
    # derivatives keep the GELU's input instead of three arrays of its size, and
    # the attention's output instead of it and its `exp`.
    model = _Block(32, jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (16, 64, 32))
    ts = jnp.arange(16) % 10

    def program(fast):
        def one(x, t):
            if fast:  # what every gradient method differentiates
                return jax.grad(scalar_function(model, x, t))(x)
            return jax.grad(lambda x: model(x)[t])(x)

        return jax.jit(jax.vmap(one)).lower(xs, ts).compile()

    plain, lean = (program(fast).memory_analysis() for fast in (False, True))
    # (37% less with XLA's default flags, 12% with the suite's cheap compiles.)
    assert lean.temp_size_in_bytes < plain.temp_size_in_bytes
    # What JAX keeps, per example: one array of the MLP's hidden size (the GELU's
    # input) and one of the attention's (its output).
    x, t = xs[0], 3
    kept = lambda f, shape: sum(r.shape == shape for r, _ in saved_residuals(f, x))  # noqa: E731
    fast, slow = scalar_function(model, x, t), lambda x: model(x)[t]
    assert (kept(fast, (64, 128)), kept(fast, (4, 64, 64))) == (1, 1)
    assert kept(slow, (64, 128)) > 1 and kept(slow, (4, 64, 64)) >= 1
    assert_close(
        jax.vmap(lambda x, t: xa.Gradients(model)(x, t))(xs, ts),
        jax.vmap(lambda x, t: jax.grad(lambda x: model(x)[t])(x))(xs, ts),
    )


def test_half_precision():
    # bfloat16 (float16 conversions do not compile for SSE4.2-only CPUs: see
    # tests/test_half_precision.py): the gradient comes back in bfloat16 and
    # agrees with JAX's within its rounding.
    f = _head(ACTIVATIONS["gelu_erf"])
    x = (jax.random.normal(jax.random.key(1), (6, 6)) * 2).astype(jnp.bfloat16)
    ours = jax.grad(lambda x: fast_derivatives(f)(x).astype(jnp.float32))(x)
    assert ours.dtype == jnp.bfloat16
    theirs = jax.grad(lambda x: f(x).astype(jnp.float32))(x)
    assert_close(
        np.asarray(ours, np.float32), np.asarray(theirs, np.float32), dtype=jnp.bfloat16
    )
    assert np.isfinite(np.asarray(ours, np.float32)).all()
