"""Attention rollout (Abnar & Zuidema, 2020)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    Image,
    Target,
    check_choice,
    check_input,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry

__all__ = ["AttentionRollout"]
from ._common import (
    AbstractAttentionMap,
    class_token_map,
    grid_converter,
    read_attention as _read,
)

HEAD_FUSIONS = ("mean", "max", "min")


def _discard_lowest(a: Float[Array, "n n"], ratio: float) -> Float[Array, "n n"]:
    # The common implementation zeroes the int(ratio * N * N) smallest entries of
    # the fused map, except the class token's attention to itself (flat index 0).
    k = int(a.size * ratio)
    if k == 0:
        return a
    flat = a.reshape(-1)
    lowest = jnp.argsort(flat, stable=True)[:k]
    drop = jnp.zeros(flat.shape, bool).at[lowest].set(True).at[0].set(False)
    return jnp.where(drop, 0.0, flat).reshape(a.shape)


def rollout_matrix(
    attentions: list[Float[Array, "heads n n"]],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
) -> Float[Array, "n n"]:
    """Rollout of per-block attention probabilities, first block to last.

    Each block's heads are fused (`mean`, `max` or `min`), the lowest entries
    dropped (`discard_ratio`), the identity mixed in as `0.5 A + 0.5 I` and the
    rows renormalised; the result is `A_L ... A_2 A_1`.
    """
    n = attentions[0].shape[-1]
    eye = jnp.eye(n, dtype=jnp.float32)
    r = eye
    for a in attentions:
        fused = getattr(jnp, head_fusion)(a, axis=0)
        fused = _discard_lowest(fused, discard_ratio)
        mixed = 0.5 * fused + 0.5 * eye
        mixed = mixed / jnp.sum(mixed, axis=-1, keepdims=True)
        r = mixed @ r
    return r


class AttentionRollout(AbstractAttentionMap):
    """Attention rollout: the attention of the class token, rolled through the blocks.

    Abnar & Zuidema, *Quantifying Attention Flow in Transformers*, ACL 2020, as
    commonly implemented for ViTs: each block's attention probabilities are fused
    over heads, mixed with the identity as `0.5 A + 0.5 I` (the residual path),
    their rows renormalised, and the blocks multiplied from the first to the last.
    The map is the class token's row over the patch tokens, folded to the patch
    grid and resized. Class-agnostic: `target` is accepted for a uniform call and
    ignored. Under `jit` only the forward pass runs.

    **Arguments:**

    - `model`: a vision transformer mapping one image to scores.
    - `attention`: a `where` function returning the modules whose outputs are the
        attention probabilities `(heads, N, N)`, one per block in forward order;
        for the zoo ViT `lambda m: [b.attn.attn_drop for b in m.blocks]`.
    - `n_prefix_tokens`: class/register tokens before the patch tokens (default 1);
        the first token's row is the map.
    - `head_fusion`: `"mean"` (default), `"max"` or `"min"` over heads.
    - `discard_ratio`: share of the lowest fused attentions set to zero in each
        block (default 0.0), sparing the class token's attention to itself.
    - `resize`: `"bilinear"` (default) or `"nearest"` to resize to the input's
        spatial size, `None` to keep the patch grid.
    - `grid`: the patch grid `(h, w)`; `None` infers a square grid.
    - `input_layout`: `"chw"`, `"hwc"` or `None` (default: inferred from `x`'s
        shape, see [`eqx_attr.AbstractAttribution`][]): which axes of `x` give the
        size the map is resized to.

    **Returns:** an `(H, W)` map (or the patch grid `(h, w)` with `resize=None`).

    ```python
    attn = lambda m: [b.attn.attn_drop for b in m.blocks]
    h = xa.AttentionRollout(vit, attn, n_prefix_tokens=1)(x)      # (28, 28)
    ```
    """

    model: Callable[..., Any]
    attention: Callable = eqx.field(static=True)
    n_prefix_tokens: int = eqx.field(static=True, default=1)
    head_fusion: str = eqx.field(static=True, default="mean")
    discard_ratio: float = eqx.field(static=True, default=0.0)
    resize: str | None = eqx.field(static=True, default="bilinear")
    grid: tuple[int, int] | None = eqx.field(
        static=True, default=None, converter=grid_converter
    )
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_choice(self.head_fusion, "head_fusion", HEAD_FUSIONS)
        r = self.discard_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ValueError(f"`discard_ratio` must be in [0, 1), got {r!r}.")

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "h w"]:
        del target, key
        x = check_input(x)
        attentions, _, grid = _read(self, x, None, gradients=False)
        r = rollout_matrix(attentions, self.head_fusion, self.discard_ratio)
        return class_token_map(r, x, grid, self)


ROWS = (
    MethodEntry(
        "attention_rollout",
        AttentionRollout,
        "transformer",
        "attention rollout (class-agnostic; head_fusion, discard_ratio)",
        lambda c: AttentionRollout(
            c.model,
            c.need("attention"),
            n_prefix_tokens=c.n_prefix_tokens,
            head_fusion=c.option("head_fusion", "mean"),
            discard_ratio=c.option("discard_ratio", 0.0),
        ),
        aliases=("rollout",),
        needs=frozenset({"attention"}),
        output="map",
        differentiable=Differentiability(1, 1, "attention is read in float32"),
        benchmark=("bench_transformer.py", "torch forward hooks (timm twin)"),
    ),
)
