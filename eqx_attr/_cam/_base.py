"""The abstract CAM bases and their one template pipeline.

Every CAM-family method reads one layer (its [`LayerSpec`][]) and turns what it
read into an `(h, w)` map; the template [`AbstractCAM.__call__`][] does the rest
once: check the input, inspect the layer at trace time, `_map`, then the ReLU and
the resize. The activations are functions of the input only; `relu` and `resize`
act on the map. pytorch-grad-cam's options (`eigen_smooth`, `aug_smooth`, a list
of layers) are steps of the same template; their functions live in
`_smoothing.py`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Image,
    Target,
    batched_map,
    check_bool,
    check_chunk_size,
    check_input,
    make_objective,
)
from .._layers import LayerInfo
from .._layout import (
    InputLayout,
    resolve_input_layout,
    spatial_axes,
    spatial_shape,
)
from .._method_entry import BuildContext
from ._smoothing import (
    aggregate_layers,
    augmentation_smoothing,
    principal_projection,
    scale_map,
)
from ._spec import LayerArg, Layers, LayerSpec, as_layer_specs

RESIZES = ("bilinear", "nearest")

Map: TypeAlias = Float[Array, "h w"]


def spatial_size(
    x: Array, method_name: str, input_layout: InputLayout = None
) -> tuple[int, int]:
    """The input's spatial size `(H, W)` in its layout (`input_layout`, or
    inferred from `x`'s shape: `(H, W, C)` for a channels-last image)."""
    return spatial_shape(x, input_layout, method_name)


def width_axis(x: Array, input_layout: InputLayout = None) -> int:
    """The input's width axis (the one `aug_smooth` flips) in its layout."""
    return spatial_axes(x.ndim, resolve_input_layout(x.shape, input_layout))[1]


def check_resize(resize: Any) -> None:
    """Trace-time check of a CAM's `resize` option."""
    if resize is not None and resize not in RESIZES:
        raise ValueError(
            f"Unknown `resize={resize!r}`; choose 'bilinear', 'nearest', or None "
            "(keep the layer's resolution)."
        )


def as_float(a: Array) -> Array:
    """`a` in float32, or wider when it already is."""
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def weighted_sum(weights: Array, maps: Array) -> Array:
    """`sum_k weights[k] * maps[k]`."""
    return jnp.tensordot(weights, maps, axes=1)


