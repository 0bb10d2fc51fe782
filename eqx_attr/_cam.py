"""Class activation maps: CAM, Grad-CAM and Guided Grad-CAM, and their machinery.

Every CAM-family method reads one layer's activation `A` (and, for the gradient
methods, `G = d target / d A`) with [`eqx_attr.layer_activation_and_gradient`][],
brings it to channels-first maps `(C, h, w)` according to `layout`, combines the
channels into one `(h, w)` map, then applies the ReLU and resizes to the input.
The activations are functions of the input only; `relu` and `resize` act on the
map.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._attribution import (
    AbstractAttribution,
    Attribution,
    Image,
    Target,
    check_choice,
    check_input,
    make_objective,
)
from ._layers import LayerInfo, inspect_layer, read_layer, resolve_layer
from ._rules._guided import GuidedBackprop

RESIZES = ("bilinear", "nearest")
LAYOUTS = ("chw", "hwc", "tokens")

Map: TypeAlias = Float[Array, "h w"]


# ---------------------------------------------------------------------------------
# Options shared by every CAM method


def _grid_converter(grid: Any) -> Any:
    # Static fields must be hashable: accept a list, store a tuple.
    if isinstance(grid, list):
        return tuple(grid)
    return grid


def check_cam_options(method: Any) -> None:
    """Trace-time validation of the options every CAM-family method has."""
    if not callable(method.layer) or isinstance(method.layer, eqx.Module):
        raise TypeError(
            "`layer` must be a `where` function selecting a sub-module, as for "
            "`eqx.tree_at`, e.g. `layer=lambda m: m.conv2`; got "
            f"{type(method.layer).__name__}."
        )
    if not isinstance(method.relu, bool):
        raise TypeError(f"`relu` must be True or False, got {method.relu!r}.")
    if method.resize is not None and method.resize not in RESIZES:
        raise ValueError(
            f"Unknown `resize={method.resize!r}`; choose 'bilinear', 'nearest', or "
            "None (keep the layer's resolution)."
        )
    check_choice(method.layout, "layout", LAYOUTS)
    n = method.n_prefix_tokens
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"`n_prefix_tokens` must be an int >= 0, got {n!r}.")
    grid = method.grid
    if grid is not None and not (
        isinstance(grid, tuple)
        and len(grid) == 2
        and all(isinstance(g, (int, np.integer)) and g >= 1 for g in grid)
    ):
        raise ValueError(
            f"`grid` must be None or a pair of positive ints `(h, w)`, got {grid!r}."
        )
    if method.layout != "tokens" and (n != 0 or grid is not None):
        raise ValueError(
            "`n_prefix_tokens` and `grid` apply to `layout='tokens'` only; pass "
            "`layout='tokens'` for a transformer's `(N, D)` token activations."
        )
    ci = method.call_index
    if ci is not None and (
        not isinstance(ci, (int, np.integer)) or isinstance(ci, bool) or ci < 0
    ):
        raise ValueError(f"`call_index` must be None or an int >= 0, got {ci!r}.")


def token_grid(n_tokens: int, n_prefix_tokens: int, grid: tuple | None) -> tuple:
    """The `(h, w)` grid that the tokens after the prefix are folded into."""
    m = n_tokens - n_prefix_tokens
    if m < 1:
        raise ValueError(
            f"`n_prefix_tokens={n_prefix_tokens}` leaves no tokens of the layer's "
            f"{n_tokens}; it counts the class/register tokens before the patch grid."
        )
    if grid is not None:
        h, w = grid
        if h * w != m:
            raise ValueError(
                f"`grid={tuple(grid)}` has {h * w} cells but the layer has {m} patch "
                f"tokens ({n_tokens} tokens minus `n_prefix_tokens="
                f"{n_prefix_tokens}`); fix `grid` or `n_prefix_tokens`."
            )
        return int(h), int(w)
    side = math.isqrt(m)
    if side * side != m:
        hint = ""
        for k in range(1, min(n_tokens, 9)):
            r = math.isqrt(n_tokens - k)
            if r * r == n_tokens - k and k != n_prefix_tokens:
                hint = f" With {k} leading class/register token(s) the rest is a "
                hint += f"{r}x{r} grid: pass `n_prefix_tokens={k}`."
                break
        raise ValueError(
            f"The layer has {m} patch tokens ({n_tokens} minus `n_prefix_tokens="
            f"{n_prefix_tokens}`), which is not a square grid.{hint} For a "
            "non-square grid pass `grid=(h, w)`."
        )
    return side, side


def to_maps(a: Array, method: Any) -> Array:
    """Channels-first maps `(C, h, w)` from the layer's activation (or gradient)."""
    layout = method.layout
    if layout == "tokens":
        if a.ndim != 2:
            raise ValueError(
                f"`layout='tokens'` needs the layer to output tokens `(N, D)`, but "
                f"it outputs shape {a.shape}; use `layout='chw'` for `(C, H, W)`."
            )
        h, w = token_grid(a.shape[0], method.n_prefix_tokens, method.grid)
        t = a[method.n_prefix_tokens :]
        return jnp.transpose(t.reshape(h, w, a.shape[1]), (2, 0, 1))
    if a.ndim != 3:
        hint = (
            " For transformer tokens `(N, D)` pass `layout='tokens'`."
            if a.ndim == 2
            else " Point `layer` at a convolutional feature map."
        )
        raise ValueError(
            f"`layout={layout!r}` needs the layer to output a 3-D feature map, but "
            f"it outputs shape {a.shape}.{hint}"
        )
    if layout == "hwc":
        return jnp.transpose(a, (2, 0, 1))
    return a


