"""Integrated Gradients with several quadrature rules and baselines."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Attribution,
    Image,
    Target,
    check_bool,
    check_choice,
    check_chunk_size,
    check_input,
    check_positive_int,
    scalar_function,
)
from .._engine._fast_derivatives import loop_body
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._memory import chunk_for_budget
from .._method_entry import BuildContext, Differentiability, MethodEntry
from ..baselines import AbstractBaseline, Zeros, as_baseline, draw_baselines
from ._ig_auto import AUTO_START, adaptive_path_gradients

__all__ = ["IntegratedGradients"]

QUADRATURES = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
    "riemann_linspace",
)


def quadrature(method: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes `alpha` in [0, 1] and weights for integrating over the straight path.

    The weights sum to one, so `sum_i w_i g(alpha_i)` approximates the mean of the
    gradient along the path.
    """
    check_choice(method, "method", QUADRATURES)
    check_positive_int(n_steps, "n_steps")
    n = n_steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (nodes + 1) / 2, weights / 2
    if method == "riemann_trapezoid":
        if n < 2:
            raise ValueError(
                "`method='riemann_trapezoid'` needs `n_steps >= 2` (both endpoints)."
            )
        alphas = np.linspace(0.0, 1.0, n)
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2
        return alphas, weights
    if method == "riemann_linspace":
        # PAIR's `saliency` IG: n equally spaced nodes from 0 to 1, both ends
        # included, each weighted 1/n (a slightly biased rule; kept for equality).
        return np.linspace(0.0, 1.0, n), np.full(n, 1.0 / n)
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)


