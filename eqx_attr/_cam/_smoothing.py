"""pytorch-grad-cam's options on every CAM: `eigen_smooth`, `aug_smooth` and a list
of target layers.

pytorch-grad-cam 1.5 (`pytorch_grad_cam/base_cam.py`, class `BaseCAM`) offers
three things on top of each method's map; here they are plain functions that the
template of `AbstractCAM` (`_base.py`) calls:

- `eigen_smooth` (`BaseCAM.get_cam_image`, `utils/svd_on_activations.py`
    `get_2d_projection`): the channel terms of the map (`w_k A_k`, or the
    per-location products of the gradient CAMs) are not summed but projected on
    their first principal component (`principal_projection`).
- `aug_smooth` (`BaseCAM.forward_augmentation_smoothing`, with ttach's
    `Compose([HorizontalFlip(), Multiply([0.9, 1, 1.1])])`): the map of every
    augmented input, de-augmented, averaged (`augmentation_smoothing`).
- several target layers (`BaseCAM.compute_cam_per_layer`,
    `BaseCAM.aggregate_multi_layers`): one map per layer, clipped, scaled to
    `[0, 1]` and resized; their mean, clipped and scaled again
    (`aggregate_layers`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

# ttach's `HorizontalFlip` (params `[False, True]`) and `Multiply(factors=[0.9, 1,
# 1.1])`, composed in `itertools.product` order as `ttach.Compose` does.
AUG_FLIPS = (False, True)
AUG_FACTORS = (0.9, 1.0, 1.1)
AUGMENTATIONS = tuple(itertools.product(AUG_FLIPS, AUG_FACTORS))
# The augmentation that leaves the input as it is: its scores are the method's.
_IDENTITY = AUGMENTATIONS.index((False, 1.0))


def scale_map(m: Array) -> Array:
    """pytorch-grad-cam's `scale_cam_image`: `(m - min) / (1e-7 + max(m - min))`."""
    m = m - jnp.min(m)
    return m / (1e-7 + jnp.max(m))


def principal_projection(terms: Float[Array, "c h w"]) -> Float[Array, "h w"]:
    """Projection of each location's terms on their first principal component.

    As pytorch-grad-cam's `get_2d_projection` (`utils/svd_on_activations.py`):
    the `(C, h, w)` terms form a matrix with one row per location and one column
    per channel; its columns are centred (mean over locations) and each centred
    row is projected on the first right singular vector `v`. An SVD's sign is
    arbitrary (pytorch-grad-cam keeps whatever LAPACK returns); here it is fixed
    so that `sum_k v_k >= 0`, i.e. the projection correlates positively with the
    terms' sum over channels (the map without smoothing).

    **Arguments:**

    - `terms`: the per-channel terms `(C, h, w)` of a map.

    **Returns:** the `(h, w)` projection; its mean over locations is 0.
    """
    c, h, w = terms.shape
    feats = terms.reshape(c, h * w).T  # one row per location
    centred = feats - jnp.mean(feats, axis=0, keepdims=True)
    _, _, vt = jnp.linalg.svd(centred, full_matrices=False)
    v = vt[0]
    v = jnp.where(jnp.sum(v) >= 0, v, -v)
    return (centred @ v).reshape(h, w)


def augmentation_smoothing(
    cam: Callable[[Array], tuple[Array, Any]], x: Array, w_axis: int = -1
) -> tuple[Array, Any]:
    """The mean of a CAM over pytorch-grad-cam's test-time augmentations.

    As `BaseCAM.forward_augmentation_smoothing` with its default ttach transforms:
    for every pair of a horizontal flip (no / yes) and an intensity factor (0.9,
    1, 1.1), the map of `x` flipped along its width axis and multiplied by the
    factor is flipped back (the factor needs no undoing), and the six maps are
    averaged. The six inputs run as one `jax.vmap`.

    **Arguments:**

    - `cam`: one input to `((h, w) map, scores)`; the map's last axis must be
        `x`'s last axis (resized) or correspond to it (the layer's resolution).
    - `x`: the input.
    - `w_axis`: `x`'s width axis, the one flipped (`-1` for `(C, H, W)`, `1`
        for a channels-last `(H, W, C)` image).

    **Returns:** `(the averaged map, scores of the unaugmented input)`.
    """
    xs = jnp.stack(
        [(jnp.flip(x, w_axis) if f else x) * factor for f, factor in AUGMENTATIONS]
    ).astype(x.dtype)
    maps, scores = jax.vmap(cam)(xs)
    maps = jnp.stack(
        [
            jnp.flip(maps[i], -1) if f else maps[i]
            for i, (f, _) in enumerate(AUGMENTATIONS)
        ]
    )
    scores = jax.tree_util.tree_map(lambda s: s[_IDENTITY], scores)
    return jnp.mean(maps, axis=0), scores


def aggregate_layers(maps: list[Array]) -> Array:
    """pytorch-grad-cam's `aggregate_multi_layers`: the layers' maps (each already
    clipped, scaled and resized) clipped at zero, averaged and scaled to `[0, 1]`.

    **Arguments:**

    - `maps`: one `(h, w)` map per layer, all of one shape.

    **Returns:** the `(h, w)` aggregate.
    """
    shapes = sorted({m.shape for m in maps})
    if len(shapes) != 1:
        raise ValueError(
            f"The layers' maps have different shapes {shapes}, so they cannot be "
            "averaged: pass `resize='bilinear'` (or 'nearest') to resize each to "
            "the input, or layers of one resolution with `resize=None`."
        )
    return scale_map(jnp.mean(jnp.maximum(jnp.stack(maps), 0), axis=0))


def check_no_eigen_smooth(eigen_smooth: bool, method: str, why: str) -> None:
    """Refuse `eigen_smooth=True` for a CAM whose map has no channel terms."""
    if eigen_smooth:
        raise ValueError(
            f"`eigen_smooth=True` is not defined for {method}: {why}. Leave "
            "`eigen_smooth=False`."
        )


def check_one_layer(layers: Any, method: str, why: str) -> None:
    """Refuse a list of layers for a CAM that reads exactly one."""
    if isinstance(layers, tuple):
        raise ValueError(
            f"{method} takes one `layer`, not a list of {len(layers)}: {why}."
        )


def fullgrad_projection(planes: Float[Array, "n h w"], size: tuple[int, int]) -> Array:
    """FullGrad's `eigen_smooth` (pytorch-grad-cam's `FullGrad.compute_cam_per_layer`):
    the planes (each already scaled and resized to `size`) are scaled again and
    resized to `size // 8` (to save memory, as there), projected on their first
    principal component, and the projection is scaled and resized back to `size`.

    **Arguments:**

    - `planes`: FullGrad's planes `(n, H, W)`: one per input channel, one per
        layer with a bias.
    - `size`: the input's spatial size `(H, W)`.

    **Returns:** the `(H, W)` map, before FullGrad's final scaling.
    """
    small = (size[0] // 8, size[1] // 8)
    if min(small) < 1:
        raise ValueError(
            f"FullGrad's `eigen_smooth=True` projects its planes at 1/8 of the "
            f"input's size, so it needs an input of at least 8 x 8, not {size}; "
            "leave `eigen_smooth=False` for smaller inputs."
        )
    p = jax.vmap(scale_map)(planes)
    p = jax.image.resize(p, (p.shape[0], *small), "bilinear")
    return jax.image.resize(scale_map(principal_projection(p)), size, "bilinear")
