"""Vision Transformer (Dosovitskiy et al., 2021), laid out like timm's."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import check_positive_int
from ._blocks import LayerNorm, check_image


def _tokens(linear: eqx.nn.Linear, x: Float[Array, "n d"]) -> Float[Array, "n e"]:
    # Equinox linears map one vector; a token sequence is a vmap over its rows.
    return jax.vmap(linear)(x)


class PatchEmbed(eqx.Module):
    """Cut the image into `patch_size` squares and embed each: `(C,H,W) -> (N,D)`.

    `proj` is a convolution with kernel = stride = `patch_size`, as in timm; tokens
    are in row-major order of the patch grid.

    **Arguments:** `in_channels`, the embedding `dim`, `patch_size`, and the PRNG
    `key`.

    **Returns:** calling it on a `(C, H, W)` image gives the `(N, D)` patch tokens.
    """

    proj: eqx.nn.Conv2d
    patch_size: int = eqx.field(static=True)

    def __init__(self, in_channels: int, dim: int, patch_size: int, *, key):
        self.proj = eqx.nn.Conv2d(in_channels, dim, patch_size, patch_size, key=key)
        self.patch_size = patch_size

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "n d"]:
        y = self.proj(x)
        return y.reshape(y.shape[0], -1).T


class Attention(eqx.Module):
    """Multi-head self-attention with a fused `qkv` projection, as in timm.

    `attn_drop` is an identity applied to the attention probabilities
    `(heads, N, N)` (a dropout in training code): a `where` path to it, e.g.
    `lambda m: m.blocks[-1].attn.attn_drop`, reads the attention maps.

    **Arguments:** the token `dim`, the number of `heads`, and the PRNG `key`.

    **Returns:** calling it on `(N, D)` tokens gives `(N, D)` tokens.
    """

    qkv: eqx.nn.Linear
    attn_drop: eqx.nn.Identity
    proj: eqx.nn.Linear
    heads: int = eqx.field(static=True)

    def __init__(self, dim: int, heads: int, *, key):
        k1, k2 = jax.random.split(key)
        self.qkv = eqx.nn.Linear(dim, 3 * dim, key=k1)
        self.attn_drop = eqx.nn.Identity()
        self.proj = eqx.nn.Linear(dim, dim, key=k2)
        self.heads = heads

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        n, d = x.shape
        hd = d // self.heads
        # The fused weight's rows are ordered (q|k|v, head, channel), as in timm.
        qkv = _tokens(self.qkv, x).reshape(n, 3, self.heads, hd)
        q, k, v = (jnp.transpose(qkv[:, i], (1, 0, 2)) for i in range(3))
        logits = jnp.einsum("hnc,hmc->hnm", q, k) * (hd**-0.5)
        attn = self.attn_drop(jax.nn.softmax(logits, axis=-1))
        out = jnp.einsum("hnm,hmc->nhc", attn, v).reshape(n, d)
        return _tokens(self.proj, out)


class Mlp(eqx.Module):
    """The transformer's feed-forward block: `fc1`, GELU (`act`), `fc2`.

    **Arguments:** the token `dim`, the `hidden` width, and the PRNG `key`.

    **Returns:** calling it on `(N, D)` tokens gives `(N, D)` tokens.
    """

    fc1: eqx.nn.Linear
    act: eqx.nn.Lambda
    fc2: eqx.nn.Linear

    def __init__(self, dim: int, hidden: int, *, key):
        k1, k2 = jax.random.split(key)
        self.fc1 = eqx.nn.Linear(dim, hidden, key=k1)
        # Exact (erf) GELU, as torch.nn.GELU() and timm use.
        self.act = eqx.nn.Lambda(functools.partial(jax.nn.gelu, approximate=False))
        self.fc2 = eqx.nn.Linear(hidden, dim, key=k2)

    def __call__(self, x: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return _tokens(self.fc2, self.act(_tokens(self.fc1, x)))


class Block(eqx.Module):
    """Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.

    Maps the token sequence `(N, D)` to `(N, D)`; `m.blocks[-1].norm1` is the
    usual ViT Grad-CAM layer (after the last block a class-token head reads only
    the class token, so `m.blocks[-1]`'s patch tokens have no gradient).

    **Arguments:** the token `dim`, the number of `heads`, the MLP's `hidden`
    width, and the PRNG `key`.

    **Returns:** calling it on `(N, D)` tokens gives `(N, D)` tokens.
    """

    norm1: LayerNorm
    attn: Attention
    norm2: LayerNorm
    mlp: Mlp

    def __init__(self, dim: int, heads: int, hidden: int, *, key):
        k1, k2 = jax.random.split(key)
        self.norm1 = LayerNorm(dim)
        self.attn = Attention(dim, heads, key=k1)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, hidden, key=k2)

    def __call__(
        self, x: Float[Array, "n d"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "n d"]:
        del key
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(eqx.Module):
    """Vision Transformer: `(C, H, W) -> (n_classes,)` through a class token.

    The layout and names follow timm's `VisionTransformer`: `patch_embed.proj`,
    `cls_token`, `pos_embed` (learned, covering the class token too), `blocks`
    (a tuple of [`eqx_attr.models.Block`][]: pre-norm attention with fused `qkv`
    and a GELU MLP), the final `norm` and `head` applied to the class token.

    Readable `where` paths: `m.blocks[-1]` and `m.blocks[-1].norm1` give the
    `(N + 1, D)` token map (class token first, then the patch grid in row-major
    order); `m.blocks[i].attn.attn_drop` gives the attention probabilities
    `(heads, N + 1, N + 1)`.

    **Arguments:**

    - `image_size`: side of the square input image; the input must be exactly
        `(in_channels, image_size, image_size)`.
    - `patch_size`: side of a patch; must divide `image_size`.
    - `in_channels`: image channels.
    - `n_classes`: number of logits.
    - `dim`: token width `D`.
    - `depth`: number of blocks.
    - `heads`: attention heads; must divide `dim`.
    - `mlp_ratio`: MLP hidden width as a multiple of `dim` (4 in the paper).
    - `key`: PRNG key for the random initialisation.

    **Example:**

    **Returns:** calling it on one `(C, H, W)` image gives the logits
    `(n_classes,)`.

    ```python
    # A very small ViT for MNIST: 16 patches of 7x7.
    m = ViT(image_size=28, patch_size=7, in_channels=1, dim=64, depth=2, heads=4,
            n_classes=10, key=jax.random.key(0))
    logits = m(jnp.zeros((1, 28, 28)))                  # (10,)
    ```
    """

    patch_embed: PatchEmbed
    cls_token: Float[Array, "1 d"]
    pos_embed: Float[Array, "n1 d"]
    blocks: tuple[Block, ...]
    norm: LayerNorm
    head: eqx.nn.Linear
    image_size: int = eqx.field(static=True)
    patch_size: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        n_classes: int = 1000,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        *,
        key: PRNGKeyArray,
    ):
        for name, value in [
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("in_channels", in_channels),
            ("n_classes", n_classes),
            ("dim", dim),
            ("depth", depth),
            ("heads", heads),
        ]:
            check_positive_int(value, name)
        if image_size % patch_size != 0:
            raise ValueError(
                f"`patch_size`={patch_size} must divide `image_size`={image_size}."
            )
        if dim % heads != 0:
            raise ValueError(f"`heads`={heads} must divide `dim`={dim}.")
        if mlp_ratio <= 0:
            raise ValueError(f"`mlp_ratio` must be positive, got {mlp_ratio!r}.")
        kpatch, kcls, kpos, khead, *kblocks = jax.random.split(key, depth + 4)
        n_tokens = (image_size // patch_size) ** 2 + 1
        hidden = int(dim * mlp_ratio)
        self.patch_embed = PatchEmbed(in_channels, dim, patch_size, key=kpatch)
        self.cls_token = 0.02 * jax.random.normal(kcls, (1, dim))
        self.pos_embed = 0.02 * jax.random.normal(kpos, (n_tokens, dim))
        self.blocks = tuple(Block(dim, heads, hidden, key=k) for k in kblocks)
        self.norm = LayerNorm(dim)
        self.head = eqx.nn.Linear(dim, n_classes, key=khead)
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels

    def tokens(self, x: Float[Array, "..."]) -> Float[Array, "n1 d"]:
        """The normalised token sequence before the head, class token first."""
        check_image(x, self.in_channels, "ViT")
        if x.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(
                f"This ViT was built with image_size={self.image_size} (its position "
                f"embeddings fix the patch grid) but the input has shape {x.shape}; "
                f"resize the image to {(self.image_size, self.image_size)}."
            )
        t = jnp.concatenate([self.cls_token, self.patch_embed(x)], axis=0)
        t = t + self.pos_embed
        for block in self.blocks:
            t = block(t)
        return self.norm(t)

    def __call__(self, x: Float[Array, "..."]) -> Float[Array, " n"]:
        return self.head(self.tokens(x)[0])


def vit_tiny(
    image_size: int = 224,
    patch_size: int = 16,
    in_channels: int = 3,
    n_classes: int = 1000,
    *,
    key: PRNGKeyArray,
) -> ViT:
    """ViT-Tiny (`dim=192, depth=12, heads=3`), timm's `vit_tiny_patch16_224`.

    **Arguments:** `image_size`, `patch_size`, `in_channels`, `n_classes` and the
    PRNG `key`, as for [`eqx_attr.models.ViT`][].

    **Returns:** a randomly initialised [`eqx_attr.models.ViT`][].
    """
    return ViT(image_size, patch_size, in_channels, n_classes, 192, 12, 3, key=key)


def vit_small(
    image_size: int = 224,
    patch_size: int = 16,
    in_channels: int = 3,
    n_classes: int = 1000,
    *,
    key: PRNGKeyArray,
) -> ViT:
    """ViT-Small (`dim=384, depth=12, heads=6`), timm's `vit_small_patch16_224`.

    **Arguments:** `image_size`, `patch_size`, `in_channels`, `n_classes` and the
    PRNG `key`, as for [`eqx_attr.models.ViT`][].

    **Returns:** a randomly initialised [`eqx_attr.models.ViT`][].
    """
    return ViT(image_size, patch_size, in_channels, n_classes, 384, 12, 6, key=key)


def vit_base(
    image_size: int = 224,
    patch_size: int = 16,
    in_channels: int = 3,
    n_classes: int = 1000,
    *,
    key: PRNGKeyArray,
) -> ViT:
    """ViT-Base (`dim=768, depth=12, heads=12`), timm's `vit_base_patch16_224`.

    **Arguments:** `image_size`, `patch_size`, `in_channels`, `n_classes` and the
    PRNG `key`, as for [`eqx_attr.models.ViT`][].

    **Returns:** a randomly initialised [`eqx_attr.models.ViT`][].
    """
    return ViT(image_size, patch_size, in_channels, n_classes, 768, 12, 12, key=key)
