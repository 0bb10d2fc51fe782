"""Deletion and Insertion (Petsiuk, Das & Saenko, RISE, BMVC 2018)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

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
    descending_ranks,
    masked_curve,
    scorer,
    spatial_map,
    trapezoid,
)


def step_counts(n_pixels: int, n_steps: int) -> np.ndarray:
    """`round(k * P / n_steps)` for k = 0..n_steps (static, computed in NumPy)."""
    return np.round(np.arange(n_steps + 1) * n_pixels / n_steps).astype(np.int32)


class _AbstractDeletionInsertion(AbstractCurveMetric):
    """Shared curve of Deletion and Insertion; `_insert` tells them apart."""

    model: eqx.AbstractVar[Callable[..., Any]]
    baseline: eqx.AbstractVar[AbstractBaseline]
    n_steps: eqx.AbstractVar[int]
    score: eqx.AbstractVar[str]
    chunk_size: eqx.AbstractVar[int | Literal["auto"] | None]
    _insert: ClassVar[bool]

    def __init__(
        self,
        model: Callable[..., Any],
        n_steps: int = 20,
        baseline: Any = 0.0,
        score: str = "probability",
        chunk_size: int | Literal["auto"] | None = "auto",
    ):
        self.model = model
        self.baseline = as_baseline(baseline)
        self.n_steps = n_steps
        self.score = score
        self.chunk_size = chunk_size

    def __check_init__(self):
        check_positive_int(self.n_steps, "n_steps")
        check_choice(self.score, "score", SCORES)
        check_chunk_size(self.chunk_size)

    def curve(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " n_steps_plus_1"]:
        """The score at steps k = 0..n_steps, averaged over the baseline's draws."""
        x, a = checked_pair(x, a)
        f = scorer(self.model, x, target, self.score)
        ranks = descending_ranks(spatial_map(a))
        counts = jnp.asarray(step_counts(ranks.size, self.n_steps))
        bs = draw_baselines(self.baseline, x, key)
        return masked_curve(f, x, bs, ranks, counts, self.chunk_size, self._insert)

    def _summarise(self, curve: Array) -> Array:
        return trapezoid(curve)


_DOC_ARGS = """
    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `n_steps`: the curve has `n_steps + 1` points.
    - `baseline`: what a removed pixel becomes (a number, an array, or a module of
        `eqx_attr.baselines`; a random one needs `key`, and the curve is averaged
        over its draws).
    - `score`: `"probability"` (softmax of the target, default) or `"logit"`.
    - `chunk_size`: evaluate at most this many steps at once (bounded memory).

    **Call:** `metric(x, target, a, *, key=None)` with `a` shaped like `x` or an
    `(H, W)` map; pixels are spatial positions (attributions summed over channels),
    ordered largest first, ties in row-major order. Use `metric.curve(...)` for the
    curve itself.

    **Returns:** the trapezoid area under the curve on [0, 1], a 0-d float32 array.
    An all-zero attribution orders the pixels row-major, a defined (if
    uninformative) curve.
"""


class Deletion(_AbstractDeletionInsertion):
    __doc__ = (
        """Area under the deletion curve: remove the most relevant pixels first.

    Step k replaces the first `round(k P / n_steps)` of the P pixels by the
    baseline; the lower the area, the more faithful the attribution.
    """
        + _DOC_ARGS
        + """
    ```python
    auc = xa.metrics.Deletion(model, n_steps=20, baseline=0.0)(x, 3, a)
    ```
    """
    )

    model: Callable[..., Any]
    baseline: AbstractBaseline
    n_steps: int = eqx.field(static=True)
    score: str = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    _insert: ClassVar[bool] = False


class Insertion(_AbstractDeletionInsertion):
    __doc__ = (
        """Area under the insertion curve: reveal the most relevant pixels first.

    Step k starts from the baseline and restores the first `round(k P / n_steps)`
    pixels of `x`; the higher the area, the more faithful the attribution.
    """
        + _DOC_ARGS
        + """
    ```python
    auc = xa.metrics.Insertion(model, baseline=xa.baselines.Blur(4.0))(x, 3, a)
    ```
    """
    )

    model: Callable[..., Any]
    baseline: AbstractBaseline
    n_steps: int = eqx.field(static=True)
    score: str = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    _insert: ClassVar[bool] = True
