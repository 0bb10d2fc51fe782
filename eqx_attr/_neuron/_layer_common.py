"""What the layer methods share: the point they read (a layer's output or input),
and that point's activation, gradient and the rest of the network after it.

A method is built from `(model, where, to_layer_input)`. [`layer_site`][] turns
that into a `(model, where)` pair whose `where` names a module whose OUTPUT is the
point to read: the layer itself, or, for its input, an identity module that the
layer's first positional argument is routed through (in a copy of the model,
via `eqx.tree_at`). Everything else reads outputs with `eqx_attr._layers`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._attribution import (
    AbstractCompiledAttribution,
    check_bool,
    check_where,
    make_objective,
)
from .._layers import (
    LayerInfo,
    inspect_layer,
    read_layer,
    replace_layer_output,
    resolve_layer,
)

__all__: list[str] = []


class LayerInputEntry(eqx.Module):
    """The identity, as a module: its output is the layer's first argument."""

    def __call__(self, x: Any) -> Any:
        return x


class LayerInputRouted(eqx.Module):
    """A layer whose first positional argument passes through `entry` first, so
    that the layer's input can be read and replaced like a module's output."""

    module: Callable[..., Any]
    entry: LayerInputEntry

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return self.module(self.entry(x), *args, **kwargs)


def layer_site(
    model: Callable, where: Callable, to_layer_input: bool
) -> tuple[Callable, Callable]:
    """`(model, where)` such that `where` names the module whose output is the
    point to read: the layer (`to_layer_input=False`), or an identity module fed
    the layer's first positional argument (`True`)."""
    check_bool(to_layer_input, "to_layer_input")
    resolve_layer(model, where, "where")
    if not to_layer_input:
        return model, where
    routed = eqx.tree_at(
        where, model, replace_fn=lambda s: LayerInputRouted(s, LayerInputEntry())
    )
    return routed, lambda m: where(m).entry


def site_info(model: Callable, where: Callable, x: Array) -> LayerInfo:
    """Trace the model once (no FLOPs): the output and the point's shape, with the
    `_layers` checks (called once, one floating array, ...)."""
    return inspect_layer(model, where, x)


def site_objective(target: Any, info: LayerInfo) -> Callable[[Any], Array]:
    """The target as a function of the model's output (checked at trace time)."""
    return make_objective(target, info.out)


def site_act_grad(
    model: Callable,
    where: Callable,
    x: Array,
    objective: Callable[[Any], Array],
    info: LayerInfo,
) -> tuple[Array, Array]:
    """The point's value at `x` and the gradient of the objective there."""
    _, _, act, grad = read_layer(model, where, x, objective, info)
    return act, grad


def site_act(model: Callable, where: Callable, x: Array, info: LayerInfo) -> Array:
    """The point's value at `x` (under `jit` the backward pass is dead code)."""
    _, _, act, _ = read_layer(model, where, x, lambda s: _sum_leaves(s), info)
    return act


def _sum_leaves(out: Any) -> Array:
    # Any scalar function of the output will do: only the activation is kept.
    leaves = jax.tree_util.tree_leaves(out)
    return jnp.sum(jnp.stack([jnp.sum(leaf).astype(jnp.float32) for leaf in leaves]))


def site_rest(
    model: Callable, where: Callable, x: Array, objective: Callable[[Any], Array]
) -> Callable[[Array], Array]:
    """The network after the point, as a function of the point's value: `y ->`
    the objective of the model run on `x` with the point replaced by `y`."""

    def rest(y: Array) -> Array:
        return objective(replace_layer_output(model, where, y)(x))

    return rest


class RestOfNetwork(eqx.Module):
    """The model run on `x` with the point replaced by its argument, as a module
    (for the rule engine, which traces a model's leaves)."""

    model: Callable[..., Any]
    x: Array
    where: Callable = eqx.field(static=True)

    def __call__(self, y: Array) -> Any:
        return replace_layer_output(self.model, self.where, y)(self.x)


def check_layer_shape(
    value: Array, shape: tuple[int, ...], name: str, example: str
) -> Array:
    """`value` broadcast to the point's `shape`, or an error naming `name`; the
    fix shows `example` (e.g. `"jnp.arange(C).reshape(C, 1, 1)"`)."""
    try:
        if value.ndim > len(shape):
            raise ValueError
        return jnp.broadcast_to(value, shape)
    except ValueError:
        raise ValueError(
            f"`{name}` of shape {value.shape} does not broadcast to the layer's "
            f"output of shape {shape} (one example, no batch axis); pass an "
            f"array broadcastable to that shape, e.g. `{name}={example}`."
        ) from None


@dataclasses.dataclass(frozen=True)
class LayerSite:
    """One call's view of the point a layer method reads, traced at `x`.

    `model` and `where` name the point as a module's output (see [`layer_site`][]);
    `info` is the trace's [`LayerInfo`][]; `objective` maps the model's output to
    the target's score.
    """

    model: Callable[..., Any]
    where: Callable
    info: LayerInfo
    objective: Callable

    def act_grad(self, x: Array) -> tuple[Array, Array]:
        """The point's value and the objective's gradient there, at input `x`."""
        return site_act_grad(self.model, self.where, x, self.objective, self.info)

    def act(self, x: Array) -> Array:
        """The point's value at input `x`."""
        return site_act(self.model, self.where, x, self.info)

    def rest(self, x: Array) -> Callable[[Array], Array]:
        """The objective as a function of the point's value, the input being `x`."""
        return site_rest(self.model, self.where, x, self.objective)


class AbstractLayerAttribution(AbstractCompiledAttribution):
    """Base of the layer methods: a model, a layer named by `where`, and whether
    the attribution is to the layer's output (default) or its input.

    Concrete subclasses declare the fields and implement `attribute`; this base
    checks `where` at construction and builds the call's [`LayerSite`][].
    """

    model: eqx.AbstractVar[Callable[..., Any]]
    where: eqx.AbstractVar[Callable]
    to_layer_input: eqx.AbstractVar[bool]

    def __check_init__(self):
        check_where(self.where, "where", "lambda m: m.conv2")
        check_bool(self.to_layer_input, "to_layer_input")
        resolve_layer(self.model, self.where, "where")

    def _site(self, x: Array, target: Any) -> LayerSite:
        model, where = layer_site(self.model, self.where, self.to_layer_input)
        info = site_info(model, where, x)
        return LayerSite(model, where, info, site_objective(target, info))