class AbstractCAM(AbstractAttribution):
    """Base of the CAM family: one layer's activation combined into a spatial map.

    Concrete methods hold `model`, `spec` (a [`eqx_attr.LayerSpec`][], or a tuple
    of them), `relu`, `resize`, `eigen_smooth`, `aug_smooth` and `input_layout`
    (the input's layout, see below), and implement
    `_map`; `__call__` is the template that checks the input, inspects the layer,
    calls `_map`, clips at zero (`relu`) and resizes to the input (`resize`); for
    several layers it does so per layer and aggregates; with `aug_smooth` it
    averages all that over test-time augmentations. The constructor is shared:
    `Method(model, layer, relu=True, resize="bilinear", *, eigen_smooth=False,
    aug_smooth=False, input_layout=None, layout="chw", n_prefix_tokens=0,
    grid=None, call_index=None)`, where `layer` is a `where` function, a
    `LayerSpec`, or a list of them.

    A method whose map is a sum over channels of per-channel terms builds it with
    `_weighted` (channel weights) or, for the gradient CAMs, `_combine` (see
    [`eqx_attr.AbstractGradientCAM`][]), so that `eigen_smooth` projects the terms
    instead; a method without such terms refuses `eigen_smooth=True` in its
    `__check_init__`.

    To add a CAM, subclass [`eqx_attr.AbstractGradientCAM`][] (a map from the
    activation and its gradient) or [`eqx_attr.AbstractChannelScoreCAM`][] (one
    score per channel), or this class for anything else.

    **Arguments:** (of every concrete CAM)

    - `model`: maps one example to a 1-D vector of scores.
    - `layer`: a `where` function naming the layer, or an [`eqx_attr.LayerSpec`][]
        (then `layout`, `n_prefix_tokens`, `grid` and `call_index` are its fields),
        or a list of them: one map per layer, each clipped (`relu`), min-max
        scaled to `[0, 1]` and resized, then averaged, clipped and scaled to
        `[0, 1]` again, as pytorch-grad-cam does with several `target_layers`
        (`compute_cam_per_layer`, `aggregate_multi_layers`); a one-element list
        is that pipeline for one layer. Each layer costs its own forward and
        backward pass; with `resize=None` the layers must share a resolution.
    - `relu`: clip the map at zero (default `True`).
    - `resize`: `"bilinear"` (default) or `"nearest"` to resize the map to the
        input's spatial size; `None` keeps the layer's resolution.
    - `input_layout`: the layout of the INPUT `x`, `"chw"` or `"hwc"`, or `None`
        (default) to infer it from `x`'s shape (`(H, W, C)` when the last axis
        has 1, 3 or 4 entries and the first does not): the map is resized to the
        input's `(H, W)`. The layer's own layout is `layout` (below).
    - `eigen_smooth`: project the map's per-channel terms on their first
        principal component instead of summing them (pytorch-grad-cam's
        `get_2d_projection`, with the sign fixed so that the result correlates
        positively with the plain map); default `False`. Methods whose map has no
        channel terms (Eigen-CAM, Eigen-Grad-CAM, KPCA-CAM) refuse it.
    - `aug_smooth`: average the maps of the input flipped horizontally or not and
        multiplied by 0.9, 1 and 1.1, each flipped back (pytorch-grad-cam's
        `forward_augmentation_smoothing` with its default ttach transforms);
        default `False`. With one layer the averaged maps are unscaled (with a
        list of layers each is scaled first, as in pytorch-grad-cam). A `key`
        (Random-CAM) is passed unchanged to every augmentation and every layer.
    - `**layer_options`: `layout`, `n_prefix_tokens`, `grid`, `call_index`, as for
        [`eqx_attr.LayerSpec`][].

    **Returns:** calling the method, `method(x, target, *, key=None)`, gives an
    `(H, W)` map (the layer's `(h, w)` with `resize=None`), in `x`'s dtype.
    """

    model: eqx.AbstractVar[Callable[..., Any]]
    spec: eqx.AbstractVar[Layers]
    relu: eqx.AbstractVar[bool]
    resize: eqx.AbstractVar[str | None]
    eigen_smooth: eqx.AbstractVar[bool]
    aug_smooth: eqx.AbstractVar[bool]
    input_layout: eqx.AbstractVar[InputLayout]

    def __init__(
        self,
        model: Callable[..., Any],
        layer: LayerArg,
        relu: bool = True,
        resize: str | None = "bilinear",
        *,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        input_layout: InputLayout = None,
        **layer_options: Any,
    ):
        self.input_layout = input_layout
        self.model = model
        self.spec = as_layer_specs(layer, **layer_options)
        self.relu = relu
        self.resize = resize
        self.eigen_smooth = eigen_smooth
        self.aug_smooth = aug_smooth

    def __check_init__(self):
        check_bool(self.relu, "relu")
        check_resize(self.resize)
        check_bool(self.eigen_smooth, "eigen_smooth")
        check_bool(self.aug_smooth, "aug_smooth")

    @property
    def layer(self) -> Callable | tuple[Callable, ...]:
        """The `where` function naming the layer (from `spec`); a tuple of them
        for several layers."""
        if isinstance(self.spec, tuple):
            return tuple(s.layer for s in self.spec)
        return self.spec.layer

    @property
    def _one_spec(self) -> LayerSpec:
        """`spec` as the one `LayerSpec` it is in `_map` and `_layer_map`
        (`_layers_map` runs them once per layer of a method of several layers)."""
        if not isinstance(self.spec, LayerSpec):
            raise TypeError(
                f"{type(self).__name__} holds {len(self.spec)} layers here, where "
                "one `LayerSpec` is needed; this is a bug in eqx_attr."
            )
        return self.spec

    @abc.abstractmethod
    def _map(
        self, x: Array, target: Target, info: LayerInfo, key: PRNGKeyArray | None
    ) -> Array:
        """The `(h, w)` map, before the ReLU and the resize (float32 or wider);
        `self.spec` is one `LayerSpec` here, also for a method of several layers."""

    def _weighted(self, weights: Array, maps: Array) -> Array:
        """`sum_k weights[k] * maps[k]`, or with `eigen_smooth` the projection of
        the terms `weights[k] * maps[k]` on their first principal component
        (pytorch-grad-cam's `BaseCAM.get_cam_image`)."""
        if self.eigen_smooth:
            return principal_projection(weights[:, None, None] * maps)
        return weighted_sum(weights, maps)

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Map:
        return self._attribution_and_scores(x, target, key)[0]

    def _map_and_scores(
        self, x: Array, target: Target, info: LayerInfo, key: PRNGKeyArray | None
    ) -> tuple[Array, Any]:
        """`_map`, and the model's output on `x` (an array, or a PyTree for a
        model returning one) where `_map` computes it."""
        return self._map(x, target, info, key), None

    def _attribution_and_scores(
        self, x: Image, target: Target, key: PRNGKeyArray | None
    ) -> tuple[Map, Any]:
        x = check_input(x)
        size = spatial_size(x, type(self).__name__, self.input_layout)
        w_axis = width_axis(x, self.input_layout)

        def cam(x):
            return self._layers_map(x, target, key, size)

        if self.aug_smooth:
            m, scores = augmentation_smoothing(cam, x, w_axis)
        else:
            m, scores = cam(x)
        return m.astype(x.dtype), scores

    def _layers_map(
        self, x: Array, target: Target, key: PRNGKeyArray | None, size: tuple
    ) -> tuple[Array, Any]:
        """The map of one layer, or the aggregate of several (pytorch-grad-cam's
        `compute_cam_per_layer` and `aggregate_multi_layers`), and the scores
        (of the first layer's forward pass)."""
        if isinstance(self.spec, LayerSpec):
            return self._layer_map(x, target, key, size, scaled=False)
        maps, scores = [], None
        for i, spec in enumerate(self.spec):
            one = eqx.tree_at(
                lambda c: c.spec, self, spec, is_leaf=lambda n: n is self.spec
            )
            m, s = one._layer_map(x, target, key, size, scaled=True)
            maps.append(m)
            scores = s if i == 0 else scores
        return aggregate_layers(maps), scores

    def _layer_map(
        self,
        x: Array,
        target: Target,
        key: PRNGKeyArray | None,
        size: tuple,
        scaled: bool,
    ) -> tuple[Array, Any]:
        """One layer's map: `_map`, the ReLU, (if `scaled`) the min-max scaling of
        pytorch-grad-cam's `scale_cam_image`, and the resize."""
        info = self._one_spec.inspect(self.model, x)
        m, scores = self._map_and_scores(x, target, info, key)
        if self.relu:
            m = jnp.maximum(m, 0)
        if scaled:
            m = scale_map(m)
        if self.resize is not None:
            m = jax.image.resize(m, size, self.resize)
        return m, scores


