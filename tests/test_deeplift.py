"""DeepLIFT, DeepLiftShap and GradientShap: hand values, completeness, reach of
inline activations, errors, and equality with Captum on identical weights."""

import captum.attr
import captum.attr._core.noise_tunnel as captum_nt
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eqx_attr as xa
from eqx_attr._engine._interpreter import NoRuleError
from eqx_attr._gradient._gradient_shap import gradient_shap_draws

from .helpers import assert_close, in_float64, tree_allclose


def _terms(a, *scores) -> float:
    """The size of what a completeness residual sum(a) - (f(x) - f(b)) cancels:
    sum |a| plus the scores' sizes (a floating-point sum errs relative to them)."""
    return float(np.abs(np.asarray(a)).sum() + sum(abs(float(s)) for s in scores))


# ---------------------------------------------------------------------------------
# Hand values


def test_rescale_hand_values():
    # f(x) = 2 * sigmoid(x1 + x2) - relu(x1 - 3 x2); x = (1, 1), b = (0, 0).
    # sigmoid: z = 2, z0 = 0, m = (s(2) - s(0)) / 2; relu: z = -2, z0 = 0, m = 0.
    def f(x):
        return jnp.stack(
            [2 * jax.nn.sigmoid(x[0] + x[1]) - jax.nn.relu(x[0] - 3 * x[1])]
        )

    x = jnp.array([1.0, 1.0])
    a, delta = xa.DeepLift(f, return_delta=True)(x, 0)
    m = (jax.nn.sigmoid(2.0) - 0.5) / 2.0
    assert_close(a, jnp.stack([2 * m, 2 * m]))
    assert delta.shape == ()
    assert_close(delta, 0.0, scale=_terms(a, f(x)[0], f(jnp.zeros(2))[0]))
    # Equal inputs and reference: the plain derivative (|dx| < eps), times 0
    # (exact: x - x = 0, and a finite multiplier times 0 is 0).
    np.testing.assert_array_equal(xa.DeepLift(f, baseline=x)(x, 0), [0.0, 0.0])


def test_max_pool_rule_hand_values():
    # max over (x1, x2): x = (3, 1), b = (0, 2): y = 3, y0 = 2, top = 3.
    # To x's maximum (x1): 3 - 2 = 1, over dx1 = 3 -> m1 = 1/3; to b's maximum (x2):
    # y - top = 0 -> m2 = 0. a = (1, 0), which sums to y - y0 = 1.
    def f(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (2,), (2,), "VALID")

    a = xa.DeepLift(f, baseline=jnp.array([0.0, 2.0]))(jnp.array([3.0, 1.0]), 0)
    assert_close(a, np.array([1.0, 0.0], np.float32))


# ---------------------------------------------------------------------------------
# Completeness, reach, errors


class Inline(eqx.Module):
    lin1: eqx.nn.Linear
    lin2: eqx.nn.Linear
    act: str = eqx.field(static=True)

    def __call__(self, x):
        h = self.lin1(x)
        h = {
            "relu": jax.nn.relu,
            "where": lambda v: jnp.where(v > 0, v, 0.0),
            "maximum": lambda v: jnp.maximum(v, 0.0),
            "mask": lambda v: v * (v > 0).astype(v.dtype),
            "gelu": jax.nn.gelu,
            "silu": jax.nn.silu,
            "softplus": jax.nn.softplus,
            "elu": jax.nn.elu,
            "leaky_relu": jax.nn.leaky_relu,
            "tanh": jnp.tanh,
        }[self.act](h)
        return self.lin2(h)


def _inline(act: str) -> Inline:
    k1, k2 = jax.random.split(jax.random.key(0))
    return Inline(eqx.nn.Linear(5, 7, key=k1), eqx.nn.Linear(7, 3, key=k2), act)


X5 = jax.random.normal(jax.random.key(1), (5,))
B5 = 0.3 * jax.random.normal(jax.random.key(2), (5,))


@pytest.mark.parametrize("act", ["gelu", "silu", "softplus", "elu", "leaky_relu"])
def test_completeness_through_composite_activations(act):
    # gelu is not jitted and silu = x * sigmoid(x): a product of two activations
    # unless the activation is treated as one unit, as it is.
    a, delta = xa.DeepLift(_inline(act), baseline=B5, return_delta=True)(X5, 1)
    model = _inline(act)
    size = _terms(a, model(X5)[1], model(B5)[1])
    assert_close(jnp.sum(a), model(X5)[1] - model(B5)[1], scale=size)
    assert_close(delta, 0.0, scale=size)


