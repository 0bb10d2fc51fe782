"""Batch agreement of explanations and predictions: Sufficiency and Consistency.

Both compare every example of a batch with the others (Dasgupta, Frost & Moshkovitz,
*Framework for Evaluating Faithfulness of Local Explanations*, ICML 2022), as
Quantus 0.6's `Sufficiency` and `Consistency`: a batch in, one score per example out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._attribution import check_input, check_positive_int
from ._base import AbstractMetric, check_attribution, check_positive_float


def _checked_batch(xs: Any, attrs: Any) -> tuple[Array, Array]:
    xs = check_input(xs, "xs")
    attrs = check_input(attrs, "attrs").astype(jnp.float32)
    if xs.ndim < 2 or attrs.ndim < 2 or xs.shape[0] != attrs.shape[0]:
        raise ValueError(
            f"`xs` {xs.shape} and `attrs` {attrs.shape} must be batches of the same "
            "size (a leading batch axis); these metrics compare examples."
        )
    if xs.shape[0] < 2:
        raise ValueError("`xs` must hold at least two examples to compare.")
    check_attribution(attrs[0], xs[0], "attrs[0]")
    return xs, attrs


def _predicted(model: Callable, xs: Array) -> Array:
    return jnp.argmax(jax.vmap(model)(xs), axis=-1)


def _off_diagonal(n: int) -> Array:
    return ~jnp.eye(n, dtype=bool)


class Sufficiency(AbstractMetric):
    """The share of the examples with a similar explanation that get the same
    prediction.

    As Quantus's `Sufficiency` (`faithfulness/sufficiency.py`): the standardised
    Euclidean distances (SciPy's `seuclidean`, each feature scaled by its variance
    over the batch) between the flattened attributions are divided by their
    maximum; two examples' explanations are similar when that is at most
    `threshold`. For example i the score is the share of its similar others j ≠ i
    whose predicted class equals i's.

    **Arguments:**

    - `model`: maps one example to class scores; predictions are the argmax.
    - `threshold`: the normalised distance under which explanations are similar.
    - `abs`: compare |a| (default `True`, as Quantus).

    **Call:** `metric(xs, attrs)` on a batch `(B, ...)` of inputs and their
    attributions (shaped like `xs`, or `(B, H, W)`), B >= 2.

    **Returns:** a `(B,)` float32 array in [0, 1]; 0 for an example with no similar
    other. A feature constant over the batch is left out of the distance (SciPy
    would divide by its zero variance).

    ```python
    s = xa.metrics.Sufficiency(model, threshold=0.6)(xs, attrs)
    ```
    """

    model: Callable[..., Any]
    threshold: float = eqx.field(static=True, default=0.6)
    abs: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_positive_float(self.threshold, "threshold", allow_zero=True)

    def __call__(
        self, xs: Float[Array, "b ..."], attrs: Float[Array, "..."]
    ) -> Float[Array, " b"]:
        xs, attrs = _checked_batch(xs, attrs)
        flat = attrs.reshape(attrs.shape[0], -1)
        if self.abs:
            flat = jnp.abs(flat)
        n = flat.shape[0]
        # SciPy's cdist(X, X) takes the variance of X stacked twice (ddof=1); the
        # constant factor cancels in the normalisation, kept for equal distances.
        dev = flat - jnp.mean(flat, axis=0, keepdims=True)
        var = 2 * jnp.sum(dev * dev, axis=0) / (2 * n - 1)
        inv = jnp.where(var > 0, 1 / jnp.where(var > 0, var, 1.0), 0.0)
        diff = flat[:, None] - flat[None]
        dist = jnp.sqrt(jnp.sum(diff * diff * inv[None, None], axis=-1))
        top = jnp.max(jnp.abs(dist))
        dist = jnp.where(top > 0, dist / jnp.where(top > 0, top, 1.0), dist)
        similar = (dist <= self.threshold) & _off_diagonal(n)
        pred = _predicted(self.model, xs)
        same = pred[None] == pred[:, None]
        count = jnp.sum(similar, axis=-1)
        hits = jnp.sum(similar & same, axis=-1)
        return jnp.where(count > 0, hits / jnp.maximum(count, 1), 0.0).astype(
            jnp.float32
        )


def first_signs(a: Float[Array, " n"], n: int = 5) -> Array:
    """Quantus's `top_n_sign`: the signs of the first `n` entries of flat `a`.

    **Arguments:** `a` a flat attribution; `n`.

    **Returns:** the `(n,)` signs, the explanation's discrete label.
    """
    return jnp.sign(a[:n])


class Consistency(AbstractMetric):
    """The share of the examples with the same discretised explanation that get the
    same prediction.

    As Quantus's `Consistency` (`robustness/consistency.py`): each flattened
    attribution is discretised (`discretise`, default
    [`first_signs`][eqx_attr.metrics.first_signs], Quantus's `top_n_sign`: the signs
    of the FIRST `n` entries, not of the largest); for example i the score is
    `Σ_{j≠i} [label_j = label_i][pred_j = pred_i] / (Σ_{j≠i} [label_j = label_i] +
    1e-9)`.

    **Arguments:**

    - `model`: maps one example to class scores; predictions are the argmax.
    - `n`: the entries `first_signs` looks at (Quantus: 5).
    - `discretise`: a JAX function from a flat attribution to an array label (equal
        labels are equal arrays), replacing `first_signs`.
    - `abs`: take |a| first (default `True`, as Quantus).

    **Call:** `metric(xs, attrs)` on a batch `(B, ...)`, B >= 2.

    **Returns:** a `(B,)` float32 array in [0, 1]; 0 for an example whose label no
    other example shares.

    ```python
    c = xa.metrics.Consistency(model, abs=False)(xs, attrs)
    ```
    """

    model: Callable[..., Any]
    n: int = eqx.field(static=True, default=5)
    discretise: Callable[[Array], Array] | None = eqx.field(static=True, default=None)
    abs: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_positive_int(self.n, "n")
        if self.discretise is not None and not callable(self.discretise):
            raise TypeError(f"`discretise` must be a function, got {self.discretise}.")

    def __call__(
        self, xs: Float[Array, "b ..."], attrs: Float[Array, "..."]
    ) -> Float[Array, " b"]:
        xs, attrs = _checked_batch(xs, attrs)
        flat = attrs.reshape(attrs.shape[0], -1)
        if self.abs:
            flat = jnp.abs(flat)
        if self.discretise is None:
            labels = jax.vmap(lambda a: first_signs(a, self.n))(flat)
        else:
            labels = jax.vmap(self.discretise)(flat)
        labels = labels.reshape(labels.shape[0], -1)
        off = _off_diagonal(flat.shape[0])
        same_label = jnp.all(labels[None] == labels[:, None], axis=-1) & off
        pred = _predicted(self.model, xs)
        same_pred = (pred[None] == pred[:, None]) & off
        num = jnp.sum(same_label & same_pred, axis=-1)
        return (num / (jnp.sum(same_label, axis=-1) + 1e-9)).astype(jnp.float32)
