"""Attention rollout and Chefer relevance: references, errors, composability."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._engine._fast_derivatives import fast_derivatives

from ._vit_reference import attention_and_gradients, tiny_vit
from .helpers import assert_close, digit_like, jcall, tree_allclose

ATTN = lambda m: [b.attn.attn_drop for b in m.blocks]  # noqa: E731


def _fuse(a, how):
    return {"mean": a.mean(0), "max": a.max(0), "min": a.min(0)}[how]


def rollout_reference(attentions, how="mean", ratio=0.0, prefix=1):
    """Abnar & Zuidema's rollout as commonly implemented (rows renormalised)."""
    n = attentions[0].shape[-1]
    result = np.eye(n)
    for a in attentions:
        flat = _fuse(np.asarray(a, np.float64), how).reshape(-1)
        lowest = np.argsort(flat, kind="stable")[: int(flat.size * ratio)]
        flat[lowest[lowest != 0]] = 0.0
        mixed = (flat.reshape(n, n) + np.eye(n)) / 2
        result = (mixed / mixed.sum(-1, keepdims=True)) @ result
    return result[0, prefix:]


def chefer_reference(attentions, gradients, prefix=1):
    """Chefer et al.'s update R <- R + mean_h((grad * A)^+) R, from R = I."""
    n = attentions[0].shape[-1]
    r = np.eye(n)
    for a, g in zip(attentions, gradients, strict=True):
        cam = np.clip(np.asarray(g, np.float64) * np.asarray(a), 0, None).mean(0)
        r = r + cam @ r
    return r[0, prefix:]


_reference = eqx.filter_jit(attention_and_gradients)


@pytest.mark.parametrize("how, ratio", [("mean", 0.0), ("max", 0.3), ("min", 0.1)])
def test_rollout_matches_reference(how, ratio):
    vit, x = tiny_vit(), digit_like(0, (1, 8, 8))
    method = xa.AttentionRollout(
        vit, ATTN, head_fusion=how, discard_ratio=ratio, resize=None
    )
    h = eqx.filter_jit(method)(x)
    attentions, _, _ = _reference(vit, x, jnp.int32(0))
    ref = rollout_reference(attentions, how, ratio).reshape(4, 4)
    assert h.shape == (4, 4)
    assert_close(h, ref)  # float32 against float64 from the same attentions


def test_chefer_matches_reference_for_every_target():
    vit, x = tiny_vit(1), digit_like(1, (1, 8, 8))
    method = xa.CheferRelevance(vit, ATTN, resize=None)
    # vmap over targets: one forward pass, five backward passes
    maps = eqx.filter_jit(eqx.filter_vmap(method, in_axes=(None, 0)))(x, jnp.arange(5))
    for t in (0, 3):
        attentions, gradients, _ = _reference(vit, x, jnp.int32(t))
        ref = chefer_reference(attentions, gradients).reshape(4, 4)
        assert_close(maps[t], ref)
    assert not tree_allclose(maps[0], maps[3])


def test_resize_jit_once_vmap_inputs_purity():
    vit = tiny_vit(2)
    before = jax.tree_util.tree_leaves(vit)
    xs = jnp.stack([digit_like(i, (1, 8, 8)) for i in range(3)])
    traces = []

    @eqx.filter_jit
    def both(x, t):
        traces.append(1)
        rollout = xa.AttentionRollout(vit, ATTN, resize="nearest")(x)
        small = xa.CheferRelevance(vit, ATTN, resize=None)(x, t)
        chefer = xa.CheferRelevance(vit, ATTN)(x, t)
        grid = xa.AttentionRollout(vit, ATTN, resize=None)(x)
        return rollout, small, chefer, grid

    outs = [both(xs[i], jnp.int32(i)) for i in range(3)]
    assert len(traces) == 1  # one compile for repeated calls
    rollout, small, chefer, grid = outs[0]
    assert rollout.shape == chefer.shape == (8, 8)
    # nearest-neighbour resize by an integer factor repeats every patch's value
    # (rollout and grid: two rollouts in one program, which XLA may fuse apart.)
    assert_close(rollout, np.kron(grid, np.ones((2, 2), np.float32)))
    assert_close(chefer, jax.image.resize(small, (8, 8), "bilinear"))
    batched = jax.vmap(both)(xs, jnp.arange(3))
    for i in range(3):
        for got, want in zip(batched, outs[i], strict=True):
            assert_close(got[i], want)
    assert all(
        a is b for a, b in zip(before, jax.tree_util.tree_leaves(vit), strict=True)
    )


def test_bfloat16():
    vit, x = tiny_vit(3), digit_like(3, (1, 8, 8))
    half = eqx.filter_jit(jax.tree_util.tree_map)(
        lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a, vit
    )

    @eqx.filter_jit
    def maps(m, x):
        methods = (xa.AttentionRollout(m, ATTN), xa.CheferRelevance(m, ATTN))
        return [method(x, 2) for method in methods]

    for full, low in zip(maps(vit, x), maps(half, x.astype(jnp.bfloat16)), strict=True):
        assert low.dtype == jnp.bfloat16 and low.shape == (8, 8)
        assert np.all(np.isfinite(np.asarray(low, np.float32)))
        # bfloat16's rounding (RTOL: ~5 ulps of its 8-bit mantissa) compounds
        # over the blocks' attention, the backward pass and the rollout's matrix
        # products: rtol 5e-2 (the former bound, 0.1 * max |full|, at most).
        assert_close(low, full, dtype=jnp.bfloat16, rtol=5e-2)


# --- a user's ViT with its own module names and a non-square patch grid ----------