def test_callable_target_is_explained_too():
    # The target reduction is part of the explained function: a log-softmax target
    # (a max, an exp, a log, a stopped gradient inside) stays complete.
    model = _inline("relu")
    target = lambda s: jax.nn.log_softmax(s)[1]
    a, delta = xa.DeepLift(model, baseline=B5, return_delta=True)(X5, target)
    want = target(model(X5)) - target(model(B5))
    size = _terms(a, target(model(X5)), target(model(B5)))
    assert_close(jnp.sum(a), want, scale=size)
    assert_close(delta, 0.0, scale=size)


def test_inline_relu_spellings_equal_the_module_twin():
    k1, k2 = jax.random.split(jax.random.key(0))
    held = eqx.nn.Sequential(
        [
            eqx.nn.Linear(5, 7, key=k1),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(7, 3, key=k2),
        ]
    )
    want = xa.DeepLift(held, baseline=B5)(X5, 2)
    for spelling in ("relu", "where", "maximum", "mask"):
        got = xa.DeepLift(_inline(spelling), baseline=B5)(X5, 2)
        assert_close(got, want, err_msg=spelling)
    grad_x_diff = jax.grad(lambda v: held(v)[2])(X5) * (X5 - B5)
    # really not the gradient
    assert not tree_allclose(want, grad_x_diff, atol=1e-4)


def test_small_cnn_completeness_with_max_pooling():
    model = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8))
    a, delta = xa.DeepLift(model, baseline=0.2, return_delta=True)(x, 3)
    assert a.shape == x.shape and delta.shape == ()
    # Jitted: eager convolutions compile op by op, slowly.
    scores = eqx.filter_jit(eqx.filter_vmap(model))(
        jnp.stack([x, jnp.full_like(x, 0.2)])
    )
    diff = scores[0, 3] - scores[1, 3]
    size = _terms(a, scores[0, 3], scores[1, 3])
    assert_close(jnp.sum(a), diff, scale=size)
    assert_close(delta, 0.0, scale=size)


def test_products_of_two_activations_split_exactly():
    k1, k2 = jax.random.split(jax.random.key(3))
    A, B = jax.random.normal(k1, (3, 5)), jax.random.normal(k2, (3, 5))

    def model(x):
        return (A @ x) * (B @ x)

    a, delta = xa.DeepLift(model, baseline=B5, return_delta=True)(X5, 1)
    # Each factor's difference meets the mean of the other's two values:
    # f - f0 = dp * (q + q0) / 2 + (p + p0) / 2 * dq, p = A x, q = B x.
    p, q, p0, q0 = A @ X5, B @ X5, A @ B5, B @ B5
    m = A[1] * (q[1] + q0[1]) / 2 + B[1] * (p[1] + p0[1]) / 2
    assert_close(a, m * (X5 - B5))
    size = _terms(a, model(X5)[1], model(B5)[1])
    assert_close(delta, 0.0, scale=size)


def test_layer_norm_and_inline_activations_stay_complete():
    ln = eqx.nn.LayerNorm(7)
    ln = eqx.tree_at(lambda m: m.bias, ln, jnp.linspace(-0.3, 0.3, 7))
    lin1, lin2 = _inline("relu").lin1, _inline("relu").lin2
    for name, act in (
        ("swish", lambda h: h * jax.nn.sigmoid(h)),
        ("leaky", lambda h: jnp.where(h > 0, h, 0.1 * h)),
        ("x_tanh", lambda h: h * jnp.tanh(h)),
    ):
        model = lambda v, act=act: lin2(act(ln(lin1(v))))
        a, delta = xa.DeepLift(model, baseline=B5, return_delta=True)(X5, 2)
        size = _terms(a, model(X5)[2], model(B5)[2])
        assert_close(jnp.sum(a), model(X5)[2] - model(B5)[2], scale=size, err_msg=name)
        assert_close(delta, 0.0, scale=size, err_msg=name)
    # Written inline, an activation gets the Rescale rule as one function.
    held = lambda v: lin2(jax.nn.silu(lin1(v)))
    inline = lambda v: lin2(lin1(v) * jax.nn.sigmoid(lin1(v)))
    assert_close(
        xa.DeepLift(inline, baseline=B5)(X5, 0), xa.DeepLift(held, baseline=B5)(X5, 0)
    )


