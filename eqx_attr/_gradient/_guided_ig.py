"""Guided IG: integrated gradients along an adaptive, gradient-guided path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    AbstractCompiledAttribution,
    Target,
    check_positive_int,
    scalar_function,
)
from .._engine._fast_derivatives import loop_body
from .._method_entry import MethodEntry
from .._perturbation._common import Baseline, as_baseline_array, broadcast_baseline

__all__ = ["GuidedIG"]

# PAIR compares L1 distances in float64 with a 1e-9 tolerance; float32 rounding
# needs a looser relative one.
_REL_TOL = 1e-6


def _guided_step(x, g, xi, xb, alpha, max_dist, l1_total, l1_target, fraction):
    """Move `x` from path position `alpha - 1/steps` to `alpha` (one outer step).

    Features with the smallest |gradient| move first, towards their position at
    `alpha + max_dist` on the straight line, never lagging behind `alpha -
    max_dist`, until the L1 distance to the input reaches `l1_target`. Returns
    the new `x` and this step's attribution `sum (x_new - x_old) * g`.
    """
    diff = xi - xb
    alpha_min = jnp.maximum(alpha - max_dist, 0.0)
    alpha_max = jnp.minimum(alpha + max_dist, 1.0)
    x_min = xb + diff * alpha_min
    x_max = xb + diff * alpha_max
    flat_g = jnp.abs(g).ravel()
    k = int(np.floor(fraction * (flat_g.size - 1)))  # np.quantile 'lower'
    tol = _REL_TOL * l1_total

    def body(state):
        x, attr, _, it = state
        x_old = x
        safe = jnp.where(diff != 0, diff, 1.0)
        x_alpha = jnp.where(diff != 0, (x - xb) / safe, alpha_max)
        x = jnp.where(x_alpha < alpha_min, x_min, x)
        l1_current = jnp.sum(jnp.abs(x - xi))
        reached = jnp.abs(l1_current - l1_target) <= tol
        g_sel = jnp.where(x == x_max, jnp.inf, jnp.abs(g))
        threshold = jnp.sort(g_sel.ravel())[k]
        s = (g_sel <= threshold) & (g_sel != jnp.inf)
        l1_s = jnp.sum(jnp.abs(x - x_max) * s)
        gamma = jnp.where(l1_s > 0, (l1_current - l1_target) / l1_s, jnp.inf)
        moved = jnp.where(gamma > 1.0, x_max, x + gamma * (x_max - x))
        x = jnp.where(s & ~reached, moved, x)
        attr = attr + (x - x_old) * g
        # In exact arithmetic a step with gamma <= 1 lands on the target.
        done = reached | (gamma <= 1.0) | (l1_s <= 0)
        return x, attr, done, it + 1

    def cond(state):
        return ~state[2] & (state[3] < x.size + 2)

    init = (x, jnp.zeros_like(x), jnp.array(False), jnp.array(0))
    x, attr, _, _ = jax.lax.while_loop(cond, body, init)
    return x, attr


class GuidedIG(AbstractCompiledAttribution):
    """Guided IG (Kapishnikov et al., CVPR 2021), as PAIR's `saliency.core.GuidedIG`.

    Starting from the baseline, at each of `steps` steps the features with the
    smallest absolute gradient (a `fraction` of them) move towards the input
    first, so the path avoids regions of large, noisy gradients; no feature may
    deviate from the straight line by more than `max_dist` (relative L1; 0 gives
    plain IG with a left Riemann sum). The attribution sums
    `(x_new - x_old) * grad f(x_old)` along the path, so it adds up to about
    `f(x) - f(baseline)`. Sequential by nature: one gradient per step, under
    `jax.lax.scan`.

    **Arguments:**

    - `model`: maps one example to a vector of scores.
    - `steps`: number of path steps (static). Default 200.
    - `fraction`: share of features moved per step (static). Default 0.25.
    - `max_dist`: maximum relative deviation from the straight line (static).
        Default 0.02.
    - `baseline`: a number or an array broadcastable to `x`. Default 0.0.

    **Returns:** an array shaped like `x`.

    ```python
    a = xa.GuidedIG(model, steps=100)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    steps: int = eqx.field(static=True)
    fraction: float = eqx.field(static=True)
    max_dist: float = eqx.field(static=True)
    baseline: Any

    def __init__(
        self,
        model: Callable[..., Any],
        steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        baseline: Baseline = 0.0,
    ):
        self.model = model
        self.steps = steps
        self.fraction = float(fraction)
        self.max_dist = float(max_dist)
        self.baseline = as_baseline_array(baseline)

    def __check_init__(self):
        check_positive_int(self.steps, "steps")
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"`fraction` must lie in [0, 1], got {self.fraction}.")
        if not 0.0 <= self.max_dist <= 1.0:
            raise ValueError(f"`max_dist` must lie in [0, 1], got {self.max_dist}.")

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "..."]:
        grad_f = jax.grad(scalar_function(self.model, x, target))
        xi = x.astype(jnp.float32)
        xb = broadcast_baseline(self.baseline, x).astype(jnp.float32)
        l1_total = jnp.sum(jnp.abs(xi - xb))

        def step(carry, i):
            xc, attr = carry
            g = grad_f(xc.astype(x.dtype)).astype(jnp.float32)
            alpha = (i + 1.0) / self.steps
            l1_target = l1_total * (1.0 - alpha)
            xc, a = _guided_step(
                xc, g, xi, xb, alpha, self.max_dist, l1_total, l1_target, self.fraction
            )
            return (xc, attr + a), None

        init = (xb, jnp.zeros_like(xi))
        steps = jnp.arange(self.steps, dtype=jnp.float32)
        with loop_body():  # convolutions in forms XLA:CPU runs fast in loops
            (_, attr), _ = jax.lax.scan(step, init, steps)
        return jnp.where(l1_total > 0, attr, 0.0).astype(x.dtype)


ROWS = (
    MethodEntry(
        "guided_ig",
        GuidedIG,
        "gradient",
        "Guided IG: adaptive-path integrated gradients (PAIR)",
        lambda c: GuidedIG(c.model, steps=c.option("n_steps", 32)),
        benchmark=(
            None,
            "not timed: as blur_ig, PAIR's saliency would run our gradient; "
            "equality is tested",
        ),
    ),
)
