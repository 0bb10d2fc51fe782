"""Localisation metrics: does the attribution fall on the object's (H, W) mask?

All follow Quantus's definitions. The attribution (shaped like the input, or an
`(H, W)` map) is summed over channels first (the last axis of an `(H, W, C)`
attribution, inferred as the methods' `input_layout=None`); `mask` is a boolean
`(H, W)` array.
An empty mask gives NaN, as in Quantus (there is nothing to localise). `Focus`
takes the mosaic's four target quadrants instead of a mask.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Shaped

from .._attribution import (
    check_positive_int,
)
from .._layout import (
    channels_first,
    resolve_input_layout,
)
from ._base import (
    AbstractMetric,
    check_attribution,
    check_mask,
    descending_ranks,
    safe_divide,
    spatial_map,
)


def _prepare(a: Array, mask: Array, absolute: bool = False) -> tuple[Array, Array]:
    a = check_attribution(a)
    # A channels-last `(H, W, C)` attribution (its layout inferred as the methods'
    # `input_layout=None` does) is summed over its last axis, not its first.
    s = spatial_map(channels_first(a, resolve_input_layout(a.shape, None)))
    if absolute:
        s = jnp.abs(s)
    return s, check_mask(mask, s.shape)


def _nan_if_empty(value: Array, mask: Array) -> Array:
    return jnp.where(jnp.any(mask), value, jnp.nan).astype(jnp.float32)


class PointingGame(AbstractMetric):
    """1.0 when the attribution's maximum lies in the mask, else 0.0.

    Zhang et al., *Top-down Neural Attention by Excitation Backprop*, ECCV 2016;
    as Quantus: a hit when ANY of the tied maxima lies in the mask.

    **Arguments:** `weighted`: a hit scores `1 - |mask| / (H W)` instead of 1
    (Quantus's `weighted=True`).

    **Returns:** a 0-d float32 array. An all-zero attribution ties everywhere: a hit
    whenever the mask is non-empty.

    ```python
    hit = xa.metrics.PointingGame()(a, mask)
    ```
    """

    weighted: bool = False

    def __call__(
        self, a: Float[Array, "*dims"], mask: Shaped[Array, "..."]
    ) -> Float[Array, ""]:
        s, mask = _prepare(a, mask)
        hit = jnp.any(mask & (s == jnp.max(s))).astype(jnp.float32)
        if self.weighted:
            hit = hit * (1 - jnp.mean(mask.astype(jnp.float32)))
        return _nan_if_empty(hit, mask)


class RelevanceMassAccuracy(AbstractMetric):
    """The share of the attribution's (signed) sum inside the mask: Σ a[mask] / Σ a.

    Arras, Osman & Samek, *CLEVR-XAI*, Information Fusion 2022; as Quantus
    (`abs=False`).

    **Returns:** a 0-d float32 array; 0 for an attribution summing to 0 (e.g. all
    zero).

    **Arguments:** none at construction; the call takes `a` (shaped like `x` or
    `(H, W)`) and a boolean `(H, W)` `mask`.

    ```python
    mass = xa.metrics.RelevanceMassAccuracy()(a, mask)
    ```
    """

    def __call__(
        self, a: Float[Array, "*dims"], mask: Shaped[Array, "..."]
    ) -> Float[Array, ""]:
        s, mask = _prepare(a, mask)
        inside = jnp.sum(jnp.where(mask, s, 0.0))
        return _nan_if_empty(safe_divide(inside, jnp.sum(s)), mask)


def _top_k_in_mask(s: Array, mask: Array, k: Array | int) -> Array:
    """How many of the `k` largest entries of `s` lie in `mask` (ties row-major)."""
    top = descending_ranks(s) < k
    return jnp.sum(top & mask).astype(jnp.float32)


class RelevanceRankAccuracy(AbstractMetric):
    """The share of the K = |mask| highest-ranked pixels that lie in the mask.

    Arras, Osman & Samek, *CLEVR-XAI*, 2022; as Quantus, ranking by signed value.

    **Returns:** a 0-d float32 array in [0, 1]. Ties are broken in row-major order
    (stable sort), so an all-zero attribution scores the share of the first K
    pixels in row-major order that lie in the mask.

    **Arguments:** none at construction; the call takes `a` (shaped like `x` or
    `(H, W)`) and a boolean `(H, W)` `mask`.

    ```python
    rank = xa.metrics.RelevanceRankAccuracy()(a, mask)
    ```
    """

    def __call__(
        self, a: Float[Array, "*dims"], mask: Shaped[Array, "..."]
    ) -> Float[Array, ""]:
        s, mask = _prepare(a, mask)
        k = jnp.sum(mask)
        return _nan_if_empty(safe_divide(_top_k_in_mask(s, mask, k), k), mask)


class AttributionLocalisation(AbstractMetric):
    """The share of the attribution's sum inside the mask, after |.| or clipping.

    Kohlbrenner et al., *Towards Best Practice in Explaining Neural Network
    Decisions with LRP*, IJCNN 2020; as Quantus's `AttributionLocalisation`:
    `Σ s[mask] / (Σ s + 1e-9)` with `s = |a|` (`abs=True`) or `max(a, 0)`
    (`positive_attributions=True`), NaN above 1.

    **Arguments:**

    - `abs`: take |a| first (default `True`, as Quantus).
    - `positive_attributions`: clip negative relevance to 0 first.
    - `weighted`: multiply by the mask's share of the image, `|mask| / (H W)` (the
        paper's weighting; Quantus 0.6 divides by a batch-dependent size instead).

    **Returns:** a 0-d float32 array; 0 for an all-zero attribution.

    ```python
    loc = xa.metrics.AttributionLocalisation()(a, mask)
    ```
    """

    abs: bool = True
    positive_attributions: bool = False
    weighted: bool = False

    def __call__(
        self, a: Float[Array, "*dims"], mask: Shaped[Array, "..."]
    ) -> Float[Array, ""]:
        s, mask = _prepare(a, mask, self.abs)
        if self.positive_attributions:
            s = jnp.maximum(s, 0.0)
        ratio = jnp.sum(jnp.where(mask, s, 0.0)) / (jnp.sum(s) + 1e-9)
        ratio = jnp.where(ratio > 1, jnp.nan, ratio)
        if self.weighted:
            ratio = ratio * jnp.mean(mask.astype(jnp.float32))
        return _nan_if_empty(ratio, mask)


class TopKIntersection(AbstractMetric):
    """The share of the `k` highest-ranked pixels that lie in the mask.

    Theiner, Müller-Budack & Ewerth, *Interpretable Semantic Photo Geolocation*,
    WACV 2022; as Quantus's `TopKIntersection` (signed ranking, `abs=False`).

    **Arguments:**

    - `k`: how many pixels to take (at most H W).
    - `concept_influence`: multiply by `H W / |mask|` (Quantus's option).

    **Returns:** a 0-d float32 array in [0, 1] (before `concept_influence`). Ties
    are broken in row-major order; for an all-zero attribution that is the share
    of the first `k` pixels in the mask.

    ```python
    tki = xa.metrics.TopKIntersection(k=100)(a, mask)
    ```
    """

    k: int = 1000
    concept_influence: bool = False

    def __check_init__(self):
        check_positive_int(self.k, "k")

    def __call__(
        self, a: Float[Array, "*dims"], mask: Shaped[Array, "..."]
    ) -> Float[Array, ""]:
        s, mask = _prepare(a, mask)
        if self.k > s.size:
            raise ValueError(
                f"`k={self.k}` exceeds the {s.size} pixels of the attribution; pass "
                f"`k <= {s.size}`."
            )
        tki = _top_k_in_mask(s, mask, self.k) / self.k
        if self.concept_influence:
            tki = tki * s.size / jnp.maximum(jnp.sum(mask), 1)
        return _nan_if_empty(tki, mask)


class Focus(AbstractMetric):
    """The share of the positive relevance of a 2x2 mosaic that falls on the
    quadrants holding the target class.

    Arias-Duart et al., *Focus! Rating XAI Methods and Finding Biases*, FUZZ-IEEE
    2022; as Quantus's `Focus` (`localisation/focus.py`): `Σ max(a, 0)` over the
    target's quadrants over `Σ max(a, 0) + 1e-9`, the attribution summed over
    channels first (Quantus scores every channel with the same quadrant mask).

    **Arguments:** `abs`: take |a| first (default `False`, as Quantus).

    **Call:** `metric(a, quadrants)`: `a` the attribution of the mosaic (shaped like
    it, or `(H, W)`), `quadrants` a boolean `(4,)` array: top-left, top-right,
    bottom-left, bottom-right hold the target (Quantus's `custom_batch` entry).
    Odd sides split at `H // 2`, `W // 2`, as Quantus.

    **Returns:** a 0-d float32 array in [0, 1]; 0 for an attribution with no
    positive relevance.

    ```python
    f = xa.metrics.Focus()(a, jnp.array([True, False, False, True]))
    ```
    """

    abs: bool = False

    def __call__(
        self, a: Float[Array, "*dims"], quadrants: Shaped[Array, "..."]
    ) -> Float[Array, ""]:
        a = check_attribution(a)
        if self.abs:
            a = jnp.abs(a)
        s = spatial_map(jnp.maximum(a, 0.0))
        quadrants = jnp.asarray(quadrants)
        if quadrants.shape != (4,) or quadrants.dtype != jnp.bool_:
            raise ValueError(
                "`quadrants` must be a boolean (4,) array (top-left, top-right, "
                f"bottom-left, bottom-right), got {quadrants.dtype}{quadrants.shape}."
            )
        h, w = s.shape
        rows = jnp.arange(h)[:, None] >= h // 2
        cols = jnp.arange(w)[None, :] >= w // 2
        mask = quadrants[2 * rows.astype(jnp.int32) + cols.astype(jnp.int32)]
        inside = jnp.sum(jnp.where(mask, s, 0.0))
        return (inside / (jnp.sum(s) + 1e-9)).astype(jnp.float32)