def test_quotients_and_softmax_split_exactly():
    def model(x):
        return jnp.stack([jnp.sum(x) / jnp.sum(jnp.tanh(x) ** 2 + 1.0)])

    a, delta = xa.DeepLift(model, baseline=B5, return_delta=True)(X5, 0)
    # a / b = a * (1 / b): the reciprocal's Rescale multiplier is -1 / (b b0),
    # then the product rule; by hand for the numerator's share:
    n, d = jnp.sum(X5), jnp.sum(jnp.tanh(X5) ** 2 + 1.0)
    n0, d0 = jnp.sum(B5), jnp.sum(jnp.tanh(B5) ** 2 + 1.0)
    numerator_share = (n - n0) * (1 / d + 1 / d0) / 2
    size = _terms(a, model(X5)[0], model(B5)[0])
    assert_close(delta, 0.0, scale=size)
    t2 = lambda v: jnp.tanh(v) ** 2
    denominator_share = jnp.sum(a) - numerator_share
    want = -(n + n0) / 2 / (d * d0) * (jnp.sum(t2(X5)) - jnp.sum(t2(B5)))
    assert_close(denominator_share, want, scale=size)
    # A softmax is a quotient of sums of exponentials: complete as well.
    k = jax.random.normal(jax.random.key(4), (4, 5))
    soft = lambda v: jax.nn.softmax(k @ v)
    a, delta = xa.DeepLift(soft, baseline=B5, return_delta=True)(X5, 2)
    assert_close(delta, 0.0, scale=_terms(a, soft(X5)[2], soft(B5)[2]))


def test_operations_without_a_rule_raise_and_plain_opts_in():
    def model(x):
        return jnp.sort(jnp.tanh(x))[-2:]

    with pytest.raises(NoRuleError, match=r"sort.*test_deeplift"):
        xa.DeepLift(model)(X5, 0)
    with pytest.raises(ValueError, match=r"plain="):
        xa.DeepLift(model)(X5, 0)
    a = xa.DeepLift(model, plain=("sort",))(X5, 0)
    assert a.shape == X5.shape


def test_bad_options():
    with pytest.raises(ValueError, match="DeepLiftShap"):
        xa.DeepLift(_inline("relu"), baseline=xa.baselines.UniformNoise(n_draws=2))(
            X5, 0, key=jax.random.key(0)
        )
    with pytest.raises(ValueError, match="eps"):
        xa.DeepLift(_inline("relu"), eps=-1.0)
    with pytest.raises(ValueError, match="n_samples"):
        xa.GradientShap(_inline("relu"), baseline=0.0, n_samples=0)
    with pytest.raises(ValueError, match="key"):
        xa.GradientShap(_inline("relu"), baseline=0.0)(X5, 0)


# ---------------------------------------------------------------------------------
# Captum on identical weights


def _linear(t: torch.nn.Linear, m: eqx.nn.Linear) -> torch.nn.Linear:
    t.weight.data = torch.tensor(np.asarray(m.weight))
    t.bias.data = torch.tensor(np.asarray(m.bias))
    return t


class Deep(eqx.Module):
    layers: tuple

    def __call__(self, x):
        acts = (jax.nn.relu, jax.nn.sigmoid, jnp.tanh, jax.nn.elu, jax.nn.softplus)
        h = x
        for layer, act in zip(self.layers[:-1], acts, strict=True):
            h = act(layer(h))
        return self.layers[-1](h)


def _deep() -> tuple[Deep, torch.nn.Module]:
    keys = jax.random.split(jax.random.key(3), 6)
    sizes = [5, 8, 8, 8, 8, 8, 3]
    layers = tuple(
        eqx.nn.Linear(i, o, key=k)
        for i, o, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
    )
    # Captum hooks activation modules; each follows a Linear (see the quirk test).
    acts = [torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.Tanh, torch.nn.ELU]
    mods: list = []
    for layer, act in zip(layers[:-2], acts, strict=True):
        mods += [_linear(torch.nn.Linear(1, 1), layer), act()]
    mods += [_linear(torch.nn.Linear(1, 1), layers[-2]), torch.nn.Softplus()]
    mods += [_linear(torch.nn.Linear(1, 1), layers[-1])]
    return Deep(layers), torch.nn.Sequential(*mods)


