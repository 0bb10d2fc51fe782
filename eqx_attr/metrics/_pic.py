"""Performance Information Curves, SIC and AIC (Kapishnikov et al., XRAI, 2019).

As PAIR's `saliency/metrics/pic.py` (`compute_pic_metric`): the image is rebuilt
from a few random pixels plus the most salient ones, the rest interpolated; the
curve maps each rebuilt image's information (normalised between the fully
blurred and the original image) to the model's normalised score.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray, Shaped

from .._attribution import (
    Target,
    batched_map,
    check_choice,
    check_key,
    check_positive_int,
    forward_shape,
    make_objective,
)
from ._base import (
    AbstractMetric,
    check_chunk_size,
    check_mask,
    check_positive_float,
    checked_pair,
    scorer,
    spatial_map,
)

# The thresholds of PAIR's `compute_pic_metric` docstring (and its notebook).
PAIR_THRESHOLDS = (
    0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75,
)  # fmt: skip


def _as_uint8(x: Any) -> np.ndarray:
    """A `(C, H, W)` image in [0, 1] as PAIR's uint8 `(H, W)` or `(H, W, C)`."""
    img = np.round(np.clip(np.asarray(x, np.float64), 0.0, 1.0) * 255)
    img = img.astype(np.uint8)
    return img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)


def webp_information(image: Float[Array, "c h w"]) -> Float[Array, ""]:
    """PAIR's `estimate_image_entropy`: the size in bytes of the lossless WebP.

    The image, in [0, 1] with 1 or 3 channels, is encoded as 8-bit
    (`round(255 x)`) by Pillow on the host (`jax.pure_callback`: it jits and vmaps,
    one image at a time).

    **Arguments:** `image`, `(1, H, W)` or `(3, H, W)`.

    **Returns:** a 0-d float32 array, the byte count.
    """
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(
            f"`webp_information` encodes (1, H, W) or (3, H, W) images, got shape "
            f"{image.shape}; pass `information=` a function for other inputs."
        )

    def host(img):
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(_as_uint8(img)).save(
            buffer, format="webp", lossless=True, quality=100
        )
        return np.float32(buffer.tell())

    out = jax.ShapeDtypeStruct((), jnp.float32)
    return jax.pure_callback(host, out, image, vmap_method="sequential")


def griddata_blur(
    x: Float[Array, "c h w"], kept: Bool[Array, "h w"], method: str = "linear"
) -> Float[Array, "c h w"]:
    """PAIR's `create_blurred_image`: the pixels not `kept` interpolated from the kept.

    SciPy's `griddata` (Delaunay, `"linear"`, or `"nearest"`) on the host
    (`jax.pure_callback`), with the four corners always kept and points outside the
    hull set to the channel's mean. As PAIR's uint8 images, the image is read as
    `round(255 x)` and the interpolated values are rounded to multiples of 1/255.

    **Arguments:** `x` `(C, H, W)` in [0, 1]; `kept` a boolean `(H, W)` mask;
    `method`.

    **Returns:** the blurred image, shaped like `x`, float32.
    """
    check_choice(method, "method", ("linear", "nearest"))

    def host(img, mask):
        from scipy import interpolate

        img = np.round(np.clip(np.asarray(img, np.float64), 0, 1) * 255)
        img = np.moveaxis(img.astype(np.uint8), 0, -1)
        mask = np.asarray(mask).copy()
        h, w = mask.shape
        mask[[0, 0, h - 1, h - 1], [0, w - 1, 0, w - 1]] = True
        if np.all(mask):
            return np.moveaxis(img, -1, 0).astype(np.float32) / 255
        mean = np.mean(img, axis=(0, 1))
        blurred = img * mask[..., None].astype(np.float32)
        known, unknown = np.argwhere(mask), np.argwhere(~mask)
        for c in range(img.shape[-1]):
            values = img[:, :, c][tuple(known.T)]
            blurred[:, :, c][tuple(unknown.T)] = interpolate.griddata(
                known, values, unknown, method=method, fill_value=mean[c]
            )
        blurred = np.round(blurred).astype(np.uint8)
        return np.moveaxis(blurred, -1, 0).astype(np.float32) / 255

    out = jax.ShapeDtypeStruct(x.shape, jnp.float32)
    return jax.pure_callback(host, out, x, kept, vmap_method="sequential")


def _interp1d(xp: Array, fp: Array, xs: Array) -> Array:
    """SciPy's `interp1d(xp, fp)(xs)`: a stable sort, then NumPy's `interp` (the
    value at a repeated `xp` is the last one's, as SciPy delegates to `np.interp`)."""
    order = jnp.argsort(xp, stable=True)
    return jnp.interp(xs, xp[order], fp[order])


