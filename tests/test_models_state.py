"""Stateful Equinox models (`eqx.nn.State`, BatchNorm, Dropout) through
`xa.models.with_state`, and the errors for a model left in training mode."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqx_attr as xa

from .helpers import assert_close


class _BNNet(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    drop: eqx.nn.Dropout
    lin: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 4, 3, key=k1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EMA mode's performance note
            self.bn = eqx.nn.BatchNorm(4, "batch", mode="ema")
        self.drop = eqx.nn.Dropout(0.5)
        self.lin = eqx.nn.Linear(4 * 6 * 6, 3, key=k2)

    def __call__(self, x, state, *, key=None):
        h = self.conv(x)
        h, state = self.bn(h, state)
        h = self.drop(jax.nn.gelu(h), key=key)
        return self.lin(h.reshape(-1)), state


def _net():
    model, state = eqx.nn.make_with_state(_BNNet)(jax.random.key(0))
    # Running statistics as after training: not the identity.
    state = state.set(
        model.bn.ema_state_index,
        (jnp.full(4, 0.3, jnp.float32), jnp.full(4, 2.0, jnp.float32)),
    )
    return model, state


X = jax.random.normal(jax.random.key(1), (1, 8, 8))


def test_with_state_is_the_inference_function():
    model, state = _net()
    f = xa.models.with_state(model, state)
    bare = eqx.nn.inference_mode(model)

    def by_hand(x):
        h = bare.conv(x)
        h = (h - 0.3) / jnp.sqrt(2.0 + bare.bn.eps)
        h = h * bare.bn.weight[:, None, None] + bare.bn.bias[:, None, None]
        return bare.lin(jax.nn.gelu(h).reshape(-1))

    assert_close(f(X), by_hand(X), dtype=jnp.float32)
    grads = xa.Gradients(f)(X, target=1)
    assert_close(grads, jax.grad(lambda x: by_hand(x)[1])(X), dtype=jnp.float32)
    # Calling twice reuses the state: each call works on a fresh copy.
    assert_close(f(X), f(X), dtype=jnp.float32)


def test_with_state_layer_selectors_read_through_the_wrapper():
    model, state = _net()
    f = xa.models.with_state(model, state)
    assert f.conv is f.model.conv
    direct = xa.GradCAM(f, lambda m: m.conv)(X, target=2)
    nested = xa.GradCAM(f, lambda m: m.model.conv)(X, target=2)
    # The same program on the same inputs: exact on every CPU.
    assert (direct == nested).all()
    assert direct.shape == (8, 8)
    # Differentiable with respect to the parameters through the wrapper.
    g = eqx.filter_grad(lambda m: xa.Gradients(m)(X, target=0).sum())(f)
    assert jnp.isfinite(g.model.conv.weight).all()


def test_training_mode_and_missing_state_have_clear_errors():
    model, state = _net()
    with pytest.raises(ValueError, match="with_state"):
        xa.Gradients(lambda x: model(x, state)[0])(X, target=0)
    # That call ran BatchNorm in training mode, which retired `state`.
    with pytest.raises(ValueError, match="already used"):
        xa.models.with_state(model, state)
    model, state = _net()
    with pytest.raises(ValueError, match="inference_mode"):
        xa.GradCAM(
            xa.models.with_state(model, state, inference=False), lambda m: m.conv
        )(X, target=0)
    with pytest.raises(ValueError, match="with_state"):
        xa.Gradients(model)(X, target=0)
    with pytest.raises(TypeError, match="eqx.nn.State"):
        xa.models.with_state(model, {"not": "a state"})


def test_a_dtype_mismatch_names_the_dtypes_not_the_shape():
    model = eqx.nn.Conv2d(1, 2, 3, key=jax.random.key(0))

    def f(x):
        return model(x).sum(axis=(1, 2))

    with pytest.raises(ValueError, match=r"astype\(jnp.float32\)") as info:
        xa.Gradients(f)(X.astype(jnp.bfloat16), target=0)
    assert "ONE example" not in str(info.value)
