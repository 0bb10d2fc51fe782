"""LRP on modern layers, found in the traced program: elementwise activations
however written (identity rule), LayerNorm (identity on the normaliser), offsets
and positional embeddings (bias rule), and AttnLRP's uniform and softmax rules
on attention, `eqx.nn.MultiheadAttention` included. Each is checked against a
hand-derived formula or against AttnLRP's Gradient x Input form (LXT's)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqx_attr as xa

from .helpers import assert_close

KEYS = jax.random.split(jax.random.key(0), 8)
X = jax.random.normal(KEYS[0], (8,))
W1 = jax.random.normal(KEYS[1], (6, 8))
W2 = jax.random.normal(KEYS[2], (3, 6))
EPS = xa.lrp.Epsilon(1e-9)

ACTIVATIONS = {
    "gelu_tanh": lambda h: jax.nn.gelu(h, approximate=True),
    "gelu_erf": lambda h: jax.nn.gelu(h, approximate=False),
    "silu": jax.nn.silu,
    "swish_inline": lambda h: h * jax.nn.sigmoid(h),
    "softplus": jax.nn.softplus,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "leaky_where": lambda h: jnp.where(h > 0, h, 0.1 * h),
    "mish": lambda h: h * jnp.tanh(jax.nn.softplus(h)),
    "tanh": jnp.tanh,
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_elementwise_activations_get_the_identity_rule(name):
    act = ACTIVATIONS[name]
    f = lambda v: W2 @ act(W1 @ v)
    a = xa.LRP(f, rule=EPS)(X, 1)
    # LRP-0 on both layers, the activation's relevance passed on unchanged:
    # R_x = x * W1.T @ (act(p) * W2[1] / p), p = W1 @ x.
    p = W1 @ X
    expected = X * (W1.T @ (act(p) * W2[1] / p))
    assert_close(a, expected, dtype=jnp.float32, rtol=1e-4)  # 1/p amplifies
    # No bias anywhere: relevance is conserved.
    assert_close(a.sum(), f(X)[1], dtype=jnp.float32, scale=float(jnp.abs(a).sum()))


def test_layer_norm_holds_its_normaliser_constant():
    ln = eqx.nn.LayerNorm(6)
    ln = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        ln,
        (jnp.linspace(0.5, 1.5, 6), jnp.linspace(-0.2, 0.3, 6)),
    )
    f = lambda v: W2 @ ln(W1 @ v)
    for comp in (xa.lrp.SingleRule(EPS), xa.lrp.AttnLRP(epsilon=1e-9)):
        a = xa.LRP(f, composite=comp)(X, 2)
        h = W1 @ X
        c = h - h.mean()
        n = c / jnp.sqrt(jnp.var(h) + ln.eps)
        y = ln.weight * n + ln.bias
        r_y = y * W2[2]  # LRP-0 at the output layer: y * W2[2] * R / z, R = z
        r_wn = ln.weight * n * r_y / y  # the bias absorbs its share
        # 1/std held constant: R_c = R_wn; centring as the linear map it is.
        ratio = r_wn / c
        r_h = h * (ratio - ratio.mean())
        expected = X * (W1.T @ (r_h / h))
        assert_close(a, expected, dtype=jnp.float32, rtol=1e-4)  # 1/h amplifies


def test_offsets_and_embeddings_are_biases():
    w = W1[0]
    pos = jnp.linspace(-1.0, 1.0, 8)
    # `(x + pos) @ w`: R_(x+pos) = (x + pos) * w, the add's bias rule gives x * w.
    a = xa.LRP(lambda v: jnp.stack([w @ (v + pos)]), rule=EPS)(X, 0)
    assert_close(a, X * w, dtype=jnp.float32, rtol=1e-4)
    # `w @ x + 1.0`: the offset absorbs its share, R_x = x * w.
    a = xa.LRP(lambda v: jnp.stack([w @ v + 1.0]), rule=EPS)(X, 0)
    assert_close(a, X * w, dtype=jnp.float32, rtol=1e-4)
    # A stopped gradient is a constant factor.
    u = W1[1]
    a = xa.LRP(lambda v: jnp.stack([(w @ v) * jax.lax.stop_gradient(u @ v)]), rule=EPS)(
        X, 0
    )
    assert_close(a, X * w * (u @ X), dtype=jnp.float32, rtol=1e-4)


def test_softmax_rule_closed_form():
    f = lambda v: jax.nn.softmax(W1 @ v)
    a = xa.LRP(f, composite=xa.lrp.AttnLRP(epsilon=1e-9))(X, 4)
    # R_z = z * (R - s * sum R) with R = s_4 e_4, then LRP-0 through W1:
    # R_x = x * s_4 * (W1[4] - s @ W1).
    s = f(X)
    assert_close(a, X * s[4] * (W1[4] - s @ W1), dtype=jnp.float32, rtol=1e-4)
    with pytest.raises(ValueError, match=r"softmax.*AttnLRP"):
        xa.LRP(f, rule=EPS)(X, 4)


def test_products_of_two_activations_get_the_uniform_rule():
    a_, b_ = W1[:3], W1[3:]
    f = lambda v: (a_ @ v) * (b_ @ v)
    a = xa.LRP(f, composite=xa.lrp.AttnLRP(epsilon=1e-9))(X, 1)
    # Half of R = f_1 to each factor, then LRP-0: x * (a_1 b_1 + b_1 a_1) / 2 ...
    p, q = a_ @ X, b_ @ X
    expected = X * (a_[1] * q[1] + b_[1] * p[1]) / 2
    assert_close(a, expected, dtype=jnp.float32, rtol=1e-4)
    assert_close(a.sum(), f(X)[1], dtype=jnp.float32, scale=float(jnp.abs(a).sum()))


# -- attention: AttnLRP against its Gradient x Input form ---------------------------


@jax.custom_vjp
def _scaled_grad(t, c):
    return t


_scaled_grad.defvjp(lambda t, c: (t, c), lambda c, g: (g * c, None))

N, D, HEADS = 5, 8, 2


def _mha():
    return eqx.nn.MultiheadAttention(
        HEADS, D, use_query_bias=False, use_key_bias=False, use_value_bias=False,
        use_output_bias=False, key=KEYS[3],
    )  # fmt: skip


def _attention_by_hand(mha, tokens, lxt: bool):
    """`mha(tokens, tokens, tokens)` written out; with `lxt`, AttnLRP's gradient
    corrections (LXT's efficient form): q and k's gradients quartered, v's
    halved (the uniform rule on both matrix products)."""
    q = tokens @ mha.query_proj.weight.T
    k = tokens @ mha.key_proj.weight.T
    v = tokens @ mha.value_proj.weight.T
    if lxt:
        q, k, v = _scaled_grad(q, 0.25), _scaled_grad(k, 0.25), _scaled_grad(v, 0.5)
    d = D // HEADS
    q, k, v = (t.reshape(N, HEADS, d) for t in (q, k, v))
    logits = jnp.einsum("shd,Shd->hsS", q, k) / jnp.sqrt(d)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("hsS,Shd->shd", weights, v).reshape(N, D)
    return out @ mha.output_proj.weight.T


def test_attention_equals_attnlrp_gradient_times_input():
    mha = _mha()
    head = jax.random.normal(KEYS[4], (3, D))
    tokens = jax.random.normal(KEYS[5], (N, D))

    def model(t):
        return head @ mha(t, t, t).mean(0)

    def by_hand(t, lxt):
        return head @ _attention_by_hand(mha, t, lxt).mean(0)

    assert_close(model(tokens), by_hand(tokens, False), dtype=jnp.float32)
    a = xa.LRP(model, composite=xa.lrp.AttnLRP(epsilon=1e-9))(tokens, 2)
    expected = tokens * jax.grad(lambda t: by_hand(t, True)[2])(tokens)
    assert_close(a, expected, dtype=jnp.float32, rtol=1e-4)
    # The same attention written inline gets the same relevance.
    inline = xa.LRP(lambda t: by_hand(t, False), composite=xa.lrp.AttnLRP(1e-9))(
        tokens, 2
    )
    assert_close(inline, a, dtype=jnp.float32, rtol=1e-4)


def test_a_transformer_block_runs_under_jit_and_vmap():
    mha = _mha()
    ln = eqx.nn.LayerNorm(D)
    head = jax.random.normal(KEYS[6], (3, D))

    def block(t):
        n = jax.vmap(ln)(t)
        h = t + mha(n, n, n)
        h = h + jax.vmap(jax.nn.gelu)(h)
        return head @ h.mean(0)

    method = xa.LRP(block, composite=xa.lrp.AttnLRP())
    xs = jax.random.normal(KEYS[7], (2, N, D))
    batched = eqx.filter_jit(eqx.filter_vmap(method))(xs, jnp.array([0, 2]))
    assert batched.shape == (2, N, D) and jnp.isfinite(batched).all()
    assert_close(batched[1], eqx.filter_jit(method)(xs[1], 2), dtype=jnp.float32)
