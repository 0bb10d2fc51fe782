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
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry
from .._perturbation._common import Baseline, as_baseline_array, broadcast_baseline

__all__ = ["GuidedIG"]

# PAIR compares L1 distances in float64 with a 1e-9 tolerance; float32 rounding
# needs a looser relative one.
_REL_TOL = 1e-6


def inner_iterations(n: int, fraction: float) -> int:
    """A bound on the inner iterations of one step, for `n` features.

    An iteration either lands on the target (the last one) or moves every
    selected feature to its upper bound, where it is never selected again; it
    selects the `k + 1` smallest |gradients| among the features not yet there
    (`k` as in `_guided_step`), or all of them when fewer are left. So at most
    `ceil(n / (k + 1))` iterations move features, one more finds none left to
    move, and PAIR's own cap is `n + 2`.
    """
    k = int(np.floor(fraction * (n - 1)))
    return min(n + 2, -(-n // (k + 1)) + 2)


def _guided_step(x, g, xi, xb, alpha, max_dist, l1_total, l1_target, fraction):
    """Move `x` from path position `alpha - 1/steps` to `alpha` (one outer step).

    Features with the smallest |gradient| move first, towards their position at
    `alpha + max_dist` on the straight line, never lagging behind `alpha -
    max_dist`, until the L1 distance to the input reaches `l1_target`. Returns
    the new `x` and this step's attribution `sum (x_new - x_old) * g`.

    PAIR's inner loop (`saliency.core.guided_ig.guided_ig_impl`) is a `while`;
    here it runs a fixed number of iterations (`inner_iterations`), each a no-op
    once the target is reached, so reverse-mode differentiation works. Divisions
    and the unbounded move are guarded so that the branch `jnp.where` discards
    stays finite and its zero cotangent does not turn into NaN.
    """
    diff = xi - xb
    alpha_min = jnp.maximum(alpha - max_dist, 0.0)
    alpha_max = jnp.minimum(alpha + max_dist, 1.0)
    x_min = xb + diff * alpha_min
    x_max = xb + diff * alpha_max
    flat_g = jnp.abs(g).ravel()
    k = int(np.floor(fraction * (flat_g.size - 1)))  # np.quantile 'lower'
    tol = _REL_TOL * l1_total
    nonzero = diff != 0
    safe_diff = jnp.where(nonzero, diff, 1.0)

    def body(_, state):
        x, attr, done = state
        x_old = x
        x_alpha = jnp.where(nonzero, (x - xb) / safe_diff, alpha_max)
        x = jnp.where(x_alpha < alpha_min, x_min, x)
        l1_current = jnp.sum(jnp.abs(x - xi))
        reached = jnp.abs(l1_current - l1_target) <= tol
        g_sel = jnp.where(x == x_max, jnp.inf, jnp.abs(g))
        threshold = jnp.sort(g_sel.ravel())[k]
        s = (g_sel <= threshold) & (g_sel != jnp.inf)
        l1_s = jnp.sum(jnp.abs(x - x_max) * s)
        positive = l1_s > 0
        gamma = jnp.where(
            positive, (l1_current - l1_target) / jnp.where(positive, l1_s, 1.0), 2.0
        )
        moved = jnp.where(gamma > 1.0, x_max, x + jnp.minimum(gamma, 1.0) * (x_max - x))
        x = jnp.where(s & ~reached, moved, x)
        # Once done, the iteration keeps the state as it is (PAIR's loop ends).
        x = jnp.where(done, x_old, x)
        attr = attr + (x - x_old) * g
        # In exact arithmetic a step with gamma <= 1 lands on the target.
        return x, attr, done | reached | (gamma <= 1.0) | ~positive

    init = (x, jnp.zeros_like(x), jnp.array(False))
    n = inner_iterations(flat_g.size, fraction)
    x, attr, _ = jax.lax.fori_loop(0, n, body, init)
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
    `jax.lax.scan`, and a fixed number of inner iterations per step (PAIR's
    inner `while` ends as soon as the step's target is reached; here the
    remaining iterations are no-ops), so the map can be differentiated in
    reverse mode with respect to `x` and the model's parameters. Which features
    move is a selection (a sort of |gradient|): the derivative is that of the
    path chosen at `x`. A float64 input is computed in float64.

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
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        steps: int = 200,
        fraction: float = 0.25,
        max_dist: float = 0.02,
        baseline: Baseline = 0.0,
        *,
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
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
        dtype = jnp.promote_types(x.dtype, jnp.float32)
        xi = x.astype(dtype)
        xb = broadcast_baseline(self.baseline, x).astype(dtype)
        l1_total = jnp.sum(jnp.abs(xi - xb))

        def step(carry, i):
            xc, attr = carry
            g = grad_f(xc.astype(x.dtype)).astype(dtype)
            alpha = (i + 1.0) / self.steps
            l1_target = l1_total * (1.0 - alpha)
            xc, a = _guided_step(
                xc, g, xi, xb, alpha, self.max_dist, l1_total, l1_target, self.fraction
            )
            return (xc, attr + a), None

        init = (xb, jnp.zeros_like(xi))
        steps = jnp.arange(self.steps, dtype=dtype)
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
        differentiable=Differentiability(
            1,
            1,
            "piecewise: which features move is chosen by sorting the absolute "
            "gradient; the derivative is that of the chosen path",
        ),
        benchmark=(
            None,
            "not timed: as blur_ig, PAIR's saliency would run our gradient; "
            "equality is tested",
        ),
    ),
)
