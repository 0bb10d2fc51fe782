"""Gradients, Gradients x Input, SmoothGrad and the shared call contract."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, digit_like, jcall, small_cnn, tree_allclose


def linear_model():
    w = jnp.arange(12.0).reshape(3, 4) - 5.0

    def f(x):
        return w @ x

    return f, w


def test_gradients_linear_hand_values():
    f, w = linear_model()
    x = jnp.array([1.0, -2.0, 0.5, 3.0])
    assert_close(xa.Gradients(f)(x, 2), w[2])
    assert_close(xa.Gradients(f, abs=True)(x, 0), jnp.abs(w[0]))
    # For a linear model Gradients x Input is each input's exact contribution.
    gxi = xa.GradientsXInput(f)(x, 1)
    assert_close(gxi, w[1] * x)
    assert_close(jnp.sum(gxi), f(x)[1], scale=float(jnp.abs(gxi).sum()))


def test_gradient_relu_hand_values():
    # f = relu(x1 - x2) + 2 relu(x2): at (1, 3) the first unit is off.
    def f(x):
        return jax.nn.relu(x[0] - x[1]) + 2.0 * jax.nn.relu(x[1])

    assert_close(xa.Gradients(f)(jnp.array([1.0, 3.0])), np.array([0.0, 2.0]))
    assert_close(xa.Gradients(f)(jnp.array([4.0, 3.0])), np.array([1.0, 1.0]))


def test_targets_int_array_callable_none():
    f, w = linear_model()
    x = jnp.array([1.0, -2.0, 0.5, 3.0])
    g = xa.Gradients(f)
    assert_close(g(x, jnp.array(1)), w[1])
    assert_close(g(x, np.int64(1)), w[1])
    assert_close(g(x, lambda s: s[0] + s[2]), w[0] + w[2])
    p = jax.nn.softmax(f(x))
    soft = g(x, lambda s: jax.nn.softmax(s)[1])
    assert_close(soft, p[1] * (w[1] - p @ w))
    assert_close(xa.Gradients(lambda z: jnp.sum(z**2))(x), 2 * x)


def test_bad_targets():
    f, _ = linear_model()
    x = jnp.ones(4)
    g = xa.Gradients(f)
    for bad in (3, -1, 100):
        with pytest.raises(ValueError, match=r"target=.*out of range.*\[0, 2\]"):
            g(x, bad)
    with pytest.raises(ValueError, match="target=None"):
        g(x, None)
    with pytest.raises(ValueError, match="0-d"):
        g(x, jnp.array([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        g(x, jnp.array(1.0))
    with pytest.raises(TypeError, match="target"):
        g(x, "cat")
    with pytest.raises(ValueError, match="scalar"):
        g(x, lambda s: s[:2])
    # A traced target can only be checked at run time; it must not be clamped.
    with pytest.raises(RuntimeError, match="out of range"):
        eqx.filter_jit(g)(x, jnp.array(3))
    with pytest.raises(RuntimeError, match="out of range"):
        jax.vmap(lambda t: g(x, t))(jnp.array([0, 7]))


def test_bad_inputs():
    m = small_cnn()
    g = xa.Gradients(m)
    with pytest.raises(TypeError, match=r"float.*astype"):
        g(jnp.ones((1, 28, 28), jnp.uint8), 0)
    with pytest.raises(TypeError, match="array"):
        g([[0.0]], 0)
    with pytest.raises(ValueError, match=r"(?s)rejected input `x`.*\(2, 28, 28\).*ONE"):
        g(jnp.ones((2, 28, 28)), 0)
    with pytest.raises(ValueError, match="rejected input"):
        g(jnp.ones((4, 1, 28, 28)), 0)
    x = digit_like().at[0, 3, 3].set(jnp.nan)
    with pytest.raises(RuntimeError, match="NaN"):
        g(x, 0)
    with pytest.raises(RuntimeError, match="NaN"):
        eqx.filter_jit(xa.IntegratedGradients(m, n_steps=2))(x, 0)


def test_smoothgrad_zero_noise_reduces_to_base():
    m = small_cnn()
    x = digit_like()
    grad = jcall(xa.Gradients(m), x, 4)
    key = jax.random.key(0)
    kw = dict(n_samples=3, stdev=0.0)
    sg = jcall(xa.SmoothGrad(xa.Gradients(m), **kw), x, 4, key)
    sq = jcall(xa.SmoothGrad(xa.Gradients(m), kind="smoothgrad_sq", **kw), x, 4, key)
    vg = jcall(xa.SmoothGrad(xa.Gradients(m), kind="vargrad", **kw), x, 4, key)
    assert_close(sg, grad)
    assert_close(sq, grad**2)
    # VarGrad is mean(g^2) - mean(g)^2: zero up to the rounding of those terms.
    assert_close(vg, 0.0, scale=float(jnp.max(grad**2)))


def test_smoothgrad_matches_explicit_average():
    # Linear model: SmoothGrad of Gradients x Input = W * mean(noisy x); we rebuild
    # the noise from the documented key schedule independently of the method.
    f, w = linear_model()
    x = jnp.array([1.0, -2.0, 0.5, 3.0])
    key = jax.random.key(3)
    n, stdev = 6, 0.2
    out = xa.SmoothGrad(xa.GradientsXInput(f), n_samples=n, stdev=stdev)(x, 0, key=key)
    noise_keys = jax.random.split(key, 2 * n)[:n]
    sigma = stdev * (x.max() - x.min())
    noisy = jnp.stack([x + sigma * jax.random.normal(k, x.shape) for k in noise_keys])
    assert_close(out, w[0] * noisy.mean(0))
    w0 = w[0][None]
    # vargrad = smoothgrad_sq - smoothgrad^2 sample-wise identity.
    vals = w0 * noisy
    vg = xa.SmoothGrad(xa.GradientsXInput(f), n_samples=n, stdev=stdev, kind="vargrad")(
        x, 0, key=key
    )
    # VarGrad is mean(v^2) - mean(v)^2: rounding relative to the mean squares.
    assert_close(vg, vals.var(0), scale=float(jnp.max(jnp.mean(vals**2, axis=0))))


def test_smoothgrad_noise_modes_chunks_and_keys():
    m = small_cnn(1)
    x = digit_like(1) * 2.0
    key = jax.random.key(5)
    rel = xa.SmoothGrad(xa.Gradients(m), n_samples=5, stdev=0.1)
    rng = float(x.max() - x.min())
    absolute = xa.SmoothGrad(
        xa.Gradients(m), n_samples=5, stdev=0.1 * rng, noise="absolute"
    )
    assert_close(jcall(rel, x, 2, key), jcall(absolute, x, 2, key))
    full = {}
    for kind in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        full[kind] = jcall(
            xa.SmoothGrad(xa.Gradients(m), n_samples=5, kind=kind), x, 2, key
        )
        chunked = jcall(
            xa.SmoothGrad(xa.Gradients(m), n_samples=5, kind=kind, chunk_size=2),
            x, 2, key,
        )  # fmt: skip
        # VarGrad = mean(g^2) - mean(g)^2 carries the rounding of the mean squares.
        sq = full.get("smoothgrad_sq")
        scale = None if kind != "vargrad" else float(jnp.max(sq))
        assert_close(chunked, full[kind], scale=scale)
    # Same key, same noise; another key, other noise.
    assert tree_allclose(jcall(rel, x, 2, key), jcall(rel, x, 2, key))
    assert not tree_allclose(jcall(rel, x, 2, key), jcall(rel, x, 2, jax.random.key(6)))


def test_smoothgrad_wraps_ig_and_errors():
    m = small_cnn()
    x = digit_like()
    sg = xa.SmoothGrad(xa.IntegratedGradients(m, n_steps=4), n_samples=2)
    assert jcall(sg, x, 1, jax.random.key(0)).shape == x.shape
    assert sg.model is m
    with pytest.raises(ValueError, match="key"):
        sg(x, 1)
    with pytest.raises(ValueError, match="kind"):
        xa.SmoothGrad(xa.Gradients(m), kind="smoothgrad_cubed")
    with pytest.raises(ValueError, match="n_samples"):
        xa.SmoothGrad(xa.Gradients(m), n_samples=0)
    with pytest.raises(ValueError, match="noise"):
        xa.SmoothGrad(xa.Gradients(m), noise="percent")
    with pytest.raises(TypeError, match="base"):
        xa.SmoothGrad(m)
    with pytest.raises(TypeError, match="return_delta"):
        xa.SmoothGrad(
            xa.IntegratedGradients(m, n_steps=2, return_delta=True), n_samples=2
        )(x, 1, key=jax.random.key(0))


def test_public_annotations_are_checked_in_the_test_run():
    # pyproject's `--jaxtyping-packages=eqx_attr,beartype...` must be active: a key
    # of the wrong type is rejected by the annotation even where the method
    # ignores `key`.
    import jaxtyping

    f, _ = linear_model()
    with pytest.raises(jaxtyping.TypeCheckError, match="key"):
        xa.Gradients(f)(jnp.ones(4), 0, key="not-a-key")  # pyright: ignore
