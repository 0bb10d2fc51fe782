"""CP-LRP (Ali et al. 2022): conservation, and equality with a hand-written pass."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from ._vit_reference import forward, tiny_vit
from .helpers import assert_close, digit_like, jcall, tree_allclose

ATTN = lambda m: [b.attn.attn_drop for b in m.blocks]  # noqa: E731


def _bias_free(vit):
    """Biases, class token and position embeddings set to zero."""

    def zero(path, leaf):
        name = jax.tree_util.keystr(path)
        if any(k in name for k in ("bias", "cls_token", "pos_embed")):
            return jnp.zeros_like(leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(zero, vit)


def test_whole_bias_free_network_conserves_the_score():
    # With the attention, the normalisation and the GELU gates held constant, a
    # bias-free ViT is linear in x, so the relevances sum exactly to the score.
    vit, x = _bias_free(tiny_vit()), digit_like(0, (1, 8, 8))
    method = eqx.filter_jit(
        eqx.filter_vmap(xa.ConservativeLRP(vit, ATTN), in_axes=(None, 0))
    )
    r = method(x, jnp.arange(5))
    assert r.shape == (5, 1, 8, 8)
    # The sum of relevances cancels terms of the size of sum |r|.
    size = np.abs(r).sum(axis=(1, 2, 3))
    assert_close(r.sum(axis=(1, 2, 3)), eqx.filter_jit(vit)(x), scale=size)


def test_conservation_through_a_block():
    vit = _bias_free(tiny_vit(1))
    block = xa.conservative_model(vit, ATTN).blocks[0]
    kt, kg = jax.random.split(jax.random.key(0))
    t = jax.random.normal(kt, (17, 16))
    g = jax.random.normal(kg, (17, 16))  # any upstream relevance per output

    @eqx.filter_jit
    def relevances(vit, block, t, g):
        r_out = g * vit.blocks[0](t)  # gradient x output at the block's output
        r_in = t * jax.grad(lambda t: jnp.sum(g * block(t)))(t)
        return r_in, r_out

    r_in, r_out = relevances(vit, block, t, g)
    # Sums of signed terms: the floor is relative to sum |r| (what cancelled).
    assert_close(r_in.sum(), r_out.sum(), scale=np.abs(r_out).sum())
    assert not tree_allclose(r_in, r_out)  # redistributed, not copied


def test_equals_hand_written_detached_pass():
    vit, x = tiny_vit(2), digit_like(2, (1, 8, 8))
    r = eqx.filter_jit(xa.ConservativeLRP(vit, ATTN))(x, 4)
    grad = eqx.filter_jit(
        lambda vit, x: jax.grad(lambda x: forward(vit, x, detach=True)[0][4])(x)
    )(vit, x)
    assert_close(r, x * grad)
    plain = jcall(xa.GradientsXInput(vit), x, 4)
    # the rules change the result
    assert not tree_allclose(r, plain, rtol=1e-3)
    # the rewritten model computes the same function
    rewritten = eqx.filter_jit(xa.conservative_model(vit, ATTN))(x)
    assert_close(rewritten, eqx.filter_jit(vit)(x))


def test_bfloat16_and_errors():
    vit, x = tiny_vit(3), digit_like(3, (1, 8, 8))
    half = eqx.filter_jit(jax.tree_util.tree_map)(
        lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a, vit
    )
    r = eqx.filter_jit(xa.ConservativeLRP(half, ATTN))(x.astype(jnp.bfloat16), 1)
    assert r.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(r, np.float32)))
    with pytest.raises(ValueError, match="default to the zoo ViT"):
        xa.ConservativeLRP(xa.models.SmallCNN(width=8, key=jax.random.key(0)), ATTN)
    with pytest.raises(ValueError, match="not attention probabilities"):
        xa.ConservativeLRP(vit, lambda m: [b.norm1 for b in m.blocks])(x, 0)
    with pytest.raises(TypeError, match="`norms` must select layer norm"):
        xa.ConservativeLRP(vit, ATTN, norms=lambda m: [m.head])(x, 0)
