"""Explanation losses (`xa.losses`): hand values on linear models, exact
parameter gradients against finite differences in float64, and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, digit_like, in_float64, small_cnn


class Linear(eqx.Module):
    """f(x) = W vec(x) + b on (1, 4, 4) inputs: every gradient is closed-form."""

    w: jax.Array
    b: jax.Array

    def __call__(self, x):
        return self.w @ x.reshape(-1) + self.b


def _linear(dtype=jnp.float32, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w = jax.random.normal(k1, (3, 16), dtype)
    b = jax.random.normal(k2, (3,), dtype)
    return Linear(w, b)


def _x(dtype=jnp.float32, seed=1):
    return jax.random.uniform(jax.random.key(seed), (1, 4, 4), dtype)


MASK = np.zeros((4, 4), bool)
MASK[:2, :2] = True  # a corner: the "irrelevant" or the "relevant" region


# ---------------------------------------------------------------------------------
# right_for_the_right_reasons


def test_rrr_hand_values_on_a_linear_model():
    model, x = _linear(), _x()
    w, b = np.asarray(model.w, np.float64), np.asarray(model.b, np.float64)
    z = w @ np.asarray(x, np.float64).reshape(-1) + b
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    # d/dx sum_k log p_k = sum_k w_k - K * p^T W
    grad = (w.sum(0) - 3 * p @ w).reshape(1, 4, 4)
    penalty = np.sum((MASK * grad) ** 2)
    f = eqx.filter_jit(xa.losses.right_for_the_right_reasons)
    assert_close(f(model, x, None, MASK, lambda_=2.0), np.float32(2 * penalty))
    ce = -np.log(p[1])
    assert_close(f(model, x, 1, MASK, lambda_=2.0), np.float32(ce + 2 * penalty))
    # An all-zero mask leaves the cross-entropy alone.
    assert_close(f(model, x, 1, np.zeros((4, 4)), lambda_=2.0), np.float32(ce))


def _rrr_parameter_gradient_equals_finite_differences_float64():
    # A smooth net (tanh), so the penalty's derivative involves the true second
    # derivatives of the model; central differences in float64 along one random
    # direction of every parameter.
    mlp = eqx.nn.MLP(16, 3, 8, 2, jax.nn.tanh, key=jax.random.key(0))
    mlp = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, mlp)
    model = lambda m: lambda x: m(x.reshape(-1))
    x = _x(jnp.float64)
    mask = jnp.asarray(MASK, jnp.float64)

    def loss(m):
        return xa.losses.right_for_the_right_reasons(model(m), x, 2, mask, lambda_=3.0)

    params, static = eqx.partition(mlp, eqx.is_array)
    grads = eqx.filter_jit(jax.grad(lambda p: loss(eqx.combine(p, static))))(params)
    leaves = jax.tree.leaves(params)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    direction = jax.tree.unflatten(
        jax.tree.structure(params),
        [
            jax.random.normal(k, a.shape, a.dtype)
            for k, a in zip(keys, leaves, strict=True)
        ],
    )
    h = 1e-5
    shifted = lambda s: eqx.combine(
        jax.tree.map(lambda p, d: p + s * d, params, direction), static
    )
    f = eqx.filter_jit(loss)
    fd = (f(shifted(h)) - f(shifted(-h))) / (2 * h)
    analytic = sum(
        jnp.sum(g * d)
        for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
    )
    # Central differences: truncation O(h^2 f''') ~ 1e-10 and rounding
    # eps64 * f / h ~ 1e-11, far above float64's rounding of the analytic side.
    assert_close(analytic, fd, rtol=1e-7)
    assert abs(float(analytic)) > 1e-3  # the check is not vacuous


def test_rrr_parameter_gradient_equals_finite_differences():
    in_float64(_rrr_parameter_gradient_equals_finite_differences_float64)


def test_rrr_errors():
    model, x = _linear(), _x()
    with pytest.raises(ValueError, match="`mask` of shape"):
        xa.losses.right_for_the_right_reasons(model, x, 1, np.ones((3, 3)))
    with pytest.raises(ValueError, match="out of range"):
        xa.losses.right_for_the_right_reasons(model, x, 7, MASK)
    with pytest.raises(TypeError, match="`y` must be a class index"):
        xa.losses.right_for_the_right_reasons(model, x, 1.5, MASK)
    # (The jaxtyping annotation, checked under the test suite, or the check.)
    with pytest.raises(TypeError, match="`x` must be a floating|parameter 'x'"):
        xa.losses.right_for_the_right_reasons(model, x.astype(int), 1, MASK)


# ---------------------------------------------------------------------------------
# outside_mask


@eqx.filter_jit
def _outside(method, x, target, mask):
    return xa.losses.outside_mask(method, x, target, mask)


def test_outside_mask_hand_values_on_a_linear_model():
    model, x = _linear(), _x()
    w1 = np.abs(np.asarray(model.w[1], np.float64)).reshape(1, 4, 4)
    outside = ~MASK
    # Gradients: a = W[1]; IG from a zero baseline on a linear model: x * W[1]
    # (exact for any number of steps).
    want = (w1 * outside).sum() / w1.sum()
    assert_close(_outside(xa.Gradients(model), x, 1, MASK), np.float32(want))
    ax = w1 * np.asarray(x, np.float64)
    want_ig = (ax * outside).sum() / ax.sum()
    ig = xa.IntegratedGradients(model, n_steps=4)
    assert_close(_outside(ig, x, 1, MASK), np.float32(want_ig))
    # A full mask leaves nothing outside, an empty one everything; a (1, 4, 4)
    # mask equals its (4, 4) broadcast.
    assert _outside(xa.Gradients(model), x, 1, np.ones((4, 4), bool)) == 0.0
    assert_close(_outside(xa.Gradients(model), x, 1, np.zeros((4, 4))), 1.0)
    assert_close(
        _outside(xa.Gradients(model), x, 1, MASK[None]),
        _outside(xa.Gradients(model), x, 1, MASK),
    )
    # An all-zero attribution gives 0, with a finite derivative.
    zero = lambda x, t: 0.0 * x
    assert _outside(zero, x, 1, MASK) == 0.0
    g = jax.grad(lambda x: xa.losses.outside_mask(zero, x, 1, MASK))(x)
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("name", ["gradients", "ig"])
def test_outside_mask_on_a_cnn_is_differentiable(name):
    model, x = small_cnn(), digit_like()
    build = {
        "gradients": xa.Gradients,
        "ig": lambda m: xa.IntegratedGradients(m, n_steps=4),
    }[name]
    mask = np.zeros((28, 28), bool)
    mask[6:22, 6:22] = True

    @eqx.filter_jit
    def value_and_grad(m):
        params, static = eqx.partition(m, eqx.is_array)
        f = lambda p: xa.losses.outside_mask(build(eqx.combine(p, static)), x, 3, mask)
        return jax.value_and_grad(f)(params)

    value, grads = value_and_grad(model)
    assert 0.0 < float(value) < 1.0
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert any(np.any(g != 0) for g in leaves)


def test_outside_mask_errors():
    model, x = _linear(), _x()
    with pytest.raises(ValueError, match="`mask` of shape \\(3, 3\\)"):
        xa.losses.outside_mask(xa.Gradients(model), x, 1, np.ones((3, 3)))
    with pytest.raises(TypeError, match="`mask` must be"):
        xa.losses.outside_mask(xa.Gradients(model), x, 1, np.array(["a"]))


# ---------------------------------------------------------------------------------
# cam_alignment


def test_cam_alignment_hand_values_with_a_stub_method():
    x = _x()
    m = np.zeros((4, 4))
    m[:, :2] = 1.0
    stub = lambda h: lambda x, t: jnp.asarray(h, jnp.float32)
    f = eqx.filter_jit(xa.losses.cam_alignment)
    # h proportional to the mask: 0.
    assert_close(f(stub(3.0 * m), x, 0, m), 0.0, scale=1.0)
    # h = 1 everywhere (at a coarser resolution, resized: bilinear keeps a
    # constant): <h, M> / (|h| |M|) = 8 / (4 * sqrt(8)).
    want = 1.0 - 8.0 / (4.0 * np.sqrt(8.0))
    assert_close(f(stub(np.ones((2, 2))), x, 0, m), np.float32(want))
    # Negative evidence is clipped (ReLU): a map of only negative values, or a
    # map outside the mask, overlaps nothing.
    assert_close(f(stub(-np.ones((4, 4))), x, 0, m), 1.0)
    assert_close(f(stub(1.0 - m), x, 0, m), 1.0)
    # h = (2 on column 0, -1 elsewhere): relu gives 2 on 4 pixels; cos = 8 / (4 *
    # sqrt(8)); a (C, H, W) attribution is summed over channels first.
    h = -np.ones((4, 4))
    h[:, 0] = 2.0
    assert_close(f(stub(h), x, 0, m), np.float32(1.0 - 8.0 / (4.0 * np.sqrt(8.0))))
    assert_close(f(stub(np.stack([h, 0 * h])), x, 0, m), f(stub(h), x, 0, m))


def test_cam_alignment_with_gradcam_is_differentiable():
    model, x = small_cnn(), digit_like()
    mask = np.zeros((28, 28))
    mask[:14] = 1.0

    @eqx.filter_jit
    def value_and_grad(m):
        params, static = eqx.partition(m, eqx.is_array)
        f = lambda p: xa.losses.cam_alignment(
            xa.GradCAM(eqx.combine(p, static), lambda m: m.conv2), x, 3, mask
        )
        return jax.value_and_grad(f)(params)

    value, grads = value_and_grad(model)
    assert 0.0 <= float(value) <= 1.0
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    with pytest.raises(ValueError, match="`mask` must be an \\(H, W\\) array"):
        xa.losses.cam_alignment(lambda x, t: x[0], x, 0, mask[None])
