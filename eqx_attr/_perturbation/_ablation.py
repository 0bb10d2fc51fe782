"""Feature ablation: replace one feature at a time by the baseline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    Target,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import PERTURBATION, MethodEntry
from ._coalitions import AbstractMaskedPerturbation
from ._common import Baseline, FeatureMask, score, scored
from ._defaults import baseline_or_zero, default_mask

__all__ = ["FeatureAblation"]


class FeatureAblation(AbstractMaskedPerturbation):
    """Feature ablation, with Captum's definition.

    Each feature (the elements sharing an id in `mask`) is replaced by the baseline
    in turn; every element of the feature carries the drop of the target's score,
    `f(x) - f(x with the feature ablated)`. One forward pass per feature, all in one
    vectorised batch shared across targets.

    **Arguments:**

    - `model`: maps one example to a vector of scores.
    - `mask`: integer feature ids, broadcastable to `x` (e.g. `xa.masks.grid`).
        Ids need not be contiguous; only which elements share an id matters.
    - `baseline`: a number or an array broadcastable to `x`. Default 0.0.
    - `chunk_size`: evaluate at most this many features at once (`None`: all;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][]).

    **Returns:** an array shaped like `x`.

    ```python
    mask = xa.masks.grid((28, 28), 7)            # 16 features of 7x7 pixels
    a = xa.FeatureAblation(model, mask=mask)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    mask: Any
    baseline: Any
    n_features: int = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        mask: FeatureMask,
        baseline: Baseline = 0.0,
        chunk_size: int | Literal["auto"] | None = "auto",
        *,
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
        self._init_masked(model, mask, baseline, chunk_size)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "*dims"]:
        mask, b = self._broadcast(x)
        ids = jnp.arange(self.n_features, dtype=jnp.int32)
        values = scored(
            self.model,
            x,
            target,
            lambda i: jnp.where(mask == i, b, x),
            ids,
            self.chunk_size,
        )
        drops = score(self.model, x, target) - values
        return drops[mask].astype(x.dtype)


ROWS = (
    MethodEntry(
        "feature_ablation",
        FeatureAblation,
        "perturbation",
        "Feature ablation: score drop per masked feature",
        lambda c: FeatureAblation(
            c.model,
            default_mask(c),
            baseline_or_zero(c),
            c.option("chunk_size", "auto"),
        ),
        aliases=("ablation",),
        needs=frozenset({"mask"}),
        differentiable=PERTURBATION,
        benchmark=("bench_perturbation.py", "Captum FeatureAblation"),
    ),
)
