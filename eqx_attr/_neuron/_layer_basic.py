"""A layer's activation, gradient x activation and feature ablation (Captum's
`LayerActivation`, `LayerGradientXActivation`, `LayerFeatureAblation`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    Target,
    batched_map,
    check_bool,
    check_chunk_size,
    index_target,
)
from .._layout import InputLayout, input_layout_field
from .._method_entry import PERTURBATION, BuildContext, Differentiability, MethodEntry
from .._perturbation._common import (
    Baseline,
    FeatureMask,
    as_baseline_array,
    relabel_mask,
)
from ._layer_common import (
    AbstractLayerAttribution,
    check_layer_shape,
    layer_site,
    site_act,
    site_info,
)

__all__ = ["LayerActivation", "LayerFeatureAblation", "LayerGradientXActivation"]

LayerAttr = Float[Array, "*layer"]


class LayerActivation(AbstractLayerAttribution):
    """The output (or input) of a layer, as Captum's `LayerActivation`.

    Class-agnostic: the call accepts a `target` (the data-set runner passes one)
    and ignores it once checked; `target=None` is always accepted.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `where`: a `where` function naming ONE sub-module, e.g. `lambda m: m.conv2`.
    - `to_layer_input`: return the layer's first positional argument instead of
        its output (Captum's `attribute_to_layer_input=True`). Default `False`.
    - `input_layout`: `"chw"`, `"hwc"` or `None`, keyword-only; checked only.

    **Returns:** `method(x, target=None)` gives the layer's output for `x` (one
    example, no batch axis), or its input with `to_layer_input=True`.

    ```python
    act = xa.LayerActivation(model, lambda m: m.conv2)(x)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    to_layer_input: bool = eqx.field(static=True, default=False, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def _checked_target(self, x: Array, target: Target) -> Target:
        if target is None:
            return None
        return index_target(self.model, x, target)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> LayerAttr:
        del target, key
        model, where = layer_site(self.model, self.where, self.to_layer_input)
        return site_act(model, where, x, site_info(model, where, x))


class LayerGradientXActivation(AbstractLayerAttribution):
    """The target's gradient at a layer times the layer's output, as Captum's
    `LayerGradientXActivation`.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `where`: a `where` function naming ONE sub-module, e.g. `lambda m: m.conv2`.
    - `multiply_by_inputs`: `True` (default) multiplies the gradient by the
        activation; `False` returns the gradient alone.
    - `to_layer_input`: attribute to the layer's first positional argument
        instead of its output (Captum's `attribute_to_layer_input`).
    - `input_layout`: `"chw"`, `"hwc"` or `None`, keyword-only; checked only.

    **Returns:** `method(x, target)` gives an array shaped like the layer's output
    (or input).

    ```python
    a = xa.LayerGradientXActivation(model, lambda m: m.conv2)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    multiply_by_inputs: bool = eqx.field(static=True, default=True)
    to_layer_input: bool = eqx.field(static=True, default=False, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_bool(self.multiply_by_inputs, "multiply_by_inputs")

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> LayerAttr:
        del key
        act, grad = self._site(x, target).act_grad(x)
        return grad * act if self.multiply_by_inputs else grad


class LayerFeatureAblation(AbstractLayerAttribution):
    """Ablation of a layer's neurons (or groups of them), as Captum's
    `LayerFeatureAblation`.

    Each group of the layer's output (each neuron, or the elements sharing an id
    in `layer_mask`) is replaced in turn by `layer_baseline`, the rest of the
    network run on it; every element of the group carries the drop of the
    target's score, `f(x) - f(x with the group ablated)`. The forward passes up
    to the layer run once; the groups are vectorised, `chunk_size` at a time.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `where`: a `where` function naming ONE sub-module, e.g. `lambda m: m.conv2`.
    - `layer_mask`: `None` (default: every neuron alone) or integer group ids
        broadcastable to the layer's output for one example (no batch axis),
        e.g. `jnp.arange(C).reshape(C, 1, 1)` for one group per channel.
    - `layer_baseline`: a number or an array broadcastable to the layer's output:
        what an ablated element is set to. Default 0.0.
    - `chunk_size`: groups per vectorised chunk (`None`: all at once; `"auto"`,
        the default: as many as fit the memory budget).
    - `to_layer_input`: ablate the layer's first positional argument instead of
        its output (Captum's `attribute_to_layer_input`).
    - `input_layout`: `"chw"`, `"hwc"` or `None`, keyword-only; checked only.

    **Returns:** `method(x, target)` gives an array shaped like the layer's output.

    ```python
    per_channel = jnp.arange(32).reshape(32, 1, 1)
    a = xa.LayerFeatureAblation(model, lambda m: m.conv2, layer_mask=per_channel)
    a(x, target=3)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    layer_mask: Array | None
    layer_baseline: Array
    n_features: int | None = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    to_layer_input: bool = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        where: Callable,
        layer_mask: FeatureMask | None = None,
        layer_baseline: Baseline = 0.0,
        chunk_size: int | Literal["auto"] | None = "auto",
        *,
        to_layer_input: bool = False,
        input_layout: InputLayout = None,
    ):
        check_chunk_size(chunk_size)
        self.model = model
        self.where = where
        if layer_mask is None:
            self.layer_mask, self.n_features = None, None
        else:
            # `relabel_mask` names the argument `mask` in its errors.
            try:
                self.layer_mask, self.n_features = relabel_mask(layer_mask)
            except (TypeError, ValueError) as e:
                raise type(e)(str(e).replace("`mask`", "`layer_mask`")) from None
        try:
            self.layer_baseline = as_baseline_array(layer_baseline)
        except TypeError as e:
            raise TypeError(str(e).replace("`baseline`", "`layer_baseline`")) from None
        self.chunk_size = chunk_size
        self.to_layer_input = to_layer_input
        self.input_layout = input_layout

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> LayerAttr:
        del key
        site = self._site(x, target)
        shape, dtype = site.info.act.shape, site.info.act.dtype
        if self.layer_mask is None:
            n = int(np.prod(shape, dtype=int))
            ids = jnp.arange(n, dtype=jnp.int32).reshape(shape)
        else:
            n = cast(int, self.n_features)
            example = _per_channel_example(shape)
            ids = check_layer_shape(self.layer_mask, shape, "layer_mask", example)
        b = check_layer_shape(self.layer_baseline, shape, "layer_baseline", "0.0")
        b = b.astype(dtype)
        y = site.act(x)
        rest = site.rest(x)
        scores = batched_map(
            lambda i: rest(jnp.where(ids == i, b, y)),
            jnp.arange(n, dtype=jnp.int32),
            self.chunk_size,
        )
        drops = rest(y) - scores
        return drops[ids].astype(dtype)


def _per_channel_example(shape: tuple[int, ...]) -> str:
    if not shape:
        return "0"
    dims = ", ".join(map(str, (shape[0],) + (1,) * (len(shape) - 1)))
    return f"jnp.arange({shape[0]}).reshape({dims})"


def _layer(c: BuildContext) -> Callable:
    return c.need("layer")


ROWS = (
    MethodEntry(
        "layer_activation",
        LayerActivation,
        "neuron",
        "A layer's output (class-agnostic)",
        lambda c: LayerActivation(c.model, _layer(c)),
        needs=frozenset({"layer"}),
        output="layer",
        differentiable=Differentiability(1, 1),
        benchmark=(None, "not timed: one forward pass"),
    ),
    MethodEntry(
        "layer_gradient_x_activation",
        LayerGradientXActivation,
        "neuron",
        "Gradient x activation at a layer",
        lambda c: LayerGradientXActivation(c.model, _layer(c)),
        needs=frozenset({"layer"}),
        output="layer",
        differentiable=Differentiability(1, 1),
        benchmark=(None, "not timed: one forward and one backward pass"),
    ),
    MethodEntry(
        "layer_feature_ablation",
        LayerFeatureAblation,
        "neuron",
        "Score drop per ablated layer neuron or group (layer_mask, chunk_size)",
        lambda c: LayerFeatureAblation(
            c.model,
            _layer(c),
            layer_mask=c.options.get("layer_mask"),
            layer_baseline=c.option("layer_baseline", 0.0),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        needs=frozenset({"layer"}),
        output="layer",
        differentiable=PERTURBATION,
        benchmark=(None, "not timed: one forward pass per group after the layer"),
    ),
)
