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
from .._checks import error_if
from .._layers import LayerInfo, inspect_layers, read_layers, resolve_layer
from .._layout import (
    InputLayout,
    input_layout_field,
    map_over_channels,
    resolve_input_layout,
)
from .._method_entry import CLIPPED_MAP, MethodEntry
from .._rules._guided import GuidedBackprop
from ._base import (
    AbstractCAM,
    AbstractGradientCAM,
    as_float,
    check_resize,
    layer_build,
    weighted_sum,
)
from ._smoothing import check_one_layer
from ._spec import LayerArg, Layers, as_layer_specs

__all__ = ["CAM", "GradCAM", "GuidedGradCAM"]


def gradcam_map(a: Array, g: Array) -> Array:
    """Grad-CAM: channel weights are the spatial means of the gradient."""
    return weighted_sum(jnp.mean(g, axis=(1, 2)), a)


_USE_GRADCAM = "or use `xa.GradCAM` (no architecture needed)"


def _linear_classifier(
    model: Any, classifier: Callable, x: Array, n_channels: int
) -> tuple[Any, LayerInfo]:
    """The classifier module and its call, checked at trace time: a linear layer
    `(n_classes, C)`, called once per forward pass, on the layer's `C` channels."""
    fc = resolve_layer(model, classifier, "classifier")
    weight = getattr(fc, "weight", None)
    if not isinstance(weight, jax.Array) or weight.ndim != 2:
        raise ValueError(
            f"CAM: `classifier` names a {type(fc).__name__}, not a linear layer. "
            "Point it at the final linear layer after global average pooling (a "
            f"module with a 2-D `weight`, e.g. `eqx.nn.Linear`), {_USE_GRADCAM}."
        )
    (info,) = inspect_layers(model, classifier, x, name="classifier")
    if weight.shape[1] != n_channels:
        raise ValueError(
            f"CAM: `layer` has {n_channels} channels, but the classifier's weight "
            f"has shape {weight.shape} (n_classes, C). Point `layer` at the feature "
            f"map that is average-pooled into `classifier`, {_USE_GRADCAM}."
        )
    if info.act.shape != (weight.shape[0],):
        raise ValueError(
            f"CAM: `classifier` returns shape {info.act.shape}, not one score per "
            f"row of its weight {weight.shape}. Point it at the final linear "
            f"layer, {_USE_GRADCAM}."
        )
    if not _classifier_gives_output(model, classifier, x):
        raise ValueError(
            "CAM: the model's output is not `classifier`'s output: something is "
            "applied after it. CAM needs `layer` -> global average pooling -> "
            "`classifier` -> output (the logits, alone or as one leaf of a dict or "
            f"tuple); return the logits, {_USE_GRADCAM}."
        )
    return fc, info


