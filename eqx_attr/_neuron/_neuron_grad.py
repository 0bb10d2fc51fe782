"""Gradient-based attributions of one neuron to the input: Captum's
`NeuronGradient`, `NeuronGuidedBackprop`, `NeuronDeconvolution` and
`NeuronFeatureAblation`."""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._attribution import (
    Attribution,
    Target,
    batched_map,
    check_choice,
    check_chunk_size,
)
from .._layout import InputLayout, input_layout_field
from .._method_entry import (
    PERTURBATION,
    SMOOTH,
    BuildContext,
    Differentiability,
    MethodEntry,
)
from .._perturbation._common import (
    as_baseline_array,
    broadcast_baseline,
    broadcast_mask,
    relabel_mask,
)
from .._rules._guided import Deconvolution, GuidedBackprop
from ._select import AbstractNeuronAttribution, Neuron, as_neuron

__all__ = [
    "NeuronGradient",
    "NeuronGuidedBackprop",
    "NeuronDeconvolution",
    "NeuronFeatureAblation",
]

_POLICIES = ("raise", "ignore")


class NeuronGradient(AbstractNeuronAttribution):
    """The gradient of one neuron of a layer with respect to the input.

    Captum's `NeuronGradient`: `d n(x) / d x`, where `n(x)` is the chosen element
    of the layer's output (or a function of it). The model is cut after the
    layer, so nothing after it is computed.

    **Arguments:**

    - `model`: maps one example to its output.
    - `where`: a `where` function naming the layer, e.g. `lambda m: m.conv2`.
    - `neuron`: an int (flat index into the layer's output), a tuple of ints (an
        index into it), an integer array (0-d flat, 1-d an index tuple; an array
        leaf, so a `vmap` over neurons shares one forward pass) or a callable
        `activation -> scalar`.
    - `call_index`: which call of the layer, when it is called several times.
    - `input_layout`: `"chw"`, `"hwc"` or `None`; checked, otherwise unused.

    **Returns:** `method(x)` (no `target`: the neuron is what is explained) gives
    an array shaped like `x`.

    ```python
    g = xa.NeuronGradient(model, lambda m: m.conv2, (3, 5, 5))(x)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    neuron: Any = eqx.field(converter=as_neuron)
    call_index: int | None = eqx.field(static=True, default=None, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        return jax.grad(self.neuron_function())(x)


class NeuronGuidedBackprop(AbstractNeuronAttribution):
    """Guided Backprop of one neuron: its gradient with the guided ReLU rule.

    Captum's `NeuronGuidedBackprop`: at every ReLU before the layer the backward
    signal passes only where the ReLU's input and the signal are positive
    (see [`eqx_attr.GuidedBackprop`][]). ReLUs after the layer play no part:
    the model is cut after the layer. A model whose part before the layer uses
    GELU, SiLU or other rectifiers without a guided rule raises, unless
    `other_activations="ignore"`.

    **Arguments:** `model`, `where`, `neuron`, `call_index` and `input_layout` as
    for [`eqx_attr.NeuronGradient`][]; `other_activations`: `"raise"` (default)
    or `"ignore"`.

    **Returns:** `method(x)` gives an array shaped like `x`.

    ```python
    a = xa.NeuronGuidedBackprop(model, lambda m: m.conv2, (3, 5, 5))(x)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    neuron: Any = eqx.field(converter=as_neuron)
    other_activations: str = eqx.field(static=True, default="raise", kw_only=True)
    call_index: int | None = eqx.field(static=True, default=None, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_choice(self.other_activations, "other_activations", _POLICIES)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        fn = self.neuron_function()
        return GuidedBackprop(fn, other_activations=self.other_activations)(x)


class NeuronDeconvolution(AbstractNeuronAttribution):
    """Deconvnet of one neuron: its gradient with every ReLU's backward rectified.

    Captum's `NeuronDeconvolution`: at every ReLU before the layer the backward
    pass is `g -> relu(g)` (see [`eqx_attr.Deconvolution`][]); the model is cut
    after the layer. The same errors as [`eqx_attr.NeuronGuidedBackprop`][].

    **Arguments:** as for [`eqx_attr.NeuronGuidedBackprop`][].

    **Returns:** `method(x)` gives an array shaped like `x`.

    ```python
    a = xa.NeuronDeconvolution(model, lambda m: m.conv2, (3, 5, 5))(x)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    neuron: Any = eqx.field(converter=as_neuron)
    other_activations: str = eqx.field(static=True, default="raise", kw_only=True)
    call_index: int | None = eqx.field(static=True, default=None, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_choice(self.other_activations, "other_activations", _POLICIES)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        fn = self.neuron_function()
        return Deconvolution(fn, other_activations=self.other_activations)(x)


class NeuronFeatureAblation(AbstractNeuronAttribution):
    """Feature ablation of one neuron: how much it drops when a feature is removed.

    Captum's `NeuronFeatureAblation`: each feature (the input elements sharing an
    id in `feature_mask`; by default every element alone) is replaced by the
    baseline, and its attribution is `n(x) - n(x with the feature ablated)`,
    carried by every element of the feature.

    **Arguments:**

    - `model`, `where`, `neuron`, `call_index`, `input_layout`: as for
        [`eqx_attr.NeuronGradient`][].
    - `feature_mask`: integer feature ids broadcastable to `x` (e.g.
        `xa.masks.grid((8, 8), 2)`), or `None` (every element its own feature).
    - `baseline`: a number or an array broadcastable to `x`. Default 0.0.
    - `chunk_size`: ablate at most this many features at once (`None`: all;
        `"auto"`, the default: as many as fit the memory budget).

    **Returns:** `method(x)` gives an array shaped like `x`.

    ```python
    a = xa.NeuronFeatureAblation(model, lambda m: m.conv2, 7,
                                 feature_mask=xa.masks.grid((28, 28), 7))(x)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    neuron: Any
    feature_mask: Array | None
    baseline: Array
    n_features: int | None = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    call_index: int | None = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        where: Callable,
        neuron: Neuron,
        *,
        feature_mask: Int[Array, "..."] | Int[np.ndarray, "..."] | None = None,
        baseline: float | Float[Array, "..."] | Float[np.ndarray, "..."] = 0.0,
        chunk_size: int | Literal["auto"] | None = "auto",
        call_index: int | None = None,
        input_layout: InputLayout = None,
    ):
        self.model, self.where, self.neuron = model, where, as_neuron(neuron)
        if feature_mask is None:
            self.feature_mask, self.n_features = None, None
        else:
            # Relabelled ids 0..F-1: F fixes the shapes, so it is static.
            self.feature_mask, self.n_features = relabel_mask(feature_mask)
        self.baseline = as_baseline_array(baseline)
        self.chunk_size, self.call_index = chunk_size, call_index
        self.input_layout = input_layout

    def __check_init__(self):
        check_chunk_size(self.chunk_size)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        fn = self.neuron_function()
        b = broadcast_baseline(self.baseline, x)
        if self.feature_mask is None or self.n_features is None:
            mask, n_features = jnp.arange(x.size).reshape(x.shape), x.size
        else:
            mask = broadcast_mask(self.feature_mask, x, self.input_layout)
            n_features = self.n_features
        drops = batched_map(
            lambda i: fn(jnp.where(mask == i, b, x)),
            jnp.arange(n_features),
            self.chunk_size,
        )
        return (fn(x) - drops)[mask].astype(x.dtype)


_BENCH = ("bench_neurons.py", "Captum Neuron* loop")
_NOT_TIMED = (
    None,
    "not timed: one gradient of the cut model; equality with Captum's class of "
    "the same name is tested",
)


def _neuron(c: BuildContext) -> Any:
    return c.option("neuron", 0)


ROWS = (
    MethodEntry(
        "neuron_gradient",
        NeuronGradient,
        "neuron",
        "Gradient of one neuron of a layer w.r.t. the input (where, neuron)",
        lambda c: NeuronGradient(c.model, c.need("layer"), _neuron(c)),
        needs=frozenset({"layer"}),
        takes_target=False,
        differentiable=SMOOTH,
        benchmark=_BENCH,
    ),
    MethodEntry(
        "neuron_guided_backprop",
        NeuronGuidedBackprop,
        "neuron",
        "Guided Backprop of one neuron of a layer (where, neuron)",
        lambda c: NeuronGuidedBackprop(c.model, c.need("layer"), _neuron(c)),
        needs=frozenset({"layer"}),
        takes_target=False,
        differentiable=Differentiability(1, 1, "the ReLU rule is piecewise in x"),
        benchmark=_NOT_TIMED,
    ),
    MethodEntry(
        "neuron_deconvolution",
        NeuronDeconvolution,
        "neuron",
        "Deconvnet of one neuron of a layer (where, neuron)",
        lambda c: NeuronDeconvolution(c.model, c.need("layer"), _neuron(c)),
        needs=frozenset({"layer"}),
        takes_target=False,
        differentiable=Differentiability(1, 1, "the ReLU rule is piecewise in x"),
        benchmark=_NOT_TIMED,
    ),
    MethodEntry(
        "neuron_feature_ablation",
        NeuronFeatureAblation,
        "neuron",
        "Feature ablation of one neuron of a layer (where, neuron, mask)",
        lambda c: NeuronFeatureAblation(
            c.model,
            c.need("layer"),
            _neuron(c),
            feature_mask=c.mask,
            baseline=c.baseline if c.baseline is not None else 0.0,
            chunk_size=c.option("chunk_size", "auto"),
        ),
        needs=frozenset({"layer"}),
        takes_target=False,
        baselines="one",
        differentiable=PERTURBATION,
        benchmark=_NOT_TIMED,
    ),
)
