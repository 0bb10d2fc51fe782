"""What the attention-based methods share: options, reading the attention, the map.

The attention of a vision transformer is read at the modules named by an
`attention` `where` (one per block, in forward order), whose outputs are the
attention probabilities `(heads, N, N)`. The methods combine them into an
`(N, N)` token-to-token matrix, take the class token's row over the patch
tokens, fold it to the patch grid and resize it like the CAM family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._attribution import (
    AbstractAttribution,
    Target,
    check_choice,
    make_objective,
)
from .._checks import error_if
from .._layers import expose_softmax, inspect_layers, read_layers
from .._layout import (
    InputLayout,
    spatial_shape,
)
from .._tokens import token_grid

RESIZES = ("bilinear", "nearest")


def grid_converter(grid: Any) -> Any:
    """Static fields must be hashable: accept a list, store a tuple."""
    return tuple(grid) if isinstance(grid, list) else grid


class AbstractAttentionMap(AbstractAttribution):
    """Base of the methods that explain a transformer through its attention maps.

    Declares the options they share (documented on
    [`eqx_attr.AttentionRollout`][]) and checks them at construction;
    `input_layout` (`"chw"`, `"hwc"` or `None`: inferred) says which axes of `x`
    give the `(H, W)` the map is resized to.
    """

    model: eqx.AbstractVar[Callable[..., Any]]
    attention: eqx.AbstractVar[Callable]
    n_prefix_tokens: eqx.AbstractVar[int]
    resize: eqx.AbstractVar[str | None]
    grid: eqx.AbstractVar[tuple[int, int] | None]
    input_layout: eqx.AbstractVar[InputLayout]

    def __check_init__(self):
        check_attention_options(self)


def check_attention_options(method: Any) -> None:
    """Trace-time validation of the options every attention method has."""
    if not callable(method.attention) or isinstance(method.attention, eqx.Module):
        raise TypeError(
            "`attention` must be a `where` function returning the modules whose "
            "outputs are the attention probabilities, e.g. "
            "`attention=lambda m: [b.attn.attn_drop for b in m.blocks]`; got "
            f"{type(method.attention).__name__}."
        )
    n = method.n_prefix_tokens
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"`n_prefix_tokens` must be an int >= 0, got {n!r}.")
    if method.resize is not None:
        check_choice(method.resize, "resize", RESIZES)
    grid = method.grid
    if grid is not None and not (
        isinstance(grid, tuple)
        and len(grid) == 2
        and all(
            isinstance(g, (int, np.integer)) and not isinstance(g, bool) and g >= 1
            for g in grid
        )
    ):
        raise ValueError(
            f"`grid` must be None or a pair of positive ints `(h, w)`, got {grid!r}."
        )


def _check_probabilities(a: Array) -> Array:
    # Softmax rows sum to 1 up to rounding; the tolerance admits bfloat16.
    tol = max(1e-3, 8 * float(jnp.finfo(a.dtype).eps))
    a32 = a.astype(jnp.float32)
    bad = jnp.any(a32 < -tol) | jnp.any(jnp.abs(jnp.sum(a32, axis=-1) - 1.0) > tol)
    return error_if(
        a32,
        bad,
        "`attention` must select modules whose outputs are attention "
        "probabilities (non-negative rows summing to 1, i.e. after the softmax), "
        "but an output is not. Point `attention` at the module applied to the "
        "softmax output, e.g. `lambda m: [b.attn.attn_drop for b in m.blocks]`.",
    )


def _is_probabilities_shape(shape: tuple) -> bool:
    return len(shape) == 3 and shape[1] == shape[2]


def attention_view(model: Any, attention: Callable, x: Array) -> tuple:
    """`(model, attention, infos)` with every selected module's probabilities
    readable: a selected module whose output is not `(heads, N, N)` but which
    computes one softmax (`eqx.nn.MultiheadAttention`) is wrapped so that its
    softmax output is a sub-module's output (`_layers.expose_softmax`)."""
    infos = inspect_layers(model, attention, x, name="attention")
    which = [
        i for i, info in enumerate(infos) if not _is_probabilities_shape(info.act.shape)
    ]
    if which:
        model, attention = expose_softmax(model, attention, which)
        infos = inspect_layers(model, attention, x, name="attention")
    return model, attention, _checked(infos)


def inspect_attention(model: Any, attention: Callable, x: Array) -> tuple:
    """Trace once; check every selected output is `(heads, N, N)` with one `N`."""
    return attention_view(model, attention, x)[2]


def _checked(infos: tuple) -> tuple:
    shapes = [info.act.shape for info in infos]
    for i, s in enumerate(shapes):
        if len(s) != 3 or s[1] != s[2]:
            raise ValueError(
                f"Item {i} of `attention` outputs shape {s}, not attention "
                "probabilities `(heads, N, N)`. Point `attention` at the module "
                "applied to the softmax output, e.g. "
                "`lambda m: [b.attn.attn_drop for b in m.blocks]`."
            )
    if len({s[1] for s in shapes}) != 1:
        raise ValueError(
            f"The attention maps have different token counts {shapes}; `attention` "
            "must select one module per block of the same transformer."
        )
    return infos


def read_attention(
    method: Any, x: Array, target: Target, gradients: bool
) -> tuple[list[Array], list[Array], tuple[int, int]]:
    """Every block's attention (and its gradient), float32, in ONE pass each way.

    With `gradients=False` only the attention is used (and `target` ignored): the
    backward pass that hands it out is dead code under `jit`. Returns
    `(attentions, gradients, grid)`; checks shapes at trace time and
    probabilities at run time.
    """
    model, attention, infos = attention_view(method.model, method.attention, x)
    shapes = [info.act.shape for info in infos]
    try:
        grid = token_grid(shapes[0][1], method.n_prefix_tokens, method.grid)
    except ValueError as e:
        raise ValueError(
            f"`attention` selects outputs of shape {shapes[0]}, read as attention "
            f"probabilities `(heads, N, N)` over N={shapes[0][1]} tokens, but: {e} "
            "If these are not attention maps (a convolution's `(C, h, w)` output "
            "has this shape too), point `attention` at the attention modules, e.g. "
            "`lambda m: [b.attn for b in m.blocks]`."
        ) from None
    if gradients:
        objective = make_objective(target, infos[0].out)
    else:
        # Any scalar will do (its backward pass is dead code); summing every
        # floating leaf accepts a PyTree output too.
        objective = _sum_of_leaves
    _, _, acts, grads = read_layers(model, attention, x, objective, infos)
    acts = [_check_probabilities(a) for a in acts]
    return acts, [g.astype(jnp.float32) for g in grads], grid


def _sum_of_leaves(out: Any) -> Array:
    leaves = [
        jnp.sum(v) for v in jax.tree_util.tree_leaves(out) if eqx.is_inexact_array(v)
    ]
    return sum(leaves, jnp.zeros((), jnp.float32))


def class_token_map(
    r: Float[Array, "n n"], x: Array, grid: tuple[int, int], method: Any
) -> Array:
    """The class token's row of `r` over the patch tokens, on the grid, resized."""
    m = r[0, method.n_prefix_tokens :].reshape(grid)
    if method.resize is not None:
        if x.ndim < 2:
            raise ValueError(
                f"`resize={method.resize!r}` maps onto the input's spatial axes, "
                f"but `x` has shape {x.shape}; pass an image or `resize=None`."
            )
        size = spatial_shape(x, method.input_layout, type(method).__name__)
        m = jax.image.resize(m, size, method.resize)
    return m.astype(x.dtype)
