"""Pixel flipping and monotonicity: curves over features taken in attribution order.

A feature is one element of the input (Quantus's convention): the attribution is
broadcast to the input's shape and ranked, ties in row-major order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import Target, check_choice, check_positive_int
from ..baselines import AbstractBaseline, as_baseline, draw_baselines
from ._base import (
    SCORES,
    AbstractCurveMetric,
    check_chunk_size,
    checked_pair,
    element_ranks,
    masked_curve,
    scorer,
    trapezoid,
)


def _counts(n_features: int, features_in_step: int) -> Array:
    """Features taken after each step: fis, 2 fis, ..., n (ceil(n / fis) steps)."""
    steps = math.ceil(n_features / features_in_step)
    counts = np.minimum(np.arange(1, steps + 1) * features_in_step, n_features)
    return jnp.asarray(counts.astype(np.int32))


def _flipping_curve(
    metric: PixelFlipping | Monotonicity,
    x: Array,
    target: Target,
    a: Array,
    key: PRNGKeyArray | None,
    restore: bool,
) -> Array:
    """The score after each step: the most relevant features replaced by the
    baseline or, with `restore=True`, the least relevant restored from `x`."""
    f = scorer(metric.model, x, target, metric.score)
    counts = _counts(x.size, metric.features_in_step)
    bs = draw_baselines(metric.baseline, x, key)
    ranks = element_ranks(a, x, ascending=restore)
    return masked_curve(f, x, bs, ranks, counts, metric.chunk_size, insert=restore)


def _check(fis: Any, score: str, chunk_size: Any) -> None:
    check_positive_int(fis, "features_in_step")
    check_choice(score, "score", SCORES)
    check_chunk_size(chunk_size)


class PixelFlipping(AbstractCurveMetric):
    """Area under the pixel-flipping curve: the score as the most relevant
    features are replaced by the baseline, `features_in_step` at a time.

    Bach et al., *On Pixel-Wise Explanations for Non-Linear Classifier Decisions
    by Layer-Wise Relevance Propagation*, PLoS ONE 2015; as Quantus's
    `PixelFlipping`: `curve[k]` is the target's score after the first
    `(k + 1) * features_in_step` features (elements of `x`, largest attribution
    first) are replaced, k = 0..ceil(n / features_in_step) - 1.

    **Arguments:** `model`; `features_in_step`; `baseline` (a number, array or
    `eqx_attr.baselines` module; Quantus's `"black"` is `x.min()`); `score`
    (`"probability"`, Quantus's `softmax=True`, or `"logit"`); `chunk_size`.

    **Call:** `metric(x, target, a, *, key=None)`; `metric.curve(...)` gives the
    curve (Quantus's per-sample output).

    **Returns:** the trapezoid area of the curve on [0, 1] (Quantus's
    `return_auc_per_sample=True` value divided by `len(curve) - 1`); lower is
    better. An all-zero attribution flips in row-major order.

    ```python
    auc = xa.metrics.PixelFlipping(model, features_in_step=28)(x, 3, a)
    ```
    """

    model: Callable[..., Any]
    baseline: AbstractBaseline
    features_in_step: int = eqx.field(static=True)
    score: str = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)

    def __init__(
        self,
        model: Callable[..., Any],
        features_in_step: int = 1,
        baseline: Any = 0.0,
        score: str = "probability",
        chunk_size: int | Literal["auto"] | None = "auto",
    ):
        _check(features_in_step, score, chunk_size)
        self.model = model
        self.baseline = as_baseline(baseline)
        self.features_in_step = features_in_step
        self.score = score
        self.chunk_size = chunk_size

    def curve(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " steps"]:
        """The target's score after each step."""
        x, a = checked_pair(x, a)
        return _flipping_curve(self, x, target, a, key, restore=False)

    def _summarise(self, curve: Array) -> Array:
        return curve[0] if curve.shape[0] == 1 else trapezoid(curve)


class Monotonicity(AbstractCurveMetric):
    """1.0 when adding features to the baseline, least relevant first, never lowers
    the target's score; else 0.0.

    Arya et al., *One Explanation Does Not Fit All*, 2019 (Quantus's
    `Monotonicity`): start from the baseline image and restore the features of
    `x` in increasing order of |a| (`abs=True`, as Quantus), `features_in_step`
    at a time; the curve must be non-decreasing. (Quantus 0.6 replaces features
    of the baseline image by the baseline value, so its curve is constant and the
    metric always 1; this module restores features of `x`, as the paper does.)

    **Arguments:** `model`, `features_in_step`, `baseline`, `score`, `abs`,
    `chunk_size`.

    **Returns:** a 0-d float32 array, 1.0 or 0.0. An all-zero attribution restores
    features in row-major order.

    ```python
    mono = xa.metrics.Monotonicity(model, features_in_step=28)(x, 3, a)
    ```
    """

    model: Callable[..., Any]
    baseline: AbstractBaseline
    features_in_step: int = eqx.field(static=True)
    score: str = eqx.field(static=True)
    abs: bool = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)

    def __init__(
        self,
        model: Callable[..., Any],
        features_in_step: int = 1,
        baseline: Any = 0.0,
        score: str = "probability",
        abs: bool = True,
        chunk_size: int | Literal["auto"] | None = "auto",
    ):
        _check(features_in_step, score, chunk_size)
        self.model = model
        self.baseline = as_baseline(baseline)
        self.features_in_step = features_in_step
        self.score = score
        self.abs = abs
        self.chunk_size = chunk_size

    def curve(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " steps"]:
        """The target's score after each step of restoring features."""
        x, a = checked_pair(x, a)
        a = jnp.abs(a) if self.abs else a
        return _flipping_curve(self, x, target, a, key, restore=True)

    def _summarise(self, curve: Array) -> Array:
        return jnp.all(jnp.diff(curve) >= 0).astype(jnp.float32)
