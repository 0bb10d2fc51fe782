"""The convolution rewrite (`eqx_attr/_engine/_fast_conv.py`): the same values and
derivatives as XLA's convolution, computed as a sum of taps and an im2col product.

With small integer inputs, weights, tangents and cotangents every product and sum
is exact in float32 whatever the order of summation, so the rewrite must agree
bit for bit; with real inputs it agrees up to rounding."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import eqx_attr as xa
from eqx_attr._engine import _fast_conv
from eqx_attr._engine._fast_derivatives import fast_derivatives, loop_body

from .helpers import assert_close

# (lhs shape, rhs shape, strides, padding, rhs dilation, dimension numbers)
CASES = {
    "grey-3x3": ((2, 1, 9, 8), (4, 1, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), None),
    "rgb-nhwc-strided": (
        (2, 9, 8, 3),
        (3, 3, 3, 5),
        (2, 2),
        ((1, 0), (2, 1)),
        (1, 1),
        ("NHWC", "HWIO", "NHWC"),
    ),
    "grey-5x5-out-nhwc": (
        (1, 1, 9, 9),
        (3, 1, 5, 5),
        (1, 1),
        ((2, 2), (2, 2)),
        (1, 1),
        ("NCHW", "OIHW", "NHWC"),
    ),
    "dilated-patches": (
        (2, 2, 9, 9),
        (3, 2, 3, 2),
        (1, 2),
        ((0, 0), (1, 1)),
        (2, 1),
        None,
    ),
    "patch-embedding": (
        (1, 1, 8, 8),
        (6, 1, 4, 4),
        (4, 4),
        ((0, 0), (0, 0)),
        (1, 1),
        None,
    ),
    "one-d": ((3, 2, 13), (4, 2, 3), (1,), ((1, 1),), (1,), ("NCH", "OIH", "NCH")),
    # Small: the kernel covers more positions than the map (XLA would swap them).
    "small-2x2": ((2, 8, 2, 2), (4, 8, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), None),
    "small-1x1-nhwc": (
        (2, 1, 1, 8),
        (3, 3, 8, 5),
        (1, 1),
        ((1, 1), (1, 1)),
        (1, 1),
        ("NHWC", "HWIO", "NHWC"),
    ),
    "small-output": (
        (2, 6, 5, 5),
        (3, 6, 5, 5),
        (1, 1),
        ((0, 0), (0, 0)),
        (1, 1),
        None,
    ),
}


def _ints(key, shape):
    return jax.random.randint(key, shape, -3, 4).astype(jnp.float32)


def _conv(strides, padding, dilation, dims):
    def f(x, w):
        return lax.conv_general_dilated(
            x, w, strides, padding, rhs_dilation=dilation, dimension_numbers=dims
        )

    return f


@pytest.mark.parametrize("case", CASES)
def test_values_and_derivatives_equal_xla_exactly(case):
    lhs, rhs, strides, padding, dilation, dims = CASES[case]
    f = _conv(strides, padding, dilation, dims)
    g = fast_derivatives(f)
    keys = jax.random.split(jax.random.key(len(case)), 6)
    x, w = _ints(keys[0], lhs), _ints(keys[1], rhs)
    y = f(x, w)
    ct, tx, tw = _ints(keys[2], y.shape), _ints(keys[3], lhs), _ints(keys[4], rhs)
    xs = jnp.stack([x, _ints(keys[5], lhs)])

    @jax.jit
    def both(x, w, xs):
        out = []
        for h in (f, g):
            energy = lambda x, w: jnp.sum(h(x, w) ** 2)
            out.append(
                (
                    h(x, w),
                    jax.vjp(h, x, w)[1](ct),
                    jax.jvp(h, (x, w), (tx, tw)),
                    jax.vmap(lambda x: jax.vjp(h, x, w)[1](ct))(xs),
                    # second order, in the input and across input and weights
                    jax.jvp(jax.grad(energy), (x, w), (tx, tw)),
                    jax.grad(lambda w: jnp.sum(jax.grad(energy)(x, w)))(w),
                )
            )
        return out

    ref, new = both(x, w, xs)
    # Exact on every CPU: small integers, every partial sum exact in float32 (below
    # 2^24), so the summation order cannot matter.
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(y).max()) > 0


def test_rewritten_program_has_no_convolution_and_agrees_on_real_inputs():
    model = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (1, 28, 28))
    f = lambda z: model(z)[3]
    program = str(jax.make_jaxpr(jax.grad(fast_derivatives(f)))(x))
    # Four convolutions forward; the first (one input channel, 3x3) is thin, and
    # the backward pass transposes the three others into three more.
    assert program.count("conv_general_dilated") == 3 + 3
    plain = str(jax.make_jaxpr(jax.grad(f))(x))
    assert plain.count("conv_general_dilated") == 4 + 3 + 1
    rewritten, xla = jax.jit(
        lambda x: (jax.grad(fast_derivatives(f))(x), jax.grad(f)(x))
    )(x)
    assert_close(rewritten, xla)


@pytest.mark.parametrize(
    "conv,replaced",
    [
        (eqx.nn.Conv2d(3, 8, 3, key=jax.random.key(0)), True),  # 27 taps
        (eqx.nn.Conv2d(1, 8, 5, key=jax.random.key(0)), True),  # 25
        (eqx.nn.Conv2d(4, 8, 3, key=jax.random.key(0)), False),  # 36: XLA's
        (eqx.nn.Conv2d(3, 64, 7, stride=2, key=jax.random.key(0)), False),  # stem
        (eqx.nn.Conv2d(2, 4, 3, groups=2, key=jax.random.key(0)), False),  # grouped
        (eqx.nn.ConvTranspose2d(1, 4, 3, stride=2, key=jax.random.key(0)), False),
    ],
)
def test_which_convolutions_are_thin(conv, replaced):
    x = jnp.ones((conv.in_channels, 24, 24))
    eqns = [
        e
        for e in jax.make_jaxpr(conv)(x).jaxpr.eqns
        if e.primitive.name == "conv_general_dilated"
    ]
    assert len(eqns) == 1
    assert _fast_conv.replaceable(eqns[0]) == replaced
    program = str(jax.make_jaxpr(fast_derivatives(conv))(x))
    assert ("conv_general_dilated" not in program) == replaced


@pytest.mark.parametrize("side", [1, 2, 3, 8])
def test_small_maps_are_products(side):
    """A 3x3 convolution on a map with fewer than 9 positions is computed, and
    differentiated, without XLA's convolution (which swaps its operands there and
    runs 50-100x slower); on 3x3 maps and larger XLA keeps it."""
    conv = eqx.nn.Conv2d(16, 8, 3, padding=1, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (16, side, side))
    f = lambda x: jnp.sum(jnp.tanh(conv(x)))
    program = str(jax.make_jaxpr(jax.grad(fast_derivatives(f)))(x))
    assert ("conv_general_dilated" not in program) == (side < 3)
    assert_close(jax.grad(fast_derivatives(f))(x), jax.grad(f)(x))


def test_integer_convolutions_and_other_backends_keep_xla(monkeypatch):
    x, w = jnp.ones((1, 1, 6, 6), jnp.int32), jnp.ones((2, 1, 3, 3), jnp.int32)
    f = _conv((1, 1), "SAME", (1, 1), None)
    program = str(jax.make_jaxpr(fast_derivatives(f))(x, w))
    assert "conv_general_dilated" in program
    # Off CPU the backend's own convolution is kept (cuDNN runs thin ones well).
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    xf, wf = x.astype(jnp.float32), w.astype(jnp.float32)
    program = str(jax.make_jaxpr(fast_derivatives(f))(xf, wf))
    assert "conv_general_dilated" in program


# Wider than thin (72 taps): computed as an im2col product in loop bodies.
WIDE = {
    "wide-3x3": ((2, 8, 9, 8), (4, 8, 3, 3), (1, 1), ((1, 1), (1, 1)), (1, 1), None),
    "wide-nhwc-strided": (
        (2, 9, 8, 8),
        (3, 3, 8, 5),
        (2, 2),
        ((1, 0), (2, 1)),
        (1, 1),
        ("NHWC", "HWIO", "NHWC"),
    ),
    "wide-dilated": (
        (2, 8, 9, 9),
        (3, 8, 3, 3),
        (1, 2),
        ((0, 0), (1, 1)),
        (2, 1),
        None,
    ),
}


@pytest.mark.parametrize("case", WIDE)
def test_loop_bodies_compute_every_convolution_as_a_product_exactly(case):
    lhs, rhs, strides, padding, dilation, dims = WIDE[case]
    f = _conv(strides, padding, dilation, dims)
    with loop_body():
        g = fast_derivatives(f)
        keys = jax.random.split(jax.random.key(3), 4)
        x, w = _ints(keys[0], lhs), _ints(keys[1], rhs)
        ct = _ints(keys[2], f(x, w).shape)
        program = str(jax.make_jaxpr(lambda x, w: jax.vjp(g, x, w)[1](ct))(x, w))
        ref = f(x, w), jax.vjp(f, x, w)[1](ct)
        new = g(x, w), jax.vjp(g, x, w)[1](ct)
    assert "conv_general_dilated" not in program
    # Exact on every CPU: small integers, every partial sum exact in float32.
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(new), strict=True):
        np.testing.assert_array_equal(a, b)
    # Outside the context the same convolution is XLA's.
    assert "conv_general_dilated" in str(jax.make_jaxpr(fast_derivatives(f))(x, w))


def test_chunked_integrated_gradients_loop_has_no_convolution():
    model = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (1, 28, 28))
    ig = xa.IntegratedGradients(model, n_steps=8, chunk_size=4)
    both = jax.jit(lambda x: (ig(x, 3), xa.IntegratedGradients(model, n_steps=8)(x, 3)))
    lowered = jax.jit(lambda x: ig(x, 3)).lower(x).as_text()
    assert "while" in lowered and "convolution" not in lowered
    chunked, plain = both(x)
    assert_close(chunked, plain)
