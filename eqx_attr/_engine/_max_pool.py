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
PyTorch). The replacement has a `jax.custom_jvp` whose tangent picks, for every
window, the tangent at that maximum: a few strided slices (`_windows.py`),
comparisons and selects that XLA fuses, and whose transpose (reverse mode) is a
sum of strided pads. Forward mode, reverse mode and
higher derivatives all work, and attributions do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

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
        taken = jnp.zeros(shape, bool)
        out = jnp.zeros(shape, t.dtype)
        pairs = zip(views(x, -jnp.inf, shape), views(t, 0, shape), strict=True)
        for vx, vt in pairs:
            hit = (vx == y) & ~taken  # the first element equal to the maximum
            taken = taken | hit
            out = jnp.where(hit, vt, out)
        return y, out

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