class AbstractGradientCAM(AbstractCAM):
    """Base of the CAMs that combine the activation `A` with its gradient `G`.

    `_map` reads `A` and `G = d target / d A` as `(C, h, w)` maps (one forward and
    one backward pass) and combines them with the abstract `_combine`. With
    `eigen_smooth`, the per-channel terms `_channel_terms(a, g)` are projected on
    their first principal component instead; by default they are `_combine` of
    each channel alone, which is right for a `_combine` that sums per-channel
    terms over channels (all but Eigen-Grad-CAM's, which refuses
    `eigen_smooth`).

    **Arguments:** as for [`eqx_attr.AbstractCAM`][].

    **Returns:** `method(x, target)` gives the `(H, W)` map; a subclass's
    `_combine(a, g)` returns the `(h, w)` map before the ReLU and the resize.
    """

    @abc.abstractmethod
    def _combine(self, a: Array, g: Array) -> Array:
        """The `(h, w)` map from the activation and gradient maps `(C, h, w)`."""

    def _channel_terms(self, a: Array, g: Array) -> Array:
        """The `(C, h, w)` terms whose sum over channels is `_combine(a, g)`: here
        `_combine` of each channel alone (pytorch-grad-cam's `weights * activations`
        for the channel-weight CAMs, `grads * activations` for HiResCAM, ...)."""
        return jax.vmap(lambda ak, gk: self._combine(ak[None], gk[None]))(a, g)

    def _map(self, x, target, info, key):
        return self._map_and_scores(x, target, info, key)[0]

    def _map_and_scores(self, x, target, info, key):
        # The forward pass that reads the layer also gives the model's output.
        objective = make_objective(target, info.out)
        scores, _, act, grad = self._one_spec.read(self.model, x, objective, info)
        a = as_float(self._one_spec.maps(act))
        g = as_float(self._one_spec.gradient_maps(grad, type(self).__name__))
        if self.eigen_smooth:
            return principal_projection(self._channel_terms(a, g)), scores
        return self._combine(a, g), scores


