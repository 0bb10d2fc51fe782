"""The baselines module."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqx_attr import baselines as B

from .helpers import assert_close


def test_deterministic_baselines():
    x = jax.random.uniform(jax.random.key(0), (3, 10, 12))
    # Exact: constants and broadcasts copy values, they compute none.
    np.testing.assert_array_equal(B.Zeros()(x), jnp.zeros((1, *x.shape)))
    np.testing.assert_array_equal(B.Constant(1.0)(x), jnp.ones((1, *x.shape)))
    mean = jnp.array([0.1, 0.2, 0.3]).reshape(3, 1, 1)
    out = B.Custom(mean)(x)
    assert out.shape == (1, *x.shape)
    np.testing.assert_array_equal(out[0, 2], np.float32(0.3))
    data = jax.random.uniform(jax.random.key(1), (20, 3, 10, 12))
    assert_close(B.DatasetMean.from_data(data)(x)[0], data.mean(0))
    ints = (np.arange(2 * 3 * 10 * 12) % 7).reshape(2, 3, 10, 12).astype(np.uint8)
    assert_close(B.DatasetMean.from_data(ints)(x)[0], ints.mean(0))


def test_as_baseline():
    assert isinstance(B.as_baseline(None), B.Zeros)
    assert isinstance(B.as_baseline(0.5), B.Constant)
    assert isinstance(B.as_baseline(jnp.ones(3)), B.Custom)
    z = B.Zeros()
    assert B.as_baseline(z) is z
    with pytest.raises(TypeError, match="baseline"):
        B.as_baseline("white")


def test_random_baselines():
    x = jnp.full((1, 8, 8), 0.5)
    k = jax.random.key(2)
    u = B.UniformNoise(n_draws=5, low=-1.0, high=2.0)(x, key=k)
    assert u.shape == (5, 1, 8, 8)
    assert float(u.min()) >= -1.0 and float(u.max()) < 2.0
    # Exact: the same draws, by the same program, from the same key.
    np.testing.assert_array_equal(u, B.UniformNoise(5, -1.0, 2.0)(x, key=k))
    g = B.GaussianNoise(n_draws=3, stdev=0.2, clip_low=0.0, clip_high=1.0)(x, key=k)
    assert g.shape == (3, 1, 8, 8)
    assert float(g.min()) >= 0.0 and float(g.max()) <= 1.0
    big = B.GaussianNoise(n_draws=200, stdev=0.2)(x, key=k)
    # Sampling error of 200 x 64 draws: the mean's standard error is 0.2 / 113 =
    # 0.0018 and the std's 0.0013, so 0.01 is over 5 standard errors.
    assert_close(big.mean(), 0.5, atol=0.01)
    assert_close(big.std(), 0.2, atol=0.01)
    for b in (B.UniformNoise(), B.GaussianNoise()):
        with pytest.raises(ValueError, match="key"):
            b(x)
    with pytest.raises(ValueError, match="n_draws"):
        B.UniformNoise(n_draws=0)


def test_blur():
    # A constant image is a fixed point; a blurred impulse is a normalised,
    # symmetric Gaussian whose spread matches sigma.
    const = jnp.full((2, 16, 16), 0.7)
    assert_close(B.Blur(2.0)(const)[0], const)
    impulse = jnp.zeros((1, 41, 41)).at[0, 20, 20].set(1.0)
    out = B.Blur(sigma=3.0)(impulse)[0, 0]
    assert_close(out.sum(), 1.0)
    assert_close(out, out.T)
    assert_close(out, out[::-1, ::-1])
    r = np.arange(41) - 20
    var = np.sum(np.asarray(out).sum(0) * r**2)
    # The truncated, discretised kernel's variance is sigma^2 only approximately.
    assert_close(var, 9.0, atol=0.05 * 9.0)
    with pytest.raises(ValueError, match="sigma"):
        B.Blur(0.0)
    with pytest.raises(ValueError, match="spatial"):
        B.Blur(1.0)(jnp.ones(5))


def test_shape_errors():
    x = jnp.ones((3, 4, 4))
    with pytest.raises(ValueError, match=r"does not broadcast.*\(3, 4, 4\)"):
        B.Custom(jnp.ones((2, 4, 4)))(x)
    with pytest.raises(ValueError, match="DatasetMean.mean"):
        B.DatasetMean(jnp.ones((5, 5)))(x)