class IntegratedGradients(AbstractAttribution):
    """Integrated Gradients: the path integral of the gradient from a baseline to x.

    Sundararajan, Taly & Yan, *Axiomatic Attribution for Deep Networks*, ICML 2017.
    `attr = (x - b) * integral_0^1 grad f(b + a (x - b)) da`, approximated by a
    quadrature with `n_steps` nodes. Attributions sum to `f(x) - f(b)`
    (completeness); the residual is the *convergence delta*.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `n_steps`: number of quadrature nodes (static). Default 50. `"auto"`:
        refine until the completeness residual `|sum(a) - (f(x) - f(b))|` is at
        most `rtol * |f(x) - f(b)|`, or `max_steps` is reached: the trapezoid
        rule on 9, 17, 33, ... points, each level reusing the previous level's
        gradients (Gauss-Legendre nodes do not nest, so with `"auto"` the rule is
        this nested trapezoid rule, and `method` must be left at its default or
        be `"riemann_trapezoid"`). Jit-able and vmap-able (a `lax.while_loop`;
        under `jax.vmap` it runs until every example is done). The steps used
        and the residual: `attribute_with_info`.
    - `rtol`: with `n_steps="auto"`, the relative completeness residual to reach
        (static). Default `1e-3`.
    - `max_steps`: with `n_steps="auto"`, the most points per baseline draw
        (static); the last level is the largest `8 * 2**k + 1 <= max_steps`.
        Default 257.
    - `method`: `"gausslegendre"` (default), `"riemann_left"`, `"riemann_right"`,
        `"riemann_middle"`, `"riemann_trapezoid"` or `"riemann_linspace"` (PAIR
        `saliency`'s rule: `linspace(0, 1, n_steps)`, equal weights `1 / n_steps`).
    - `baseline`: `None` (zeros), a number, an array broadcastable to `x`, or a
        module from `eqx_attr.baselines` (multi-draw baselines are averaged in the
        same vectorised pass).
    - `chunk_size`: evaluate at most this many path points at a time (bounded
        memory, via `jax.lax.scan`); `None` evaluates all at once. `"auto"`
        (default): as many as fit the memory budget
        ([`eqx_attr.set_memory_budget`][]; a point is one path point's forward
        and backward pass, times the size of any `jax.vmap` around the call).
        With `n_steps="auto"` the points go in blocks of 8 per draw instead.
    - `unroll_chunks`: with an integer `chunk_size`, write the chunks out one
        after another instead of scanning them (for backends where loops are
        slow; compile time grows with the number of chunks). Default `False`.
    - `parts`: the path points (with `chunk_size`, each chunk's) go through the
        model in this many independent slices (static), which XLA:CPU runs
        concurrently; attributions agree to float rounding. Default 4.
    - `return_delta`: if `True`, `__call__` returns `(attribution, delta)`.

    **Returns:** an array shaped like `x` (or `(attr, delta)`, see above).

    ```python
    ig = xa.IntegratedGradients(model, n_steps=32)
    a = ig(x, target=3)
    a, delta = ig.attribute_with_delta(x, target=3)  # delta = sum(a) - (f(x) - f(b))
    auto = xa.IntegratedGradients(model, n_steps="auto", rtol=1e-3)
    a, steps, residual = auto.attribute_with_info(x, target=3)
    ```

    The timings behind these defaults: `docs/benchmarks.md`, "Integrated Gradients:
    `chunk_size`, `parts` and `unroll_chunks`".
    """

    model: Callable[..., Any]
    n_steps: int | Literal["auto"] = eqx.field(static=True, default=50)
    method: str = eqx.field(static=True, default="gausslegendre")
    baseline: AbstractBaseline = eqx.field(default_factory=Zeros, converter=as_baseline)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    return_delta: bool = eqx.field(static=True, default=False)
    unroll_chunks: bool = eqx.field(static=True, default=False)
    parts: int = eqx.field(static=True, default=4)
    input_layout: InputLayout = input_layout_field()
    rtol: float = eqx.field(static=True, default=1e-3)
    max_steps: int = eqx.field(static=True, default=257)

    def __check_init__(self):
        if self.n_steps == "auto":
            _check_auto(self.method, self.rtol, self.max_steps)
        else:
            quadrature(self.method, self.n_steps)  # validates method and n_steps
        check_chunk_size(self.chunk_size, allow_auto=True)
        check_bool(self.unroll_chunks, "unroll_chunks")
        check_positive_int(self.parts, "parts")

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Attribution | tuple[Attribution, Float[Array, ""]]:
        attr, delta = self.attribute_with_delta(x, target, key=key)
        return (attr, delta) if self.return_delta else attr

    def attribute_with_delta(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> tuple[Attribution, Float[Array, ""]]:
        """Attributions and the convergence delta `sum(attr) - (f(x) - f(b))`.

        Computed in the same call; under `eqx.filter_vmap` you get one delta per
        example.
        """
        attr, delta, _ = self._attribute(x, target, key)
        return attr, delta

    def attribute_with_info(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> tuple[Attribution, Int[Array, ""], Float[Array, ""]]:
        """Attributions, the steps used and the completeness residual.

        **Arguments:** as for `__call__`.

        **Returns:** `(attribution, steps_used, residual)`: `steps_used` (int32) is
        the number of path points per baseline draw (`n_steps` when it is an
        int; with `n_steps="auto"`, the level where the refinement stopped), and
        `residual` (float32) is `|sum(attribution) - (f(x) - f(b))|`.

        ```python
        ig = xa.IntegratedGradients(model, n_steps="auto", rtol=1e-3)
        a, steps, residual = ig.attribute_with_info(x, target=3)
        ```
        """
        attr, delta, steps = self._attribute(x, target, key)
        return attr, steps, jnp.abs(delta)

    def _attribute(
        self, x: Image, target: Target, key: PRNGKeyArray | None
    ) -> tuple[Array, Array, Array]:
        x = check_input(x)
        f = scalar_function(self.model, x, target)
        b = draw_baselines(self.baseline, x, key)
        f_x = f(x)
        f_b = jnp.mean(jax.vmap(f)(b))
        if self.n_steps == "auto":
            mean_grads, steps, _ = adaptive_path_gradients(
                f, x, b, self.rtol, self.max_steps, f_x - f_b
            )
        else:
            chunk, unroll = self.chunk_size, self.unroll_chunks
            if chunk == "auto":
                n_points = b.shape[0] * self.n_steps
                # One path point: a forward and backward pass of the model.
                chunk = chunk_for_budget(jax.grad(f), x, n_points)
                unroll = False
            mean_grads = path_mean_gradients(
                f, x, b, self.method, self.n_steps, chunk, unroll, self.parts
            )
            steps = jnp.asarray(self.n_steps, jnp.int32)
        attr = jnp.mean((x[None] - b) * mean_grads, axis=0).astype(x.dtype)
        delta = jnp.sum(attr.astype(jnp.float32)) - (f_x - f_b).astype(jnp.float32)
        return attr, delta, steps


def _check_auto(method: str, rtol: Any, max_steps: Any) -> None:
    if method not in ("gausslegendre", "riemann_trapezoid"):
        raise ValueError(
            f'`n_steps="auto"` refines the nested trapezoid rule; `method={method!r}`'
            " does not nest. Leave `method` at its default, or pass an int `n_steps`."
        )
    if isinstance(rtol, bool) or not isinstance(rtol, int | float) or rtol < 0:
        raise ValueError(f"`rtol` must be a number >= 0, got {rtol!r}.")
    check_positive_int(max_steps, "max_steps", minimum=AUTO_START + 1)


def auto_chunk_size(
    model: Callable, x: Array, n_points: int, parts: int = 1
) -> int | None:
    """The chunk size `chunk_size="auto"` means for `model` on one example `x` with
    `n_points` path points (draws x steps), traced now: as many points as fit the
    memory budget ([`eqx_attr.set_memory_budget`][]), or `None` when all do.
    (`parts` is kept for callers of the former rule: slices share one chunk.)"""
    del parts

    def f(z):
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(model(z)))

    return chunk_for_budget(jax.grad(f), x, n_points)


def _weighted_gradients(
    grad_f: Callable[[Array], Array], points: Array, weights: Array, parts: int
) -> Array:
    """`weights @ grad_f(points)`, `weights` `(n_draws, n_points)`, in float32.

    The points go through the model in `parts` independent slices: XLA:CPU runs
    one convolution over a large batch on about one core, but runs independent
    operations concurrently, and smaller slices stay in cache (see
    `IntegratedGradients.parts`).
    """
    n = points.shape[0]
    bounds = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    partial = [
        jnp.tensordot(
            weights[:, lo:hi],
            jax.vmap(grad_f)(points[lo:hi]).astype(jnp.float32),
            axes=(1, 0),
        )
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return functools.reduce(jnp.add, partial)


def path_mean_gradients(
    f: Callable[[Array], Array],
    x: Array,
    baselines: Array,
    method: str,
    n_steps: int,
    chunk_size: int | None,
    unroll: bool = False,
    parts: int = 1,
) -> Array:
    """For each baseline `b_d`, the quadrature mean of grad f along `b_d -> x`.

    Returns shape `(n_draws, *x.shape)`. All draws and steps are evaluated as one
    flat batch of path points, chunked when `chunk_size` is given (the chunks
    scanned, or written out one after another when `unroll`), each chunk in
    `parts` independent slices.
    """
    alphas_np, weights_np = quadrature(method, n_steps)
    n_draws = baselines.shape[0]
    grad_f = jax.grad(f)
    dtype = x.dtype
    expand = (1,) * x.ndim

    if chunk_size is None:
        alphas = jnp.asarray(alphas_np, dtype).reshape(1, n_steps, *expand)
        b = baselines[:, None]
        points = b + alphas * (x[None, None] - b)
        flat = points.reshape(n_draws * n_steps, *x.shape)
        # The weighted sum over steps as one matrix product with a block-diagonal
        # (draw, draw x step) weight matrix: XLA then reads the gradients once, in
        # the layout the backward pass produced them. A broadcast multiply and sum
        # is fused into a strided loop that made IG ~25% slower than the gradient
        # passes alone on CPU (benchmarks/run.py, `ig-overhead`).
        w = jnp.asarray(
            np.kron(np.eye(n_draws), weights_np.reshape(1, -1)), jnp.float32
        )
        return _weighted_gradients(grad_f, flat, w, parts)

    # Flatten (draw, step) pairs, pad to whole chunks with zero weight, and run the
    # chunks one at a time, so only `chunk_size` points (and their gradients) are
    # alive at once. The chunks are balanced (as few as `chunk_size` allows, then
    # as even as possible), so the padding wastes under one gradient pass per
    # chunk, rather than up to `chunk_size - 1`, or more than the whole path when
    # `chunk_size > n_steps`.
    total = n_draws * n_steps
    n_chunks = -(-total // chunk_size)
    chunk_size = -(-total // n_chunks)
    pad = n_chunks * chunk_size - total
    draw_id = np.concatenate([np.repeat(np.arange(n_draws), n_steps), np.zeros(pad)])
    alpha = np.concatenate([np.tile(alphas_np, n_draws), np.zeros(pad)])
    weight = np.concatenate([np.tile(weights_np, n_draws), np.zeros(pad)])
    onehot = np.eye(n_draws)[draw_id.astype(int)] * weight[:, None]
    chunks = (  # (n_chunks, chunk_size, ...) each
        draw_id.astype(np.int32).reshape(n_chunks, chunk_size),
        alpha.reshape(n_chunks, chunk_size),
        onehot.reshape(n_chunks, chunk_size, n_draws),
    )

    def chunk_sum(acc, x, ids, a, w):
        b = baselines[ids]
        points = b + a.astype(dtype).reshape(chunk_size, *expand) * (x[None] - b)
        return acc + _weighted_gradients(grad_f, points, w.astype(jnp.float32).T, parts)

    acc = jnp.zeros((n_draws, *x.shape), jnp.float32)
    if unroll:
        # Written out: XLA:CPU runs convolutions inside a loop body without its
        # fast layouts (5-7x slower on conv nets). The barrier makes each chunk's
        # points depend on the previous chunk's sum: the chunks run one after
        # another and can reuse one chunk's buffers (see `unroll_chunks`).
        for ids, a, w in zip(*chunks, strict=True):
            acc, x_c = jax.lax.optimization_barrier((acc, x))
            acc = chunk_sum(acc, x_c, jnp.asarray(ids), jnp.asarray(a), jnp.asarray(w))
        return acc
    xs = tuple(jnp.asarray(v) for v in chunks)
    with loop_body():  # convolutions in forms XLA:CPU runs fast in loops
        acc, _ = jax.lax.scan(lambda acc, c: (chunk_sum(acc, x, *c), None), acc, xs)
    return acc


def _build(c: BuildContext) -> IntegratedGradients:
    return IntegratedGradients(
        c.model,
        n_steps=c.option("n_steps", 32),
        baseline=c.baseline if c.baseline is not None else 0.0,
        chunk_size=c.option("chunk_size", "auto"),
    )


ROWS = (
    MethodEntry(
        "integrated_gradients",
        IntegratedGradients,
        "gradient",
        "Integrated Gradients (n_steps, baseline)",
        _build,
        aliases=("ig",),
        needs=frozenset({"baseline"}),
        axioms=frozenset({"completeness"}),
        differentiable=Differentiability(
            1, 1, "the path's gradients are summed in float32 whatever x's dtype"
        ),
        benchmark=(
            "run.py",
            "Captum IntegratedGradients (--methods ig,ig-chunk,ig-overhead,"
            "all-targets)",
        ),
    ),
)
