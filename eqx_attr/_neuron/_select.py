"""How a neuron is named, and the model cut at its layer.

A neuron is named at construction, as Captum's `neuron_selector`:

- an `int`: a flat index into the layer's output, `ravel(out)[i]`;
- a tuple of ints: an index into the layer's output, `out[i, j, k]`;
- an integer array: 0-d is a flat index, 1-d (length `out.ndim`) an index tuple;
- a callable `activation -> scalar` (static).

Integer neurons are kept as ARRAY leaves, so that many neurons are one
`eqx.filter_vmap` over the method built inside the vmapped function: the forward
pass does not depend on the neuron, so JAX keeps it un-batched.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._attribution import (
    AbstractCompiledAttribution,
    Image,
    Target,
    check_index,
    index_target,
)
from .._checks import error_if
from .._layers import inspect_layer, resolve_layer
from .._layout import InputLayout

Neuron: TypeAlias = (
    int
    | tuple[int, ...]
    | Int[Array, ""]
    | Int[Array, " d"]
    | Int[np.ndarray, ""]
    | Int[np.ndarray, " d"]
    | Callable[[Array], Array]
)

_NEURON_HELP = (
    "Name the neuron as an int (a flat index into the layer's output), a tuple of "
    "ints (an index into it), an integer array (0-d: flat, 1-d: an index tuple) or "
    "a callable `activation -> scalar`, e.g. `neuron=(3, 2, 2)`."
)


def as_neuron(neuron: Any) -> Array | Callable[..., Any]:
    """The neuron as the methods store it: an int32 array leaf, or the callable.

    Raises `TypeError` naming `neuron` for anything else (floats, bools,
    strings, nested tuples, arrays of more than one axis).
    """
    if callable(neuron) and not isinstance(neuron, (jax.Array, np.ndarray)):
        return neuron
    if isinstance(neuron, bool) or isinstance(neuron, np.bool_):
        raise TypeError(f"`neuron` must not be a bool, got {neuron!r}. {_NEURON_HELP}")
    if isinstance(neuron, (numbers.Integral, np.integer)):
        return jnp.asarray(int(neuron), jnp.int32)
    if isinstance(neuron, tuple):
        if not neuron or not all(
            isinstance(i, (numbers.Integral, np.integer)) and not isinstance(i, bool)
            for i in neuron
        ):
            raise TypeError(
                f"`neuron` as a tuple must hold ints only, got {neuron!r}. "
                + _NEURON_HELP
            )
        return jnp.asarray([int(i) for i in neuron], jnp.int32)
    if isinstance(neuron, (jax.Array, np.ndarray)):
        if not jnp.issubdtype(neuron.dtype, jnp.integer):
            raise TypeError(
                f"`neuron` must be an integer array, got dtype {neuron.dtype}. "
                + _NEURON_HELP
            )
        if neuron.ndim > 1:
            raise TypeError(
                f"`neuron` must be a 0-d or 1-d integer array, got shape "
                f"{neuron.shape}. For many neurons, vmap over the method: "
                "`eqx.filter_vmap(lambda n: xa.NeuronGradient(model, where, n)(x))"
                "(neurons)`."
            )
        return jnp.asarray(neuron, jnp.int32)
    raise TypeError(f"`neuron` has type {type(neuron).__name__}. " + _NEURON_HELP)


def _range_message(shape: tuple[int, ...], detail: str) -> str:
    size = int(np.prod(shape))
    return (
        f"`neuron` {detail} is out of range for the layer's output of shape "
        f"{shape}: a flat index must lie in [0, {size - 1}], an index tuple "
        f"(i_0, ..., i_{len(shape) - 1}) in [0, shape[k] - 1] for each axis."
    )


def check_neuron(neuron: Array | Callable, shape: tuple[int, ...]) -> None:
    """Trace-time checks of an integer neuron against the layer's output shape.

    The length of an index tuple is always known; the index values only when the
    neuron is concrete (a traced neuron is checked by `select_neuron` at run time).
    """
    if callable(neuron) and not isinstance(neuron, jax.Array):
        return
    assert isinstance(neuron, jax.Array)
    if neuron.ndim == 1 and neuron.shape[0] != len(shape):
        raise ValueError(
            f"`neuron` has {neuron.shape[0]} indices, but the layer's output has "
            f"shape {shape} ({len(shape)} axes); pass one index per axis, or an int "
            "flat index."
        )
    if isinstance(neuron, Tracer):
        return
    value = np.asarray(neuron)
    if neuron.ndim == 0:
        bad = not 0 <= int(value) < int(np.prod(shape))
    else:
        bad = bool(np.any(value < 0) or np.any(value >= np.asarray(shape)))
    if bad:
        raise ValueError(_range_message(shape, f"= {value.tolist()!r}"))


def select_neuron(
    act: Float[Array, "*act"], neuron: Array | Callable
) -> Float[Array, ""]:
    """The neuron's value in the layer's output `act`, as a scalar.

    An integer neuron outside the layer's shape is an `eqx.error_if` error (plain
    indexing would clamp it and silently explain another neuron).
    """
    if callable(neuron) and not isinstance(neuron, jax.Array):
        value = neuron(act)
        if jnp.shape(value) != ():
            raise ValueError(
                "A callable `neuron` must map the layer's output to a scalar, but it "
                f"returned shape {jnp.shape(value)}; e.g. `lambda a: a[3, 2, 2]` or "
                "`lambda a: a[3].mean()`."
            )
        return value
    assert isinstance(neuron, jax.Array)
    shape = act.shape
    if neuron.ndim == 0:
        bad = (neuron < 0) | (neuron >= act.size)
        flat = neuron
    else:
        bad = jnp.any((neuron < 0) | (neuron >= jnp.asarray(shape, jnp.int32)))
        strides = np.cumprod((1,) + shape[::-1])[:-1][::-1]
        flat = jnp.sum(neuron * jnp.asarray(strides, jnp.int32))
    flat = error_if(flat, bad, _range_message(shape, "(a traced index)"))
    return jax.lax.dynamic_index_in_dim(act.reshape(-1), flat, keepdims=False)


class _LayerReached(Exception):
    """Carries the layer's output out of the truncated forward pass."""

    def __init__(self, value: Any):
        super().__init__()
        self.value = value


