"""Concept Relevance Propagation (CRP) and relevance maximisation.

Achtibat et al., *From attribution maps to human-understandable explanations
through Concept Relevance Propagation*, Nature Machine Intelligence 2023, with
zennit-crp's semantics (`CondAttribution`, `ChannelConcept`, `FeatureVisualization`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, Shaped

from .._attribution import (
    AbstractCompiledAttribution,
    Attribution,
    Image,
    Target,
    check_bool,
    check_choice,
    check_positive_int,
    check_where,
)
from .._checks import error_if
from .._layers import inspect_layer, layer_activation, resolve_layer
from .._layout import InputLayout, input_layout_field
from .._method_entry import Differentiability, MethodEntry
from .._rules._lrp_composites import AbstractComposite, composite_by_name
from .._rules._lrp_rules import AbstractRule
from ._crp_lrp import (
    channel_axis_of,
    check_concepts,
    checked_call,
    lrp_of,
    relevances,
    set_lrp_fields,
)

__all__ = [
    "CRP",
    "ChannelActivation",
    "ChannelRelevance",
    "top_k_references",
]

_REDUCE = ("sum", "max")


def _as_concepts(concepts: Any) -> Int[Array, " k"]:
    if isinstance(concepts, bool) or not (
        isinstance(concepts, (int, np.integer, Sequence, np.ndarray, jax.Array))
    ):
        raise TypeError(
            "`concepts` must be a channel id, a sequence of channel ids or an "
            f"integer array of them, e.g. `concepts=[3, 7]`; got {concepts!r}."
        )
    arr = jnp.asarray(concepts)
    if arr.size and not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(
            f"`concepts` must hold integer channel ids, got dtype {arr.dtype}."
        )
    if arr.ndim > 1:
        raise ValueError(
            f"`concepts` must be one id or a 1-D set of ids, got shape {arr.shape}; "
            "for several separate concepts, vmap: `eqx.filter_vmap(lambda c: "
            "xa.CRP(model, where, c)(x, t))(ids)`."
        )
    return jnp.atleast_1d(arr).astype(jnp.int32)


def _reduce_channels(r: Array, axis: int, reduce: str) -> Array:
    r = jnp.moveaxis(r, axis, 0).reshape(r.shape[axis], -1)
    return jnp.sum(r, axis=1) if reduce == "sum" else jnp.max(r, axis=1)


class CRP(AbstractCompiledAttribution):
    """Concept Relevance Propagation: the input relevance of chosen channels.

    LRP ([`eqx_attr.LRP`][], same rules) whose relevance at the output of the
    layer `where` is kept on the channels in `concepts` and zeroed on the
    others before it flows on to the input (zennit-crp's `CondAttribution` with
    a `ChannelConcept` condition). Conditioning on every channel gives LRP's
    map; the maps of the parts of a partition of the channels sum to it. Many
    concepts at once: `eqx.filter_vmap` over the ids, building the method inside
    (the forward pass is shared, only the backward pass is batched).

    **Arguments:**

    - `model`, `composite`, `rule`, `overrides`, `allow_gradient`: as for
        [`eqx_attr.LRP`][].
    - `where`: a `where` function naming the layer (`lambda m: m.conv2`),
        called once per forward pass.
    - `concepts`: a channel id, a sequence of ids or an integer array: the
        channel set to condition on (an array field, so it can be vmapped).
    - `channel_axis`: the channel axis of the layer's output (0 for `(C, H, W)`
        feature maps, -1 for `(N, D)` tokens).
    - `input_layout`: checked and otherwise unused.

    **Returns:** the conditional relevance, shaped like `x`.

    ```python
    h = xa.CRP(model, lambda m: m.conv2, concepts=[3, 7])(x, target=3)
    hs = eqx.filter_vmap(lambda c: xa.CRP(model, lambda m: m.conv2, c)(x, 3))(
        jnp.arange(8))                                   # (8, 1, 28, 28)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    concepts: Int[Array, " k"]
    composite: AbstractComposite
    overrides: tuple
    allow_gradient: tuple[str, ...] = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        where: Callable,
        concepts: int | Sequence[int] | Shaped[Array, "*k"] | Shaped[np.ndarray, "*k"],
        composite: AbstractComposite | None = None,
        *,
        channel_axis: int = 0,
        rule: AbstractRule | None = None,
        overrides: tuple | list = (),
        allow_gradient: tuple[str, ...] | list[str] = (),
        input_layout: InputLayout = None,
    ):
        set_lrp_fields(self, model, where, composite, rule, overrides, allow_gradient)
        self.concepts = _as_concepts(concepts)
        if not isinstance(channel_axis, int) or isinstance(channel_axis, bool):
            raise TypeError(f"`channel_axis` must be an int, got {channel_axis!r}.")
        self.channel_axis = channel_axis
        self.input_layout = input_layout

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Attribution:
        return super().__call__(x, target, key=key)

    def _checked_target(self, x: Array, target: Target) -> Target:
        target, info = checked_call(lrp_of(self), self.where, x, target)
        axis = channel_axis_of(info.act.shape, self.channel_axis)
        check_concepts(self.concepts, info.act.shape[axis])
        return target

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        del key
        act = inspect_layer(self.model, self.where, x).act
        axis = channel_axis_of(act.shape, self.channel_axis)
        n = act.shape[axis]
        ids = error_if(
            self.concepts,
            jnp.any((self.concepts < 0) | (self.concepts >= n)),
            f"`concepts` holds a channel id outside [0, {n - 1}] (the layer has "
            f"{n} channels).",
        )
        keep = jnp.zeros((n,), act.dtype).at[ids].set(1)
        shape = [1] * len(act.shape)
        shape[axis] = n
        mask = jnp.broadcast_to(keep.reshape(shape), act.shape)
        return relevances(lrp_of(self), self.where, x, target, mask)[0]


class ChannelRelevance(AbstractCompiledAttribution):
    """The relevance of every channel of a layer for one example.

    The LRP relevance at the layer's output ([`eqx_attr.LayerLRP`][]) summed
    (or maximised) over every axis but the channel axis: zennit-crp's
    `ChannelConcept.attribute`, and the score by which its `FeatureVisualization`
    ranks reference examples ("relevance" mode, `max_target="sum"`,
    `abs_norm=True` there). Its output is one `(C,)` vector per example, so
    [`eqx_attr.explain_dataset`][] stores a data set's channel relevances,
    which [`eqx_attr.top_k_references`][] ranks.

    **Arguments:**

    - `model`, `where`, `composite`, `rule`, `overrides`, `allow_gradient`,
        `channel_axis`: as for [`eqx_attr.CRP`][].
    - `reduce`: `"sum"` (default) or `"max"` over the non-channel axes.
    - `normalize`: divide by the sum of the absolute channel relevances
        (+ 1e-10), as zennit-crp's `abs_norm` (default `False`).
    - `input_layout`: checked and otherwise unused.

    **Returns:** the channel relevances, shape `(C,)`.

    ```python
    r = xa.ChannelRelevance(model, lambda m: m.conv2)(x, target=3)   # (64,)
    top = jnp.argsort(-r)[:4]                      # the most relevant channels
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    composite: AbstractComposite
    overrides: tuple
    allow_gradient: tuple[str, ...] = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True)
    reduce: str = eqx.field(static=True)
    normalize: bool = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        where: Callable,
        composite: AbstractComposite | None = None,
        *,
        channel_axis: int = 0,
        reduce: str = "sum",
        normalize: bool = False,
        rule: AbstractRule | None = None,
        overrides: tuple | list = (),
        allow_gradient: tuple[str, ...] | list[str] = (),
        input_layout: InputLayout = None,
    ):
        set_lrp_fields(self, model, where, composite, rule, overrides, allow_gradient)
        check_choice(reduce, "reduce", _REDUCE)
        check_bool(normalize, "normalize")
        self.channel_axis = channel_axis
        self.reduce = reduce
        self.normalize = normalize
        self.input_layout = input_layout

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " C"]:
        return super().__call__(x, target, key=key)

    def _checked_target(self, x: Array, target: Target) -> Target:
        target, info = checked_call(lrp_of(self), self.where, x, target)
        channel_axis_of(info.act.shape, self.channel_axis)
        return target

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, " C"]:
        del key
        r = relevances(lrp_of(self), self.where, x, target)[1]
        r = _reduce_channels(
            r, channel_axis_of(r.shape, self.channel_axis), self.reduce
        )
        if self.normalize:
            r = r / (jnp.sum(jnp.abs(r)) + 1e-10)
        return r