class _UserViT(eqx.Module):
    embed: eqx.nn.Linear
    probs: tuple[eqx.nn.Identity, ...]
    head: eqx.nn.Linear
    softmax: bool = eqx.field(static=True, default=True)

    def attention_logits(self, t):
        return (t @ t.T)[None] / jnp.sqrt(t.shape[1])

    def __call__(self, x):  # (1, 4, 6): a 2x3 grid of 2x2 patches
        patches = x.reshape(2, 2, 3, 2).transpose(0, 2, 1, 3).reshape(6, 4)
        t = jnp.concatenate([jnp.ones((1, 8)), jax.vmap(self.embed)(patches)])
        for probs in self.probs:
            logits = self.attention_logits(t)
            a = probs(jax.nn.softmax(logits, -1) if self.softmax else logits)
            t = t + a[0] @ t
        return self.head(t[0])


def _user_vit(softmax=True):
    k1, k2 = jax.random.split(jax.random.key(0))
    embed, head = eqx.nn.Linear(4, 8, key=k1), eqx.nn.Linear(8, 3, key=k2)
    return _UserViT(embed, (eqx.nn.Identity(), eqx.nn.Identity()), head, softmax)


USER_ATTN = lambda m: list(m.probs)  # noqa: E731


def test_user_vit_with_a_non_square_grid():
    m, x = _user_vit(), digit_like(4, (1, 4, 6))
    h = jcall(xa.AttentionRollout(m, USER_ATTN, grid=(2, 3), resize=None), x)

    @jax.jit
    def attentions(x):
        patches = x.reshape(2, 2, 3, 2).transpose(0, 2, 1, 3).reshape(6, 4)
        t = jnp.concatenate([jnp.ones((1, 8)), jax.vmap(m.embed)(patches)])
        attentions = []
        for _ in range(2):
            a = jax.nn.softmax(m.attention_logits(t), -1)
            attentions.append(a)
            t = t + a[0] @ t
        return attentions

    assert_close(h, rollout_reference(attentions(x)).reshape(2, 3))
    assert jcall(xa.CheferRelevance(m, USER_ATTN, grid=[2, 3]), x, 1).shape == (4, 6)
    with pytest.raises(ValueError, match="not a square grid.*grid=\\(h, w\\)"):
        xa.AttentionRollout(m, USER_ATTN)(x)
    with pytest.raises(ValueError, match="`grid=\\(3, 3\\)` has 9 cells"):
        xa.AttentionRollout(m, USER_ATTN, grid=(3, 3))(x)


def test_errors():
    vit, x = tiny_vit(), digit_like(0, (1, 8, 8))
    with pytest.raises(ValueError, match="`attention` selects no module"):
        xa.AttentionRollout(vit, lambda m: [])(x)
    with pytest.raises(ValueError, match="not attention probabilities"):
        xa.CheferRelevance(vit, lambda m: [b.norm1 for b in m.blocks])(x, 0)
    with pytest.raises(ValueError, match="not a square grid"):
        xa.AttentionRollout(vit, ATTN, n_prefix_tokens=2)(x)
    with pytest.raises(ValueError, match="leaves no patch tokens"):
        xa.AttentionRollout(vit, ATTN, n_prefix_tokens=17)(x)
    with pytest.raises(Exception, match="probabilities"):
        m = _user_vit(softmax=False)
        jax.block_until_ready(
            xa.AttentionRollout(m, USER_ATTN, grid=(2, 3))(digit_like(0, (1, 4, 6)))
        )
    with pytest.raises(ValueError, match="head_fusion"):
        xa.AttentionRollout(vit, ATTN, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        xa.AttentionRollout(vit, ATTN, discard_ratio=1.0)
    with pytest.raises(ValueError, match="resize"):
        xa.CheferRelevance(vit, ATTN, resize="bicubic")
    with pytest.raises(TypeError, match="`attention` must be a `where`"):
        xa.CheferRelevance(vit, vit.blocks[0].attn.attn_drop)
    with pytest.raises(ValueError, match="out of range"):
        xa.CheferRelevance(vit, ATTN)(x, 7)


def test_registry_entries():
    from eqx_attr import _registry

    ctx = _registry.BuildContext(tiny_vit(), attention=ATTN, n_prefix_tokens=1)
    for name, cls in [
        ("rollout", xa.AttentionRollout),
        ("chefer", xa.CheferRelevance),
        ("cp_lrp", xa.ConservativeLRP),
    ]:
        entry = _registry.get(name)
        assert entry.cls is cls and entry.family == "transformer"
        assert "attention" in entry.needs and isinstance(entry.build(ctx), cls)


def test_rollout_runs_the_forward_pass_only():
    # The attention is handed out by a backward pass, but under jit only the
    # forward pass survives: no more matrix products than the model's forward
    # pass, and only its (patch-embedding) convolution, where a backward pass
    # to the input would add a second one.
    vit, x = tiny_vit(), digit_like(0, (1, 8, 8))

    def ops(f):
        text = jax.jit(f).lower(x).compile().as_text()
        return text.count(" dot("), text.count("convolution(")

    dots, convs = ops(lambda x: xa.AttentionRollout(vit, ATTN)(x))
    # The forward pass as the gradient methods run it: on CPU, the one-channel
    # patch embedding is a thin convolution, computed without one.
    forward_dots, forward_convs = ops(lambda x: fast_derivatives(vit)(x))
    assert convs == forward_convs <= 1 and dots <= forward_dots
    assert ops(lambda x: jax.grad(lambda x: vit(x)[0])(x))[1] == 2
