"""pytorch-grad-cam's ARCC: one number from a CAM's coherency, complexity and ROAD.

Written from the formulas of pytorch-grad-cam's `pytorch_grad_cam/metrics/arcc.py`
(`batch_pearson_coherency`, `Complexity`, `Coherency`, `ARCC`; added in its commit
4e73d45, "New method RefineCAM and new metric ARCC", #595). Coherency and
Complexity come from Poppi et al., *Revisiting the Evaluation of Class Activation
Mapping for Explainability: A Novel Metric and Experimental Analysis*, CVPR
Workshops 2021 (arXiv:2104.10252), whose ADCC is the harmonic mean of coherency,
1 - complexity and 1 - average drop; ARCC replaces the average drop by ROAD.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import Target, check_bool
from ._base import AbstractMetric, checked_pair, spatial_map
from ._road import ROADConfidenceChange

# pytorch-grad-cam's stabilisers: the Pearson denominator and the harmonic mean.
_EPS = 1e-8
# pytorch-grad-cam's `scale_cam_image`: (m - min) / (1e-7 + max(m - min)).
_SCALE_EPS = 1e-7


def scale_cam(m: Float[Array, "h w"]) -> Float[Array, "h w"]:
    """Min-max scale a map to [0, 1], as pytorch-grad-cam scales every CAM.

    pytorch-grad-cam's `utils/image.py`, `scale_cam_image`: `m - min(m)`, divided
    by `1e-7 + max(m - min(m))` (a constant map becomes all zeros).

    **Arguments:** `m`, any array.

    **Returns:** the scaled array, float32, shaped like `m`.
    """
    m = jnp.asarray(m, jnp.float32)
    m = m - jnp.min(m)
    return m / (_SCALE_EPS + jnp.max(m))


def coherency_pearson(a: Float[Array, "..."], b: Float[Array, "..."]) -> Array:
    """pytorch-grad-cam's `batch_pearson_coherency` for one pair of maps.

    The Pearson correlation of the flattened maps with sample (n - 1) moments and
    the stabiliser of grad-cam: `cov / (std_a std_b + 1e-8)`; 0 when either map
    is constant.

    **Arguments:** `a`, `b`: two maps with the same number of entries.

    **Returns:** a 0-d float32 array in [-1, 1].
    """
    a = jnp.ravel(a).astype(jnp.float32)
    b = jnp.ravel(b).astype(jnp.float32)
    n1 = a.size - 1
    da, db = a - jnp.mean(a), b - jnp.mean(b)
    cov = jnp.sum(da * db) / n1
    std_a = jnp.sqrt(jnp.sum(da * da) / n1)
    std_b = jnp.sqrt(jnp.sum(db * db) / n1)
    return cov / (std_a * std_b + _EPS)


def _checked_map(x: Any, cam: Any, scale: bool) -> tuple[Array, Array]:
    """`x` checked, and `cam` as an `(H, W)` map (summed over channels), scaled."""
    x, cam = checked_pair(x, cam)
    m = spatial_map(cam, "cam")
    return x, scale_cam(m) if scale else m


def _check_method(method: Any) -> None:
    if not callable(method):
        raise TypeError(
            "`method` must be an attribution method (callable as "
            f"`method(x, target)`), got {type(method).__name__}."
        )


def _explain(method: Callable, z: Array, target: Target, key: Any) -> Array:
    out = method(z, target) if key is None else method(z, target, key=key)
    return jnp.asarray(out).astype(jnp.float32)


class Coherency(AbstractMetric):
    """How much the CAM of the input masked by its CAM resembles the CAM.

    As pytorch-grad-cam's `Coherency` (`pytorch_grad_cam/metrics/arcc.py`; Poppi
    et al., CVPR-W 2021): the method explains `x · cam` (the `(H, W)` map
    broadcast over the channels) for the same target, and the score is
    `(ρ + 1) / 2`, ρ the Pearson correlation of that new map with `cam`
    ([`coherency_pearson`][eqx_attr.metrics.coherency_pearson]). The new map is
    summed over channels if the method returns one shaped like `x`; ρ does not
    change when either map is scaled by a positive factor or shifted.

    **Arguments:**

    - `method`: the attribution method that produced `cam`, called as
        `method(x, target, key=key)` (grad-cam's `base_method`); its maps must
        have the input's spatial size (CAMs: keep the default `resize`).
    - `scale`: min-max scale `cam` to [0, 1] first
        ([`scale_cam`][eqx_attr.metrics.scale_cam]), as grad-cam's CAMs are;
        default `False`: the map is used as given.

    **Call:** `metric(x, target, cam, *, key=None)`: `cam` an `(H, W)` map (or
    shaped like `x`, summed over channels); `key` for a random method.

    **Returns:** a 0-d float32 array in [0, 1]; higher is more coherent. A
    constant map (either one) scores 0.5.

    ```python
    method = xa.GradCAM(model, lambda m: m.conv2)
    c = xa.metrics.Coherency(method, scale=True)(x, 3, method(x, 3))
    ```
    """

    method: Callable[..., Any]
    scale: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        _check_method(self.method)
        check_bool(self.scale, "scale")

    def __call__(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        cam: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        x, m = _checked_map(x, cam, self.scale)
        return _coherency(self.method, x, target, m, key)


def _coherency(method: Callable, x: Array, target: Target, m: Array, key) -> Array:
    mixed = (x * jnp.broadcast_to(m, x.shape)).astype(x.dtype)
    new = _explain(method, mixed, target, key)
    if new.shape != m.shape and new.shape[-2:] != m.shape:
        raise ValueError(
            f"`method` returned a map of shape {new.shape} for an input of shape "
            f"{x.shape}; Coherency compares it with the (H, W) = {m.shape} map. Use "
            "a method whose maps have the input's spatial size (for a CAM, keep "
            "the default `resize`)."
        )
    return coherency_of_maps(new, m)


def coherency_of_maps(new: Array, m: Array) -> Array:
    """`(ρ + 1) / 2` of the method's map of `x · m` (summed over channels) and `m`."""
    return ((coherency_pearson(spatial_map(new), m) + 1) / 2).astype(jnp.float32)


def _road(model, percentiles, noise, score, chunk_size) -> ROADConfidenceChange:
    """grad-cam's `ROADCombined(percentiles)` with the imputation noise `noise`."""
    return ROADConfidenceChange(
        model, percentiles, "combined", noise, score, chunk_size
    )


class ARCC(AbstractMetric):
    """pytorch-grad-cam's ARCC: the harmonic mean of coherency, simplicity and ROAD.

    As pytorch-grad-cam's `ARCC` (`pytorch_grad_cam/metrics/arcc.py`, its
    `__call__`), for a map `m` (`cam`, scaled to [0, 1] with `scale=True`):

    - coherency `C`: [`Coherency`][eqx_attr.metrics.Coherency] of `method`;
    - complexity `K = mean |m|` (grad-cam's `Complexity` in the same file: the
      L1 norm over the number of pixels; not Quantus's entropy,
      [`eqx_attr.metrics.Complexity`][]);
    - `R`: grad-cam's `ROADCombined` at `percentiles`
      ([`ROADConfidenceChange`][eqx_attr.metrics.ROADConfidenceChange] with
      `order="combined"`), mapped to [0, 1] as `clip(2 R, 0, 1)`;

    and `ARCC = 3 / (1/(C + ε) + 1/(1 - K + ε) + 1/(clip(2R, 0, 1) + ε))`,
    ε = 1e-8. (grad-cam's docstring calls it a geometric mean; its code, followed
    here, is the harmonic mean.)

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores (for ROAD).
    - `method`: the attribution method that produced `cam` (grad-cam's
        `base_method`), called again on `x · m` for the coherency.
    - `percentiles`: ROAD's thresholds (grad-cam's ARCC: 20, 40, 60, 80).
    - `noise`: ROAD's imputation noise (grad-cam: 0.01); 0 for a deterministic score.
    - `score`: `"probability"` (default; grad-cam's `ClassifierOutputSoftmaxTarget`)
        or `"logit"` (`ClassifierOutputTarget`) for ROAD's confidence change.
    - `scale`: min-max scale `cam` to [0, 1] first, as grad-cam's CAMs are
        ([`scale_cam`][eqx_attr.metrics.scale_cam]); default `False`.
    - `chunk_size`: at most this many imputed images through the model at once.

    **Call:** `metric(x, target, cam, *, key)`: `cam` an `(H, W)` map (or shaped
    like `x`, summed over channels); `key` when `noise > 0` or the method is
    random. `metric.components(...)` returns `{"coherency", "complexity", "road"}`
    (`road` before the mapping to [0, 1]).

    **Returns:** a 0-d float32 array, in [0, 1] for a map in [0, 1]; higher is
    better. About `3e-8` when ROAD is not positive.

    ```python
    cam_method = xa.GradCAM(model, lambda m: m.conv2)
    arcc = xa.metrics.ARCC(model, cam_method, scale=True)
    score = arcc(x, 3, cam_method(x, 3), key=key)
    ```
    """

    model: Callable[..., Any]
    method: Callable[..., Any]
    percentiles: tuple[float, ...] = eqx.field(static=True)
    noise: float = eqx.field(static=True)
    score: str = eqx.field(static=True)
    scale: bool = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)

    def __init__(
        self,
        model: Callable[..., Any],
        method: Callable[..., Any],
        percentiles: tuple[int | float, ...] = (20, 40, 60, 80),
        noise: float = 0.01,
        score: str = "probability",
        scale: bool = False,
        chunk_size: int | Literal["auto"] | None = "auto",
    ):
        _check_method(method)
        check_bool(scale, "scale")
        # ROADConfidenceChange checks its options and names them in its errors.
        road = _road(model, percentiles, noise, score, chunk_size)
        self.model = model
        self.method = method
        self.percentiles = road.percentiles
        self.noise = road.noise
        self.score = score
        self.scale = scale
        self.chunk_size = chunk_size

    def components(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        cam: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> dict[str, Float[Array, ""]]:
        """`{"coherency", "complexity", "road"}`: the three terms, `road` unmapped."""
        x, m = _checked_map(x, cam, self.scale)
        if key is None:
            road_key = method_key = None
        else:
            road_key, method_key = jax.random.split(key)
        road = _road(
            self.model, self.percentiles, self.noise, self.score, self.chunk_size
        )
        return {
            "coherency": _coherency(self.method, x, target, m, method_key),
            "complexity": jnp.mean(jnp.abs(m)),
            "road": road(x, target, m, key=road_key),
        }

    def __call__(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        cam: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        return arcc_score(**self.components(x, target, cam, key=key))


def arcc_score(
    coherency: Float[Array, "*b"],
    complexity: Float[Array, "*b"],
    road: Float[Array, "*b"],
) -> Float[Array, "*b"]:
    """ARCC from its three terms, as pytorch-grad-cam's `ARCC.__call__`.

    `3 / (1/(coherency + ε) + 1/(1 - complexity + ε) + 1/(clip(2 road, 0, 1) + ε))`,
    ε = 1e-8: the harmonic mean of coherency, 1 - complexity and ROAD mapped from
    [-0.5, 0.5] to [0, 1].

    **Arguments:** `coherency`, `complexity`, `road`: arrays of one shape (the
    terms of [`ARCC`][eqx_attr.metrics.ARCC]'s `components`).

    **Returns:** the ARCC score(s), float32, of that shape.
    """
    r = jnp.clip(2 * jnp.asarray(road, jnp.float32), 0.0, 1.0)
    inverse = 1 / (coherency + _EPS) + 1 / ((1 - complexity) + _EPS) + 1 / (r + _EPS)
    return (3 / inverse).astype(jnp.float32)