class AbstractChannelScoreCAM(AbstractCAM):
    """Base of the CAMs that weight each channel by a score of its own.

    `_map` reads the layer's activation `A` and the target's score `y`, runs
    `_channel_score` for every channel `k` (at most `chunk_size` at a time), turns
    those scores into channel weights with `_weights` and returns
    `sum_k w_k A_k`. No gradient is used.

    **Arguments:** as for [`eqx_attr.AbstractCAM`][], plus `chunk_size`: score at
    most this many channels at a time (`None`: all at once; `"auto"`, the
    default: as many as fit [`eqx_attr.set_memory_budget`][]).

    **Returns:** `method(x, target)` gives the `(H, W)` map
    `sum_k w_k A_k` (clipped and resized as the options say).
    """

    chunk_size: eqx.AbstractVar[int | Literal["auto"] | None]

    def __init__(
        self,
        model: Callable[..., Any],
        layer: LayerArg,
        relu: bool = True,
        resize: str | None = "bilinear",
        *,
        chunk_size: int | Literal["auto"] | None = "auto",
        input_layout: InputLayout = None,
        **layer_options: Any,
    ):
        AbstractCAM.__init__(
            self, model, layer, relu, resize, input_layout=input_layout,
            **layer_options,
        )  # fmt: skip
        self.chunk_size = chunk_size

    def __check_init__(self):
        check_chunk_size(self.chunk_size)

    @abc.abstractmethod
    def _channel_score(
        self,
        x: Array,
        objective: Callable[[Array], Array],
        act: Array,
        maps: Array,
        k: Array,
    ) -> Array:
        """The score of channel `k`; `act` is the raw activation, `maps` its
        `(C, h, w)` form."""

    @abc.abstractmethod
    def _weights(self, scores: Array, y: Array) -> Array:
        """The channel weights from the channel scores and the target's score `y`."""

    def _map(self, x, target, info, key):
        objective = make_objective(target, info.out)
        _, y, act, _ = self._one_spec.read(self.model, x, objective, info)
        a = as_float(self._one_spec.maps(act))

        def channel_score(k):
            return self._channel_score(x, objective, act, a, k)

        scores = batched_map(channel_score, jnp.arange(a.shape[0]), self.chunk_size)
        weights = self._weights(as_float(scores), as_float(y))
        return self._weighted(weights, a)


def layer_build(cls: type, chunked: bool = False) -> Callable[[BuildContext], Any]:
    """A registry row's build of a CAM class: the context's layer and its layout
    options (and, if `chunked`, its `chunk_size` option, default 32)."""

    def build(c: BuildContext) -> Any:
        chunk = {"chunk_size": c.option("chunk_size", 32)} if chunked else {}
        return cls(c.model, c.layer, **chunk, **c.layer_options)

    return build


def check_agnostic_target(target: Target, out: Any) -> None:
    """A class-agnostic method accepts `target` for a uniform call: checked only,
    against the model's output `out` (a shape, or the output as `jax.eval_shape`
    gives it: a PyTree output takes a callable target, as every method)."""
    if target is not None:
        make_objective(target, out)


def output_sum(out: Any) -> Array:
    """The sum of every floating entry of the model's output (an array or a
    PyTree): a scalar through which the backward pass reaches every layer that
    the output depends on, for the methods that only read an activation."""
    leaves = [
        jnp.sum(v) for v in jax.tree.leaves(out) if jnp.issubdtype(v.dtype, jnp.inexact)
    ]
    return sum(leaves, jnp.zeros((), jnp.float32))


def read_activation(cam: AbstractCAM, x: Array, info: Any) -> Array:
    """The layer's activation as channels-first maps `(C, h, w)`, in float32 or
    wider; the model may return a PyTree."""
    _, _, act, _ = cam._one_spec.read(cam.model, x, output_sum, info)
    return as_float(cam._one_spec.maps(act))
