"""Rollout and Chefer relevance against torch references with hooks, same weights."""

import equinox as eqx
import numpy as np
import torch

import eqx_attr as xa
from eqx_attr.torch_twins import to_torch

from ._vit_reference import tiny_vit
from .helpers import assert_close, digit_like

ATTN = lambda m: [b.attn.attn_drop for b in m.blocks]  # noqa: E731


def torch_attention(twin, x, target):
    """Every block's attention and its gradient, read with forward hooks."""
    attentions, grads = [], []

    def hook(module, inputs, output):
        attentions.append(output)
        output.register_hook(grads.append)

    handles = [b.attn.attn_drop.register_forward_hook(hook) for b in twin.blocks]
    try:
        twin(x)[0, target].backward()
    finally:
        for h in handles:
            h.remove()
    return [a[0].detach() for a in attentions], [g[0] for g in reversed(grads)]


def torch_rollout(attentions):
    n = attentions[0].shape[-1]
    result = torch.eye(n, dtype=torch.float64)
    for a in attentions:
        a = (a.double().mean(0) + torch.eye(n)) / 2
        result = (a / a.sum(-1, keepdim=True)) @ result
    return result[0, 1:]


def torch_chefer(attentions, grads):
    n = attentions[0].shape[-1]
    r = torch.eye(n, dtype=torch.float64)
    for a, g in zip(attentions, grads, strict=True):
        r = r + (g.double() * a).clamp(min=0).mean(0) @ r
    return r[0, 1:]


def test_rollout_and_chefer_equal_torch_hooks_on_the_twin():
    vit, x = tiny_vit(5), digit_like(5, (1, 8, 8))
    twin = to_torch(vit)
    xt = torch.tensor(np.array(x))[None].requires_grad_(True)
    attentions, grads = torch_attention(twin, xt, 2)
    rollout = eqx.filter_jit(xa.AttentionRollout(vit, ATTN, resize=None))(x)
    chefer = eqx.filter_jit(xa.CheferRelevance(vit, ATTN, resize=None))(x, 2)
    # float32 against torch's float64 products of its float32 attentions.
    assert_close(rollout.reshape(-1), torch_rollout(attentions).numpy())
    assert_close(chefer.reshape(-1), torch_chefer(attentions, grads).numpy())
