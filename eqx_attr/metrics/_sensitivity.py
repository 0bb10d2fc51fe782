"""Robustness of an explanation to small input changes: max-sensitivity, Lipschitz."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Target,
    batched_map,
    check_input,
    check_key,
)
from ._base import AbstractMetric, check_noise_options, safe_divide


def _explain(method: Any, x: Array, target: Target, key: PRNGKeyArray) -> Array:
    return jnp.asarray(method(x, target, key=key)).astype(jnp.float32)


def _largest_change(
    metric: SensitivityMax | LocalLipschitzEstimate,
    x: Array,
    target: Target,
    key: PRNGKeyArray,
    change: Callable[[Array, Array, Array], Array],
) -> tuple[Array, Array]:
    """`e(x)` and the largest `change(e(x + δ), e(x), x + δ)` over the metric's
    perturbations `δ`; the method gets its own key per call (split from `key`)."""
    _, method_key = jax.random.split(key)
    k0, *keys = jax.random.split(method_key, metric.n_samples + 1)
    e0 = _explain(metric.method, x, target, k0)

    def one(args):
        d, k = args
        xp = (x + d).astype(x.dtype)
        return change(_explain(metric.method, xp, target, k), e0, xp)

    deltas = (metric.perturbations(x, key), jnp.stack(keys))
    return e0, jnp.max(batched_map(one, deltas, metric.chunk_size))


class SensitivityMax(AbstractMetric):
    """The largest relative change of an explanation under small uniform noise.

    Yeh et al., *On the (In)fidelity and Sensitivity of Explanations*, NeurIPS
    2019, as Captum's `sensitivity_max`: `n_samples` perturbations `δ` uniform in
    `[-radius, radius]` per element (see
    [`eqx_attr.metrics.SensitivityMax.perturbations`][]), and
    `max_δ ‖e(x + δ) - e(x)‖_F / ‖e(x)‖_F`.

    **Arguments:**

    - `method`: the attribution method `e` (any `AbstractAttribution`).
    - `radius`, `n_samples`: the noise and how many draws.
    - `chunk_size`: explain at most this many perturbed inputs at once.

    **Call:** `metric(x, target, *, key)`. A random method gets its own key per
    sample (split from `key`).

    **Returns:** a 0-d float32 array, lower is better. When `e(x)` is all zero the
    norm is taken as 1 (as Captum), i.e. the largest `‖e(x + δ)‖`.

    ```python
    s = xa.metrics.SensitivityMax(xa.Gradients(model), radius=0.02)(x, 3, key=key)
    ```
    """

    method: AbstractAttribution
    radius: float = 0.02
    n_samples: int = eqx.field(static=True, default=16)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")

    def __check_init__(self):
        check_noise_options(self.n_samples, self.radius, "radius", self.chunk_size)

    def perturbations(
        self, x: Float[Array, "*dims"], key: PRNGKeyArray
    ) -> Float[Array, " n *dims"]:
        """The noise `δ` this metric draws for `x` and `key` (float32)."""
        noise_key, _ = jax.random.split(key)
        shape = (self.n_samples, *x.shape)
        return jax.random.uniform(
            noise_key, shape, jnp.float32, -self.radius, self.radius
        )

    def __call__(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        key = check_key(key, "SensitivityMax")
        x = check_input(x)

        def change(e, e0, xp):
            return jnp.linalg.norm((e - e0).ravel())

        e0, largest = _largest_change(self, x, target, key, change)
        norm = jnp.linalg.norm(e0.ravel())
        return largest / jnp.where(norm == 0, 1.0, norm)


class LocalLipschitzEstimate(AbstractMetric):
    """The largest ratio ‖e(x) - e(x')‖ / ‖x - x'‖ over Gaussian neighbours x'.

    Alvarez-Melis & Jaakkola, *On the Robustness of Interpretability Methods*,
    2018; as Quantus's `LocalLipschitzEstimate` (`perturb_func=gaussian_noise`):
    `x' = x + N(0, stdev²)` per element, Euclidean norms over all entries.

    **Arguments:** `method`, `n_samples`, `stdev`, `chunk_size`.

    **Call:** `metric(x, target, *, key)`.

    **Returns:** a 0-d float32 array, lower is better. An explanation that is zero
    everywhere (at `x` and its neighbours) scores 0.

    ```python
    lip = xa.metrics.LocalLipschitzEstimate(xa.Gradients(model))(x, 3, key=key)
    ```
    """

    method: AbstractAttribution
    stdev: float = 0.1
    n_samples: int = eqx.field(static=True, default=16)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")

    def __check_init__(self):
        check_noise_options(self.n_samples, self.stdev, "stdev", self.chunk_size)

    def perturbations(
        self, x: Float[Array, "*dims"], key: PRNGKeyArray
    ) -> Float[Array, " n *dims"]:
        """The noise this metric adds to `x` for `key` (float32)."""
        noise_key, _ = jax.random.split(key)
        noise = jax.random.normal(noise_key, (self.n_samples, *x.shape), jnp.float32)
        return self.stdev * noise

    def __call__(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        key = check_key(key, "LocalLipschitzEstimate")
        x = check_input(x)

        def change(e, e0, xp):
            step = (xp.astype(jnp.float32) - x.astype(jnp.float32)).ravel()
            return safe_divide(jnp.linalg.norm((e - e0).ravel()), jnp.linalg.norm(step))

        return _largest_change(self, x, target, key, change)[1]
