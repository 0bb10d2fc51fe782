"""Integrated Gradients to a stated accuracy: `n_steps="auto"`.

The quadrature is the trapezoid rule on a ladder of levels: level 0 has
`AUTO_START` intervals (`AUTO_START + 1` points, both ends included), and level
`k` halves every interval of level `k - 1`, so it reuses all of level `k - 1`'s
gradients and evaluates only the new midpoints. Level `k`'s attribution equals
the fixed-step rule `method="riemann_trapezoid"`, `n_steps=AUTO_START * 2**k + 1`.
After each level the completeness residual `|sum(a) - (f(x) - f(b))|` is compared
with `rtol * |f(x) - f(b)|`; the refinement stops at the first level below it, or
at the last level that `max_steps` allows.

The new midpoints are evaluated in blocks of `AUTO_START` points per baseline
draw inside one `jax.lax.while_loop`, so every block has the same static shape
(jit-able), memory stays at one block, and under `jax.vmap` the loop runs until
every example is done (examples already done keep their values).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._engine._fast_derivatives import loop_body

# Intervals of level 0: 9 gradient evaluations per draw before the first check.
AUTO_START = 8


def max_level(max_steps: int) -> int:
    """The last level whose point count `AUTO_START * 2**k + 1` is <= `max_steps`."""
    level = 0
    while AUTO_START * 2 ** (level + 1) + 1 <= max_steps:
        level += 1
    return level


def adaptive_path_gradients(
    f: Callable[[Array], Array],
    x: Array,
    baselines: Array,
    rtol: float,
    max_steps: int,
    f_diff: Array,
) -> tuple[Array, Array, Array]:
    """`(mean_grads, steps_used, residual)` of the nested trapezoid ladder.

    `mean_grads` `(n_draws, *x.shape)` float32 is each draw's quadrature mean of
    grad f along `b_d -> x` at the level where the refinement stopped;
    `steps_used` (int32) that level's points per draw; `residual` (float32) its
    `|sum(a) - f_diff|`, where `f_diff = f(x) - mean_d f(b_d)`.
    """
    n0, top = AUTO_START, max_level(max_steps)
    grad_f = jax.grad(f)
    dtype, expand = x.dtype, (1,) * x.ndim
    n_draws = baselines.shape[0]
    diff = x[None] - baselines  # (n_draws, *x.shape)
    f_diff = f_diff.astype(jnp.float32)
    tol = rtol * jnp.abs(f_diff)

    def grads_at(alphas: Array) -> Array:  # alphas (n,) float32 -> (draws, n, *x)
        a = alphas.astype(dtype).reshape(1, -1, *expand)
        points = baselines[:, None] + a * diff[:, None]
        flat = points.reshape(-1, *x.shape)
        g = jax.vmap(grad_f)(flat).astype(jnp.float32)
        return g.reshape(n_draws, -1, *x.shape)

    def residual(ends: Array, inner: Array, intervals: Array) -> Array:
        mean_grads = (ends + inner) / intervals.astype(jnp.float32)
        attr = jnp.mean(diff * mean_grads, axis=0).astype(dtype)
        return jnp.abs(jnp.sum(attr.astype(jnp.float32)) - f_diff)

    g0 = grads_at(jnp.arange(n0 + 1, dtype=jnp.float32) / n0)
    ends = (g0[:, 0] + g0[:, -1]) / 2
    inner = jnp.sum(g0[:, 1:-1], axis=1)
    res0 = residual(ends, inner, jnp.asarray(n0))
    # carry: (block, level, intervals, inner sum, done, residual)
    init = (
        jnp.asarray(0, jnp.int32),
        jnp.asarray(1, jnp.int32),
        jnp.asarray(n0, jnp.int32),
        inner,
        (res0 <= tol) | (top == 0),
        res0,
    )

    def body(carry):
        block, level, intervals, inner, _, res = carry
        # Level k's new points are the odd multiples of 1 / (n0 2^k), in blocks
        # 2^(k-1) - 1 .. 2^k - 2 (counted over all levels >= 1).
        new_intervals = n0 * 2**level
        first_block = 2 ** (level - 1) - 1
        j = (block - first_block) * n0 + jnp.arange(n0)
        alphas = (2 * j + 1).astype(jnp.float32) / new_intervals.astype(jnp.float32)
        inner = inner + jnp.sum(grads_at(alphas), axis=1)
        block = block + 1
        level_done = block == 2**level - 1
        new_res = residual(ends, inner, new_intervals)
        res = jnp.where(level_done, new_res, res)
        done = level_done & ((new_res <= tol) | (level >= top))
        intervals = jnp.where(level_done, new_intervals, intervals)
        level = jnp.where(level_done, level + 1, level)
        return block, level, intervals, inner, done, res

    with loop_body():  # convolutions in forms XLA:CPU runs fast in loops
        _, _, intervals, inner, _, res = jax.lax.while_loop(lambda c: ~c[4], body, init)
    mean_grads = (ends + inner) / intervals.astype(jnp.float32)
    return mean_grads, intervals + 1, res