class _AbstractPIC(AbstractMetric):
    """The curve shared by SIC and AIC; `_accuracy` tells them apart."""

    model: eqx.AbstractVar[Callable[..., Any]]
    thresholds: eqx.AbstractVar[tuple[float, ...]]
    fraction: eqx.AbstractVar[float]
    min_pred_value: eqx.AbstractVar[float]
    keep_monotonous: eqx.AbstractVar[bool]
    n_points: eqx.AbstractVar[int]
    blur: eqx.AbstractVar[Any]
    information: eqx.AbstractVar[Callable[[Array], Array]]
    chunk_size: eqx.AbstractVar[int | Literal["auto"] | None]
    _accuracy: ClassVar[bool]

    def __init__(
        self,
        model: Callable[..., Any],
        thresholds: tuple[float, ...] = PAIR_THRESHOLDS,
        fraction: float = 0.01,
        min_pred_value: float = 0.8,
        keep_monotonous: bool = True,
        n_points: int = 1000,
        blur: str | Callable[[Array, Array], Array] = "linear",
        information: Callable[[Array], Array] = webp_information,
        chunk_size: int | Literal["auto"] | None = "auto",
    ):
        thresholds = tuple(float(t) for t in thresholds)
        if not thresholds or not all(0 <= t <= 1 for t in thresholds):
            raise ValueError(
                f"`thresholds` must be a non-empty tuple of fractions in [0, 1], "
                f"got {thresholds!r}."
            )
        if not 0 <= fraction <= 1:
            raise ValueError(f"`fraction` must lie in [0, 1], got {fraction!r}.")
        check_positive_float(min_pred_value, "min_pred_value", allow_zero=True)
        check_positive_int(n_points, "n_points")
        if isinstance(blur, str):
            check_choice(blur, "blur", ("linear", "nearest"))
        elif not callable(blur):
            raise TypeError(f"`blur` must be a string or a function, got {blur!r}.")
        if not callable(information):
            raise TypeError(f"`information` must be a function, got {information!r}.")
        check_chunk_size(chunk_size)
        self.model = model
        self.thresholds = thresholds
        self.fraction = float(fraction)
        self.min_pred_value = float(min_pred_value)
        self.keep_monotonous = bool(keep_monotonous)
        self.n_points = n_points
        self.blur = blur
        self.information = information
        self.chunk_size = chunk_size

    def _scorer(self, x: Array, target: Target) -> Callable[[Array], Array]:
        if not self._accuracy:
            return scorer(self.model, x, target, "probability")
        (n,) = forward_shape(self.model, x).shape or (0,)
        if callable(target) or target is None or n == 0:
            raise ValueError("AIC needs a classifier and an integer class `target`.")
        objective = make_objective(target, (n,))
        return lambda z: objective(
            jax.nn.one_hot(jnp.argmax(self.model(z)), n, dtype=jnp.float32)
        )

    def _blur(self, x: Array, kept: Array) -> Array:
        if isinstance(self.blur, str):
            return griddata_blur(x, kept, self.blur)
        h, w = kept.shape
        rows, cols = jnp.array([0, 0, h - 1, h - 1]), jnp.array([0, w - 1, 0, w - 1])
        kept = kept.at[rows, cols].set(True)  # the four corners
        return self.blur(x, kept).astype(jnp.float32)

    def random_mask(self, shape: tuple[int, int], key: PRNGKeyArray) -> Array:
        """PAIR's `generate_random_mask`: `int(H W fraction)` pixels, no repeats."""
        size = shape[0] * shape[1]
        idx = jax.random.choice(key, size, (int(size * self.fraction),), False)
        return jnp.zeros(size, bool).at[idx].set(True).reshape(shape)

    def points(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        random_mask: Shaped[Array, "..."] | None = None,
    ) -> tuple[Array, Array, Array]:
        """The normalised information and score at each threshold, and validity.

        **Returns:** `(information, score, valid)`: two `(n_thresholds,)` arrays and
        a 0-d boolean, False where PAIR raises `ComputePicMetricError`.
        """
        x, a = checked_pair(x, a)
        s = spatial_map(a)
        if random_mask is None:
            h, w = s.shape
            random_mask = self.random_mask((h, w), check_key(key, "PIC"))
        random_mask = check_mask(random_mask, s.shape)
        f = self._scorer(x, target)
        q = jnp.quantile(s, 1 - jnp.asarray(self.thresholds, jnp.float32))
        kept = (s[None] >= q[:, None, None]) | random_mask[None]
        kept = jnp.concatenate([random_mask[None], kept])
        images = jax.vmap(self._blur, in_axes=(None, 0))(x, kept)
        images = jnp.concatenate([images, x[None].astype(jnp.float32)])
        info = jax.vmap(self.information)(images).astype(jnp.float32)
        preds = batched_map(lambda z: f(z.astype(x.dtype)), images, self.chunk_size)
        info0, info1 = info[0], info[-1]
        pred0, pred1 = preds[0], preds[-1]
        valid = (pred1 >= self.min_pred_value) & (info0 < info1) & (pred0 < pred1)
        norm_info = jnp.clip((info[1:-1] - info0) / (info1 - info0), 0.0, 1.0)
        norm_pred = jnp.clip((preds[1:-1] - pred0) / (pred1 - pred0), 0.0, 1.0)
        if self.keep_monotonous:
            norm_pred = jax.lax.cummax(norm_pred)
        return norm_info, norm_pred, valid

    def curve(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        random_mask: Shaped[Array, "..."] | None = None,
    ) -> Float[Array, " n_points_plus_1"]:
        """The curve at `n_points + 1` evenly spaced information levels on [0, 1];
        all NaN where PAIR raises `ComputePicMetricError`."""
        info, pred, valid = self.points(x, target, a, key=key, random_mask=random_mask)
        xp = jnp.concatenate([info, jnp.array([0.0, 1.0])])
        fp = jnp.concatenate([pred, jnp.array([0.0, 1.0])])
        grid = jnp.arange(self.n_points, dtype=jnp.float32) / self.n_points
        y = jnp.append(_interp1d(xp, fp, grid), 1.0)
        return jnp.where(valid, y, jnp.nan)

    def __call__(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
        random_mask: Shaped[Array, "..."] | None = None,
    ) -> Float[Array, ""]:
        y = self.curve(x, target, a, key=key, random_mask=random_mask)
        dx = jnp.diff(jnp.append(jnp.arange(self.n_points) / self.n_points, 1.0))
        return jnp.sum(dx * (y[1:] + y[:-1]) / 2).astype(jnp.float32)


