"""Attacks (`xa.attacks`): FGSM's closed form on a linear model, FGSM and PGD
equal to Captum's on identical weights, and explanation manipulation."""

import captum.robust
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import eqx_attr as xa

from .helpers import assert_close, digit_like, in_float64, small_cnn


class Linear(eqx.Module):
    w: jax.Array
    b: jax.Array

    def __call__(self, x):
        return self.w @ x + self.b


def _linear():
    k1, k2 = jax.random.split(jax.random.key(0))
    return Linear(jax.random.normal(k1, (3, 8)), jax.random.normal(k2, (3,)))


def test_fgsm_is_eps_sign_grad_on_a_linear_model():
    model = _linear()
    x = jax.random.uniform(jax.random.key(1), (8,))
    w, b = np.asarray(model.w, np.float64), np.asarray(model.b, np.float64)
    z = w @ np.asarray(x, np.float64) + b
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    grad = (p - np.eye(3)[2]) @ w  # d/dx of the cross-entropy of class 2
    f = eqx.filter_jit(xa.attacks.fgsm)
    # x + eps * sign(grad): one rounding of the sum on either side.
    assert_close(f(model, x, 2, eps=0.1), np.asarray(x) + 0.1 * np.sign(grad))
    assert_close(
        f(model, x, 2, eps=0.1, targeted=True), np.asarray(x) - 0.1 * np.sign(grad)
    )
    # Bounds clamp; a mask freezes elements (values copied: exact).
    out = f(model, x, 2, eps=0.5, lower=0.2, upper=0.8)
    # (The clamp's bounds as float32 numbers: exact.)
    assert out.min() >= np.float32(0.2) and out.max() <= np.float32(0.8)
    mask = np.arange(8) < 4
    out = f(model, x, 2, eps=0.1, mask=mask)
    np.testing.assert_array_equal(out[4:], x[4:])
    # A callable target's loss is its negative score: untargeted lowers it.
    out = f(model, x, lambda s: s[2], eps=0.1)
    assert_close(out, np.asarray(x) - 0.1 * np.sign(w[2]))


class TorchMLP(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.l1 = torch.nn.Linear(8, 16).double()
        self.l2 = torch.nn.Linear(16, 3).double()
        with torch.no_grad():
            for lin, ours in ((self.l1, model.layers[0]), (self.l2, model.layers[1])):
                lin.weight.copy_(torch.from_numpy(np.asarray(ours.weight)))
                lin.bias.copy_(torch.from_numpy(np.asarray(ours.bias)))

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


def _twins():
    # float64 on both sides, so that no gradient's sign depends on rounding.
    mlp = eqx.nn.MLP(8, 3, 16, 1, jax.nn.relu, key=jax.random.key(0))
    mlp = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_array(a) else a, mlp)
    xs = jax.random.uniform(jax.random.key(2), (4, 8), jnp.float64)
    ts = np.array([0, 1, 2, 1])
    return mlp, xs, ts, TorchMLP(mlp)


def _fgsm_and_pgd_equal_captum_float64():
    mlp, xs, ts, twin = _twins()
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    xt, tt = torch.from_numpy(np.asarray(xs)), torch.from_numpy(ts)
    for targeted in (False, True):
        theirs = captum.robust.FGSM(
            twin, loss_func=loss, lower_bound=0.0, upper_bound=1.0
        ).perturb(xt, 0.05, tt, targeted=targeted)
        ours = eqx.filter_jit(
            jax.vmap(
                lambda x, t: xa.attacks.fgsm(
                    mlp, x, t, eps=0.05, targeted=targeted, lower=0.0, upper=1.0
                )
            )
        )(xs, jnp.asarray(ts))
        assert_close(ours, theirs.detach().numpy())
    for norm in ("linf", "l2"):
        theirs = captum.robust.PGD(
            twin, loss_func=loss, lower_bound=0.0, upper_bound=1.0
        ).perturb(
            xt, 0.1, 0.03, 6, tt, norm={"linf": "Linf", "l2": "L2"}[norm]
        )  # radius, step size, steps
        ours = eqx.filter_jit(
            jax.vmap(
                lambda x, t: xa.attacks.pgd(
                    mlp,
                    x,
                    t,
                    eps=0.1,
                    step_size=0.03,
                    n_steps=6,
                    norm=norm,
                    lower=0.0,
                    upper=1.0,
                )  # fmt: skip
            )
        )(xs, jnp.asarray(ts))
        assert_close(ours, theirs.detach().numpy())


