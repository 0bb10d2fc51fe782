"""LRP: hand-derived values per rule, conservation, identities, reach and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._rules._lrp_rules import apply_rule

from .helpers import assert_close, digit_like, small_cnn, tree_allclose


def one_unit(w, b):
    """`y = w . x + b` as an `eqx.nn.Linear` with one output."""
    lin = eqx.nn.Linear(len(w), 1, key=jax.random.key(0))
    return eqx.tree_at(
        lambda m: (m.weight, m.bias), lin, (jnp.array([w]), jnp.array([b]))
    )


# x = (2, 1), w = (1, -3), b = 2: z = 1, and the relevance to split is R = z = 1.
# Each expected value is worked out by hand from the rule's definition.
HAND = {
    # x_i w_i R / z
    "Epsilon": (xa.lrp.Epsilon(0.0), [2.0, -3.0]),
    # only x+ w+ and the positive bias: z+ = 2 + 2 = 4
    "ZPlus": (xa.lrp.ZPlus(), [0.5, 0.0]),
    # 2 * (x+w+ share of z+ = 4) - 1 * (x+w- share of z- = -3)
    "AlphaBeta": (xa.lrp.AlphaBeta(2.0, 1.0), [1.0, -1.0]),
    # z > 0: weights w + w+ = (2, -3), bias b + b+ = 4, z = 4 - 3 + 4 = 5
    "Gamma": (xa.lrp.Gamma(1.0), [0.8, -0.6]),
    # z = xw + b - (0 w+ + b+) - (3 w- + b-) = 1 - 2 + 9 = 8; (2 - 0, -3 + 9) / 8
    "ZBox": (xa.lrp.ZBox(0.0, 3.0), [0.25, 0.75]),
    # all-one weights, no bias
    "Flat": (xa.lrp.Flat(), [0.5, 0.5]),
    # w^2 = (1, 9), b^2 = 4: z = 14
    "WSquare": (xa.lrp.WSquare(), [1 / 14, 9 / 14]),
    "Norm": (xa.lrp.Norm(0.0), [2.0, -3.0]),
}


@pytest.mark.parametrize("name", list(HAND))
def test_rules_hand_derived_on_one_unit(name):
    rule, expected = HAND[name]
    model = one_unit([1.0, -3.0], 2.0)
    a = xa.LRP(model, rule=rule)(jnp.array([2.0, 1.0]), 0)
    assert_close(a, np.array(expected))


def test_stabiliser_sign_of_zero_is_plus():
    # z = 0 exactly: the denominator is +eps, so R_i = x_i w_i R / eps with R = 0.
    from eqx_attr._rules._lrp_rules import stabilize

    z = jnp.array([0.0, -2.0, 3.0])
    assert_close(stabilize(z, 0.5), np.array([0.5, -2.5, 3.5]))


def bias_free_mlp(key):
    model = xa.models.MLP((6,), n_classes=3, width=5, depth=2, key=key)
    return eqx.tree_at(
        lambda m: [layer.bias for layer in m.mlp.layers],
        model,
        [jnp.zeros_like(layer.bias) for layer in model.mlp.layers],
    )


def test_epsilon_to_zero_is_gradient_times_input():
    x = digit_like(2)
    model = small_cnn(1)
    model = eqx.tree_at(lambda m: m.fc.bias, model, jnp.zeros_like(model.fc.bias))
    a = xa.LRP(model, rule=xa.lrp.Epsilon(1e-9))(x, 4)
    gxi = xa.GradientsXInput(model)(x, 4)
    assert_close(a, gxi)
    mlp = bias_free_mlp(jax.random.key(1))
    v = jax.random.normal(jax.random.key(2), (6,))
    assert_close(
        xa.LRP(mlp, rule=xa.lrp.Epsilon(1e-9))(v, 2), xa.GradientsXInput(mlp)(v, 2)
    )


@pytest.mark.parametrize(
    "rule",
    [xa.lrp.Epsilon(1e-9), xa.lrp.ZPlus(1e-9), xa.lrp.Gamma(0.25, 1e-9)],
    ids=["Epsilon", "ZPlus", "Gamma"],
)
def test_z_rules_conserve_relevance_layer_by_layer(rule):
    # Bias-free ReLU network: each layer passes on exactly the relevance it got.
    # (AlphaBeta conserves only where a unit has both positive and negative
    # contributions, which a narrow random network does not guarantee.)
    model = bias_free_mlp(jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (6,))
    layers = model.mlp.layers
    acts = [x]
    for layer in layers[:-1]:
        acts.append(jax.nn.relu(layer(acts[-1])))
    score = layers[-1](acts[-1])
    r = jnp.zeros(3).at[1].set(score[1])
    dense = lambda h, w, b: w @ h
    for layer, h in zip(layers[::-1], acts[::-1], strict=True):
        r_in = rule.relevance(dense, h, layer.weight, None, r)
        # Sums of signed relevances: rounding relative to the summed magnitudes.
        assert_close(r_in.sum(), r.sum(), scale=float(jnp.abs(r_in).sum()))
        r = r_in
    assert_close(r, xa.LRP(model, rule=rule)(x, 1))
    assert_close(r.sum(), score[1], scale=float(jnp.abs(r).sum()))


def test_inline_matmul_and_einsum_equal_module_twin():
    model = xa.models.MLP((1, 6, 6), n_classes=4, width=8, key=jax.random.key(5))
    (l1, l2, l3) = model.mlp.layers

    def inline(x):
        h = x.reshape(-1)
        h = jnp.maximum(h @ l1.weight.T + l1.bias, 0.0)
        h = jax.nn.relu(jnp.einsum("oi,i->o", l2.weight, h) + l2.bias)
        return l3.weight @ h + l3.bias

    x = digit_like(6, (1, 6, 6))
    for comp in (xa.lrp.EpsilonPlusFlat(), xa.lrp.EpsilonPlus()):
        assert_close(
            xa.LRP(inline, composite=comp)(x, 2), xa.LRP(model, composite=comp)(x, 2)
        )


def test_overrides_by_where():
    # Epsilon everywhere, ZPlus on the convolutions by `where`, is EpsilonPlus.
    model = small_cnn(2)
    x = digit_like(3)
    convs = lambda m: [m.conv1[0], m.conv1[3], m.conv2[0], m.conv2[2]]
    overridden = xa.LRP(
        model, rule=xa.lrp.Epsilon(), overrides=((convs, xa.lrp.ZPlus()),)
    )(x, 5)
    assert_close(overridden, xa.LRP(model, composite=xa.lrp.EpsilonPlus())(x, 5))
    # An override beats the composite's first-layer rule too.
    flat = xa.LRP(model, composite=xa.lrp.EpsilonPlusFlat())(x, 5)
    plus = xa.LRP(
        model,
        composite=xa.lrp.EpsilonPlusFlat(),
        overrides=((lambda m: m.conv1[0], xa.lrp.ZPlus()),),
    )(x, 5)
    assert not tree_allclose(flat, plus)
    assert_close(plus, xa.LRP(model, composite=xa.lrp.EpsilonPlus())(x, 5))


def test_unsupported_operations_raise_with_location_and_remedy():
    w = jax.random.normal(jax.random.key(0), (3, 4))
    x = jnp.linspace(0.5, 1.0, 4)

    def square(v):
        h = w @ v
        return h * h  # a product of two activations

    def exp(v):
        return jnp.exp(w @ v)

    def cumsum(v):
        return jnp.cumsum(w @ v)

    for f, prim in ((square, "mul"), (cumsum, "cumsum")):
        with pytest.raises(ValueError) as info:
            xa.LRP(f, rule=xa.lrp.Epsilon())(x, 0)
        msg = str(info.value)
        assert f"`{prim}`" in msg and "test_lrp.py" in msg
        assert "overrides=" in msg and f"allow_gradient=('{prim}',)" in msg
    # The explicit opt-in: the plain gradient through exp, the rule elsewhere.
    a = xa.LRP(exp, rule=xa.lrp.Epsilon(1e-9), allow_gradient=("exp",))(x, 1)
    z = w @ x
    expected = x * w[1] * jnp.exp(z[1]) * jnp.exp(z[1]) / z[1]
    assert_close(a, expected)

    @jax.custom_vjp
    def mystery(v):
        return v

    mystery.defvjp(lambda v: (v, None), lambda _, g: (g,))
    with pytest.raises(ValueError, match="custom_vjp_call"):
        xa.LRP(lambda v: mystery(w @ v), rule=xa.lrp.Epsilon())(x, 0)
    # A product of two activations names the composite that has a rule for it.
    with pytest.raises(ValueError, match=r"AttnLRP\(\)"):
        xa.LRP(square, rule=xa.lrp.Epsilon())(x, 0)


def test_unmerged_batch_norm_and_bad_arguments_raise():
    bn_first = eqx.nn.Sequential(
        [xa.models.FrozenBatchNorm2d(1), eqx.nn.Lambda(lambda h: h.sum((1, 2)))]
    )
    with pytest.raises(ValueError, match=r"batch norm at `model.layers\[0\]`"):
        xa.LRP(bn_first)(digit_like(), 0)
    model = small_cnn()
    with pytest.raises(ValueError, match="not both"):
        xa.LRP(model, xa.lrp.EpsilonPlus(), rule=xa.lrp.Epsilon())
    with pytest.raises(TypeError, match="rule"):
        xa.LRP(model, rule="epsilon")  # pyright: ignore
    with pytest.raises(TypeError, match="composite"):
        xa.LRP(model, composite=xa.lrp.Epsilon())  # pyright: ignore
    with pytest.raises(TypeError, match="overrides"):
        xa.LRP(model, overrides=(lambda m: m.fc,))
    with pytest.raises(ValueError, match="alpha - beta"):
        xa.lrp.AlphaBeta(3.0, 1.0)


def test_rule_backward_is_a_custom_vjp_of_the_forward():
    # The forward value is the layer's; only the backward pass is the rule's.
    w = jnp.array([[1.0, -3.0]])
    x = jnp.array([2.0, 1.0])
    fn = lambda v, w_, b_: w_ @ v + (0.0 if b_ is None else b_)
    y, pull = jax.vjp(lambda v: apply_rule(xa.lrp.ZPlus(), fn, v, w, jnp.ones(1)), x)
    # Exact: 2 * 1 + 1 * (-3) + 1, small integers, exact in any order.
    np.testing.assert_array_equal(y, [0.0])
    assert_close(pull(jnp.ones(1))[0], np.array([2.0 / 3.0, 0.0]))


def test_registry_entry_and_composite_names():
    from eqx_attr._registry import BuildContext, get

    entry = get("lrp")
    assert entry.cls is xa.LRP and entry.family == "rules" and not entry.random
    model = small_cnn()
    default = entry.build(BuildContext(model))
    assert isinstance(default.composite, xa.lrp.EpsilonPlusFlat)
    box = entry.build(
        BuildContext(model, options={"composite": "epsilon-gamma-box", "low": -1.0})
    )
    assert isinstance(box.composite, xa.lrp.EpsilonGammaBox)
    # Exact: option values copied, not computed.
    assert box.composite.low == -1.0 and box.composite.high == 1.0
    for name in xa.lrp.COMPOSITE_NAMES:
        assert isinstance(xa.lrp.composite_by_name(name), xa.lrp.AbstractComposite)
    with pytest.raises(ValueError, match="epsilon_plus_flat"):
        xa.lrp.composite_by_name("epsilon_minus")


def test_scaling_by_constants_passes_relevance():
    # `-(W v) / 3` and `2 (W v)`: the scalings pass the relevance unchanged, so
    # LRP-0 of a bias-free linear map is x_i w_ti times the scale, summing to f_t.
    w = jax.random.normal(jax.random.key(0), (3, 4))
    x = jnp.linspace(0.5, 1.0, 4)
    for scale, f in (
        (-1 / 3, lambda v: -(w @ v) / 3.0),
        (2.0, lambda v: 2.0 * (w @ v)),
    ):
        a = xa.LRP(f, rule=xa.lrp.Epsilon(1e-9))(x, 1)
        assert_close(a, scale * x * w[1])
