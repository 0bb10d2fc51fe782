"""XRAI: region attribution from integrated gradients over image segments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, Shaped

from .._attribution import (
    AbstractCompiledAttribution,
    Image,
    Target,
    call_compiled,
    check_choice,
    check_chunk_size,
    check_input,
    check_positive_int,
)
from .._gradient._integrated import QUADRATURES, IntegratedGradients
from .._layout import (
    InputLayout,
    channels_first,
    input_layout_field,
    resolve_input_layout,
    spatial_shape,
)
from .._method_entry import Differentiability, MethodEntry
from ..baselines import AbstractBaseline, as_baseline
from . import _xrai_regions as regions

__all__ = ["XRAI"]

ALGORITHMS = ("full", "fast")


class ImageRange(AbstractBaseline):
    """PAIR XRAI's two default baselines: the image's minimum and its maximum.

    Two constant images, filled with `min(x)` and with `max(x)` (black and white
    for an image that spans its range); integrated gradients average over both.
    """

    def __call__(
        self, x: Float[Array, "*dims"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " 2 *dims"]:
        ones = jnp.ones_like(x)
        return jnp.stack([jnp.min(x) * ones, jnp.max(x) * ones])


def _as_xrai_baseline(value: Any) -> AbstractBaseline:
    return ImageRange() if value is None else as_baseline(value)


def _as_segments(value: Any) -> Bool[Array, "k h w"] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = np.stack([np.asarray(v) for v in value]) if value else np.zeros(0)
    arr = np.asarray(value)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(
            "`segments` must be a non-empty stack of (H, W) boolean masks shaped "
            f"(K, H, W) (or a list of them), got shape {arr.shape}."
        )
    if not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"`segments` must hold booleans, got dtype {arr.dtype}.")
    return jnp.asarray(arr.astype(bool))


def _host_from_image(options: dict[str, Any], image, attr):
    """Callback: segment the (C, H, W) image, then rank the regions of `attr`."""
    masks = regions.image_masks(
        np.moveaxis(np.asarray(image), 0, -1),
        scales=options["scales"],
        sigma=options["sigma"],
        min_size=options["min_size"],
        resize=options["resize"],
        dilation_radius=options["dilation_radius"],
    )
    return _rank(options, attr, masks)


def _host_from_segments(options: dict[str, Any], segments, attr):
    """Callback: rank the regions of `attr` over the caller's segments."""
    return _rank(options, attr, regions.SparseMasks.from_dense(np.asarray(segments)))


def _rank(options: dict[str, Any], attr, masks: regions.SparseMasks):
    return regions.rank_regions(
        np.asarray(attr, np.float32),
        masks,
        algorithm=options["algorithm"],
        area_threshold=options["area_threshold"],
        min_pixel_diff=options["min_pixel_diff"],
    )


_NOT_DIFFERENTIABLE = (
    "XRAI is not differentiable with respect to `x` or the model's parameters: "
    "its regions are segmented and ranked on the host (a greedy, piecewise-"
    "constant search, through `jax.pure_callback`). Differentiate the attribution "
    "it ranks regions by instead, `xa.IntegratedGradients` (see "
    "`XRAI.integrated_gradients()`), or another method whose registry row states "
    "`differentiable` orders >= 1 (docs: Differentiating explanations)."
)


@jax.custom_jvp
def _refuse_derivatives(data: Array, attr: Array) -> tuple[Array, Array]:
    """The identity, whose derivative raises at trace time (forward or reverse).

    JAX calls the JVP rule only when a tangent is not a symbolic zero: plain
    calls, `jit` and `vmap` pass through, and so does differentiating something
    else (a tangent that does not reach XRAI's inputs).
    """
    return data, attr


@_refuse_derivatives.defjvp
def _refuse_derivatives_jvp(primals, tangents):
    raise ValueError(_NOT_DIFFERENTIABLE)


