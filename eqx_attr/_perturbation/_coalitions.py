"""Evaluating the model on coalitions of features (binary keep-vectors)."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array

from .._attribution import Target
from ._common import scored


def coalition_scores(
    model: Callable,
    x: Array,
    target: Target,
    mask: Array,
    baseline: Array,
    coalitions: Array,
    chunk_size: int | None,
) -> Array:
    """The target's score with the features in each coalition kept, others ablated.

    `mask` and `baseline` are already broadcast to `x`; `coalitions` is `(N, F)`
    with 1 for a kept feature. Returns `(N,)` float32.
    """

    def perturbed(z):
        return jnp.where(z[mask] > 0, x, baseline)

    return scored(model, x, target, perturbed, coalitions, chunk_size)
