"""Model surgery: the swapped ReLUs, where they are reached, and what raises."""

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, tree_allclose


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
    # Exact: each entry is w copied or zeroed, and ReLU's forward pass copies x.
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
    # jnp.where / lax.select: select_n on a sign test of the same x.
    "where": lambda h: jnp.where(h > 0, h, 0),
    "where_float_zero": lambda h: jnp.where(h > 0, h, 0.0),
    "where_ge": lambda h: jnp.where(h >= 0, h, 0),
    "where_zero_left": lambda h: jnp.where(0 < h, h, 0),
    "where_lax_lt": lambda h: jnp.where(jax.lax.lt(0.0, h), h, 0),
    "where_le_swapped": lambda h: jnp.where(h <= 0, 0, h),
    "where_not": lambda h: jnp.where(~(h < 0), h, 0),
    "where_zeros_like": lambda h: jnp.where(h > 0, h, jnp.zeros_like(h)),
    "where_zero_times_x": lambda h: jnp.where(h > 0, h, 0.0 * h),
    "lax_select": lambda h: jax.lax.select(h > 0, h, jnp.zeros_like(h)),
    "where_in_jit": lambda h: jax.jit(lambda v: jnp.where(v > 0, v, 0))(h),
    "where_test_outside_jit": lambda h: jax.jit(lambda v, p: jnp.where(p, v, 0))(
        h, h > 0
    ),
    "where_scan": lambda h: jax.lax.scan(
        lambda c, r: (c, jnp.where(r > 0, r, 0)), None, h
    )[1],
    # A mask multiply: mul(x, convert(x > 0)), either order.
    "mask_mul": lambda h: h * (h > 0),
    "mask_mul_left": lambda h: (h > 0) * h,
    "mask_mul_astype": lambda h: h * (h >= 0).astype(h.dtype),
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
        assert_close(swapped(x), model(x))
        got = jax.grad(lambda v: swapped(v)[0])(x)
        # By hand: the hidden units' backward signal is w2[0].
        g = w2[0]
        if rule == "guided":
            g = jnp.where((z > 0) & (g > 0), g, 0.0)
        else:
            g = jnp.maximum(g, 0.0)
        assert_close(got, w1.T @ g)


def test_while_loop_body_is_rewritten():
    # JAX cannot reverse-differentiate a while_loop, so check the rewrite itself:
    # the ReLU in the body is found and the forward pass is unchanged.
    def f(v):
        body = lambda c: (jax.nn.relu(c[0]) - 0.5, c[1] + 1)
        return jax.lax.while_loop(lambda c: c[1] < 3, body, (v, 0))[0]

    x = jnp.array([2.0, -1.0])
    swapped = xa.swap_relu(f, "guided")
    assert swapped.n_swapped(x) == 1
    # Exact: ReLUs and subtractions of 0.5 on halves, exact in float32.
    np.testing.assert_array_equal(swapped(x), [0.5, -0.5])


def test_pytree_relus_reached_and_counted():
    x = X8
    cnn = small_cnn()
    # One shared Lambda instance is used at four places (conv1[1], conv1[4],
    # conv2[1], conv2[3]); each use is swapped.
    swapped = xa.swap_relu(cnn, "guided")
    assert swapped.n_swapped(x) == 4
    m = swapped.model
    for relu in (
        m.conv1.layers[1],
        m.conv1.layers[4],
        m.conv2.layers[1],
        m.conv2.layers[3],
    ):
        assert isinstance(relu, eqx.nn.Lambda) and relu.fn is not jax.nn.relu
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
    assert_close(got, want)
    assert not tree_allclose(got, xa.Gradients(mlp)(x, 4))


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
    assert_close(got, jnp.sum(model.lin.weight, axis=0))


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
    assert_close(got, want)


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
    assert_close(xa.GuidedBackprop(inline)(x), want)
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
            np.testing.assert_array_equal(got, want)  # exact: 1s and 0s
    held = FieldReLU(eqx.nn.Linear(3, 3, key=jax.random.key(0)), jax.nn.relu6)
    held = eqx.tree_at(lambda m: m.lin.weight, held, jnp.eye(3))
    held = eqx.tree_at(lambda m: m.lin.bias, held, jnp.zeros(3))
    got = jax.grad(xa.swap_relu(held, "deconvnet"))(x)
    # Deconvnet ignores the ReLU mask but keeps the cap's: only the capped unit is 0.
    # Exact: 1s and 0s through an identity weight.
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0])


