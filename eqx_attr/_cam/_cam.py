"""CAM, Grad-CAM and Guided Grad-CAM.

CAM reads the classifier's weights; Grad-CAM the spatially averaged gradient;
Guided Grad-CAM multiplies Grad-CAM with Guided Backprop. The pipeline they share
lives in `_base.py`, the layer they read in `_spec.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Attribution,
    Image,
    Target,
    check_bool,
    check_input,
    check_where,
    make_objective,
)
from .._layers import resolve_layer
from .._method_entry import MethodEntry
from .._rules._guided import GuidedBackprop
from ._base import (
    AbstractCAM,
    AbstractGradientCAM,
    as_float,
    check_resize,
    layer_build,
    weighted_sum,
)
from ._spec import LayerSpec, as_layer_spec

__all__ = ["CAM", "GradCAM", "GuidedGradCAM"]


def gradcam_map(a: Array, g: Array) -> Array:
    """Grad-CAM: channel weights are the spatial means of the gradient."""
    return weighted_sum(jnp.mean(g, axis=(1, 2)), a)


def _linear_classifier(model: Any, classifier: Callable, n_channels: int, out) -> Any:
    """The classifier module, checked to be `(n_classes, C)` linear at trace time."""
    fc = resolve_layer(model, classifier, "classifier")
    weight = getattr(fc, "weight", None)
    if not isinstance(weight, jax.Array) or weight.ndim != 2:
        raise ValueError(
            f"`classifier` must name a linear layer with a 2-D `weight` "
            f"(n_classes, C), such as `eqx.nn.Linear`; it names a "
            f"{type(fc).__name__}. CAM needs the weights of the linear layer that "
            "follows global average pooling; for other heads use `GradCAM`."
        )
    out_shape = getattr(out, "shape", type(out).__name__)  # a PyTree has none
    if out_shape != (weight.shape[0],) or weight.shape[1] != n_channels:
        raise ValueError(
            f"CAM needs `scores = classifier(mean over space of layer's "
            f"activation)`, but the classifier's weight has shape {weight.shape}, "
            f"the layer has {n_channels} channels and the scores have shape "
            f"{out_shape}. Point `layer` at the feature map that is "
            "average-pooled straight into `classifier`, or use `GradCAM`."
        )
    return fc


def _check_pooled_linear(a: Array, scores: Array, fc: Any, dtype: Any) -> Array:
    """`a`, with a run-time check that `scores == fc(mean_hw(a))`."""
    predicted = as_float(fc.weight) @ jnp.mean(a, axis=(1, 2))
    if fc.bias is not None:
        predicted = predicted + as_float(jnp.asarray(fc.bias)).reshape(predicted.shape)
    s = as_float(scores)
    # Loose enough for the rounding of low-precision models (bfloat16), tight
    # enough that any layer between the pooling and the scores shows.
    rel = max(1e-3, 8 * float(jnp.finfo(dtype).eps))
    tol = rel * (1.0 + jnp.max(jnp.abs(s)))
    return eqx.error_if(
        a,
        jnp.max(jnp.abs(s - predicted)) > tol,
        "CAM needs the model's scores to be `classifier(mean over space of "
        "layer's activation)`, but they differ: something other than global "
        "average pooling and the linear `classifier` lies between `layer` and the "
        "scores. Point `layer` and `classifier` at the last feature map and the "
        "final linear layer, or use GradCAM (which needs no such architecture).",
    )


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

    model: Callable[..., Any]
    spec: LayerSpec
    classifier: Callable = eqx.field(static=True)
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")

    def __init__(
        self,
        model: Callable[..., Any],
        layer: Callable | LayerSpec,
        classifier: Callable,
        relu: bool = True,
        resize: str | None = "bilinear",
        **layer_options: Any,
    ):
        AbstractCAM.__init__(self, model, layer, relu, resize, **layer_options)
        self.classifier = classifier

    def __check_init__(self):
        check_where(self.classifier, "classifier", "lambda m: m.fc")

    def _map(self, x, target, info, key):
        objective = make_objective(target, info.out)
        n_channels = jax.eval_shape(self.spec.maps, info.act).shape[0]
        fc = _linear_classifier(self.model, self.classifier, n_channels, info.out)
        scores, _, act, _ = self.spec.read(self.model, x, lambda s: jnp.sum(s), info)
        a = _check_pooled_linear(as_float(self.spec.maps(act)), scores, fc, act.dtype)
        class_weights = jax.grad(objective)(scores)
        return weighted_sum(as_float(class_weights) @ as_float(fc.weight), a)


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
        output is explained, e.g. `lambda m: m.conv2` or `lambda m: m.layer4`;
        or a [`eqx_attr.LayerSpec`][] holding it with the layout options below.
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

    model: Callable[..., Any]
    spec: LayerSpec
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")

    def _combine(self, a: Array, g: Array) -> Array:
        return gradcam_map(a, g)


class GuidedGradCAM(AbstractAttribution):
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

    model: Callable[..., Any]
    spec: LayerSpec
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    other_activations: str = eqx.field(static=True, default="raise")

    def __init__(
        self,
        model: Callable[..., Any],
        layer: Callable | LayerSpec,
        relu: bool = True,
        resize: str | None = "bilinear",
        *,
        other_activations: str = "raise",
        **layer_options: Any,
    ):
        self.model = model
        self.spec = as_layer_spec(layer, **layer_options)
        self.relu = relu
        self.resize = resize
        self.other_activations = other_activations

    def __check_init__(self):
        check_bool(self.relu, "relu")
        check_resize(self.resize)
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
        h = GradCAM(self.model, self.spec, self.relu, self.resize)(x, target)
        guided = GuidedBackprop(self.model, self.other_activations)(x, target)
        h = h.reshape((1,) * (x.ndim - 2) + h.shape)
        return (h * guided).astype(guided.dtype)


_LAYER = frozenset({"layer"})

ROWS = (
    MethodEntry(
        "cam",
        CAM,
        "cam",
        "Class Activation Mapping (global average pooling + linear models)",
        lambda c: CAM(
            c.model,
            c.need("layer"),
            classifier=c.need("classifier"),
            **c.layer_options,
        ),
        needs=frozenset({"layer", "classifier"}),
        output="map",
        benchmark=(None, "no installable peer: Captum has no CAM"),
    ),
    MethodEntry(
        "gradcam",
        GradCAM,
        "cam",
        "Grad-CAM",
        layer_build(GradCAM),
        needs=_LAYER,
        output="map",
        benchmark=("run.py", "Captum LayerGradCam (--methods gradcam)"),
    ),
    MethodEntry(
        "guided_gradcam",
        GuidedGradCAM,
        "cam",
        "Guided Grad-CAM",
        layer_build(GuidedGradCAM),
        needs=_LAYER,
        benchmark=("run.py", "Captum GuidedGradCam (--methods guided-gradcam)"),
    ),
)