def _t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a))


def test_deeplift_equals_captum_on_an_mlp():
    model, twin = _deep()
    xs = jax.random.normal(jax.random.key(4), (3, 5))
    b = 0.5 * jax.random.normal(jax.random.key(5), (5,))
    targets = jnp.array([0, 2, 1])
    got = eqx.filter_vmap(xa.DeepLift(model, baseline=b))(xs, targets)
    want = captum.attr.DeepLift(twin).attribute(
        _t(xs), baselines=_t(b)[None], target=[0, 2, 1]
    )
    # The attributions (~2e-3) share out f(x) - f(b), a difference of scores of
    # ~0.5 that cancelled: their rounding is relative to the scores' size.
    pick = lambda v: jax.vmap(model)(v)[jnp.arange(3), targets]  # noqa: E731
    size = np.abs(pick(xs)) + np.abs(pick(jnp.broadcast_to(b, xs.shape)))
    assert_close(got, want.detach().numpy(), scale=np.asarray(size)[:, None])


class PoolNet(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __call__(self, x):
        h = eqx.nn.MaxPool2d(2, 2)(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        return self.fc(jnp.mean(h, axis=(1, 2)))


def _pool_net() -> tuple[PoolNet, torch.nn.Module]:
    k1, k2, k3 = jax.random.split(jax.random.key(6), 3)
    model = PoolNet(
        eqx.nn.Conv2d(1, 3, 3, padding=1, key=k1),
        eqx.nn.Conv2d(3, 4, 3, padding=1, key=k2),
        eqx.nn.Linear(4, 3, key=k3),
    )

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 3, 3, padding=1)
            self.pool = torch.nn.MaxPool2d(2, 2)
            self.conv2 = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.relu = torch.nn.ReLU()
            self.fc = _linear(torch.nn.Linear(4, 3), model.fc)
            for t, m in ((self.conv1, model.conv1), (self.conv2, model.conv2)):
                t.weight.data = _t(m.weight)
                t.bias.data = _t(m.bias).reshape(-1)

        def forward(self, x):
            h = self.relu(self.conv2(self.pool(self.conv1(x))))
            return self.fc(h.mean(dim=(2, 3)))

    return model, Twin()


def test_deeplift_and_deepliftshap_equal_captum_with_max_pooling():
    model, twin = _pool_net()
    x = jax.random.normal(jax.random.key(7), (1, 8, 8))
    b = 0.3 * jax.random.normal(jax.random.key(8), (1, 8, 8))
    got = xa.DeepLift(model, baseline=b)(x, 1)
    want = captum.attr.DeepLift(twin).attribute(_t(x)[None], _t(b)[None], target=1)
    assert_close(got, want.detach().numpy()[0])

    bs = jax.random.normal(jax.random.key(9), (3, 1, 8, 8))
    base = xa.baselines.Custom(bs, draws=True)
    got, delta = xa.DeepLiftShap(model, baseline=base, return_delta=True)(x, 2)
    chunked = xa.DeepLiftShap(model, baseline=base, chunk_size=2)(x, 2)
    want = captum.attr.DeepLiftShap(twin).attribute(_t(x)[None], _t(bs), target=2)
    assert_close(got, want.detach().numpy()[0])
    assert_close(chunked, got)
    scores = eqx.filter_jit(eqx.filter_vmap(model))(jnp.concatenate([x[None], bs]))
    diff = scores[0, 2] - jnp.mean(scores[1:, 2])
    size = _terms(got, scores[0, 2], jnp.mean(jnp.abs(scores[1:, 2])))
    assert_close(jnp.sum(got), diff, scale=size)
    assert delta.shape == ()


def test_captum_silently_falls_back_where_ours_does_not():
    # The same MLP, its torch twin calling F.relu inline: Captum has no module to
    # hook, so it returns a mix of rules and plain gradients, silently; its result
    # is no longer complete. Ours reaches the inline ReLU: complete, and equal to
    # the module twin's.
    model = _inline("relu")
    inline = _inline("relu")

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = _linear(torch.nn.Linear(5, 7), model.lin1)
            self.lin2 = _linear(torch.nn.Linear(7, 3), model.lin2)

        def forward(self, x):
            return self.lin2(F.relu(self.lin1(x)))

    captum_a, captum_delta = captum.attr.DeepLift(Twin()).attribute(
        _t(X5)[None], _t(B5)[None], target=1, return_convergence_delta=True
    )
    ours, delta = xa.DeepLift(inline, baseline=B5, return_delta=True)(X5, 1)
    assert abs(float(captum_delta[0])) > 1e-3
    assert_close(delta, 0.0, scale=_terms(ours, inline(X5)[1], inline(B5)[1]))
    assert not tree_allclose(captum_a.detach().numpy()[0], ours, atol=1e-4)


def test_captum_loses_the_rule_of_a_module_right_after_another():
    # Captum records a module's output gradient before the next hooked module's
    # rule rewrites it, so ReLU -> MaxPool (as in most CNNs) is not complete in
    # Captum. Ours is.
    twin = torch.nn.Sequential(
        torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2), torch.nn.Flatten(),
        torch.nn.Linear(16, 3),
    )  # fmt: skip
    kw, kc = jax.random.split(jax.random.key(9))
    with torch.no_grad():  # fixed weights: torch's own initialisation is unseeded
        twin[3].weight.copy_(torch.tensor(np.asarray(jax.random.normal(kw, (3, 16)))))
        twin[3].bias.copy_(torch.tensor(np.asarray(jax.random.normal(kc, (3,)))))
    x = torch.tensor(np.asarray(jax.random.normal(jax.random.key(10), (1, 1, 8, 8))))
    b = 0.3 * torch.tensor(np.asarray(jax.random.normal(jax.random.key(11), x.shape)))
    _, captum_delta = captum.attr.DeepLift(twin).attribute(
        x, b, target=1, return_convergence_delta=True
    )
    fc = twin[3]
    w, c = (
        jnp.asarray(fc.weight.detach().numpy()),
        jnp.asarray(fc.bias.detach().numpy()),
    )

    def model(v):
        h = eqx.nn.MaxPool2d(2, 2)(jax.nn.relu(v))
        return w @ h.reshape(-1) + c

    xj, bj = jnp.asarray(x.numpy()[0]), jnp.asarray(b.numpy()[0])
    a, delta = xa.DeepLift(model, baseline=bj, return_delta=True)(xj, 1)
    assert abs(float(captum_delta[0])) > 1e-3
    assert_close(delta, 0.0, scale=_terms(a, model(xj)[1], model(bj)[1]))


