"""Efficient MPRT: the explanation's complexity before and after full randomisation.

Hedström et al., *Sanity Checks Revisited: An Exploration to Repair the Model
Parameter Randomisation Test*, XAI in Action workshop, NeurIPS 2023; as Quantus
0.6's `EfficientMPRT` (`randomisation/efficient_mprt.py`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Target,
    check_input,
    check_key,
    check_positive_int,
)
from ._base import AbstractMetric
from ._randomisation import _layer_count, randomise_layers


def discrete_entropy(a: Float[Array, "..."], n_bins: int = 100) -> Float[Array, ""]:
    """Quantus's `discrete_entropy`: the Shannon entropy (nats) of the histogram of
    `a`'s values in `n_bins` equal bins over [min a, max a] (`np.histogram`).

    **Arguments:** `a` any array; `n_bins`.

    **Returns:** a 0-d float32 array.
    """
    counts, _ = jnp.histogram(a.ravel().astype(jnp.float32), bins=n_bins)
    p = counts / jnp.sum(counts)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))


class EfficientMPRT(AbstractMetric):
    """Relative rise of the explanation's entropy once every layer is randomised.

    As Quantus's `EfficientMPRT` (defaults `skip_layers=True`, `n_bins` fixed, no
    rule): with `H` the [`discrete_entropy`][eqx_attr.metrics.discrete_entropy] of
    the explanation, the score is `(H(e_random) - H(e)) / H(e)`, `e_random` the
    explanation once all the linear and convolutional layers are redrawn (as
    [`MPRT`][eqx_attr.metrics.MPRT]'s full cascade: N(0, σ²) with each array's σ;
    Quantus calls torch's `reset_parameters` instead). A method that follows the model
    turns noisier, so higher is better.

    **Arguments:**

    - `method`: the attribution method (it holds the model).
    - `n_bins`: the histogram's bins (Quantus: 100 when no rule is given).
    - `abs`: take |e| first (default `False`, as Quantus).

    **Call:** `metric(x, target, *, key)`; `key` draws the new weights (and keys a
    random method). Share one key across a batch for one randomised model.

    **Returns:** a 0-d float32 array; inf or NaN when the original explanation's
    entropy is 0 (a constant explanation), as Quantus.

    ```python
    s = xa.metrics.EfficientMPRT(xa.Gradients(model))(x, 3, key=key)
    ```
    """

    method: AbstractAttribution
    n_bins: int = eqx.field(static=True, default=100)
    abs: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_positive_int(self.n_bins, "n_bins")
        if _layer_count(self.method) == 0:
            raise ValueError(
                "EfficientMPRT found no eqx.nn.Linear or eqx.nn.Conv layer in the "
                "method's model; it randomises those layers."
            )

    def explanations(
        self, x: Float[Array, "*dims"], target: Target, *, key: PRNGKeyArray | None
    ) -> tuple[Array, Array]:
        """The explanations of the original and of the fully randomised model."""
        key = check_key(key, "EfficientMPRT")
        x = check_input(x)
        weight_key, method_key = jax.random.split(key)
        n = _layer_count(self.method)
        randomised = randomise_layers(self.method, tuple(range(n)), weight_key)
        a0 = self.method(x, target, key=method_key)
        a1 = randomised(x, target, key=method_key)
        if self.abs:
            a0, a1 = jnp.abs(a0), jnp.abs(a1)
        return a0, a1

    def __call__(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        a0, a1 = self.explanations(x, target, key=key)
        h0 = discrete_entropy(a0, self.n_bins)
        h1 = discrete_entropy(a1, self.n_bins)
        return ((h1 - h0) / h0).astype(jnp.float32)