def channel_keep_mask(shape: tuple, k: Array, method: Any) -> Array:
    """A 0/1 mask, in the layer's own layout, that zeroes channel `k` of the maps."""
    layout = method.layout
    if layout == "chw":
        keep = jnp.arange(shape[0]) != k
        return keep.reshape(shape[0], 1, 1) & jnp.ones(shape, bool)
    if layout == "hwc":
        keep = jnp.arange(shape[2]) != k
        return keep.reshape(1, 1, shape[2]) & jnp.ones(shape, bool)
    # Tokens: only the patch tokens carry the map; the class token is left alone.
    keep = jnp.arange(shape[1]).reshape(1, shape[1]) != k
    prefix = jnp.arange(shape[0]).reshape(shape[0], 1) < method.n_prefix_tokens
    return keep | prefix


def spatial_size(x: Array, method_name: str) -> tuple[int, int]:
    if x.ndim < 2:
        raise ValueError(
            f"{method_name} maps onto the input's last two (spatial) axes, but `x` "
            f"has shape {x.shape}; pass an image such as `(C, H, W)`."
        )
    return int(x.shape[-2]), int(x.shape[-1])


def finish_map(m: Array, x: Array, method: Any) -> Array:
    """ReLU (optional), then resize to the input's spatial size (optional).

    The map is computed in float32 (or wider) and returned in the input's dtype.
    """
    if method.relu:
        m = jnp.maximum(m, 0)
    if method.resize is not None:
        m = jax.image.resize(m, spatial_size(x, type(method).__name__), method.resize)
    return m.astype(x.dtype)


def _float(a: Array) -> Array:
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def weighted_sum(weights: Array, maps: Array) -> Array:
    """`sum_k weights[k] * maps[k]`."""
    return jnp.tensordot(weights, maps, axes=1)


def inspect_cam_layer(method: Any, x: Array) -> LayerInfo:
    """Trace-time checks of `layer` and `layout`, before any computation runs."""
    info = inspect_layer(method.model, method.layer, x, method.call_index)
    jax.eval_shape(lambda a: to_maps(a, method), info.act)
    return info


def activation_and_gradient_maps(
    method: Any, x: Array, target: Target
) -> tuple[Array, Array]:
    """The layer's activation and gradient as `(C, h, w)` maps (float32 or wider)."""
    info = inspect_cam_layer(method, x)
    objective = make_objective(target, info.out.shape)
    _, _, act, grad = read_layer(method.model, method.layer, x, objective, info)
    return _float(to_maps(act, method)), _float(to_maps(grad, method))


def gradient_cam(
    method: Any, x: Image, target: Target, combine: Callable[[Array, Array], Array]
) -> Array:
    """Shared body of the gradient CAMs: read `A`, `G`; `combine`; ReLU; resize."""
    x = check_input(x)
    spatial_size(x, type(method).__name__)
    a, g = activation_and_gradient_maps(method, x, target)
    return finish_map(combine(a, g), x, method)


def gradcam_map(a: Array, g: Array) -> Array:
    """Grad-CAM: channel weights are the spatial means of the gradient."""
    return weighted_sum(jnp.mean(g, axis=(1, 2)), a)


# ---------------------------------------------------------------------------------
# Abstract bases


class AbstractCAM(AbstractAttribution):
    """Base of the CAM family: one layer's activation combined into a spatial map.

    Declares the options every CAM-family method shares (`model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`; documented on
    [`eqx_attr.GradCAM`][]) and checks them at construction. Concrete methods add
    their own options and `__call__`.
    """

    model: Callable[..., Any]
    layer: Callable = eqx.field(static=True)
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    layout: str = eqx.field(static=True, default="chw")
    n_prefix_tokens: int = eqx.field(static=True, default=0)
    grid: tuple[int, int] | None = eqx.field(
        static=True, default=None, converter=_grid_converter
    )
    call_index: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_cam_options(self)


