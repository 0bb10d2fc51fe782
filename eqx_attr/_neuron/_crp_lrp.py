"""What `LayerLRP`, `CRP` and `ChannelRelevance` share: the LRP pass with a gate.

The gate (`eqx_attr/_rules/_lrp_gate.py`) sits on the output of the layer named
by `where`; one `jax.vjp` gives the relevance there and the input relevance with
the layer's relevance multiplied by a mask (CRP's conditioning).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._attribution import Target, check_where
from .._layers import LayerInfo, inspect_layer, resolve_layer
from .._rules._lrp import LRP
from .._rules._lrp_gate import gated_lrp, lrp_checked_target


def set_lrp_fields(
    method: Any,
    model: Callable,
    where: Any,
    composite: Any,
    rule: Any,
    overrides: Any,
    allow_gradient: Any,
) -> None:
    """In a method's `__init__`: check `where` and the LRP options (as `xa.LRP`
    does, with its defaults) and set the fields `lrp_of` reads."""
    check_where(where, "where", "lambda m: m.conv2")
    lrp = LRP(
        model,
        composite,
        rule=rule,
        overrides=overrides,
        allow_gradient=allow_gradient,
    )
    method.model = model
    method.where = where
    method.composite = lrp.composite
    method.overrides = lrp.overrides
    method.allow_gradient = lrp.allow_gradient


def lrp_of(method: Any) -> LRP:
    """The `xa.LRP` of a method's fields (the model is held once, by the method)."""
    return LRP(
        method.model,
        method.composite,
        overrides=method.overrides,
        allow_gradient=method.allow_gradient,
    )


def checked_call(
    lrp: LRP, where: Callable, x: Array, target: Target
) -> tuple[Target, LayerInfo]:
    """The trace-time checks of a call: the LRP's, and `where` (called once)."""
    resolve_layer(lrp.model, where, "where")  # errors that name `where`
    info = inspect_layer(lrp.model, where, x)
    return lrp_checked_target(lrp, x, target), info


def relevances(
    lrp: LRP, where: Callable, x: Array, target: Target, mask: Array | None = None
) -> tuple[Array, Array]:
    """`(input relevance conditioned on mask, layer relevance)`; `mask=None`: 1."""
    if mask is None:
        info = inspect_layer(lrp.model, where, x)
        mask = jnp.ones(info.act.shape, info.act.dtype)
    return gated_lrp(lrp, x, target, where, mask)


def channel_axis_of(shape: tuple[int, ...], channel_axis: int) -> int:
    """`channel_axis` as a non-negative axis of `shape`, or a clear error."""
    n = len(shape)
    if not -n <= channel_axis < n:
        raise ValueError(
            f"`channel_axis={channel_axis}` is out of range for the layer's output "
            f"of shape {shape}; use 0 for (C, H, W) feature maps or -1 for (N, D) "
            "tokens."
        )
    return channel_axis % n


def check_concepts(concepts: Any, n_channels: int) -> None:
    """Trace-time range check of concrete concept ids (traced ones are checked
    at run time)."""
    if not isinstance(concepts, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue]
        values = np.asarray(concepts)
        if values.size and (values.min() < 0 or values.max() >= n_channels):
            raise ValueError(
                f"`concepts` holds channel ids {values.tolist()}, but the layer has "
                f"{n_channels} channels; pass ids in [0, {n_channels - 1}]."
            )
