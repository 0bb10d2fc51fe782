"""Chefer relevance (Chefer, Gur & Wolf, ICCV 2021)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    Image,
    Target,
    check_input,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry

__all__ = ["CheferRelevance"]
from ._common import (
    AbstractAttentionMap,
    class_token_map,
    grid_converter,
    read_attention as _read,
)


def chefer_matrix(
    attentions: list[Float[Array, "heads n n"]],
    gradients: list[Float[Array, "heads n n"]],
) -> Float[Array, "n n"]:
    """`R = I`, then per block `R <- R + mean_heads((grad * A)^+) @ R`."""
    n = attentions[0].shape[-1]
    r = jnp.eye(n, dtype=jnp.float32)
    for a, g in zip(attentions, gradients, strict=True):
        cam = jnp.mean(jnp.maximum(g * a, 0.0), axis=0)
        r = r + cam @ r
    return r


class CheferRelevance(AbstractAttentionMap):
    """Chefer relevance: gradient-weighted attention, accumulated over the blocks.

    Chefer, Gur & Wolf, *Generic Attention-model Explainability for Interpreting
    Bi-Modal and Encoder-Decoder Transformers*, ICCV 2021. Starting from `R = I`,
    every block updates `R <- R + mean_h((dA * A)^+) R`, where `A` is the block's
    attention probabilities and `dA` the gradient of the target's raw score with
    respect to them. The map is the class token's row over the patch tokens,
    folded to the patch grid and resized. Every block is read in ONE forward and
    ONE backward pass; under `jax.vmap` over targets the forward pass is shared.

    **Arguments:**

    - `model`: a vision transformer mapping one image to scores.
    - `attention`: a `where` function returning the modules whose outputs are the
        attention probabilities `(heads, N, N)`, one per block in forward order;
        for the zoo ViT `lambda m: [b.attn.attn_drop for b in m.blocks]`.
    - `n_prefix_tokens`: class/register tokens before the patch tokens (default 1).
    - `resize`: `"bilinear"` (default) or `"nearest"`, or `None` to keep the grid.
    - `grid`: the patch grid `(h, w)`; `None` infers a square grid.

    **Returns:** an `(H, W)` map (or the patch grid `(h, w)` with `resize=None`).

    ```python
    attn = lambda m: [b.attn.attn_drop for b in m.blocks]
    h = xa.CheferRelevance(vit, attn)(x, target=3)                # (28, 28)
    per_class = jax.vmap(lambda t: xa.CheferRelevance(vit, attn)(x, t))(
        jnp.arange(10))                                           # (10, 28, 28)
    ```
    """

    model: Callable[..., Any]
    attention: Callable = eqx.field(static=True)
    n_prefix_tokens: int = eqx.field(static=True, default=1)
    resize: str | None = eqx.field(static=True, default="bilinear")
    grid: tuple[int, int] | None = eqx.field(
        static=True, default=None, converter=grid_converter
    )
    input_layout: InputLayout = input_layout_field()

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "h w"]:
        del key
        x = check_input(x)
        attentions, gradients, grid = _read(self, x, target, gradients=True)
        r = chefer_matrix(attentions, gradients)
        return class_token_map(r, x, grid, self)


ROWS = (
    MethodEntry(
        "chefer_relevance",
        CheferRelevance,
        "transformer",
        "Chefer et al. 2021: gradient-weighted attention relevance",
        lambda c: CheferRelevance(
            c.model, c.need("attention"), n_prefix_tokens=c.n_prefix_tokens
        ),
        aliases=("chefer",),
        needs=frozenset({"attention"}),
        output="map",
        differentiable=Differentiability(
            1, 1, "clips negative relevance: piecewise; attention read in float32"
        ),
        benchmark=("bench_transformer.py", "torch hooks and autograd"),
    ),
)
