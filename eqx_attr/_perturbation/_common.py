"""What the perturbation family shares: feature masks, baselines, scored batches.

Every method here evaluates the model on a batch of perturbed copies of ONE example.
The batch is built from a small per-perturbation description (a window position, a
feature id, a binary coalition), so the copies exist only `chunk_size` at a time, and
the model's full score vector is computed once per copy: a target (or a vmap over
targets) only selects from those scores afterwards, so it never repeats a forward
pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Shaped

from .._attribution import (
    AbstractCompiledAttribution,
    Target,
    batched_map,
    resolve_target,
)
from .._layout import (
    InputLayout,
    map_over_channels,
    resolve_input_layout,
    spatial_shape,
)

FeatureMask = Shaped[Array, "*mask_dims"] | Shaped[np.ndarray, "*mask_dims"]
Baseline = float | int | Float[Array, "*dims"] | Float[np.ndarray, "*dims"]


def relabel_mask(mask: Any) -> tuple[Array, int]:
    """Check a feature mask and number its features 0..F-1 in increasing id order.

    Ids only name features, so relabelling changes no attribution; it removes
    unused ids, which would otherwise be phantom features for the surrogates.
    Raises at construction time, naming `mask`, for non-integer or negative ids.
    """
    if isinstance(mask, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue]
        raise TypeError(
            "`mask` must be concrete (a NumPy or JAX array built outside jit); the "
            "number of features decides the shapes of the computation."
        )
    if not isinstance(mask, (np.ndarray, jax.Array, np.generic)):
        raise TypeError(
            f"`mask` must be an integer array of feature ids, got "
            f"{type(mask).__name__}; e.g. `xa.masks.grid((28, 28), 7)`."
        )
    m = np.asarray(mask)
    if not (np.issubdtype(m.dtype, np.integer) or m.dtype == np.bool_):
        raise TypeError(
            f"`mask` must hold integer feature ids, got dtype {m.dtype}; convert it "
            "with `mask.astype(jnp.int32)` (ids name features, they are not weights)."
        )
    if m.size == 0:
        raise ValueError("`mask` is empty; it needs one feature id per element.")
    if m.min() < 0:
        raise ValueError(
            f"`mask` holds negative ids (min {int(m.min())}); ids must be >= 0."
        )
    ids, inverse = np.unique(m, return_inverse=True)
    return jnp.asarray(inverse.reshape(m.shape), jnp.int32), int(ids.size)


def broadcast_mask(mask: Array, x: Array, input_layout: InputLayout = None) -> Array:
    """The mask broadcast to `x`'s shape, with an error naming `mask` if it can't.

    A per-pixel `(H, W)` mask on a 3-D image covers every channel of the image's
    layout (`input_layout`, or inferred from `x`'s shape): `mask[None]` for
    `(C, H, W)`, `mask[..., None]` for `(H, W, C)`.
    """
    layout = resolve_input_layout(x.shape, input_layout)
    if mask.ndim == 2 and x.ndim == 3:
        if mask.shape == spatial_shape(x, layout, "`mask`"):
            mask = map_over_channels(mask, x.ndim, layout)
    try:
        if mask.ndim > x.ndim:
            raise ValueError
        return jnp.broadcast_to(mask, x.shape)
    except ValueError:
        if layout == "hwc":
            hint = "per pixel as (H, W, 1) (`mask[..., None]`) or (H, W)"
        else:
            hint = "per pixel as (1, H, W) (`mask[None]`) or (H, W)"
        raise ValueError(
            f"`mask` of shape {mask.shape} does not broadcast to `x` of shape "
            f"{x.shape} (`input_layout={layout!r}`); give one id per element, or "
            f"{hint} for all channels; for a channels-last image pass "
            "`input_layout='hwc'` if its shape is ambiguous."
        ) from None


def as_baseline_array(value: Any) -> Array:
    """A number or an array (broadcastable to the input) as a float array."""
    if isinstance(value, (bool, str)) or value is None:
        raise TypeError(
            f"`baseline` must be a number or an array, got {type(value).__name__}."
        )
    arr = jnp.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.float32)
    return arr


def broadcast_baseline(baseline: Array, x: Array) -> Array:
    """The baseline in `x`'s dtype and shape, with an error naming `baseline`."""
    try:
        if baseline.ndim > x.ndim:
            raise ValueError
        return jnp.broadcast_to(baseline, x.shape).astype(x.dtype)
    except ValueError:
        raise ValueError(
            f"`baseline` of shape {baseline.shape} does not broadcast to `x` of "
            f"shape {x.shape}; pass a number or an array shaped like `x`."
        ) from None


def scored(
    model: Callable,
    x: Array,
    target: Target,
    make_input: Callable[[Any], Array],
    params: Any,
    chunk_size: int | str | None,
) -> Array:
    """The target's score (float32) on each perturbed copy `make_input(p)`.

    `params` is a PyTree with a leading axis, one entry per copy. The forward passes
    do not depend on `target`, so under a vmap over targets they are not repeated.
    """
    objective = resolve_target(model, x, target)
    scores = batched_map(lambda p: model(make_input(p)), params, chunk_size)
    return jax.vmap(objective)(scores).astype(jnp.float32)


def score(model: Callable, x: Array, target: Target) -> Array:
    """The target's score on one input, as float32."""
    return resolve_target(model, x, target)(model(x)).astype(jnp.float32)


class AbstractPerturbation(AbstractCompiledAttribution):
    """Base of methods that only evaluate the model, on perturbed copies of `x`.

    A concrete method implements `attribute(x, target, key)`; `__call__` is the
    compiled call of `AbstractCompiledAttribution` (the whole batch of
    perturbations compiled once, other class indices reusing the compilation).
    Every concrete method owns `input_layout` (`"chw"`, `"hwc"` or `None`:
    inferred from `x`), the layout of `x`'s channel axis: an `(H, W)` mask or
    RISE's masks cover every channel of it.
    """

    input_layout: eqx.AbstractVar[InputLayout]