class ChannelActivation(AbstractCompiledAttribution):
    """The activation of every channel of a layer, reduced over the other axes.

    The score of activation maximisation (zennit-crp's `ActMax`): the layer's
    output maximised (default) or summed over every axis but the channel axis.
    Class-agnostic: `target` is checked against the model and otherwise unused,
    so [`eqx_attr.explain_dataset`][] runs it like any method.

    **Arguments:**

    - `model`: maps one example to scores.
    - `where`: a `where` function naming the layer, called once per forward pass.
    - `channel_axis`: as for [`eqx_attr.CRP`][].
    - `reduce`: `"max"` (default) or `"sum"`.
    - `input_layout`: checked and otherwise unused.

    **Returns:** the channel activations, shape `(C,)`.

    ```python
    a = xa.ChannelActivation(model, lambda m: m.conv2)(x)            # (64,)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    channel_axis: int = eqx.field(static=True, default=0, kw_only=True)
    reduce: str = eqx.field(static=True, default="max", kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_where(self.where, "where", "lambda m: m.conv2")
        check_choice(self.reduce, "reduce", _REDUCE)

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " C"]:
        return super().__call__(x, target, key=key)

    def _checked_target(self, x: Array, target: Target) -> Target:
        resolve_layer(self.model, self.where, "where")
        info = inspect_layer(self.model, self.where, x)
        channel_axis_of(info.act.shape, self.channel_axis)
        if target is None:
            return None  # class-agnostic: no target needed
        return super()._checked_target(x, target)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, " C"]:
        del key, target
        act = layer_activation(self.model, self.where, x)
        axis = channel_axis_of(act.shape, self.channel_axis)
        return _reduce_channels(act, axis, self.reduce)


def top_k_references(
    scores: Any, k: int, *, chunk_rows: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` examples with the highest score of every channel.

    Relevance (or activation) maximisation over a data set: `scores[n, c]` is
    example `n`'s score for channel `c`, e.g. the `"attributions"` array of an
    [`eqx_attr.explain_dataset`][] store of [`eqx_attr.ChannelRelevance`][] or
    [`eqx_attr.ChannelActivation`][]. It is read `chunk_rows` rows at a time
    (default: the array's own chunk length, else 4096), so it may be larger than
    memory. Ties keep the lower index first (as a stable descending sort).

    **Arguments:**

    - `scores`: an array-like `(N, C)` (NumPy, Zarr, a memmap).
    - `k`: how many references per channel, `1 <= k <= N`.
    - `chunk_rows`: rows read at a time.

    **Returns:** `(indices, values)`, both `(C, k)`, best first.

    ```python
    idx, val = xa.top_k_references(group["attributions"], k=8)
    ```
    """
    shape: tuple[int, ...] = tuple(getattr(scores, "shape", ()))
    if len(shape) != 2:
        raise ValueError(
            f"`scores` must be 2-D, (examples, channels), got shape {shape}."
        )
    n, c = shape[0], shape[1]
    check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"`k={k}` exceeds the number of examples, {n}.")
    if chunk_rows is None:
        chunks = getattr(scores, "chunks", None)
        chunk_rows = int(chunks[0]) if chunks else 4096
    check_positive_int(chunk_rows, "chunk_rows")
    best_idx = np.zeros((0, c), np.int64)
    best_val = None
    for start in range(0, n, chunk_rows):
        block = np.asarray(scores[start : start + chunk_rows])
        rows = np.arange(start, start + len(block), dtype=np.int64)
        idx = np.concatenate([best_idx, np.broadcast_to(rows[:, None], block.shape)])
        val = block if best_val is None else np.concatenate([best_val, block])
        # Earlier rows come first, so a stable sort keeps the lower index on ties.
        order = np.argsort(-val, axis=0, kind="stable")[:k]
        best_idx = np.take_along_axis(idx, order, axis=0)
        best_val = np.take_along_axis(val, order, axis=0)
    assert best_val is not None
    return best_idx.T.copy(), best_val.T.copy()


def _crp_build(c: Any) -> CRP:
    return CRP(
        c.model,
        c.need("layer"),
        c.option("concepts", 0),
        composite=composite_by_name(
            c.option("composite", "epsilon_plus_flat"),
            low=c.option("low", 0.0),
            high=c.option("high", 1.0),
        ),
        channel_axis=c.option("channel_axis", 0),
    )


ROWS = (
    MethodEntry(
        "crp",
        CRP,
        "neuron",
        "Concept Relevance Propagation: LRP conditioned on channels of a layer "
        "(options: concepts, channel_axis, composite)",
        _crp_build,
        needs=frozenset({"layer"}),
        output="input",
        differentiable=Differentiability(
            1, 1, "the stabiliser's sign(z) and rule selection are piecewise"
        ),
        benchmark=(None, "not timed yet: the LRP pass of `lrp` plus a gate"),
    ),
)
