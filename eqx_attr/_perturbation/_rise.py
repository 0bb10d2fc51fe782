"""RISE: randomised input sampling with smooth random masks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    Target,
    check_chunk_size,
    check_key,
    check_positive_int,
)
from .._layout import (
    InputLayout,
    input_layout_field,
    map_over_channels,
    resolve_input_layout,
    spatial_shape,
)
from .._memory import resolve_chunk_size
from .._method_entry import PERTURBATION_KEYED, MethodEntry
from ._common import AbstractPerturbation, scored

__all__ = ["RISE"]


def upsample_matrix(n_cells: int, out: int) -> np.ndarray:
    """The `(out, n_cells)` bilinear upsampling matrix.

    Half-pixel centres, mirrored beyond the outer cell centres: scikit-image's
    `resize(order=1, mode="reflect", anti_aliasing=False)`, which the original
    RISE code uses. A matrix, because two small matrix products compile and run
    faster than a general resize.
    """
    u = (np.arange(out) + 0.5) * n_cells / out - 0.5
    u = np.abs(u)  # mirror below the first centre
    u = np.where(u > n_cells - 1, 2 * (n_cells - 1) - u, u)  # and above the last
    u = np.clip(u, 0, n_cells - 1)
    i0 = np.floor(u).astype(int)
    i1 = np.minimum(i0 + 1, n_cells - 1)
    frac = u - i0
    a = np.zeros((out, n_cells), np.float32)
    np.add.at(a, (np.arange(out), i0), 1 - frac)
    np.add.at(a, (np.arange(out), i1), frac)
    return a


def rise_mask(
    key: PRNGKeyArray, shape: tuple[int, int], cell_size: int, p: float
) -> Float[Array, "h w"]:
    """One RISE mask (Petsiuk et al., 2018) of the given `(H, W)` shape.

    A `ceil(H / cell) x ceil(W / cell)` grid of Bernoulli(`p`) cells is upsampled
    bilinearly ([`upsample_matrix`][]) to `(grid + 1) * cell` pixels and cropped
    to `(H, W)` at a random shift in `[0, cell)` along each axis.

    **Arguments:**

    - `key`: the PRNG key of this mask.
    - `shape`: `(H, W)`.
    - `cell_size`: the side of one grid cell in pixels.
    - `p`: the probability that a cell is kept.

    **Returns:** a float32 `(H, W)` mask with values in `[0, 1]`.

    ```python
    m = xa.RISE.mask(jax.random.key(0), (28, 28), 4, 0.5)
    ```
    """
    h, w = shape
    gh, gw = math.ceil(h / cell_size), math.ceil(w / cell_size)
    k_grid, k_shift = jax.random.split(key)
    grid = jax.random.bernoulli(k_grid, p, (gh, gw)).astype(jnp.float32)
    dy, dx = jax.random.randint(k_shift, (2,), 0, cell_size)
    rows = jax.lax.dynamic_slice_in_dim(
        jnp.asarray(upsample_matrix(gh, (gh + 1) * cell_size)), dy, h
    )
    cols = jax.lax.dynamic_slice_in_dim(
        jnp.asarray(upsample_matrix(gw, (gw + 1) * cell_size)), dx, w
    )
    return rows @ grid @ cols.T


class RISE(AbstractPerturbation):
    """RISE (Petsiuk, Das & Saenko, 2018): the score-weighted mean of random masks.

    The input is multiplied by `n_masks` smooth random masks (`RISE.mask`, a static
    method);
    the map is `sum_i f(x * M_i) M_i / (n_masks * p)`, the expected mask given the
    score. All masked inputs run as one vectorised batch (`chunk_size` at a time),
    shared across targets.

    **Arguments:**

    - `model`: maps one example, `(C, H, W)` or `(H, W, C)`, to a vector of
        scores.
    - `n_masks`: number of random masks (static). Default 2000.
    - `cell_size`: the side of one mask cell in pixels (static). Default 4.
    - `p`: the probability that a cell is kept, in (0, 1]. Default 0.5.
    - `chunk_size`: evaluate at most this many masks at once (`None`: all;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][]).
    - `input_layout`: `"chw"`, `"hwc"` or `None` (default: inferred from `x`'s
        shape, see [`eqx_attr.AbstractAttribution`][]): which axes of `x` are
        `(H, W)`; each mask multiplies every channel.

    **Returns:** an `(H, W)` map. Needs `key`; mask `i` uses
    `jax.random.split(key, n_masks)[i]`.

    ```python
    rise = xa.RISE(model, n_masks=2000, cell_size=4, p=0.5)
    h = rise(x, target=3, key=jax.random.key(0))
    ```
    """

    model: Callable[..., Any]
    n_masks: int = eqx.field(static=True)
    cell_size: int = eqx.field(static=True)
    p: float = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        n_masks: int = 2000,
        cell_size: int = 4,
        p: float = 0.5,
        chunk_size: int | Literal["auto"] | None = "auto",
        *,
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
        self.model = model
        self.n_masks = n_masks
        self.cell_size = cell_size
        self.p = float(p)
        self.chunk_size = chunk_size

    def __check_init__(self):
        check_positive_int(self.n_masks, "n_masks")
        check_positive_int(self.cell_size, "cell_size")
        check_chunk_size(self.chunk_size)
        if not 0.0 < self.p <= 1.0:
            raise ValueError(f"`p` must lie in (0, 1], got {self.p}.")

    mask = staticmethod(rise_mask)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "h w"]:
        key = check_key(key, "RISE")
        hw = spatial_shape(x, self.input_layout, "RISE")
        layout = resolve_input_layout(x.shape, self.input_layout)
        if self.cell_size > max(hw):
            raise ValueError(
                f"`cell_size={self.cell_size}` is larger than `x` ({hw} pixels); use a "
                "cell of a few pixels (the mask grid has ceil(H / cell) rows)."
            )
        keys = jax.random.split(key, self.n_masks)

        def make(k):
            return rise_mask(k, hw, self.cell_size, self.p)

        def masked(k):
            m = make(k).astype(x.dtype)
            return x * map_over_channels(m, x.ndim, layout)

        s = scored(self.model, x, target, masked, keys, self.chunk_size)
        heat = _weighted_mask_sum(make, keys, s, self.chunk_size, hw)
        return (heat / (self.n_masks * self.p)).astype(x.dtype)


def _weighted_mask_sum(
    make: Callable,
    keys: Array,
    weights: Array,
    chunk_size: int | Literal["auto"] | None,
    hw: tuple,
) -> Array:
    """`sum_i weights[i] * make(keys[i])`, regenerating masks `chunk_size` at a time."""
    n = keys.shape[0]
    chunk_size = resolve_chunk_size(chunk_size, make, keys, stacked=False)
    if chunk_size is None or chunk_size >= n:
        return jnp.tensordot(weights, jax.vmap(make)(keys), axes=(0, 0))
    n_chunks = -(-n // chunk_size)
    pad = n_chunks * chunk_size - n
    keys = jnp.concatenate([keys, keys[:pad]]) if pad else keys
    weights = jnp.concatenate([weights, jnp.zeros(pad, weights.dtype)])
    xs = (
        keys.reshape(n_chunks, chunk_size, *keys.shape[1:]),
        weights.reshape(n_chunks, chunk_size),
    )

    def body(acc, chunk):
        k, w = chunk
        return acc + jnp.tensordot(w, jax.vmap(make)(k), axes=(0, 0)), None

    acc, _ = jax.lax.scan(body, jnp.zeros(hw, jnp.float32), xs)
    return acc


ROWS = (
    MethodEntry(
        "rise",
        RISE,
        "perturbation",
        "RISE: score-weighted random smooth masks (n_masks, cell_size)",
        lambda c: RISE(
            c.model,
            n_masks=c.option("n_masks", 500),
            cell_size=c.option("cell_size", 4),
            p=c.option("p", 0.5),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        needs=frozenset({"key"}),
        output="map",
        differentiable=PERTURBATION_KEYED,
        benchmark=(
            None,
            "no installable peer: RISE's reference code is not on PyPI",
        ),
    ),
)
