"""Region perturbation (Samek et al., 2017): remove patches in attribution order."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
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
    masked_curve,
    relevance_ranks,
    scorer,
    spatial_map,
)


def patch_ids(h: int, w: int, patch_size: int) -> tuple[np.ndarray, int]:
    """Patch index of every pixel of an `(h, w)` image, and the number of patches.

    As Quantus: the image is padded to a multiple of `patch_size` (floor of half the
    padding before, ceil after) and cut into non-overlapping square patches.
    """

    def axis(n):
        pad = (-n) % patch_size
        return (np.arange(n) + pad // 2) // patch_size, math.ceil(n / patch_size)

    rows, n_h = axis(h)
    cols, n_w = axis(w)
    return (rows[:, None] * n_w + cols[None, :]).astype(np.int32), n_h * n_w


class RegionPerturbation(AbstractCurveMetric):
    """Mean score drop as square patches are replaced, most relevant patch first.

    Samek et al., *Evaluating the Visualization of What a Deep Neural Network Has
    Learned*, IEEE TNNLS 2017; as Quantus's `RegionPerturbation`: patches of
    `patch_size` (padded as Quantus), ranked by their summed attribution
    (`order="morf"`, most relevant first, or `"lerf"`); `curve[k]` is
    `f(x) - f(x with the first k + 1 patches replaced)` for the first
    `regions_evaluation` patches (Quantus's per-sample output).

    **Arguments:** `model`, `patch_size`, `regions_evaluation`, `order`,
    `baseline`, `score` (`"probability"` = Quantus `softmax=True`), `chunk_size`.

    **Returns:** the mean of the curve (the AOPC of Samek et al.), higher is
    better for `"morf"`. An all-zero attribution takes patches row-major.

    ```python
    aopc = xa.metrics.RegionPerturbation(model, patch_size=4)(x, 3, a)
    ```
    """

    model: Callable[..., Any]
    baseline: AbstractBaseline
    patch_size: int = eqx.field(static=True)
    regions_evaluation: int = eqx.field(static=True)
    order: str = eqx.field(static=True)
    score: str = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)

    def __init__(
        self,
        model: Callable[..., Any],
        patch_size: int = 8,
        regions_evaluation: int = 100,
        order: str = "morf",
        baseline: Any = 0.0,
        score: str = "probability",
        chunk_size: int | Literal["auto"] | None = "auto",
    ):
        check_positive_int(patch_size, "patch_size")
        check_positive_int(regions_evaluation, "regions_evaluation")
        check_choice(order, "order", ("morf", "lerf"))
        check_choice(score, "score", SCORES)
        check_chunk_size(chunk_size)
        self.model = model
        self.baseline = as_baseline(baseline)
        self.patch_size = patch_size
        self.regions_evaluation = regions_evaluation
        self.order = order
        self.score = score
        self.chunk_size = chunk_size

    def curve(
        self,
        x: Float[Array, "c h w"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " regions"]:
        """The score drop after each removed patch."""
        x, a = checked_pair(x, a)
        s = spatial_map(a)
        h, w = s.shape
        ids, n_patches = patch_ids(h, w, self.patch_size)
        sums = jax.ops.segment_sum(s.ravel(), ids.ravel(), n_patches)
        patch_rank = relevance_ranks(sums, self.order)
        ranks = patch_rank[jnp.asarray(ids)]
        n = min(self.regions_evaluation, n_patches)
        counts = jnp.arange(1, n + 1, dtype=jnp.int32)
        f = scorer(self.model, x, target, self.score)
        bs = draw_baselines(self.baseline, x, key)
        return f(x) - masked_curve(f, x, bs, ranks, counts, self.chunk_size)

    def _summarise(self, curve: Array) -> Array:
        return jnp.mean(curve)
