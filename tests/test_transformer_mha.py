"""The attention methods on `eqx.nn.MultiheadAttention`, whose probabilities are
computed inside a `jax.vmap` over heads: read at its one softmax, found in the
traced program, and checked against probabilities and gradients computed by hand."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqx_attr as xa

from .helpers import assert_close
from .test_transformer import chefer_reference, rollout_reference

D, HEADS, GRID = 8, 2, 2
N = GRID * GRID + 1


class Block(eqx.Module):
    norm: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    mlp: eqx.nn.MLP

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.norm = eqx.nn.LayerNorm(D)
        self.attn = eqx.nn.MultiheadAttention(
            HEADS, D, use_query_bias=True, use_key_bias=True, use_value_bias=True,
            use_output_bias=True, key=k1,
        )  # fmt: skip
        self.mlp = eqx.nn.MLP(D, D, 16, 1, activation=jax.nn.gelu, key=k2)

    def __call__(self, t, probs=None):
        n = jax.vmap(self.norm)(t)
        h = t + (self.attn(n, n, n) if probs is None else probs(self.attn, n))
        return h + jax.vmap(self.mlp)(h)


class MhaViT(eqx.Module):
    """A tiny ViT as a user writes it with Equinox's own attention module."""

    embed: eqx.nn.Conv2d
    cls: jax.Array
    pos: jax.Array
    blocks: list
    head: eqx.nn.Linear

    def __init__(self, key):
        ks = jax.random.split(key, 6)
        self.embed = eqx.nn.Conv2d(1, D, 4, stride=4, key=ks[0])
        self.cls = jax.random.normal(ks[1], (1, D))
        self.pos = 0.1 * jax.random.normal(ks[2], (N, D))
        self.blocks = [Block(ks[3]), Block(ks[4])]
        self.head = eqx.nn.Linear(D, 3, key=ks[5])

    def __call__(self, x, probs=None):
        t = self.embed(x).reshape(D, -1).T
        t = jnp.concatenate([self.cls, t]) + self.pos
        for i, b in enumerate(self.blocks):
            t = b(t, None if probs is None else (lambda a, n, i=i: probs(i, a, n)))
        return self.head(t[0])


def _attention_by_hand(attn, n, delta):
    """`attn(n, n, n)` written out, its probabilities `+ delta` (to read their
    gradient) and returned."""
    d = D // HEADS
    q, k, v = (
        (n @ p.weight.T + p.bias[None]).reshape(N, HEADS, d)
        for p in (attn.query_proj, attn.key_proj, attn.value_proj)
    )
    p = jax.nn.softmax(jnp.einsum("shd,Shd->hsS", q, k) / jnp.sqrt(d), axis=-1)
    out = jnp.einsum("hsS,Shd->shd", p + delta, v).reshape(N, D)
    return out @ attn.output_proj.weight.T + attn.output_proj.bias[None], p


def _by_hand(model, x, target):
    def score(deltas):
        seen = []

        def probs(i, attn, n):
            out, p = _attention_by_hand(attn, n, deltas[i])
            seen.append(p)
            return out

        return model(x, probs)[target], seen

    deltas = [jnp.zeros((HEADS, N, N))] * 2
    grads, seen = jax.grad(score, has_aux=True)(deltas)
    return seen, grads


ATTN = lambda m: [b.attn for b in m.blocks]  # noqa: E731


def test_rollout_and_chefer_read_multihead_attention():
    model = MhaViT(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8))
    probs, grads = _by_hand(model, x, 2)
    assert_close(model(x), model(x, lambda i, a, n: _attention_by_hand(a, n, 0)[0]))
    rollout = xa.AttentionRollout(model, ATTN, resize=None)(x)
    assert_close(rollout, rollout_reference(probs).reshape(GRID, GRID))
    chefer = xa.CheferRelevance(model, ATTN, resize=None)(x, 2)
    assert_close(chefer, chefer_reference(probs, grads).reshape(GRID, GRID))
    # Under jit and vmap too.
    xs = jnp.stack([x, 1.0 - x])
    batched = eqx.filter_jit(
        eqx.filter_vmap(xa.CheferRelevance(model, ATTN, resize=None))
    )(xs, jnp.array([2, 2]))
    assert_close(batched[0], chefer)


class _TwoSoftmaxes(eqx.Module):
    def __call__(self, t):
        a = jax.nn.softmax(t @ t.T)
        return jax.nn.softmax(a) @ t


class _Wrap(eqx.Module):
    inner: _TwoSoftmaxes

    def __call__(self, x):
        return self.inner(x.reshape(4, 16)).sum(0)


def test_modules_without_one_softmax_are_refused_clearly():
    model = MhaViT(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8))
    with pytest.raises(ValueError, match=r"Linear.*computes 0 softmaxes"):
        xa.AttentionRollout(model, lambda m: m.head)(x)
    with pytest.raises(ValueError, match=r"_TwoSoftmaxes.*computes 2 softmaxes"):
        xa.AttentionRollout(_Wrap(_TwoSoftmaxes()), lambda m: m.inner)(x)


def test_a_convolution_read_as_attention_says_so():
    cnn = xa.models.SmallCNN(key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"\(64, 7, 7\).*not attention maps"):
        xa.AttentionRollout(cnn, lambda m: [m.conv2])(jnp.ones((1, 28, 28)))