class AbstractGradientCAM(AbstractCAM):
    """Base of the CAMs that combine the activation `A` with its gradient `G`.

    `__call__` reads `A` and `G = d target / d A` as `(C, h, w)` maps, combines
    them with `_map`, then applies the ReLU and resizes.
    """

    @abc.abstractmethod
    def _map(self, a: Array, g: Array) -> Array:
        """The `(h, w)` map from the activation and gradient maps `(C, h, w)`."""

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Map:
        return gradient_cam(self, x, target, self._map)


# ---------------------------------------------------------------------------------
# Methods


class CAM(AbstractCAM):
    """Class activation mapping: the classifier's weights on the last feature map.

    Zhou et al., *Learning Deep Features for Discriminative Localization*, CVPR
    2016. For a network ending in `layer -> global average pooling -> classifier`
    (a linear layer), the map is `sum_k w_ck A_k`, whose spatial mean plus the bias
    is exactly the score of class `c`.

    The architecture is checked: the classifier's `weight` must be `(n_classes, C)`
    (at trace time), and the model's scores must equal
    `weight @ mean_hw(A) + bias` (at run time, via `eqx.error_if`): a model with
    anything between the pooled features and the scores raises instead of
    returning a map that is not a CAM. For a callable `target`, the class weights
    are combined through `d target / d scores`.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `layer`: a `where` function naming the last feature map's module, e.g.
        `lambda m: m.conv2`.
    - `classifier`: a `where` function naming the final linear layer (a module
        with a 2-D `weight` and optional `bias`, e.g. `eqx.nn.Linear`), e.g.
        `lambda m: m.fc`.
    - `relu`: clip the map at zero (default `True`).
    - `resize`: `"bilinear"` (default) or `"nearest"` to resize to the input's
        spatial size, `None` to keep the layer's resolution.
    - `layout`, `n_prefix_tokens`, `grid`, `call_index`: the layer's layout and
        which call to read, as for [`eqx_attr.GradCAM`][].

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    cam = xa.CAM(model, lambda m: m.conv2, classifier=lambda m: m.fc)
    h = cam(x, target=3)                       # (28, 28)
    ```
    """

    classifier: Callable = eqx.field(static=True, kw_only=True)

    # A required field cannot follow the inherited defaulted options (hence
    # `kw_only`); this `__init__` keeps `classifier` the third positional argument.
    def __init__(
        self,
        model: Callable[..., Any],
        layer: Callable,
        classifier: Callable,
        **options: Any,
    ):
        self.classifier = classifier
        super().__init__(model, layer, **options)

    def __check_init__(self):
        if not callable(self.classifier) or isinstance(self.classifier, eqx.Module):
            raise TypeError(
                "`classifier` must be a `where` function naming the final linear "
                "layer, e.g. `classifier=lambda m: m.fc`."
            )

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Map:
        x = check_input(x)
        spatial_size(x, "CAM")
        info = inspect_cam_layer(self, x)
        objective = make_objective(target, info.out.shape)
        fc = resolve_layer(self.model, self.classifier, "classifier")
        weight = getattr(fc, "weight", None)
        bias = getattr(fc, "bias", None)
        if not isinstance(weight, jax.Array) or weight.ndim != 2:
            raise ValueError(
                f"`classifier` must name a linear layer with a 2-D `weight` "
                f"(n_classes, C), such as `eqx.nn.Linear`; it names a "
                f"{type(fc).__name__}. CAM needs the weights of the linear layer that "
                "follows global average pooling; for other heads use `GradCAM`."
            )
        n_ch = jax.eval_shape(lambda a: to_maps(a, self), info.act).shape[0]
        if info.out.shape != (weight.shape[0],) or weight.shape[1] != n_ch:
            raise ValueError(
                f"CAM needs `scores = classifier(mean over space of layer's "
                f"activation)`, but the classifier's weight has shape {weight.shape}, "
                f"the layer has {n_ch} channels and the scores have shape "
                f"{info.out.shape}. Point `layer` at the feature map that is "
                "average-pooled straight into `classifier`, or use `GradCAM`."
            )
        scores, _, act, _ = read_layer(
            self.model, self.layer, x, lambda s: jnp.sum(s), info
        )
        a = _float(to_maps(act, self))
        pooled = jnp.mean(a, axis=(1, 2))
        predicted = _float(weight) @ pooled
        if bias is not None:
            predicted = predicted + _float(jnp.asarray(bias)).reshape(predicted.shape)
        s = _float(scores)
        # Loose enough for the rounding of low-precision models (bfloat16), tight
        # enough that any layer between the pooling and the scores shows.
        rel = max(1e-3, 8 * float(jnp.finfo(act.dtype).eps))
        tol = rel * (1.0 + jnp.max(jnp.abs(s)))
        a = eqx.error_if(
            a,
            jnp.max(jnp.abs(s - predicted)) > tol,
            "CAM needs the model's scores to be `classifier(mean over space of "
            "layer's activation)`, but they differ: something other than global "
            "average pooling and the linear `classifier` lies between `layer` and the "
            "scores. Point `layer` and `classifier` at the last feature map and the "
            "final linear layer, or use GradCAM (which needs no such architecture).",
        )
        class_weights = jax.grad(objective)(scores)
        w = _float(class_weights) @ _float(weight)
        return finish_map(weighted_sum(w, a), x, self)


