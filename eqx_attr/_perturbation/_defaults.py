"""The defaults the perturbation family's registry rows build with: masks, windows."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._layout import (
    resolve_input_layout,
    spatial_axes,
)
from .._method_entry import BuildContext


def _spatial(c: BuildContext) -> tuple[int, int]:
    """`(H, W)` of the context's `input_shape`, in its layout (the option
    `input_layout`, or inferred: `(H, W, C)` for a channels-last shape)."""
    shape = tuple(c.input_shape or ())
    layout = resolve_input_layout(shape, c.options.get("input_layout"))
    h, w = spatial_axes(len(shape), layout)
    return shape[h], shape[w]


def default_mask(c: BuildContext) -> Any:
    """The context's mask, else square cells of about 1/4 of the short side."""
    if c.mask is not None:
        return c.mask
    from ..masks import grid

    if c.input_shape is None or len(c.input_shape) < 2:
        raise ValueError(
            "This method needs a feature `mask` (or an `input_shape` to build a "
            "grid mask); pass e.g. `mask=xa.masks.grid((28, 28), 7)`."
        )
    h, w = _spatial(c)
    return grid((h, w), max(1, int(np.ceil(min(h, w) / 4))))


def default_window(c: BuildContext) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """An occlusion window of 1/7 of each spatial side, half-overlapping."""
    if c.input_shape is None:
        raise ValueError("Occlusion needs the `input_shape` to size its window.")
    shape = tuple(c.input_shape)
    h, w = _spatial(c)
    wh, ww = max(1, h // 7), max(1, w // 7)
    # The whole extent of every other (channel) axis, the window on (H, W).
    window, strides = list(shape), [1] * len(shape)
    if len(shape) >= 2:
        layout = resolve_input_layout(shape, c.options.get("input_layout"))
        ah, aw = spatial_axes(len(shape), layout)
        window[ah], window[aw] = wh, ww
        strides[ah], strides[aw] = max(1, wh // 2), max(1, ww // 2)
    window, strides = tuple(window), tuple(strides)
    return c.option("window", window), c.option("strides", strides)


def baseline_or_zero(c: BuildContext) -> Any:
    """The context's baseline, else 0."""
    return c.baseline if c.baseline is not None else 0.0


def exact_mask(c: BuildContext) -> Any:
    """The context's mask if exact Shapley values can afford it, else a 2 x 2 grid."""
    if c.mask is not None and np.unique(np.asarray(c.mask)).size <= 14:
        return c.mask
    return _coarse_mask(c)


def _coarse_mask(c: BuildContext) -> Any:
    """A 2 x 2 grid (4 features: 16 coalitions) for exact Shapley values."""
    from ..masks import grid

    if c.input_shape is None:
        raise ValueError("ShapleyValues needs a `mask` or the `input_shape`.")
    h, w = _spatial(c)
    return grid((h, w), (-(-h // 2), -(-w // 2)))
