"""Model surgery: the swapped ReLUs, where they are reached, and what raises."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa


def small_cnn():
    return _CNN


_CNN = xa.models.SmallCNN(width=4, key=jax.random.key(0))
X8 = jnp.full((1, 8, 8), 0.5)

# ---------------------------------------------------------------------------------
# The replacement ReLUs on their own


def test_guided_and_deconvnet_relu_hand_values():
    # d/dx sum(w * relu(x)) with the backward signal w at each unit.
    x = jnp.array([2.0, 2.0, -1.0, -1.0, 0.0, 3.0])
    w = jnp.array([1.5, -2.0, 4.0, -3.0, 1.0, 0.0])
    plain = jax.grad(lambda z: jnp.sum(w * jax.nn.relu(z)))(x)
    guided = jax.grad(lambda z: jnp.sum(w * xa.guided_relu(z)))(x)
    deconv = jax.grad(lambda z: jnp.sum(w * xa.deconvnet_relu(z)))(x)
    # plain: w where x > 0; guided: w where x > 0 and w > 0; deconv: max(w, 0).
    np.testing.assert_array_equal(plain, [1.5, -2.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(guided, [1.5, 0.0, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(deconv, [1.5, 0.0, 4.0, 0.0, 1.0, 0.0])
    # The forward pass is an ordinary ReLU.
    np.testing.assert_array_equal(xa.guided_relu(x), jax.nn.relu(x))
    np.testing.assert_array_equal(xa.deconvnet_relu(x), jax.nn.relu(x))


# ---------------------------------------------------------------------------------
# Reach: a two-layer net whose ReLUs are spelled in every supported way.


def _relu_scan(h):
    # One row per step of a scan.
    _, out = jax.lax.scan(lambda c, row: (c, jax.nn.relu(row)), None, h)
    return out


SPELLINGS: dict[str, Callable] = {
    "jax.nn.relu": jax.nn.relu,
    "maximum": lambda h: jnp.maximum(h, 0),
    "maximum_left": lambda h: jnp.maximum(0.0, h),
    "maximum_zeros_like": lambda h: jnp.maximum(h, jnp.zeros_like(h)),
    "clip": lambda h: jnp.clip(h, 0),
    "jit": lambda h: jax.jit(jax.nn.relu)(h),
    "vmap": lambda h: jax.vmap(lambda r: jnp.maximum(r, 0))(h),
    "scan": _relu_scan,
    "checkpoint": lambda h: jax.checkpoint(jax.nn.relu)(h),
    "cond": lambda h: jax.lax.cond(jnp.sum(h) > -1e9, jax.nn.relu, lambda v: v, h),
    "nested": lambda h: jax.jit(jax.checkpoint(_relu_scan))(h),
    "fori_loop": lambda h: jax.lax.fori_loop(0, 1, lambda i, v: jax.nn.relu(v), h),
}


class TwoLayer(eqx.Module):
    l1: eqx.nn.Linear
    l2: eqx.nn.Linear
    spelling: str = eqx.field(static=True)

    def __call__(self, x):
        relu = SPELLINGS[self.spelling]
        h = relu(self.l1(x).reshape(2, 3)).reshape(6)
        return self.l2(h)


def two_layer(spelling: str) -> TwoLayer:
    k1, k2 = jax.random.split(jax.random.key(3))
    return TwoLayer(eqx.nn.Linear(4, 6, key=k1), eqx.nn.Linear(6, 3, key=k2), spelling)


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_inline_relu_reached_everywhere(spelling):
    model = two_layer(spelling)
    x = jnp.array([0.3, -1.2, 0.8, 0.5])
    w1, b1 = model.l1.weight, model.l1.bias
    w2 = model.l2.weight
    z = w1 @ x + b1
    assert jnp.any(z > 0) and jnp.any(z < 0)
    for rule in ("guided", "deconvnet"):
        swapped = xa.swap_relu(model, rule)
        assert swapped.n_swapped(x) == 1
        np.testing.assert_allclose(swapped(x), model(x), rtol=1e-6)
        got = jax.grad(lambda v: swapped(v)[0])(x)
        # By hand: the hidden units' backward signal is w2[0].
        g = w2[0]
        if rule == "guided":
            g = jnp.where((z > 0) & (g > 0), g, 0.0)
        else:
            g = jnp.maximum(g, 0.0)
        np.testing.assert_allclose(got, w1.T @ g, rtol=1e-5, atol=1e-7)


def test_while_loop_body_is_rewritten():
    # JAX cannot reverse-differentiate a while_loop, so check the rewrite itself:
    # the ReLU in the body is found and the forward pass is unchanged.
    def f(v):
        body = lambda c: (jax.nn.relu(c[0]) - 0.5, c[1] + 1)
        return jax.lax.while_loop(lambda c: c[1] < 3, body, (v, 0))[0]

    x = jnp.array([2.0, -1.0])
    swapped = xa.swap_relu(f, "guided")
    assert swapped.n_swapped(x) == 1
    np.testing.assert_array_equal(swapped(x), [0.5, -0.5])


def test_pytree_relus_reached_and_counted():
    x = X8
    cnn = small_cnn()
    # One shared Lambda instance is used at three places; each use is swapped.
    swapped = xa.swap_relu(cnn, "guided")
    assert swapped.n_swapped(x) == 3
    layers = swapped.model.conv1.layers
    assert isinstance(layers[1], eqx.nn.Lambda) and layers[1].fn is not jax.nn.relu
    # eqx.nn.MLP's activation field (used after each of the 2 hidden layers).
    mlp = xa.models.MLP(in_shape=(5,), width=7, depth=2, key=jax.random.key(0))
    swapped = xa.swap_relu(mlp, "guided")
    assert swapped.model.mlp.activation is not jax.nn.relu
    assert swapped.n_swapped(jnp.ones(5)) == 2


def test_mlp_activation_swap_equals_hand_built_guided_mlp():
    mlp = xa.models.MLP(in_shape=(5,), width=7, depth=2, key=jax.random.key(0))
    by_hand = eqx.tree_at(lambda m: m.mlp.activation, mlp, xa.guided_relu)
    x = jax.random.normal(jax.random.key(1), (5,))
    want = jax.grad(lambda v: by_hand(v)[4])(x)
    got = xa.GuidedBackprop(mlp)(x, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    assert not np.allclose(got, xa.Gradients(mlp)(x, 4))


class FieldReLU(eqx.Module):
    lin: eqx.nn.Linear
    act: Callable = jax.nn.relu

    def __call__(self, x):
        return jnp.sum(self.act(self.lin(x)))


def test_user_callable_field_is_swapped_in_a_copy():
    model = FieldReLU(eqx.nn.Linear(3, 4, key=jax.random.key(0)))
    swapped = xa.swap_relu(model, "deconvnet")
    assert model.act is jax.nn.relu  # the caller's model is untouched
    assert isinstance(swapped.model.act, eqx.Module)
    x = jnp.array([1.0, -1.0, 0.5])
    # Deconvnet backward of sum(relu(Wx + b)) is W^T relu(1) = column sums of W.
    got = jax.grad(swapped)(x)
    np.testing.assert_allclose(got, jnp.sum(model.lin.weight, axis=0), rtol=1e-6)


def test_custom_rule_straight_through():
    # A user rule whose backward passes g unchanged: the gradient becomes that of
    # the same network with the ReLUs deleted.
    @jax.custom_vjp
    def straight(x):
        return jax.nn.relu(x)

    straight.defvjp(lambda x: (straight(x), None), lambda _, g: (g,))
    model = two_layer("jax.nn.relu")
    x = jnp.array([0.3, -1.2, 0.8, 0.5])
    got = jax.grad(lambda v: xa.swap_relu(model, straight)(v)[1])(x)
    want = model.l1.weight.T @ model.l2.weight[1]
    np.testing.assert_allclose(got, want, rtol=1e-5)


class Normed(eqx.Module):
    lin: eqx.nn.Linear
    norm: eqx.nn.LayerNorm
    relu: Callable

    def __call__(self, x):
        return jnp.sum(self.relu(self.norm(self.lin(x))) * jnp.arange(-2.0, 2.0))


def test_library_clamps_are_not_relus():
    # LayerNorm clamps its variance with jnp.maximum(0.0, var) and jax.image.resize
    # its kernel with jnp.maximum(0, .); neither is an activation.
    x = jnp.array([0.3, -1.2, 0.8])
    model = Normed(eqx.nn.Linear(3, 4, key=jax.random.key(0)), eqx.nn.LayerNorm(4), 0)
    inline = eqx.tree_at(lambda m: m.relu, model, lambda v: jnp.maximum(v, 0))
    by_hand = eqx.tree_at(lambda m: m.relu, model, xa.guided_relu)
    want = jax.grad(by_hand)(x)
    assert xa.swap_relu(inline, "guided").n_swapped(x) == 1
    np.testing.assert_allclose(xa.GuidedBackprop(inline)(x), want, rtol=1e-6)
    no_relu = eqx.tree_at(lambda m: m.relu, model, lambda v: v)
    with pytest.raises(ValueError, match="No ReLU found"):
        xa.GuidedBackprop(no_relu)(x)
    with pytest.raises(ValueError, match="No ReLU found"):
        xa.GuidedBackprop(lambda v: jnp.sum(jax.image.resize(v, (6,), "linear")))(x)


def test_relu6_is_a_relu_followed_by_a_cap():
    # relu6 = min(relu(x), 6): the ReLU part takes the rule, the cap its gradient.
    # Units: -1 (off), 2 (on), 9 (capped). Backward signals: 1, 1, 1 and -1, -1, -1.
    x = jnp.array([-1.0, 2.0, 9.0])
    for act in (jax.nn.relu6, lambda v: jnp.clip(v, 0.0, 6.0)):
        for sign, want in ((1.0, [0.0, 1.0, 0.0]), (-1.0, [0.0, 0.0, 0.0])):
            f = lambda v, act=act, sign=sign: sign * jnp.sum(act(v))
            got = jax.grad(xa.swap_relu(f, "guided"))(x)
            np.testing.assert_array_equal(got, want)
    held = FieldReLU(eqx.nn.Linear(3, 3, key=jax.random.key(0)), jax.nn.relu6)
    held = eqx.tree_at(lambda m: m.lin.weight, held, jnp.eye(3))
    held = eqx.tree_at(lambda m: m.lin.bias, held, jnp.zeros(3))
    got = jax.grad(xa.swap_relu(held, "deconvnet"))(x)
    # Deconvnet ignores the ReLU mask but keeps the cap's: only the capped unit is 0.
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0])


# ---------------------------------------------------------------------------------
# Purity and transformations


def test_swap_never_modifies_the_model():
    cnn = small_cnn()
    before = jax.tree_util.tree_leaves(cnn)
    x = X8 * 0.6
    grad = eqx.filter_jit(lambda m, v: jax.grad(lambda u: m(u)[2])(v))
    plain = grad(cnn, x)
    swapped = xa.swap_relu(cnn, "guided")
    guided = grad(swapped, x)
    np.testing.assert_array_equal(eqx.filter_jit(xa.GuidedBackprop(cnn))(x, 2), guided)
    after = jax.tree_util.tree_leaves(cnn)
    assert len(before) == len(after)
    assert all(a is b for a, b in zip(before, after, strict=True))
    assert cnn.conv1.layers[1].fn is jax.nn.relu
    assert not np.allclose(guided, plain)
    np.testing.assert_allclose(grad(cnn, x), plain, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        eqx.filter_jit(xa.Gradients(cnn))(x, 2), plain, rtol=1e-6, atol=1e-9
    )


def test_eqx_error_if_inside_model_still_fires():
    class Checked(eqx.Module):
        lin: eqx.nn.Linear

        def __call__(self, x):
            x = eqx.error_if(x, jnp.sum(x) > 100.0, "input too large")
            return jax.nn.relu(self.lin(x))

    model = Checked(eqx.nn.Linear(3, 2, key=jax.random.key(0)))
    method = eqx.filter_jit(xa.GuidedBackprop(model))
    assert method(jnp.ones(3), 0).shape == (3,)
    with pytest.raises(Exception, match="input too large"):
        jax.block_until_ready(method(jnp.full((3,), 50.0), 0))


# ---------------------------------------------------------------------------------
# Errors: never a silent plain gradient


class Act(eqx.Module):
    """Linear, then `act`, then a ReLU, then a sum."""

    lin: eqx.nn.Linear
    act: Callable
    relu: bool = eqx.field(static=True, default=True)

    def __call__(self, x):
        h = self.act(self.lin(x))
        return jnp.sum(jax.nn.relu(h) if self.relu else h)


def _act(act, relu=True):
    return Act(eqx.nn.Linear(3, 3, key=jax.random.key(0)), act, relu)


def test_no_relu_raises():
    x = jnp.array([1.0, -2.0, 0.5])
    for model in (
        eqx.nn.Linear(3, 2, key=jax.random.key(0)),
        _act(jnp.tanh, relu=False),
        _act(jax.nn.sigmoid, relu=False),
    ):
        for method in (xa.GuidedBackprop(model), xa.Deconvolution(model)):
            with pytest.raises(ValueError, match="No ReLU found") as e:
                method(x, 0 if isinstance(model, eqx.nn.Linear) else None)
            assert type(model).__name__ in str(e.value)


@pytest.mark.parametrize(
    "name, act",
    [
        ("gelu", jax.nn.gelu),
        ("gelu", lambda v: jax.nn.gelu(v, approximate=False)),
        ("silu", jax.nn.silu),
        ("leaky_relu", jax.nn.leaky_relu),
        ("elu", jax.nn.elu),
        ("softplus", jax.nn.softplus),
        ("PReLU", eqx.nn.PReLU()),
    ],
)
def test_other_activations_raise_by_name(name, act):
    model = _act(act)
    x = jnp.array([1.0, -2.0, 0.5])
    with pytest.raises(ValueError, match=name):
        xa.GuidedBackprop(model)(x)
    with pytest.raises(ValueError, match="other_activations='ignore'"):
        xa.Deconvolution(model)(x)


def test_other_activations_ignore_keeps_their_plain_gradient():
    model = _act(jax.nn.gelu)
    x = jnp.array([1.0, -2.0, 0.5])
    got = xa.GuidedBackprop(model, other_activations="ignore")(x)
    # By hand: the same net with only its ReLU replaced by the guided one.
    lin = model.lin
    want = jax.grad(lambda v: jnp.sum(xa.guided_relu(jax.nn.gelu(lin(v)))))(x)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # gelu alone, ignored, is still "no ReLU".
    with pytest.raises(ValueError, match="It did find: gelu"):
        xa.GuidedBackprop(_act(jax.nn.gelu, relu=False), other_activations="ignore")(x)


def test_unreachable_relus_raise():
    @jax.custom_vjp
    def block(x):
        return jax.nn.relu(x)

    block.defvjp(lambda x: (block(x), x), lambda x, g: (g * (x > 0),))

    @jax.custom_jvp
    def block2(x):
        return jnp.maximum(x, 0)

    block2.defjvp(lambda p, t: (block2(p[0]), t[0] * (p[0] > 0)))
    x = jnp.array([1.0, -2.0, 0.5])
    for act, fn in ((block, "block"), (block2, "block2")):
        with pytest.raises(ValueError, match=f"(?s)cannot be swapped.*`{fn}`"):
            xa.GuidedBackprop(_act(act, relu=False))(x)


def test_bad_options_raise():
    model = small_cnn()
    with pytest.raises(ValueError, match="other_activations"):
        xa.GuidedBackprop(model, other_activations="warn")
    with pytest.raises(ValueError, match="rule"):
        xa.swap_relu(model, "zennit")
    with pytest.raises(TypeError, match="rule"):
        xa.swap_relu(model, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="same shape"):
        xa.swap_relu(model, jnp.sum)
