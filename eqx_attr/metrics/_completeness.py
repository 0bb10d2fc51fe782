"""Completeness: how far an attribution's sum is from `f(x) - f(baseline)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import Attribution, Image, Target, check_input, scalar_function
from ..baselines import AbstractBaseline, Zeros, as_baseline, draw_baselines


class Completeness(eqx.Module):
    """The completeness residual `|sum(a) - (f_t(x) - f_t(b))|` on the raw score.

    Integrated Gradients, DeepLIFT and LRP (with `R = f_t(x)`) satisfy
    completeness: their attributions sum to the change of the target's score
    between the baseline and the input. This metric measures how far an
    attribution is from it. A baseline with several draws (e.g. noise) uses the
    mean score over its draws, as [`eqx_attr.IntegratedGradients`][] does.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `baseline`: `None` or a number, an array broadcastable to `x`, or a module
        from `eqx_attr.baselines` (default `0.0`).
    - `relative`: divide by `|f_t(x) - f_t(b)|` (default `False`).

    **Returns:** a 0-d float32 array (`__call__(x, target, a, *, key=None)`).

    ```python
    a = xa.IntegratedGradients(model, n_steps=32)(x, target=3)
    err = xa.metrics.Completeness(model, baseline=0.0)(x, 3, a)
    ```
    """

    model: Callable[..., Any]
    baseline: AbstractBaseline = eqx.field(default_factory=Zeros, converter=as_baseline)
    relative: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if not isinstance(self.relative, bool):
            raise TypeError(f"`relative` must be True or False, got {self.relative!r}.")

    def __call__(
        self,
        x: Image,
        target: Target,
        attribution: Attribution,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        x = check_input(x)
        if jnp.shape(attribution) != x.shape:
            raise ValueError(
                f"`attribution` has shape {jnp.shape(attribution)}; Completeness "
                f"needs an attribution shaped like `x`, {x.shape}."
            )
        f = scalar_function(self.model, x, target)
        b = draw_baselines(self.baseline, x, key)
        gap = (f(x) - jnp.mean(jax.vmap(f)(b))).astype(jnp.float32)
        total = jnp.sum(jnp.asarray(attribution).astype(jnp.float32))
        residual = jnp.abs(total - gap)
        if self.relative:
            return residual / jnp.maximum(jnp.abs(gap), jnp.finfo(jnp.float32).tiny)
        return residual