class _Recorded(eqx.Module):
    """Stands in for the classifier in a trace: hands its output to `record`."""

    module: Any
    record: Callable = eqx.field(static=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.module(*args, **kwargs)
        self.record(out)
        return out


def _classifier_gives_output(model: Any, classifier: Callable, x: Array) -> bool:
    """Whether the model returns the classifier's output as it is (the output, or
    one leaf of a PyTree output): one trace, no FLOPs, decided by identity of the
    traced values, so that a softmax or a scaling after `classifier` is refused
    at trace time rather than by a failed run-time check."""
    outs: list[Any] = []
    found: list[bool] = []

    def record(out: Any) -> None:
        outs.append(out)

    hooked = eqx.tree_at(classifier, model, replace_fn=lambda fc: _Recorded(fc, record))

    def run(z):
        out = hooked(z)
        leaves = jax.tree.leaves(out)
        found.append(any(leaf is o for o in outs for leaf in leaves))
        return out

    jax.eval_shape(run, x)  # the model accepted `x` in `inspect_layer` already
    return found[0]


def _check_pooled_linear(a: Array, scores: Array, fc: Any, dtype: Any) -> Array:
    """`a`, with a run-time check that the classifier's output `scores` is
    `fc(mean_hw(a))`."""
    predicted = as_float(fc.weight) @ jnp.mean(a, axis=(1, 2))
    if fc.bias is not None:
        predicted = predicted + as_float(jnp.asarray(fc.bias)).reshape(predicted.shape)
    s = as_float(scores)
    # Loose enough for the rounding of low-precision models (bfloat16), tight
    # enough that any layer between the pooling and the scores shows.
    rel = max(1e-3, 8 * float(jnp.finfo(dtype).eps))
    tol = rel * (1.0 + jnp.max(jnp.abs(s)))
    return error_if(
        a,
        jnp.max(jnp.abs(s - predicted)) > tol,
        "CAM: `classifier`'s output is not `classifier(mean over space of layer)`.\n"
        "Something other than global average pooling lies between `layer` and "
        "`classifier`: point `layer` at the feature map pooled into `classifier`, "
        f"{_USE_GRADCAM}.",
    )


class CAM(AbstractCAM):
    """Class activation mapping: the classifier's weights on the last feature map.

    Zhou et al., *Learning Deep Features for Discriminative Localization*, CVPR
    2016. For a network ending in `layer -> global average pooling -> classifier`
    (a linear layer), the map is `sum_k w_ck A_k`, whose spatial mean plus the bias
    is exactly the score of class `c`.

    The architecture is checked: at trace time, `classifier` must be a linear
    layer whose `weight` is `(n_classes, C)` for the layer's `C` channels, called
    once per forward pass; at run time (the one condition on values, via
    `eqx.error_if`), its output `z` must equal `weight @ mean_hw(A) + bias`: a
    model with anything between the layer and the pooled features raises instead
    of returning a map that is not a CAM. The class weights are combined through
    `d target / d z` (`e_c` for a class index `c`), so `z` may be one leaf of a
    PyTree output, read by a callable target
    (`target=lambda out: out["logits"][3]`).

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores (or to a PyTree holding
        the classifier's output, with a callable `target`).
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
    spec: Layers
    classifier: Callable = eqx.field(static=True)
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        layer: LayerArg,
        classifier: Callable,
        relu: bool = True,
        resize: str | None = "bilinear",
        *,
        input_layout: InputLayout = None,
        **layer_options: Any,
    ):
        AbstractCAM.__init__(
            self, model, layer, relu, resize, input_layout=input_layout,
            **layer_options,
        )  # fmt: skip
        self.classifier = classifier

    def __check_init__(self):
        check_where(self.classifier, "classifier", "lambda m: m.fc")
        check_one_layer(
            self.spec, "CAM", "it reads the feature map pooled into `classifier`"
        )

    def _map(self, x, target, info, key):
        objective = make_objective(target, info.out)  # a PyTree output too
        spec = self._one_spec  # one layer: `check_one_layer`
        n_channels = jax.eval_shape(spec.maps, info.act).shape[0]
        fc, fc_info = _linear_classifier(self.model, self.classifier, x, n_channels)

        def both(m):
            return [spec.layer(m), self.classifier(m)]

        # The classifier's output `z` and `d target / d z`: `z` is the model's
        # output or one leaf of a PyTree output (`_classifier_gives_output`).
        _, _, (act, z), (_, dz) = read_layers(
            self.model, both, x, objective, (info, fc_info)
        )
        a = _check_pooled_linear(as_float(spec.maps(act)), z, fc, act.dtype)
        return self._weighted(as_float(dz) @ as_float(fc.weight), a)


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
    - `eigen_smooth`, `aug_smooth`, and a list of layers as `layer`:
        pytorch-grad-cam's options, as for [`eqx_attr.AbstractCAM`][] (every CAM
        of the family takes them where they are defined).

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.GradCAM(model, lambda m: m.conv2)(x, target=3)      # (28, 28)
    per_class = jax.vmap(lambda t: xa.GradCAM(model, lambda m: m.conv2)(x, t))(
        jnp.arange(10))                                        # (10, 28, 28)
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    input_layout: InputLayout = input_layout_field()

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
    - `input_layout`: the input's layout, `"chw"`, `"hwc"` or `None` (inferred),
        as for [`eqx_attr.AbstractCAM`][]: the map multiplies every channel of
        `x`, whichever axis holds them.
    - `other_activations`: passed to [`eqx_attr.GuidedBackprop`][]: `"raise"`
        (default) for rectifiers without a guided variant, or `"ignore"`.
    - `eigen_smooth`, `aug_smooth`, and a list of layers as `layer`: passed to
        the Grad-CAM map, as for [`eqx_attr.AbstractCAM`][].

    **Returns:** an array shaped like `x`.

    ```python
    g = xa.GuidedGradCAM(model, lambda m: m.conv2)(x, target=3)  # (1, 28, 28)
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    other_activations: str = eqx.field(static=True, default="raise")
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        layer: LayerArg,
        relu: bool = True,
        resize: str | None = "bilinear",
        *,
        eigen_smooth: bool = False,
        aug_smooth: bool = False,
        other_activations: str = "raise",
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
        self.other_activations = other_activations

    def __check_init__(self):
        check_bool(self.relu, "relu")
        check_resize(self.resize)
        check_bool(self.eigen_smooth, "eigen_smooth")
        check_bool(self.aug_smooth, "aug_smooth")
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
        layout = resolve_input_layout(x.shape, self.input_layout)
        gradcam = GradCAM(
            self.model,
            self.spec,
            self.relu,
            self.resize,
            eigen_smooth=self.eigen_smooth,
            aug_smooth=self.aug_smooth,
            input_layout=self.input_layout,
        )
        h = gradcam(x, target)
        guided_bp = GuidedBackprop(self.model, other_activations=self.other_activations)
        guided = guided_bp(x, target)
        h = map_over_channels(h, x.ndim, layout)
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
        differentiable=CLIPPED_MAP,
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
        differentiable=CLIPPED_MAP,
        benchmark=("run.py", "Captum LayerGradCam (--methods gradcam)"),
    ),
    MethodEntry(
        "guided_gradcam",
        GuidedGradCAM,
        "cam",
        "Guided Grad-CAM",
        layer_build(GuidedGradCAM),
        needs=_LAYER,
        differentiable=CLIPPED_MAP,
        benchmark=("run.py", "Captum GuidedGradCam (--methods guided-gradcam)"),
    ),
)