# ---------------------------------------------------------------------------------
# ReLUs written by hand (jnp.where, mask multiply), alone and mixed with others


class Mixed(eqx.Module):
    """x -> l1 -> act1 -> l2 -> act2 -> l3 (3 scores)."""

    l1: eqx.nn.Linear
    l2: eqx.nn.Linear
    l3: eqx.nn.Linear
    act1: Callable
    act2: Callable

    def __call__(self, x):
        return self.l3(self.act2(self.l2(self.act1(self.l1(x)))))


def mixed(act1, act2) -> Mixed:
    k1, k2, k3 = jax.random.split(jax.random.key(5), 3)
    lin = lambda i, o, k: eqx.nn.Linear(i, o, key=k)
    return Mixed(lin(4, 6, k1), lin(6, 6, k2), lin(6, 3, k3), act1, act2)


X4 = jnp.array([0.7, -0.4, 1.1, -0.9])


def hand_gradient(model: Mixed, x, k: int, back1: str, back2: str):
    """d score_k / dx, each activation's backward pass chosen by name: "guided",
    "deconvnet", "relu" (the plain ReLU derivative) or "leaky" (slope 0.1)."""
    z1 = model.l1.weight @ x + model.l1.bias
    h1 = jnp.maximum(z1, 0.0) if back1 != "leaky" else jnp.where(z1 > 0, z1, 0.1 * z1)
    z2 = model.l2.weight @ h1 + model.l2.bias

    def back(g, z, how):
        if how == "guided":
            return jnp.where((z > 0) & (g > 0), g, 0.0)
        if how == "deconvnet":
            return jnp.maximum(g, 0.0)
        if how == "relu":
            return jnp.where(z > 0, g, 0.0)
        return jnp.where(z > 0, g, 0.1 * g)  # leaky

    g2 = back(model.l3.weight[k], z2, back2)
    g1 = back(model.l2.weight.T @ g2, z1, back1)
    return model.l1.weight.T @ g1


def _where_relu(h):
    return jnp.where(h > 0, h, 0)


@pytest.mark.parametrize("rule", ["guided", "deconvnet"])
def test_where_relu_mixed_with_jax_nn_relu_both_swapped(rule):
    # A PyTree jax.nn.relu and an inline jnp.where ReLU: both take the rule.
    model = mixed(jax.nn.relu, _where_relu)
    swapped = xa.swap_relu(model, rule)
    assert swapped.n_swapped(X4) == 2
    method = xa.GuidedBackprop if rule == "guided" else xa.Deconvolution
    for k in range(3):
        want = hand_gradient(model, X4, k, rule, rule)
        got = method(model)(X4, k)
        assert_close(got, want)
        assert_close(jax.grad(lambda v, k=k: swapped(v)[k])(X4), want)
    # Had the jnp.where kept its plain gradient, some score would differ.
    stale = [hand_gradient(model, X4, k, rule, "relu") for k in range(3)]
    fresh = [hand_gradient(model, X4, k, rule, rule) for k in range(3)]
    assert not all(tree_allclose(a, b) for a, b in zip(stale, fresh, strict=True))


def test_model_with_only_hand_written_relus_works():
    # Used to raise "No ReLU found"; now both spellings are swapped.
    model = mixed(_where_relu, lambda h: h * (h > 0))
    assert xa.swap_relu(model, "guided").n_swapped(X4) == 2
    for method, rule in (
        (xa.GuidedBackprop, "guided"),
        (xa.Deconvolution, "deconvnet"),
    ):
        got = method(model)(X4, 1)
        want = hand_gradient(model, X4, 1, rule, rule)
        assert_close(got, want)
    # The forward pass is unchanged.
    assert_close(xa.swap_relu(model, "guided")(X4), mixed(jax.nn.relu, jax.nn.relu)(X4))


