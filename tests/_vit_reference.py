"""A hand-written forward pass of the zoo ViT, for independent references.

It recomputes every block's attention from the weights (not through the
library's layer access) and adds an offset `deltas[l]` to block `l`'s attention
probabilities, so `jax.grad` with respect to the offsets at zero is the gradient
of the score with respect to the attention.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_attr as xa


def tiny_vit(seed=0, image=8, patch=2, depth=2, heads=2, dim=16, classes=5):
    return xa.models.ViT(
        image_size=image,
        patch_size=patch,
        in_channels=1,
        n_classes=classes,
        dim=dim,
        depth=depth,
        heads=heads,
        key=jax.random.key(seed),
    )


def _linear(lin, x):
    return x @ lin.weight.T + lin.bias.reshape((1,) * (x.ndim - 1) + (-1,))


def _layer_norm(norm, x, detach=False):
    mean = jnp.mean(x, -1, keepdims=True)
    scale = 1.0 / jnp.sqrt(jnp.mean((x - mean) ** 2, -1, keepdims=True) + norm.eps)
    if detach:
        scale = jax.lax.stop_gradient(scale)
    return (x - mean) * scale * norm.weight[None] + norm.bias[None]


def forward(vit, x, deltas=None, detach=False):
    """`(scores, attentions)`; `detach=True` is CP-LRP's rewritten backward."""
    w = vit.patch_embed.proj.weight
    p = vit.patch_size
    c, hh, ww = x.shape
    patches = x.reshape(c, hh // p, p, ww // p, p).transpose(1, 3, 0, 2, 4)
    patches = patches.reshape(-1, c * p * p)
    emb = patches @ w.reshape(w.shape[0], -1).T + vit.patch_embed.proj.bias.reshape(
        1, -1
    )
    t = jnp.concatenate([vit.cls_token, emb], 0) + vit.pos_embed
    attentions = []
    for i, b in enumerate(vit.blocks):
        h = _layer_norm(b.norm1, t, detach)
        n, d = h.shape
        heads = b.attn.heads
        qkv = _linear(b.attn.qkv, h).reshape(n, 3, heads, d // heads)
        q, k, v = (qkv[:, j].transpose(1, 0, 2) for j in range(3))
        a = jax.nn.softmax(q @ k.transpose(0, 2, 1) / jnp.sqrt(d / heads), -1)
        attentions.append(a)
        if detach:
            a = jax.lax.stop_gradient(a)
        if deltas is not None:
            a = a + deltas[i]
        t = t + _linear(b.attn.proj, (a @ v).transpose(1, 0, 2).reshape(n, d))
        z = _linear(b.mlp.fc1, _layer_norm(b.norm2, t, detach))
        g = jax.nn.gelu(z, approximate=False)
        if detach:
            g = z * jax.lax.stop_gradient(g / z)
        t = t + _linear(b.mlp.fc2, g)
    return _linear(vit.head, _layer_norm(vit.norm, t, detach)[0]), attentions


@eqx.filter_jit
def attention_and_gradients(vit, x, target):
    """`(attentions, gradients, scores)`, independently of the library."""
    scores, attentions = forward(vit, x)
    zeros = [jnp.zeros_like(a) for a in attentions]
    grads = jax.grad(lambda d: forward(vit, x, d)[0][target])(zeros)
    return attentions, grads, scores