class XRAI(AbstractCompiledAttribution):
    """XRAI (Kapishnikov et al., ICCV 2019), as PAIR's `saliency.core.XRAI`.

    Integrated gradients (our JAX [`eqx_attr.IntegratedGradients`][], averaged
    over the baselines, by default the image's minimum and maximum) are reduced
    to an `(H, W)` map by the maximum over channels. The image is over-segmented
    by Felzenszwalb's algorithm at six scales (rescaled to [-1, 1] and resized to
    224 x 224 for it; segments dilated by a disk of radius 5). Then regions are
    added greedily: each step takes the segment whose not yet covered pixels have
    the largest mean attribution ("full"), until `area_threshold` of the image is
    covered. The map gives every pixel the gain of the region that covered it
    (pixels no region covered get their own mean). `"fast"` ranks the segments
    once by their own mean instead.

    Segmentation and ranking are NumPy / scikit-image on the host, called through
    `jax.pure_callback`: XRAI works under `jit` and `vmap` (the host part then runs
    example by example) but is not differentiable: `jax.grad` or `jax.jvp` of
    the map with respect to `x` or the parameters raises a `ValueError` at trace
    time (differentiate [`eqx_attr.IntegratedGradients`][] instead). A
    segmentation is cached by image content, so several targets of one image
    segment it once.

    **Arguments:**

    - `model`: maps one `(C, H, W)` (or `(H, W, C)`) image to a vector of scores.
    - `n_steps`: integration steps per baseline (static). Default 100 (PAIR's).
    - `baseline`: `None` (PAIR's: the image's minimum and maximum), or any
        baseline [`eqx_attr.IntegratedGradients`][] takes; draws are averaged.
    - `ig_method`: IG's quadrature. Default `"riemann_linspace"` (PAIR's).
    - `algorithm`: `"full"` (default) or `"fast"`.
    - `area_threshold`: stop the full algorithm once this fraction of the image
        is covered (the rest is one last region). Default 1.0.
    - `min_pixel_diff`: skip segments that would add fewer pixels. Default 50.
    - `segments`: your own `(K, H, W)` boolean masks, instead of Felzenszwalb's.
    - `scales`, `sigma`, `min_size`: Felzenszwalb's options. Defaults PAIR's:
        `(50, 100, 150, 250, 500, 1200)`, 0.8 and 150.
    - `resize`: `(h, w)` to segment at (PAIR: `(224, 224)`), or `None` for the
        image's own size.
    - `dilation_radius`: dilate each segment by a disk of this radius (0: not).
        Default 5.
    - `chunk_size`: IG's chunk of path points (`"auto"`, the default: as many as
        fit the memory budget, [`eqx_attr.set_memory_budget`][]).
    - `input_layout`: `"chw"`, `"hwc"` or `None` (default: inferred from `x`'s
        shape, see [`eqx_attr.AbstractAttribution`][]); `segments` and the
        result are `(H, W)` in either layout.

    **Returns:** the `(H, W)` XRAI heat map in `x`'s dtype.
    [`eqx_attr.XRAI.heat_and_ranks`][] returns the regions' ranks too.

    ```python
    xrai = xa.XRAI(model, n_steps=32)
    heat = xrai(x, target=3)
    heat, ranks = xrai.heat_and_ranks(x, target=3)
    top3 = xa.XRAI.region_masks(ranks)[:3]   # (3, H, W) booleans
    ```
    """

    model: Callable[..., Any]
    n_steps: int = eqx.field(static=True, default=100)
    baseline: AbstractBaseline = eqx.field(default=None, converter=_as_xrai_baseline)
    ig_method: str = eqx.field(static=True, default="riemann_linspace")
    algorithm: str = eqx.field(static=True, default="full")
    area_threshold: float = eqx.field(static=True, default=1.0, converter=float)
    min_pixel_diff: int = eqx.field(static=True, default=regions.MIN_PIXEL_DIFF)
    segments: Bool[Array, "k h w"] | None = eqx.field(
        default=None, converter=_as_segments
    )
    scales: tuple[float, ...] = eqx.field(
        static=True, default=regions.SCALES, converter=tuple
    )
    sigma: float = eqx.field(static=True, default=regions.SIGMA, converter=float)
    min_size: int = eqx.field(static=True, default=regions.MIN_SIZE)
    resize: tuple[int, int] | None = eqx.field(static=True, default=regions.RESIZE)
    dilation_radius: int = eqx.field(static=True, default=regions.DILATION_RADIUS)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_positive_int(self.n_steps, "n_steps")
        check_choice(self.ig_method, "ig_method", QUADRATURES)
        check_choice(self.algorithm, "algorithm", ALGORITHMS)
        if not 0.0 <= self.area_threshold <= 1.0:
            raise ValueError(
                f"`area_threshold` must lie in [0, 1], got {self.area_threshold}."
            )
        check_positive_int(self.min_pixel_diff, "min_pixel_diff")
        if not self.scales or not all(
            isinstance(s, (int, float, np.number)) and s > 0 for s in self.scales
        ):
            raise ValueError(
                f"`scales` must be a non-empty sequence of numbers > 0, got "
                f"{self.scales!r}."
            )
        if not self.sigma >= 0:
            raise ValueError(f"`sigma` must be >= 0, got {self.sigma}.")
        check_positive_int(self.min_size, "min_size")
        if self.resize is not None and (
            not isinstance(self.resize, tuple) or len(self.resize) != 2
        ):
            raise ValueError(
                f"`resize` must be None or a tuple (h, w), got {self.resize!r}."
            )
        for side in self.resize or ():
            check_positive_int(side, "resize")
        check_positive_int(self.dilation_radius, "dilation_radius", minimum=0)
        check_chunk_size(self.chunk_size)

    def _options(self) -> dict[str, Any]:
        return dict(
            algorithm=self.algorithm,
            area_threshold=self.area_threshold,
            min_pixel_diff=self.min_pixel_diff,
            scales=self.scales,
            sigma=self.sigma,
            min_size=self.min_size,
            resize=self.resize,
            dilation_radius=self.dilation_radius,
        )

    def integrated_gradients(self) -> IntegratedGradients:
        """The IG method XRAI ranks regions by (before the maximum over channels)."""
        return IntegratedGradients(
            self.model,
            n_steps=self.n_steps,
            method=self.ig_method,
            baseline=self.baseline,
            chunk_size=self.chunk_size,
        )

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "h w"]:
        return self._heat_and_ranks(x, target, key)[0]

    def heat_and_ranks(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> tuple[Float[Array, "h w"], Int[Array, "h w"]]:
        """The heat map and the regions' ranks, in one compiled call.

        **Arguments:** as `__call__`.

        **Returns:** `(heat, ranks)`: the `(H, W)` heat map (as `__call__`) and
        the `(H, W)` int32 ranks, numbering the regions 1 (most important) to N;
        see [`eqx_attr.XRAI.region_masks`][].
        """
        return self._compiled(self._heat_and_ranks, x, target, key)

    def _heat_and_ranks(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> tuple[Array, Array]:
        _check_image(x, "x")
        ig = self.integrated_gradients()
        attr, _ = ig.attribute_with_delta(x, target, key=key)  # IG's `__call__`
        layout = resolve_input_layout(x.shape, self.input_layout)
        return self._regions(channels_first(x, layout), channels_first(attr, layout))

    def from_attribution(
        self, x: Image, attribution: Shaped[Array, "..."] | np.ndarray
    ) -> tuple[Float[Array, "h w"], Int[Array, "h w"]]:
        """XRAI's regions for a given attribution (PAIR's `base_attribution`).

        **Arguments:**

        - `x`: the `(C, H, W)` image (segmented unless `segments` was given).
        - `attribution`: `(C, H, W)` (reduced by the maximum over channels) or
            `(H, W)`.

        **Returns:** `(heat, ranks)`, as [`eqx_attr.XRAI.heat_and_ranks`][].
        """
        x = check_input(x)
        _check_image(x, "x")
        attribution = check_input(attribution, "attribution")
        hw = spatial_shape(x, self.input_layout, "XRAI")
        if attribution.shape not in (x.shape, hw):
            raise ValueError(
                f"`attribution` has shape {attribution.shape}; it must be shaped "
                f"like `x` {x.shape} or its (H, W) = {hw}."
            )
        layout = resolve_input_layout(x.shape, self.input_layout)
        return call_compiled(
            self._regions,
            channels_first(x, layout),
            channels_first(attribution, layout),
        )

    def _regions(self, x: Array, attr: Array) -> tuple[Array, Array]:
        h, w = x.shape[-2:]
        attr_map = attr.astype(jnp.float32)
        if attr_map.ndim == 3:
            attr_map = jnp.max(attr_map, axis=0)
        out = (
            jax.ShapeDtypeStruct((h, w), jnp.float32),
            jax.ShapeDtypeStruct((h, w), jnp.int32),
        )
        options = self._options()
        if self.segments is None:
            callback, data = _host_from_image, x.astype(jnp.float32)
        else:
            if self.segments.shape[1:] != (h, w):
                raise ValueError(
                    f"`segments` of shape {self.segments.shape} do not match the "
                    f"image's (H, W) = {(h, w)}; pass (K, {h}, {w}) masks."
                )
            callback, data = _host_from_segments, self.segments
        data, attr_map = _refuse_derivatives(data, attr_map)
        heat, ranks = jax.pure_callback(
            lambda d, a: callback(options, d, a),
            out,
            data,
            attr_map,
            vmap_method="sequential",
        )
        return heat.astype(x.dtype), ranks

    def segment_masks(self, x: Image) -> Bool[np.ndarray, "k h w"]:
        """The candidate regions for `x`: PAIR's segment list, as masks.

        Host-side NumPy (not traceable; cached like the call's segmentation).

        **Arguments:**

        - `x`: one `(C, H, W)` image.

        **Returns:** a `(K, H, W)` boolean array, scale by scale and label by
        label (dilated); the `segments` option instead when it was given.
        """
        if self.segments is not None:
            return np.asarray(self.segments)
        x = check_input(x)
        _check_image(x, "x")
        x = channels_first(x, resolve_input_layout(x.shape, self.input_layout))
        image = np.moveaxis(np.asarray(x, np.float32), 0, -1)
        opts = self._options()
        masks = regions.image_masks(
            image,
            opts["scales"],
            opts["sigma"],
            opts["min_size"],
            opts["resize"],
            opts["dilation_radius"],
        )
        return masks.to_dense((x.shape[-2], x.shape[-1]))

    @staticmethod
    def region_masks(ranks: Any) -> Bool[np.ndarray, "n h w"]:
        """The chosen regions as `(N, H, W)` boolean masks, most important first.

        **Arguments:**

        - `ranks`: the `(H, W)` ranks of [`eqx_attr.XRAI.heat_and_ranks`][]
            (1 = first).

        **Returns:** disjoint masks covering the image; the last one is the
        uncovered rest when the greedy search stopped before covering it all.
        """
        r = np.asarray(ranks)
        if r.ndim != 2 or not np.issubdtype(r.dtype, np.integer):
            raise ValueError(
                f"`ranks` must be the (H, W) integer ranks XRAI returns, got shape "
                f"{r.shape} and dtype {r.dtype}."
            )
        return r[None] == np.arange(1, int(r.max(initial=0)) + 1)[:, None, None]


def _check_image(x: Array, name: str) -> None:
    if x.ndim != 3:
        raise ValueError(
            f"XRAI segments an image: `{name}` must be ONE image shaped (C, H, W) "
            f"or (H, W, C) (`input_layout='hwc'`), got shape {x.shape}."
        )


ROWS = (
    MethodEntry(
        "xrai",
        XRAI,
        "region",
        "XRAI: IG ranked over multi-scale Felzenszwalb regions (PAIR; "
        "n_steps, algorithm)",
        lambda c: XRAI(
            c.model,
            n_steps=c.option("n_steps", 32),
            baseline=c.baseline,
            algorithm=c.option("algorithm", "full"),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        output="map",
        differentiable=Differentiability(
            0, 0, "region search on the host; differentiate integrated_gradients"
        ),
        benchmark=("bench_xrai.py", "PAIR saliency XRAI"),
    ),
)