def test_fgsm_and_pgd_equal_captum():
    in_float64(_fgsm_and_pgd_equal_captum_float64)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball_and_the_bounds(norm):
    model, x = _linear(), jax.random.uniform(jax.random.key(1), (8,))
    out = eqx.filter_jit(
        lambda m, x, k: xa.attacks.pgd(
            m,
            x,
            1,
            eps=0.1,
            step_size=0.05,
            n_steps=5,
            norm=norm,
            random_start=True,
            key=k,
            lower=0.0,
            upper=1.0,
        )  # fmt: skip
    )(model, x, jax.random.key(3))
    d = np.asarray(out, np.float64) - np.asarray(x, np.float64)
    size = np.abs(d).max() if norm == "linf" else np.sqrt((d * d).sum())
    # The projection's guarantee, up to one float32 rounding of x + d.
    assert size <= 0.1 * (1 + 1e-5) + 1e-6
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    with pytest.raises(ValueError, match="key"):
        xa.attacks.pgd(
            model, x, 1, eps=0.1, step_size=0.05, n_steps=1, random_start=True
        )
    with pytest.raises(ValueError, match="`norm='l1'`"):
        xa.attacks.pgd(model, x, 1, eps=0.1, step_size=0.05, n_steps=1, norm="l1")


def test_attack_errors():
    model, x = _linear(), jnp.ones(8)
    with pytest.raises(ValueError, match="`eps` must be a finite float >= 0"):
        xa.attacks.fgsm(model, x, 1, eps=-1.0)
    with pytest.raises(ValueError, match="`lower`"):
        xa.attacks.fgsm(model, x, 1, eps=0.1, lower=1.0, upper=0.0)
    with pytest.raises(TypeError, match="`target` must be a class index"):
        xa.attacks.fgsm(model, x, 1.5, eps=0.1)
    with pytest.raises(ValueError, match="out of range"):
        xa.attacks.fgsm(model, x, 5, eps=0.1)
    with pytest.raises(ValueError, match="`mask` of shape"):
        xa.attacks.fgsm(model, x, 1, eps=0.1, mask=np.ones(3))


def _distance(model, x, target_map):
    h = xa.Gradients(model)(x, 3)
    h = h / jnp.sum(jnp.abs(h))
    return jnp.sum((h - target_map / jnp.sum(jnp.abs(target_map))) ** 2)


def test_manipulate_explanation_moves_the_map_within_the_ball():
    model, x = small_cnn(), digit_like()
    target_map = jnp.zeros((1, 28, 28)).at[0, :8, :8].set(1.0)
    eps = 0.1

    @eqx.filter_jit
    def run(model, x):
        x_adv = xa.attacks.manipulate_explanation(
            xa.Gradients(model), model, x, target_map, target=3, eps=eps,
            step_size=0.01, n_steps=20, gamma=0.01, beta=10.0, lower=0.0, upper=1.0,
        )  # fmt: skip
        return (
            x_adv,
            _distance(model, x, target_map),
            _distance(model, x_adv, target_map),
        )

    x_adv, before, after = run(model, x)
    # The projection's guarantee (up to one float32 rounding of x + d), and the
    # bounds (a clamp: exact).
    assert float(jnp.max(jnp.abs(x_adv - x))) <= eps * (1 + 1e-5)
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    # The returned iterate is the best one, x included, so the loss never grows;
    # on this seed the map moves well beyond rounding (about 8% closer).
    assert float(after) < 0.98 * float(before)


def test_smooth_relu_approaches_the_relu_model():
    model, x = small_cnn(), digit_like()
    run = eqx.filter_jit(lambda m, x, beta: xa.attacks.smooth_relu(m, beta)(x))
    far = float(jnp.max(jnp.abs(run(model, x, 1.0) - model(x))))
    near = float(jnp.max(jnp.abs(run(model, x, 100.0) - model(x))))
    assert near < far / 10
    with pytest.raises(ValueError, match="`beta` must be a finite float > 0"):
        xa.attacks.smooth_relu(model, 0.0)
    with pytest.raises(ValueError, match="No ReLU found"):
        xa.attacks.smooth_relu(lambda z: jnp.tanh(z), 1.0)(x)
