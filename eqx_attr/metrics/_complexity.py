"""Complexity metrics: how concentrated an attribution is (Sparseness, Complexity)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractMetric, check_attribution, check_positive_float, safe_divide


def _magnitudes(a: Array, normalise: bool) -> Array:
    m = jnp.abs(check_attribution(a)).ravel()
    if normalise:
        m = safe_divide(m, jnp.max(m))
    return m


class Sparseness(AbstractMetric):
    """The Gini index of |a| over every entry (channels included).

    Chalasani et al., *Concise Explanations of Neural Networks using Adversarial
    Training*, ICML 2020; computed as Quantus's `Sparseness`: with the entries
    sorted ascending, `G = Σ_i (2i - n - 1) v_i / (n Σ_i v_i)` where
    `v = |a| + eps`. 1 means all relevance on one entry, 0 a uniform attribution.

    **Arguments:**

    - `normalise`: divide |a| by its maximum first (Quantus's `normalise=True` on a
        batch of one example). Default `False` (Quantus `normalise=False`).
    - `eps`: added to every entry, as Quantus does (`1e-7`); it keeps an all-zero
        attribution defined: its sparseness is 0.

    **Returns:** a 0-d float32 array in [0, 1).

    ```python
    s = xa.metrics.Sparseness()(a)
    ```
    """

    normalise: bool = False
    eps: float = 1e-7

    def __check_init__(self):
        check_positive_float(self.eps, "eps", allow_zero=True)

    def __call__(self, a: Float[Array, "*dims"]) -> Float[Array, ""]:
        v = jnp.sort(_magnitudes(a, self.normalise) + self.eps)
        n = v.size
        i = jnp.arange(1, n + 1, dtype=jnp.float32)
        return safe_divide(jnp.sum((2 * i - n - 1) * v), n * jnp.sum(v))


class Complexity(AbstractMetric):
    """The entropy of the distribution |a| / Σ|a| over every entry.

    Bhatt, Weller & Moura, *Evaluating and Aggregating Feature-based Model
    Explanations*, IJCAI 2020; as Quantus's `Complexity`, with 0·log 0 = 0. Low
    values mean a concentrated attribution; log(n) a uniform one.

    **Arguments:**

    - `normalise`: divide |a| by its maximum first (no effect on the value; kept
        for symmetry with Quantus).

    **Returns:** a 0-d float32 array in [0, log n]. An all-zero attribution has
    complexity 0 (no relevance anywhere, every term 0·log 0).

    ```python
    c = xa.metrics.Complexity()(a)
    ```
    """

    normalise: bool = False

    def __call__(self, a: Float[Array, "*dims"]) -> Float[Array, ""]:
        m = _magnitudes(a, self.normalise)
        p = safe_divide(m, jnp.sum(m))
        logp = jnp.log(jnp.where(p > 0, p, 1.0))
        return -jnp.sum(p * logp)