_DOC = """
    Kapishnikov et al., *XRAI: Better Attributions Through Regions*, ICCV 2019; as
    PAIR's `saliency/metrics/pic.py`, function `compute_pic_metric`. A random mask
    keeps `int(H W fraction)` pixels (`generate_random_mask`); for each threshold t
    the pixels with saliency `>= quantile(s, 1 - t)` (s: the attribution summed
    over channels, signed: pass |a| for magnitudes) are kept too, and the rest is
    interpolated (`blur`). Each image's information (`information`) and score are
    normalised between the fully blurred image (random pixels only) and `x`,
    clipped to [0, 1]; the curve interpolates score over information through
    (0, 0) and (1, 1), sampled at `n_points` levels plus 1.0.

    **Arguments:**

    - `model`: maps one `(C, H, W)` image in [0, 1] to class scores.
    - `thresholds`: the fractions of most salient pixels revealed, ascending.
    - `fraction`: the share of random pixels in every image (PAIR: 0.01).
    - `min_pred_value`: below this score on `x` the image is skipped (NaN).
    - `keep_monotonous`: the score curve only grows (running maximum), as the paper.
    - `n_points`: the curve's samples on [0, 1) (PAIR's `num_data_points`).
    - `blur`: `"linear"` (default) or `"nearest"`: PAIR's `create_blurred_image`
        ([`griddata_blur`][eqx_attr.metrics.griddata_blur], on the host, 8-bit
        rounding); or a JAX function `(x, kept) -> image` (e.g.
        [`linear_imputation`][eqx_attr.metrics.linear_imputation]), the corners
        kept.
    - `information`: `image -> scalar`; default
        [`webp_information`][eqx_attr.metrics.webp_information], PAIR's compressed
        size (on the host). JAX has no WebP encoder: pass a JAX function for a
        fully compiled metric.
    - `chunk_size`: score at most this many images at once.

    **Call:** `metric(x, target, a, *, key)`; `key` draws the random mask, or pass
    `random_mask=` (a boolean `(H, W)`) to reuse one across methods, as PAIR
    advises. `metric.curve(...)` gives the curve, `metric.points(...)` its points.

    **Returns:** the trapezoid area under the curve, a 0-d float32 array; NaN
    where PAIR raises `ComputePicMetricError` (the score on `x` below
    `min_pred_value`, or the fully blurred image not less informative or not
    scored lower than `x`): skip those images, e.g. `jnp.nanmedian` over a batch
    (PAIR's `aggregate_individual_pic_results` takes the median curve).
"""


class SIC(_AbstractPIC):
    __doc__ = (
        """Softmax Information Curve: the target's softmax probability over the
    information revealed, most salient pixels first; higher is better.
    """
        + _DOC
        + """
    ```python
    sic = xa.metrics.SIC(model, min_pred_value=0.5)(x, 3, jnp.abs(a), key=key)
    ```
    """
    )

    model: Callable[..., Any]
    thresholds: tuple[float, ...] = eqx.field(static=True)
    fraction: float = eqx.field(static=True)
    min_pred_value: float = eqx.field(static=True)
    keep_monotonous: bool = eqx.field(static=True)
    n_points: int = eqx.field(static=True)
    blur: Any = eqx.field(static=True)
    information: Callable[[Array], Array] = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    _accuracy: ClassVar[bool] = False


class AIC(_AbstractPIC):
    __doc__ = (
        """Accuracy Information Curve: 1 where the prediction is the (integer)
    target, else 0, over the information revealed; higher is better.
    """
        + _DOC
        + """
    ```python
    aic = xa.metrics.AIC(model)(x, 3, jnp.abs(a), key=key)
    ```
    """
    )

    model: Callable[..., Any]
    thresholds: tuple[float, ...] = eqx.field(static=True)
    fraction: float = eqx.field(static=True)
    min_pred_value: float = eqx.field(static=True)
    keep_monotonous: bool = eqx.field(static=True)
    n_points: int = eqx.field(static=True)
    blur: Any = eqx.field(static=True)
    information: Callable[[Array], Array] = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    _accuracy: ClassVar[bool] = True
