"""Where an image's channel axis is: the `input_layout` every method takes.

One place decides it: `resolve_input_layout` infers `"chw"` or `"hwc"` from
an input's shape (or honours the method's explicit value), and the helpers give
the spatial axes, the spatial size and the channel axis of that layout. This
module sits on the contract's floor with `_attribution.py`; it imports nothing
from the package.
"""

from typing import Any, Literal, TypeAlias

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

InputLayout: TypeAlias = Literal["chw", "hwc"] | None
INPUT_LAYOUTS = ("chw", "hwc")
# Channel counts that make an axis look like a channel axis (grey, RGB, RGBA).
_CHANNEL_COUNTS = (1, 3, 4)


def input_layout_field() -> Any:
    """The `input_layout` field every final method owns: static, keyword-only,
    default `None` (inferred from `x`)."""
    return eqx.field(static=True, default=None, kw_only=True)


def check_input_layout(input_layout: Any) -> None:
    """Trace-time check of a method's `input_layout` option."""
    if input_layout is not None and input_layout not in INPUT_LAYOUTS:
        raise ValueError(
            f"Unknown `input_layout={input_layout!r}`; pass `input_layout='chw'` "
            "for channels-first images `(C, H, W)`, `input_layout='hwc'` for "
            "channels-last images `(H, W, C)`, or `None` to infer it from `x`."
        )


def resolve_input_layout(shape: tuple[int, ...], input_layout: InputLayout) -> Any:
    """The layout of an input of shape `shape`: `"chw"`, `"hwc"` or `None`.

    **Arguments:**

    - `shape`: the shape of one example.
    - `input_layout`: the method's option; an explicit `"chw"` or `"hwc"` is
        always honoured (it needs a 3-D input), `None` infers it.

    **Returns:** for `input_layout=None`, the inferred layout: a 3-D input whose
    last axis has 1, 3 or 4 entries and whose first axis does not is `"hwc"`
    (e.g. `(32, 32, 3)`); every other 3-D input is `"chw"`, including the
    ambiguous ones whose first and last axes both could be channels (e.g.
    `(3, 32, 3)` or `(4, 4, 4)`: pass `input_layout="hwc"` for those) and the
    ones whose neither could (`(4, 5, 6)`). A 2-D input `(H, W)` has no channel
    axis (`None`); an input of other rank keeps the channels-first reading (the
    last two axes are spatial), `"chw"`.
    """
    ndim = len(shape)
    if input_layout is not None:
        check_input_layout(input_layout)
        if ndim != 3:
            raise ValueError(
                f"`input_layout={input_layout!r}` needs a 3-D image, `(C, H, W)` or "
                f"`(H, W, C)`, but `x` has shape {tuple(shape)}; pass "
                "`input_layout=None` for an input without a channel axis (or add "
                "one: `x[None]` / `x[..., None]`)."
            )
        return input_layout
    if ndim == 2:
        return None
    if ndim == 3 and shape[-1] in _CHANNEL_COUNTS and shape[0] not in _CHANNEL_COUNTS:
        return "hwc"
    return "chw"


def spatial_axes(ndim: int, layout: InputLayout) -> tuple[int, int]:
    """The two spatial axes `(H axis, W axis)` of an input of rank `ndim` in the
    resolved `layout` (from `resolve_input_layout`)."""
    if layout == "hwc":
        return 0, 1
    return ndim - 2, ndim - 1


def channel_axis(ndim: int, layout: InputLayout) -> int | None:
    """The channel axis of an input of rank `ndim` in the resolved `layout`, or
    `None` for a 2-D input (no channel axis)."""
    if layout is None or ndim < 3:
        return None
    return ndim - 1 if layout == "hwc" else 0


def spatial_shape(
    x: Any, input_layout: InputLayout, method_name: str
) -> tuple[int, int]:
    """The input's spatial size `(H, W)` in its (resolved) layout.

    Raises a `ValueError` naming `method_name` for an input with fewer than two
    axes.
    """
    if x.ndim < 2:
        raise ValueError(
            f"{method_name} maps onto the input's spatial axes, but `x` has shape "
            f"{x.shape}; pass an image such as `(C, H, W)` or `(H, W, C)` (with "
            "`input_layout='hwc'`)."
        )
    layout = resolve_input_layout(x.shape, input_layout)
    h, w = spatial_axes(x.ndim, layout)
    return int(x.shape[h]), int(x.shape[w])


def map_over_channels(m: Array, ndim: int, layout: InputLayout) -> Array:
    """An `(H, W)` map reshaped to broadcast against an input of rank `ndim` in
    the resolved `layout`: `m[None]` for `(C, H, W)`, `m[..., None]` for
    `(H, W, C)`."""
    if layout == "hwc":
        return m.reshape(m.shape + (1,) * (ndim - 2))
    return m.reshape((1,) * (ndim - 2) + m.shape)


def channels_first(a: Array, layout: InputLayout) -> Array:
    """`a`, an array shaped like the input, with its channel axis moved first
    (a no-op unless `layout` is `"hwc"`)."""
    return jnp.moveaxis(a, -1, 0) if layout == "hwc" and a.ndim == 3 else a


def from_channels_first(a: Array, layout: InputLayout) -> Array:
    """The inverse of `channels_first`: a channels-first array back in the
    input's `layout`."""
    return jnp.moveaxis(a, 0, -1) if layout == "hwc" and a.ndim == 3 else a