def test_gradient_shap_equals_captum_on_identical_draws(monkeypatch):
    model, twin = _pool_net()
    x = jax.random.normal(jax.random.key(12), (1, 8, 8))
    bs = jax.random.normal(jax.random.key(13), (4, 1, 8, 8))
    n, stdev, key = 6, 0.2, jax.random.key(14)
    gs = xa.GradientShap(
        model, baseline=xa.baselines.Custom(bs, draws=True), n_samples=n, stdev=stdev
    )
    got = gs(x, 2, key=key)
    # The same draws GradientShap makes, handed to Captum in place of its own.
    _, k_draw = jax.random.split(key)
    idx, alpha, noise = gradient_shap_draws(k_draw, 4, n, x, stdev)
    monkeypatch.setattr(np.random, "choice", lambda k, size: np.asarray(idx))
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: np.asarray(alpha))
    monkeypatch.setattr(
        captum_nt.NoiseTunnel,
        "_add_noise_to_input",
        staticmethod(lambda inp, sd, k: inp.repeat_interleave(k, 0) + _t(noise)),
    )
    want = captum.attr.GradientShap(twin).attribute(
        _t(x)[None], baselines=_t(bs), n_samples=n, stdevs=stdev, target=2
    )
    assert_close(got, want.detach().numpy()[0])


def test_gradient_shap_is_exact_on_a_linear_model():
    # f = w . x: (x - b) * w for every draw; with one baseline, no noise, exact.
    w = jax.random.normal(jax.random.key(15), (5,))
    f = lambda v: jnp.stack([jnp.dot(w, v)])
    a = xa.GradientShap(f, baseline=B5, n_samples=3)(X5, 0, key=jax.random.key(0))
    assert_close(a, (X5 - B5) * w)