def test_hand_written_leaky_relu_is_not_a_relu():
    # jnp.where(x > 0, x, 0.1 x) is a leaky ReLU: never rewritten, so it keeps its
    # plain gradient beside a swapped ReLU ...
    leaky = lambda h: jnp.where(h > 0, h, 0.1 * h)
    model = mixed(leaky, jax.nn.relu)
    assert xa.swap_relu(model, "guided").n_swapped(X4) == 1
    got = xa.GuidedBackprop(model)(X4, 2)
    want = hand_gradient(model, X4, 2, "leaky", "guided")
    assert_close(got, want)
    # ... and on its own it is no ReLU at all, nor are these look-alikes:
    # min(x, 0) written with the branches the wrong way round, and x * (x <= 0).
    identity = lambda h: h
    for act in (leaky, lambda h: jnp.where(h > 0, 0.0, h), lambda h: h * (h <= 0)):
        for method in (xa.GuidedBackprop, xa.Deconvolution):
            with pytest.raises(ValueError, match="No ReLU found"):
                method(mixed(act, identity))(X4, 0)


def test_rule_bodies_are_not_rewritten():
    # guided_relu is itself written with jnp.where; called directly in a model it
    # keeps its own (guided) backward pass and is neither swapped nor an error.
    model = mixed(xa.guided_relu, jax.nn.relu)
    swapped = xa.swap_relu(model, "deconvnet")
    assert swapped.n_swapped(X4) == 1
    got = jax.grad(lambda v: swapped(v)[0])(X4)
    want = hand_gradient(model, X4, 0, "guided", "deconvnet")
    assert_close(got, want)


def test_hand_written_relus_in_equinox_containers():
    # eqx.nn.Lambda and eqx.nn.Sequential only forward the call: a jnp.clip or
    # jnp.where passed to them is still the model's own ReLU.
    m = mixed(jax.nn.relu, jax.nn.relu)
    seq = eqx.nn.Sequential(
        [
            m.l1,
            eqx.nn.Lambda(functools.partial(jnp.clip, min=0.0)),
            m.l2,
            eqx.nn.Lambda(_where_relu),
            m.l3,
        ]
    )
    assert xa.swap_relu(seq, "guided").n_swapped(X4) == 2
    got = xa.GuidedBackprop(seq)(X4, 2)
    assert_close(got, hand_gradient(m, X4, 2, "guided", "guided"))
    # Beside a LayerNorm (whose variance clamp is not a ReLU) it is found once.
    x = jnp.array([0.3, -1.2, 0.8])
    normed = Normed(eqx.nn.Linear(3, 4, key=jax.random.key(0)), eqx.nn.LayerNorm(4), 0)
    inline = eqx.tree_at(lambda n: n.relu, normed, _where_relu)
    by_hand = eqx.tree_at(lambda n: n.relu, normed, xa.guided_relu)
    assert xa.swap_relu(inline, "guided").n_swapped(x) == 1
    assert_close(xa.GuidedBackprop(inline)(x), jax.grad(by_hand)(x))


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
    assert_close(eqx.filter_jit(xa.GuidedBackprop(cnn))(x, 2), guided)
    after = jax.tree_util.tree_leaves(cnn)
    assert len(before) == len(after)
    assert all(a is b for a, b in zip(before, after, strict=True))
    assert cnn.conv1.layers[1].fn is jax.nn.relu
    assert not tree_allclose(guided, plain)
    # Exact: the same compiled program (cached) on the same, untouched arrays.
    np.testing.assert_array_equal(grad(cnn, x), plain)
    assert_close(eqx.filter_jit(xa.Gradients(cnn))(x, 2), plain)


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
    assert_close(got, want)
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
