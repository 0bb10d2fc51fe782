"""Occlusion: slide a baseline-filled window over the input."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    Target,
    check_chunk_size,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import PERTURBATION, MethodEntry
from ._common import (
    AbstractPerturbation,
    Baseline,
    as_baseline_array,
    broadcast_baseline,
    score,
    scored,
)
from ._defaults import baseline_or_zero, default_window

__all__ = ["Occlusion"]


def _as_tuple(value: Any, name: str) -> tuple[int, ...]:
    values = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    for v in values:
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(
                f"`{name}` must hold integers >= 1, got {value!r}; e.g. "
                f"`{name}=(1, 4, 4)` for a (C, H, W) image."
            )
    return tuple(int(v) for v in values)


def window_indicators(
    shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...]
) -> list[np.ndarray]:
    """Per axis, the (n_windows, size) 0/1 matrix of which positions each covers.

    Captum's layout: ceil((D - w) / s) + 1 windows starting at multiples of `s`,
    the last one clipped at the border.
    """
    if len(window) != len(shape):
        raise ValueError(
            f"`window` {window} needs one size per input axis; the input has shape "
            f"{shape}. Use e.g. `window=(1, 4, 4)` for a (C, H, W) image."
        )
    if len(strides) == 1:
        strides = strides * len(shape)
    if len(strides) != len(shape):
        raise ValueError(
            f"`strides` {strides} needs one stride per input axis (or a single int); "
            f"the input has shape {shape}."
        )
    out = []
    for d, w, s in zip(shape, window, strides, strict=True):
        if w > d:
            raise ValueError(
                f"`window` {window} is larger than `x` of shape {shape} along an axis; "
                "each window size must be <= the input's size."
            )
        if w < d and s > w:
            raise ValueError(
                f"`strides` {strides} exceed `window` {window} along an axis, which "
                "would leave elements uncovered; use strides <= window."
            )
        n = math.ceil((d - w) / s) + 1
        pos = np.arange(d)
        start = (np.arange(n) * s)[:, None]
        out.append(((pos >= start) & (pos < start + w)).astype(np.float32))
    return out


class Occlusion(AbstractPerturbation):
    """Occlusion (Zeiler & Fergus, 2014), with Captum's definition.

    A window slides over the input with the given strides; each position replaces
    the covered elements by the baseline, and every covered element receives the
    drop of the target's score `f(x) - f(x_occluded)`. Elements covered by several
    windows get the mean over those windows. All window positions are evaluated as
    one vectorised batch (`chunk_size` at a time), shared across targets.

    **Arguments:**

    - `model`: maps one example to a vector of scores.
    - `window`: the window's shape, one size per input axis (static).
    - `strides`: one int, or one per input axis (static). Default 1.
    - `baseline`: a number or an array broadcastable to `x`. Default 0.0.
    - `chunk_size`: evaluate at most this many windows at once (`None`: all;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][]).

    **Returns:** an array shaped like `x`.

    ```python
    occ = xa.Occlusion(model, window=(1, 4, 4), strides=(1, 2, 2))
    a = occ(x, target=3)
    ```
    """

    model: Callable[..., Any]
    window: tuple[int, ...] = eqx.field(static=True)
    strides: tuple[int, ...] = eqx.field(static=True)
    baseline: Any
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        window: tuple[int, ...],
        strides: int | tuple[int, ...] = 1,
        baseline: Baseline = 0.0,
        chunk_size: int | Literal["auto"] | None = "auto",
        *,
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
        self.model = model
        self.window = _as_tuple(window, "window")
        self.strides = _as_tuple(strides, "strides")
        self.baseline = as_baseline_array(baseline)
        self.chunk_size = chunk_size

    def __check_init__(self):
        check_chunk_size(self.chunk_size)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "*dims"]:
        b = broadcast_baseline(self.baseline, x)
        ind = window_indicators(x.shape, self.window, self.strides)
        counts = [a.shape[0] for a in ind]
        grid = np.indices(counts).reshape(len(counts), -1)
        params = tuple(jnp.asarray(g, jnp.int32) for g in grid)
        mats = [jnp.asarray(a) for a in ind]

        def occluded(idx):
            m = jnp.ones((), jnp.float32)
            for a, i in zip(mats, idx, strict=True):
                m = _outer(m, a[i])
            return jnp.where(m > 0, b, x)

        drops = score(self.model, x, target) - scored(
            self.model, x, target, occluded, params, self.chunk_size
        )
        # The sum over windows of drop * window-indicator, as one contraction per
        # axis (the windows form a grid), divided by how many windows cover each
        # element.
        total = drops.reshape(counts)
        cover = jnp.ones((), jnp.float32)
        for a in mats:
            total = jnp.tensordot(total, a, axes=(0, 0))
            cover = _outer(cover, jnp.sum(a, axis=0))
        return (total / cover).astype(x.dtype)


def _outer(m: Array, v: Array) -> Array:
    """The outer product of an n-d array with a vector: shape `(*m.shape, len(v))`."""
    return m.reshape(*m.shape, 1) * v.reshape(*(1,) * m.ndim, -1)


ROWS = (
    MethodEntry(
        "occlusion",
        Occlusion,
        "perturbation",
        "Occlusion: score drop under a sliding baseline window",
        lambda c: Occlusion(
            c.model,
            *default_window(c),
            baseline_or_zero(c),
            c.option("chunk_size", "auto"),
        ),
        differentiable=PERTURBATION,
        benchmark=("bench_perturbation.py", "Captum Occlusion"),
    ),
)
