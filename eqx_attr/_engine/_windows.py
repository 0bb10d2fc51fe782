"""Strided views of a padded array, one per offset in a window.

The max-pool and convolution rewrites (`_max_pool.py`, `_fast_conv.py`) both read
a window-shaped neighbourhood of every output as a few strided slices: view `k`
holds, for every output position, the `k`-th element of its window. XLA fuses
such slices, and JAX transposes them into strided pads.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def window_views(
    x: jax.Array,
    fill: Any,
    padding: Sequence[tuple[int, int]],
    window: Sequence[int],
    strides: Sequence[int],
    out_shape: Sequence[int],
    dilation: Sequence[int] | None = None,
) -> list[jax.Array]:
    """The views of `x`, padded with `fill`, one per window offset in row-major
    order, each shaped `out_shape`; every argument has one entry per axis of `x`.
    """
    padded = lax.pad(x, jnp.asarray(fill, x.dtype), [(lo, hi, 0) for lo, hi in padding])
    dilation = dilation or (1,) * x.ndim
    views = []
    for offset in itertools.product(*(range(w) for w in window)):
        start = [o * d for o, d in zip(offset, dilation, strict=True)]
        ends = zip(start, out_shape, strides, strict=True)
        limit = [s + (n - 1) * st + 1 for s, n, st in ends]
        views.append(lax.slice(padded, start, limit, strides))
    return views