class _Cut(eqx.Module):
    module: Any
    action: Callable = eqx.field(static=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.action(self.module, args, kwargs)


def layer_output(
    model: Callable, layer: Callable, x: Array, call_index: int | None = None
) -> Array:
    """The output of `layer` for `x`, with the model cut after that layer.

    The forward pass stops at the chosen call of the layer (an exception caught in
    the same trace carries the activation out), so what follows the layer is
    never traced: it costs nothing and cannot change any backward rule. Pure:
    no tracer outlives the trace that made it. The layer must be called directly
    by the model's forward pass (not inside a `vmap`, `scan` or `checkpoint`
    within the model; `inspect_layer` refuses a layer called inside a `vmap`).
    """
    index = 0 if call_index is None else call_index
    count = [0]

    def action(module, args, kwargs):
        out = module(*args, **kwargs)
        k = count[0]
        count[0] += 1
        if k == index:
            raise _LayerReached(out)
        return out

    cut = eqx.tree_at(layer, model, replace_fn=lambda s: _Cut(s, action))
    try:
        cut(x)
    except _LayerReached as reached:
        return reached.value
    raise ValueError(  # `inspect_layer` catches this first; kept as a guard
        "`where` names a module that the model's forward pass never calls."
    )


class NeuronFunction(eqx.Module):
    """`x -> the neuron's value`: the model cut at the layer, then the selector.

    **Arguments:** `model`, `layer` (a `where` function), `neuron` (as stored by
    `as_neuron`) and `call_index`.

    **Returns:** calling it on one example gives a 0-d array.
    """

    model: Callable[..., Any]
    neuron: Any
    layer: Callable = eqx.field(static=True)
    call_index: int | None = eqx.field(static=True, default=None)

    def __call__(self, x: Array) -> Array:
        act = layer_output(self.model, self.layer, x, self.call_index)
        return select_neuron(act, self.neuron)


class AbstractNeuronAttribution(AbstractCompiledAttribution):
    """Base of the neuron methods: the model, the layer and the neuron.

    A concrete method declares the fields below and implements `attribute`;
    `__call__` checks `x`, the layer, the neuron against the layer's output shape
    and the target (`None` only, unless `takes_target`), then runs `attribute`
    as one compiled program.
    """

    model: eqx.AbstractVar[Callable[..., Any]]
    where: eqx.AbstractVar[Callable]
    neuron: eqx.AbstractVar[Any]
    call_index: eqx.AbstractVar[int | None]
    input_layout: eqx.AbstractVar[InputLayout]

    # Neuron methods explain the neuron; `NeuronConductance` also takes a target.
    takes_target = False

    def __check_init__(self):
        resolve_layer(self.model, self.where, "where")
        check_index(self.call_index, "call_index")

    def neuron_function(self) -> NeuronFunction:
        """`x -> the neuron's value` (the model cut at the layer)."""
        return NeuronFunction(self.model, self.neuron, self.where, self.call_index)

    def _attribution_and_scores(
        self, x: Image, target: Target, key: PRNGKeyArray | None
    ) -> tuple[Any, Array | None]:
        # The data-set runner hands every method each example's class; a method
        # that explains its neuron has no use for it (the runner still stores the
        # class's score from its own forward pass).
        return self(x, target if self.takes_target else None, key=key), None

    def _checked_target(self, x: Array, target: Target) -> Target:
        info = inspect_layer(self.model, self.where, x, self.call_index)
        check_neuron(self.neuron, tuple(info.act.shape))
        if self.takes_target:
            return index_target(self.model, x, target)
        if target is not None:
            raise ValueError(
                f"{type(self).__name__} explains the neuron it was built for, so "
                f"`target` must be None (got {target!r}). Choose what to explain "
                "with `neuron=` at construction, e.g. "
                f"`xa.{type(self).__name__}(model, where, neuron=(3, 2, 2))(x)`."
            )
        return None
