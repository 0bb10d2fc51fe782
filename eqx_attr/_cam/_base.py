"""The abstract CAM bases and their one template pipeline.

Every CAM-family method reads one layer (its [`LayerSpec`][]) and turns what it
read into an `(h, w)` map; the template [`AbstractCAM.__call__`][] does the rest
once: check the input, inspect the layer at trace time, `_map`, then the ReLU and
the resize. The activations are functions of the input only; `relu` and `resize`
act on the map.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, TypeAlias

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
from .._method_entry import BuildContext
from ._spec import LayerSpec, as_layer_spec

RESIZES = ("bilinear", "nearest")

Map: TypeAlias = Float[Array, "h w"]


def spatial_size(x: Array, method_name: str) -> tuple[int, int]:
    """The input's spatial size `(H, W)`: its last two axes."""
    if x.ndim < 2:
        raise ValueError(
            f"{method_name} maps onto the input's last two (spatial) axes, but `x` "
            f"has shape {x.shape}; pass an image such as `(C, H, W)`."
        )
    return int(x.shape[-2]), int(x.shape[-1])


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

    Concrete methods hold `model`, `spec` (a [`eqx_attr.LayerSpec`][]), `relu` and
    `resize`, and implement `_map`; `__call__` is the template that checks the
    input, inspects the layer, calls `_map`, clips at zero (`relu`) and resizes to
    the input (`resize`). The constructor is shared:
    `Method(model, layer, relu=True, resize="bilinear", *, layout="chw",
    n_prefix_tokens=0, grid=None, call_index=None)`, where `layer` is a `where`
    function or a `LayerSpec`.

    To add a CAM, subclass [`eqx_attr.AbstractGradientCAM`][] (a map from the
    activation and its gradient) or [`eqx_attr.AbstractChannelScoreCAM`][] (one
    score per channel), or this class for anything else.

    **Arguments:** (of every concrete CAM)

    - `model`: maps one example to a 1-D vector of scores.
    - `layer`: a `where` function naming the layer, or an [`eqx_attr.LayerSpec`][]
        (then `layout`, `n_prefix_tokens`, `grid` and `call_index` are its fields).
    - `relu`: clip the map at zero (default `True`).
    - `resize`: `"bilinear"` (default) or `"nearest"` to resize the map to the
        input's last two axes; `None` keeps the layer's resolution.
    - `**layer_options`: `layout`, `n_prefix_tokens`, `grid`, `call_index`, as for
        [`eqx_attr.LayerSpec`][].

    **Returns:** calling the method, `method(x, target, *, key=None)`, gives an
    `(H, W)` map (the layer's `(h, w)` with `resize=None`), in `x`'s dtype.
    """

    model: eqx.AbstractVar[Callable[..., Any]]
    spec: eqx.AbstractVar[LayerSpec]
    relu: eqx.AbstractVar[bool]
    resize: eqx.AbstractVar[str | None]

    def __init__(
        self,
        model: Callable[..., Any],
        layer: Callable | LayerSpec,
        relu: bool = True,
        resize: str | None = "bilinear",
        **layer_options: Any,
    ):
        self.model = model
        self.spec = as_layer_spec(layer, **layer_options)
        self.relu = relu
        self.resize = resize

    def __check_init__(self):
        check_bool(self.relu, "relu")
        check_resize(self.resize)

    @property
    def layer(self) -> Callable:
        """The `where` function naming the layer (from `spec`)."""
        return self.spec.layer

    @abc.abstractmethod
    def _map(
        self, x: Array, target: Target, info: LayerInfo, key: PRNGKeyArray | None
    ) -> Array:
        """The `(h, w)` map, before the ReLU and the resize (float32 or wider)."""

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
        size = spatial_size(x, type(self).__name__)
        info = self.spec.inspect(self.model, x)
        m, scores = self._map_and_scores(x, target, info, key)
        if self.relu:
            m = jnp.maximum(m, 0)
        if self.resize is not None:
            m = jax.image.resize(m, size, self.resize)
        return m.astype(x.dtype), scores


class AbstractGradientCAM(AbstractCAM):
    """Base of the CAMs that combine the activation `A` with its gradient `G`.

    `_map` reads `A` and `G = d target / d A` as `(C, h, w)` maps (one forward and
    one backward pass) and combines them with the abstract `_combine`.

    **Arguments:** as for [`eqx_attr.AbstractCAM`][].

    **Returns:** `method(x, target)` gives the `(H, W)` map; a subclass's
    `_combine(a, g)` returns the `(h, w)` map before the ReLU and the resize.
    """

    @abc.abstractmethod
    def _combine(self, a: Array, g: Array) -> Array:
        """The `(h, w)` map from the activation and gradient maps `(C, h, w)`."""

    def _map(self, x, target, info, key):
        return self._map_and_scores(x, target, info, key)[0]

    def _map_and_scores(self, x, target, info, key):
        # The forward pass that reads the layer also gives the model's output.
        objective = make_objective(target, info.out)
        scores, _, act, grad = self.spec.read(self.model, x, objective, info)
        a, g = self.spec.maps(act), self.spec.maps(grad)
        return self._combine(as_float(a), as_float(g)), scores


class AbstractChannelScoreCAM(AbstractCAM):
    """Base of the CAMs that weight each channel by a score of its own.

    `_map` reads the layer's activation `A` and the target's score `y`, runs
    `_channel_score` for every channel `k` (at most `chunk_size` at a time), turns
    those scores into channel weights with `_weights` and returns
    `sum_k w_k A_k`. No gradient is used.

    **Arguments:** as for [`eqx_attr.AbstractCAM`][], plus `chunk_size`: score at
    most this many channels at a time (`None`: all at once).

    **Returns:** `method(x, target)` gives the `(H, W)` map
    `sum_k w_k A_k` (clipped and resized as the options say).
    """

    chunk_size: eqx.AbstractVar[int | None]

    def __init__(
        self,
        model: Callable[..., Any],
        layer: Callable | LayerSpec,
        relu: bool = True,
        resize: str | None = "bilinear",
        *,
        chunk_size: int | None = None,
        **layer_options: Any,
    ):
        AbstractCAM.__init__(self, model, layer, relu, resize, **layer_options)
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
        _, y, act, _ = self.spec.read(self.model, x, objective, info)
        a = as_float(self.spec.maps(act))

        def channel_score(k):
            return self._channel_score(x, objective, act, a, k)

        scores = batched_map(channel_score, jnp.arange(a.shape[0]), self.chunk_size)
        weights = self._weights(as_float(scores), as_float(y))
        return weighted_sum(weights, a)


def layer_build(cls: type, chunked: bool = False) -> Callable[[BuildContext], Any]:
    """A registry row's build of a CAM class: the context's layer and its layout
    options (and, if `chunked`, its `chunk_size` option, default 32)."""

    def build(c: BuildContext) -> Any:
        chunk = {"chunk_size": c.option("chunk_size", 32)} if chunked else {}
        return cls(c.model, c.layer, **chunk, **c.layer_options)

    return build


def check_agnostic_target(target: Target, out_shape: tuple[int, ...]) -> None:
    """A class-agnostic method accepts `target` for a uniform call: checked only."""
    if target is not None:
        make_objective(target, out_shape)


def read_activation(cam: AbstractCAM, x: Array, info: Any) -> Array:
    _, _, act, _ = cam.spec.read(cam.model, x, lambda s: jnp.sum(s), info)
    return as_float(cam.spec.maps(act))


def scale_map(m: Array) -> Array:
    """pytorch-grad-cam's `scale_cam_image`: `(m - min) / (1e-7 + max(m - min))`."""
    m = m - jnp.min(m)
    return m / (1e-7 + jnp.max(m))