# ------------------------------------------------------------------------------
# Derivatives of the attribution (training losses, attacks on explanations)


class _OneHidden(eqx.Module):
    w1: jax.Array
    b1: jax.Array
    w2: jax.Array
    act: str = eqx.field(static=True)

    def __call__(self, x):
        return self.w2 @ _ACTS[self.act](self.w1 @ x + self.b1)


_ACTS = {"tanh": jnp.tanh, "relu": jax.nn.relu, "softplus": jax.nn.softplus}


def _rescale_closed_form(net, x, b, t):
    # DeepLIFT-Rescale of w2[t] . act(w1 x + b1), written out: one multiplier
    # (act(z) - act(z0)) / (z - z0) per hidden unit (no unit has z == z0 here).
    z, z0 = net.w1 @ x + net.b1, net.w1 @ b + net.b1
    m = (_ACTS[net.act](z) - _ACTS[net.act](z0)) / (z - z0)
    return ((net.w2[t] * m) @ net.w1) * (x - b)


def _derivatives_of_the_attribution_are_those_of_its_formula_float64(act):
    # The gradient of a loss of the attribution, with respect to every parameter
    # and to the input, equals autodiff of DeepLIFT's closed form (float64: the
    # two are the same mathematics, so they agree to float64 rounding). The rule's
    # forward pass once used the rule itself, and d/dw1, d/db1, d/dx were those of
    # the multipliers instead (relative errors 0.14-6).
    k = jax.random.split(jax.random.key(0), 5)
    net = _OneHidden(
        jax.random.normal(k[0], (5, 4), jnp.float64),
        jax.random.normal(k[1], (5,), jnp.float64),
        jax.random.normal(k[2], (3, 5), jnp.float64),
        act,
    )
    x = jax.random.normal(k[3], (4,), jnp.float64)
    b = 0.1 * jax.random.normal(k[4], (4,), jnp.float64)

    def ours(net, x):
        dl = xa.DeepLift(net, baseline=xa.baselines.Custom(b))
        return jnp.sum(jnp.sin(dl(x, 1)))

    def formula(net, x):
        return jnp.sum(jnp.sin(_rescale_closed_form(net, x, b, 1)))

    got = jax.jit(jax.grad(ours, argnums=(0, 1)))(net, x)
    want = jax.grad(formula, argnums=(0, 1))(net, x)
    assert_close(got, want)


@pytest.mark.parametrize("act", ["tanh", "relu", "softplus"])
def test_derivatives_of_the_attribution_are_those_of_its_formula(act):
    in_float64(_derivatives_of_the_attribution_are_those_of_its_formula_float64, act)


def _derivative_through_max_pooling_equals_finite_differences_float64():
    # Through the max-pool rule and a ReLU conv net, the directional derivative of
    # a loss of the attribution along random parameter and input directions equals
    # a central finite difference (float64, step 1e-5: truncation error ~1e-10 of
    # the loss's curvature, far below the tolerance).
    net = jax.tree.map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a,
        _pool_net()[0],
    )
    x = jax.random.uniform(jax.random.key(3), (1, 8, 8), jnp.float64)
    base = xa.baselines.Custom(jnp.full((1, 8, 8), 0.25))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    dirs = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(a.size), a.shape, a.dtype),
        params,
    )
    dx = jax.random.normal(jax.random.key(9), x.shape, jnp.float64)

    def loss(p, x):
        dl = xa.DeepLift(eqx.combine(p, static), baseline=base)
        return jnp.sum(dl(x, 2) ** 2)

    g_p, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    along = sum(
        jnp.vdot(g, d)
        for g, d in zip(jax.tree.leaves(g_p), jax.tree.leaves(dirs), strict=True)
    ) + jnp.vdot(g_x, dx)
    h = 1e-5
    step = lambda s: loss(  # noqa: E731
        jax.tree.map(lambda a, d: a + s * d, params, dirs), x + s * dx
    )
    fd = (step(h) - step(-h)) / (2 * h)
    assert_close(along, fd, rtol=1e-6)


def test_derivative_through_max_pooling_equals_finite_differences():
    in_float64(_derivative_through_max_pooling_equals_finite_differences_float64)
