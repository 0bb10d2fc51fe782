"""ROAD: remove and debias, with noisy linear imputation (Rong et al., ICML 2022)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.sparse.linalg import cg
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._attribution import (
    Target,
    batched_map,
    check_choice,
    check_key,
    forward_shape,
    make_objective,
)
from ._base import (
    SCORES,
    AbstractCurveMetric,
    AbstractMetric,
    check_chunk_size,
    check_positive_float,
    checked_pair,
    relevance_ranks,
    scorer,
    spatial_map,
)

# Neighbour weights of the imputation (Rong et al.): 1/6 for the four edge
# neighbours, 1/12 for the four diagonal ones.
_KERNEL = np.array(
    [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]]
)


def _neighbour_sum(u: Array) -> Array:
    """Weighted sum of each pixel's in-image neighbours, over the last two axes.

    Eight shifted slices of the zero-padded image rather than a convolution: the
    conjugate-gradient loop calls this every iteration, and XLA:CPU runs a
    convolution inside a loop body on a slow path, but fuses slices and adds.
    """
    h, w = u.shape[-2:]
    pad = [(0, 0)] * (u.ndim - 2) + [(1, 1), (1, 1)]
    p = jnp.pad(u, pad)
    out = jnp.zeros_like(u)
    for di in range(3):
        for dj in range(3):
            weight = float(_KERNEL[di, dj])
            if weight:
                out = out + weight * p[..., di : di + h, dj : dj + w]
    return out


def linear_imputation(
    x: Float[Array, "c h w"], removed: Bool[Array, "h w"], tol: float = 1e-7
) -> Float[Array, "c h w"]:
    """Replace the `removed` pixels by the weighted mean of their neighbours.

    Solves, per channel, `S_i u_i - Σ_j w_ij u_j = 0` for every removed pixel `i`
    (neighbours `j` in the image, kept ones known, `S_i = Σ_j w_ij`), the system
    of Rong et al.'s noisy linear imputation. Restricted to the removed pixels it
    is symmetric positive definite when every removed region touches a kept pixel,
    so conjugate gradients solve it, with the stencil as a matrix-free operator.

    **Arguments:**

    - `x`: the image `(C, H, W)`.
    - `removed`: a boolean `(H, W)` mask of the pixels to replace.
    - `tol`: the conjugate-gradient tolerance.

    **Returns:** the image with the removed pixels imputed, shaped like `x`.
    """
    x32 = x.astype(jnp.float32)
    r = jnp.broadcast_to(removed, x.shape).astype(jnp.float32)
    degree = _neighbour_sum(jnp.ones(x.shape, jnp.float32))

    def operator(u):
        return r * (degree * u - _neighbour_sum(r * u)) + (1 - r) * u

    rhs = r * _neighbour_sum((1 - r) * x32) + (1 - r) * x32
    sol, _ = cg(operator, rhs, x0=(1 - r) * x32, tol=tol, maxiter=4 * removed.size)
    return jnp.where(removed, sol, x32)


def _percent_counts(n_pixels: int, percentages: tuple[float, ...]) -> Array:
    return jnp.asarray([int(n_pixels * p / 100) for p in percentages], jnp.int32)


class ROAD(AbstractCurveMetric):
    """Mean score over removal percentages, removed pixels imputed from neighbours.

    Rong et al., *A Consistent and Efficient Evaluation Strategy for Attribution
    Methods*, ICML 2022; as Quantus's `ROAD`: for each percentage p the first
    `int(P p / 100)` of the P pixels (attribution summed over channels; most
    relevant first with `order="morf"`, least relevant first with `"lerf"`) are
    replaced by noisy linear imputation (see [`eqx_attr.metrics.linear_imputation`][],
    plus
    Gaussian noise of std `noise`). `curve[i]` is the score at `percentages[i]`:
    with `score="accuracy"` 1.0 when the prediction is still `target` (Quantus's
    per-sample output), else the softmax probability or the raw score.

    **Arguments:** `model`, `percentages` (default 1, 3, ..., 99, as Quantus),
    `noise`, `order`, `score` (`"accuracy"` needs an integer target), `chunk_size`.

    **Call:** `metric(x, target, a, *, key)`; `key` only when `noise > 0`.

    **Returns:** the mean of the curve; lower is better for `"morf"`, higher for
    `"lerf"`. An all-zero attribution removes pixels in row-major order.

    ```python
    road = xa.metrics.ROAD(model)(x, 3, a, key=key)
    ```
    """

    model: Callable[..., Any]
    percentages: tuple[float, ...] = eqx.field(static=True)
    noise: float = eqx.field(static=True)
    order: str = eqx.field(static=True)
    score: str = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)

    def __init__(
        self,
        model: Callable[..., Any],
        percentages: tuple[int | float, ...] = tuple(range(1, 100, 2)),
        noise: float = 0.01,
        order: str = "morf",
        score: str = "accuracy",
        chunk_size: int | Literal["auto"] | None = "auto",
    ):
        percentages = tuple(float(p) for p in percentages)
        if not percentages or not all(0 <= p < 100 for p in percentages):
            raise ValueError(
                f"`percentages` must be a non-empty tuple of numbers in [0, 100), "
                f"got {percentages!r}."
            )
        check_positive_float(noise, "noise", allow_zero=True)
        check_choice(order, "order", ("morf", "lerf"))
        check_choice(score, "score", ("accuracy", *SCORES))
        check_chunk_size(chunk_size)
        self.model = model
        self.percentages = percentages
        self.noise = noise
        self.order = order
        self.score = score
        self.chunk_size = chunk_size

    def _scorer(self, x: Array, target: Target) -> Callable[[Array], Array]:
        if self.score != "accuracy":
            return scorer(self.model, x, target, self.score)
        (n,) = forward_shape(self.model, x).shape or (0,)
        if callable(target) or target is None or n == 0:
            raise ValueError(
                '`score="accuracy"` needs a model returning class scores and an '
                'integer class `target`; use `score="probability"` otherwise.'
            )
        # The objective of a one-hot prediction is 1 exactly when the prediction is
        # the target, and it checks the class index like every other method.
        objective = make_objective(target, (n,))

        def correct(z):
            hit = jax.nn.one_hot(jnp.argmax(self.model(z)), n, dtype=jnp.float32)
            return objective(hit)

        return correct

    def curve(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " n_percentages"]:
        """The score at each percentage."""
        x, a = checked_pair(x, a)
        s = spatial_map(a)
        ranks = relevance_ranks(s, self.order)
        counts = _percent_counts(s.size, self.percentages)
        if self.noise > 0:
            key = check_key(key, "ROAD with noise > 0")
            keys = jax.random.split(key, len(self.percentages))
        else:
            keys = jnp.zeros((len(self.percentages),), jnp.uint32)
        f = self._scorer(x, target)

        def one(args):
            count, k = args
            removed = ranks < count
            z = linear_imputation(x, removed)
            if self.noise > 0:
                eps = jax.random.normal(k, x.shape, jnp.float32)
                z = z + jnp.where(removed, self.noise * eps, 0.0)
            return f(z.astype(x.dtype))

        return batched_map(one, (counts, keys), self.chunk_size)

    def _summarise(self, curve: Array) -> Array:
        return jnp.mean(curve)


class ROADConfidenceChange(AbstractMetric):
    """pytorch-grad-cam's ROAD: the mean change of the score when the pixels past a
    percentile of the map are imputed, over percentiles.

    As pytorch-grad-cam's `pytorch_grad_cam/metrics/road.py`: `ROADMostRelevantFirst`
    (`order="morf"`), `ROADLeastRelevantFirst` (`"lerf"`), their `...Average` over
    `percentiles` (`AveragerAcrossThresholds`), and `ROADCombined` (`"combined"`:
    `(lerf - morf) / 2`). For percentile p, `RemoveMostRelevantFirst.__call__`
    (`metrics/perturbation_confidence.py`) removes the pixels with
    `m >= np.percentile(m, p)`, m the map (`1 - m` for LeRF), and
    `NoisyLinearImputer` fills them as
    [`linear_imputation`][eqx_attr.metrics.linear_imputation] plus N(0, noise²);
    each score is `f(imputed) - f(x)` (`PerturbationConfidenceMetric`,
    `return_diff=True`).

    **Arguments:** `model`; `percentiles` (default 10, 20, ..., 90; one value for
    the single-threshold metrics); `order`; `noise` (grad-cam: 0.01); `score`
    (`"probability"`, grad-cam's `ClassifierOutputSoftmaxTarget`, or `"logit"`,
    `ClassifierOutputTarget`); `chunk_size`.

    **Call:** `metric(x, target, cam, *, key)`: `cam` an `(H, W)` map (or shaped
    like `x`, summed over channels); `key` only when `noise > 0`.

    **Returns:** a 0-d float32 array: lower (more negative) is better for
    `"morf"`, higher for `"lerf"` and `"combined"`. `metric.curve(...)` gives the
    change per percentile (for `"combined"`: `(lerf - morf) / 2` per percentile).

    ```python
    road = xa.metrics.ROADConfidenceChange(model, order="combined")(x, 3, cam, key=key)
    ```
    """

    model: Callable[..., Any]
    percentiles: tuple[float, ...] = eqx.field(static=True)
    order: str = eqx.field(static=True)
    noise: float = eqx.field(static=True)
    score: str = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)

    def __init__(
        self,
        model: Callable[..., Any],
        percentiles: tuple[int | float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
        order: str = "combined",
        noise: float = 0.01,
        score: str = "probability",
        chunk_size: int | Literal["auto"] | None = "auto",
    ):
        percentiles = tuple(float(p) for p in percentiles)
        if not percentiles or not all(0 <= p <= 100 for p in percentiles):
            raise ValueError(
                f"`percentiles` must be a non-empty tuple of numbers in [0, 100], "
                f"got {percentiles!r}."
            )
        check_choice(order, "order", ("morf", "lerf", "combined"))
        check_positive_float(noise, "noise", allow_zero=True)
        check_choice(score, "score", SCORES)
        check_chunk_size(chunk_size)
        self.model = model
        self.percentiles = percentiles
        self.order = order
        self.noise = float(noise)
        self.score = score
        self.chunk_size = chunk_size

    def curve(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        cam: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " n_percentiles"]:
        """The score change at each percentile."""
        x, cam = checked_pair(x, cam)
        m = spatial_map(cam)
        f = scorer(self.model, x, target, self.score)
        pct = jnp.asarray(self.percentiles, jnp.float32)
        orders = ("lerf", "morf") if self.order == "combined" else (self.order,)
        removed = []
        for order in orders:
            u = 1 - m if order == "lerf" else m
            thresholds = jnp.percentile(u, pct)
            removed.append(u[None] >= thresholds[:, None, None])
        removed = jnp.concatenate(removed)
        if self.noise > 0:
            keys = jax.random.split(check_key(key, "ROAD with noise > 0"), len(removed))
        else:
            keys = jnp.zeros((len(removed),), jnp.uint32)

        def one(args):
            r, k = args
            z = linear_imputation(x, r)
            if self.noise > 0:
                eps = jax.random.normal(k, x.shape, jnp.float32)
                z = z + jnp.where(r, self.noise * eps, 0.0)
            return f(z.astype(x.dtype))

        change = batched_map(one, (removed, keys), self.chunk_size) - f(x)
        if self.order == "combined":
            n = len(self.percentiles)
            return (change[:n] - change[n:]) / 2
        return change

    def __call__(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        cam: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        return jnp.mean(self.curve(x, target, cam, key=key))