class GradCAM(AbstractGradientCAM):
    """Grad-CAM: activations weighted by their spatially averaged gradients.

    Selvaraju et al., *Grad-CAM: Visual Explanations from Deep Networks via
    Gradient-based Localization*, ICCV 2017. With `A = layer(x)` and
    `G = d target / d A`, the map is `relu(sum_k mean_ij(G_k) A_k)`, resized to the
    input. One forward and one backward pass; under `jax.vmap` over targets the
    forward pass is shared.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `layer`: a `where` function as for `eqx.tree_at`, naming the module whose
        output is explained, e.g. `lambda m: m.conv2` or `lambda m: m.layer4`.
    - `relu`: clip the map at zero (default `True`).
    - `resize`: `"bilinear"` (default) or `"nearest"` to resize to the input's
        spatial size, `None` to keep the layer's resolution.
    - `layout`: how the layer's output is laid out: `"chw"` (default, conv feature
        maps `(C, H, W)`), `"hwc"` (channels last) or `"tokens"` (a transformer's
        `(N, D)` tokens, folded to a `(D, h, w)` map).
    - `n_prefix_tokens`: with `layout="tokens"`, the number of leading class /
        register tokens to drop before folding (1 for a ViT with a class token).
    - `grid`: with `layout="tokens"`, the patch grid `(h, w)`; `None` infers a
        square grid.
    - `call_index`: which call of `layer` to read when it is called several times
        per forward pass; `None` (default) requires exactly one call.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.GradCAM(model, lambda m: m.conv2)(x, target=3)      # (28, 28)
    per_class = jax.vmap(lambda t: xa.GradCAM(model, lambda m: m.conv2)(x, t))(
        jnp.arange(10))                                        # (10, 28, 28)
    ```
    """

    def _map(self, a: Array, g: Array) -> Array:
        return gradcam_map(a, g)


class GuidedGradCAM(AbstractCAM):
    """Guided Grad-CAM: Grad-CAM resized to the input, times Guided Backprop.

    Selvaraju et al., ICCV 2017 (Section 3.1). The Grad-CAM map (with the same
    `relu`, `layout` and `call_index` options) is resized to the input's spatial
    size and multiplied, at every channel, with
    [`eqx_attr.GuidedBackprop`][]'s gradient; the result has the input's shape.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `layer`: a `where` function naming the Grad-CAM layer, e.g.
        `lambda m: m.conv2`.
    - `relu`: clip the Grad-CAM map at zero (default `True`).
    - `resize`: `"bilinear"` (default) or `"nearest"`; the map must be resized to
        be multiplied with the input-space gradient, so `None` is an error.
    - `layout`, `n_prefix_tokens`, `grid`, `call_index`: the layer's layout and
        which call to read, as for [`eqx_attr.GradCAM`][].
    - `other_activations`: passed to [`eqx_attr.GuidedBackprop`][]: `"raise"`
        (default) for rectifiers without a guided variant, or `"ignore"`.

    **Returns:** an array shaped like `x`.

    ```python
    g = xa.GuidedGradCAM(model, lambda m: m.conv2)(x, target=3)  # (1, 28, 28)
    ```
    """

    other_activations: str = eqx.field(static=True, default="raise")

    def __check_init__(self):
        if self.resize is None:
            raise ValueError(
                "GuidedGradCAM multiplies the Grad-CAM map with an input-sized "
                "gradient, so the map must be resized: use `resize='bilinear'` "
                "(default) or `resize='nearest'`."
            )

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Attribution:
        x = check_input(x)
        h = gradient_cam(self, x, target, gradcam_map)
        guided = GuidedBackprop(self.model, self.other_activations)(x, target)
        h = h.reshape((1,) * (x.ndim - 2) + h.shape)
        return (h * guided).astype(guided.dtype)
