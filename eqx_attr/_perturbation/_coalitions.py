"""Methods that perturb the features of a mask, and the model on coalitions of
features (binary keep-vectors)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from .._attribution import (
    Target,
    check_chunk_size,
)
from .._layout import (
    InputLayout,
)
from ._common import (
    AbstractPerturbation,
    Baseline,
    FeatureMask,
    as_baseline_array,
    broadcast_baseline,
    broadcast_mask,
    relabel_mask,
    scored,
)


def coalition_scores(
    model: Callable,
    x: Array,
    target: Target,
    mask: Array,
    baseline: Array,
    coalitions: Array,
    chunk_size: int | Literal["auto"] | None,
) -> Array:
    """The target's score with the features in each coalition kept, others ablated.

    `mask` and `baseline` are already broadcast to `x`; `coalitions` is `(N, F)`
    with 1 for a kept feature. Returns `(N,)` float32.
    """

    def perturbed(z):
        return jnp.where(z[mask] > 0, x, baseline)

    return scored(model, x, target, perturbed, coalitions, chunk_size)


class AbstractMaskedPerturbation(AbstractPerturbation):
    """Base of the methods whose features are the ids of a mask.

    Concrete methods hold `model`, `mask` (relabelled to `0..F-1`), `baseline`,
    `n_features` (`F`) and `chunk_size`, and set the first four with
    `_init_masked` in their `__init__`; `chunk_size` is checked here.

    **Arguments:** (of every concrete method) `model`, `mask` (integer feature
    ids broadcastable to `x`; an `(H, W)` mask covers every channel, for either
    `input_layout`), `baseline` (a number or an array broadcastable to
    `x`), `chunk_size` (evaluate at most this many perturbed inputs at once).

    **Returns:** calling the method gives an array shaped like `x`.
    """

    model: eqx.AbstractVar[Callable[..., Any]]
    mask: eqx.AbstractVar[Any]
    baseline: eqx.AbstractVar[Any]
    n_features: eqx.AbstractVar[int]
    chunk_size: eqx.AbstractVar[int | Literal["auto"] | None]
    input_layout: eqx.AbstractVar[InputLayout]

    def _init_masked(
        self,
        model: Callable[..., Any],
        mask: FeatureMask,
        baseline: Baseline,
        chunk_size: int | Literal["auto"] | None,
    ) -> None:
        """Set the shared fields (call from `__init__` only)."""
        self.model = model
        self.mask, self.n_features = relabel_mask(mask)
        self.baseline = as_baseline_array(baseline)
        self.chunk_size = chunk_size

    def __check_init__(self):
        check_chunk_size(self.chunk_size)

    def _broadcast(self, x: Array) -> tuple[Array, Array]:
        """The mask and the baseline, broadcast to `x`."""
        mask = broadcast_mask(self.mask, x, self.input_layout)
        return mask, broadcast_baseline(self.baseline, x)

    def _coalition_scores(
        self, x: Array, target: Target, coalitions: Array
    ) -> tuple[Array, Array, Array]:
        """The broadcast mask and baseline, and the target's score on each of the
        `(N, F)` `coalitions` (see `coalition_scores`)."""
        mask, b = self._broadcast(x)
        v = coalition_scores(
            self.model, x, target, mask, b, coalitions, self.chunk_size
        )
        return mask, b, v
