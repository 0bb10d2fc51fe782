"""Infidelity (Yeh et al., NeurIPS 2019), as Captum's `infidelity`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    Target,
    batched_map,
    check_key,
)
from ._base import (
    AbstractMetric,
    check_noise_options,
    checked_pair,
    safe_divide,
    scorer,
)


class Infidelity(AbstractMetric):
    """Expected squared error between `a · I` and the score drop `f(x) - f(x - I)`.

    Yeh et al., *On the (In)fidelity and Sensitivity of Explanations*, NeurIPS
    2019, with Captum's definition: `n_samples` perturbations `I ~ N(0, stdev²)`
    per element (see [`eqx_attr.metrics.Infidelity.perturbations`][]), the raw target
    score, and
    the mean over samples of `(Σ a ⊙ I - (f_t(x) - f_t(x - I)))²`. With
    `normalize=True` the attribution is first rescaled by the least-squares
    factor β (Captum's `normalize=True`).

    **Arguments:** `model`, `n_samples`, `stdev`, `normalize`, `chunk_size` (at
    most this many perturbed inputs at once).

    **Call:** `metric(x, target, a, *, key)`; `a` shaped like `x` (an `(H, W)` map
    is broadcast over channels).

    **Returns:** a 0-d float32 array, lower is better. An all-zero attribution
    scores the mean squared score drop.

    ```python
    inf = xa.metrics.Infidelity(model, n_samples=64, stdev=0.1)(x, 3, a, key=key)
    ```
    """

    model: Callable[..., Any]
    n_samples: int = eqx.field(static=True, default=64)
    stdev: float = 0.1
    normalize: bool = eqx.field(static=True, default=False)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")

    def __check_init__(self):
        check_noise_options(self.n_samples, self.stdev, "stdev", self.chunk_size)

    def perturbations(
        self, x: Float[Array, "*dims"], key: PRNGKeyArray
    ) -> Float[Array, " n *dims"]:
        """The perturbations `I` this metric draws for `x` and `key` (float32)."""
        noise = jax.random.normal(key, (self.n_samples, *x.shape), jnp.float32)
        return self.stdev * noise

    def __call__(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        key = check_key(key, "Infidelity")
        x, a = checked_pair(x, a)
        a = jnp.broadcast_to(a, x.shape)
        f = scorer(self.model, x, target, "logit")
        fx = f(x)

        def one(i):
            xi = (x - i).astype(x.dtype)
            if jnp.finfo(x.dtype).bits < 32:
                # The perturbation a half-precision model sees: `x - i` rounded
                # (by 0.4% of |x| in bfloat16), taken back in float32.
                i = x.astype(jnp.float32) - xi.astype(jnp.float32)
            return jnp.sum(
                a.astype(jnp.promote_types(a.dtype, jnp.float32)) * i
            ), fx - f(xi)

        dots, drops = batched_map(one, self.perturbations(x, key), self.chunk_size)
        if self.normalize:
            beta = safe_divide(jnp.sum(dots * drops), jnp.sum(dots * dots))
            dots = beta * dots
        return jnp.mean((dots - drops) ** 2)
