"""Max-pool derivatives without XLA's select-and-scatter.

JAX differentiates a max pool (`reduce_window_max`: `eqx.nn.MaxPool2d`, or
`lax.reduce_window` with `lax.max`) through `select_and_gather_add` and its
transpose, `select_and_scatter_add`. XLA:CPU cannot run select-and-scatter
natively: it expands it into a variadic reduce-window that carries one `s32` index
array per operand dimension, and then a scatter. Under the vmaps of Integrated
Gradients the pooled operands have rank 6, so every pooling layer's backward pass
holds six index arrays as large as its input: that was most of the planned memory
of IG on a small CNN (2.2 GiB of 2.3 for 64 digits and 50 steps).

[`pool_handler`][] (a handler of the pass in `_fast_derivatives.py`) replaces
every floating-point max pool with one with the same values and the same
derivatives, the derivative going to the first maximum of each window in
row-major order (as in XLA's select-and-scatter with `>=`, which JAX uses, and in
PyTorch). The replacement has a `jax.custom_jvp` that finds, for every window,
which element is that first maximum (a small integer per output, from a few
strided slices (`_windows.py`) and comparisons, kept in memory behind an
optimisation barrier) and whose tangent picks the tangent there: one select per
window element, whose transpose (reverse mode) is a sum of strided pads. Without
the barrier XLA fused the comparisons into every pad of the transpose and
recomputed them there: the stem pool's derivative of a ResNet-18 (64x112x112)
took 13 ms, 14% of its input gradient's kernel time, which went from 82 to 77 ms
with the barrier (`benchmarks/profile_ops.py --model resnet18 --batch 1`).
Forward mode, reverse mode and higher derivatives all work, and attributions do
not change.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from . import _jax_internals as ji
from ._interpreter import Interpreter
from ._windows import window_views

POOL = "reduce_window_max"


def _first_max_pool(eqn: Any) -> Callable[[jax.Array], jax.Array]:
    """`eqn`'s pool, with a JVP that follows each window's first maximum."""
    p = eqn.params

    def views(v, fill, shape):  # view `k`: every window's `k`-th element
        args = p["padding"], p["window_dimensions"], p["window_strides"], shape
        return window_views(v, fill, *args)

    @jax.custom_jvp
    def pool(x):
        (y,) = ji.bind(eqn, [x])
        return y

    @pool.defjvp
    def pool_jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        y = pool(x)
        shape = y.shape
        vxs = views(x, -jnp.inf, shape)
        # Which view holds each window's first maximum (len(vxs) where none does:
        # a NaN window), computed once and kept: fused into the derivative, XLA
        # recomputed the whole chain of comparisons for every view's term.
        first = jnp.full(shape, len(vxs), np.min_scalar_type(len(vxs)))
        for k in reversed(range(len(vxs))):
            first = jnp.where(vxs[k] == y, k, first)
        first = lax.optimization_barrier(first)
        zero = jnp.zeros((), t.dtype)
        terms = [
            jnp.where(first == k, vt, zero) for k, vt in enumerate(views(t, 0, shape))
        ]
        return y, functools.reduce(operator.add, terms)

    return pool


def replaceable(eqn: Any) -> bool:
    """Whether `eqn` is a max pool that this module replaces."""
    if eqn.primitive.name != POOL:
        return False
    p = eqn.params
    return (
        jnp.issubdtype(eqn.invars[0].aval.dtype, jnp.floating)
        and all(d == 1 for d in p["base_dilation"])
        and all(d == 1 for d in p["window_dilation"])
    )


def pool_handler(interp: Interpreter, eqn: Any, invals: list) -> list:
    """An [`Interpreter`][] handler for `reduce_window_max`."""
    if not replaceable(eqn):
        return ji.bind(eqn, invals)
    return [_first_max_pool(eqn)(invals[0])]
