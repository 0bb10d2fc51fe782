"""The Grad-CAM variants: Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM, Eigen-CAM,
Score-CAM and Ablation-CAM.

They share [`eqx_attr.GradCAM`][]'s options and machinery (`_cam.py`) and differ
only in how the channels of the layer's activation are combined into one map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._attribution import (
    make_objective,
)
from .._layers import replace_layer_output
from .._layout import (
    InputLayout,
    input_layout_field,
    map_over_channels,
    resolve_input_layout,
)
from .._method_entry import CLIPPED_MAP, Differentiability, MethodEntry
from ._base import (
    AbstractCAM,
    AbstractChannelScoreCAM,
    AbstractGradientCAM,
    as_float,
    layer_build,
    output_sum,
    spatial_size,
    weighted_sum,
)
from ._smoothing import check_no_eigen_smooth, principal_projection
from ._spec import Layers

__all__ = [
    "AblationCAM",
    "EigenCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "ScoreCAM",
    "XGradCAM",
]


def _safe_divide(num: Array, den: Array) -> Array:
    """`num / den`, and 0 where `den == 0` (no NaN, also in the gradient)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def gradcam_plus_plus_map(a: Array, g: Array) -> Array:
    """Grad-CAM++ weights from the closed form for an exponential score."""
    g2 = g * g
    g3 = g2 * g
    sum_a = jnp.sum(a, axis=(1, 2)).reshape(-1, 1, 1)
    alpha = _safe_divide(g2, 2 * g2 + sum_a * g3)
    weights = jnp.sum(alpha * jnp.maximum(g, 0), axis=(1, 2))
    return weighted_sum(weights, a)


def xgradcam_map(a: Array, g: Array) -> Array:
    """XGrad-CAM: gradients averaged with the normalised activation as weights."""
    weights = _safe_divide(jnp.sum(g * a, axis=(1, 2)), jnp.sum(a, axis=(1, 2)))
    return weighted_sum(weights, a)


def hirescam_map(a: Array, g: Array) -> Array:
    """HiResCAM: the element-wise product of gradient and activation, summed."""
    return jnp.sum(g * a, axis=0)


def layercam_map(a: Array, g: Array) -> Array:
    """LayerCAM: positive gradients as per-location weights."""
    return jnp.sum(jnp.maximum(g, 0) * a, axis=0)


def eigencam_map(a: Array) -> Array:
    """Projection of the activations on their first principal component (sign:
    the map correlates positively with the total activation)."""
    return principal_projection(a)


class GradCAMPlusPlus(AbstractGradientCAM):
    """Grad-CAM++: pixel-wise weighting of the positive gradients.

    Chattopadhay et al., *Grad-CAM++: Improved Visual Explanations for Deep
    Convolutional Networks*, WACV 2018. The closed form for the score `exp(Y)`
    with a piecewise-linear network (second and third derivatives `G^2`, `G^3`):
    `alpha_kij = G^2 / (2 G^2 + sum_ab A_kab G^3)` (0 where the denominator is 0),
    `w_k = sum_ij alpha_kij relu(G_kij)`, map `relu(sum_k w_k A_k)`. The positive
    factor `exp(Y)` common to all weights is dropped; it only rescales the map.

    **Arguments:** as for [`eqx_attr.GradCAM`][]: `model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.GradCAMPlusPlus(model, lambda m: m.conv2)(x, target=3)
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
        return gradcam_plus_plus_map(a, g)


class XGradCAM(AbstractGradientCAM):
    """XGrad-CAM: gradients weighted by the normalised activation.

    Fu et al., *Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs*, BMVC 2020. `w_k = sum_ij G_kij A_kij / sum_ij A_kij`
    (0 for a channel whose activation sums to 0), map `relu(sum_k w_k A_k)`.

    **Arguments:** as for [`eqx_attr.GradCAM`][]: `model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.XGradCAM(model, lambda m: m.conv2)(x, target=3)
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
        return xgradcam_map(a, g)


class HiResCAM(AbstractGradientCAM):
    """HiResCAM: the gradient times the activation, summed over channels.

    Draelos & Carin, *Use HiResCAM instead of Grad-CAM for faithful explanations
    of convolutional neural networks*, 2020. Map `relu(sum_k G_k * A_k)`; unlike
    Grad-CAM it keeps the gradient's spatial detail, and for a network ending in
    global average pooling and a linear layer it equals Grad-CAM.

    **Arguments:** as for [`eqx_attr.GradCAM`][]: `model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.HiResCAM(model, lambda m: m.conv2)(x, target=3)
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
        return hirescam_map(a, g)


class LayerCAM(AbstractGradientCAM):
    """LayerCAM: the positive gradient times the activation, summed over channels.

    Jiang et al., *LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization*, IEEE TIP 2021. Map `relu(sum_k relu(G_k) * A_k)`; reliable at
    shallow layers too.

    **Arguments:** as for [`eqx_attr.GradCAM`][]: `model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.LayerCAM(model, lambda m: m.conv1)(x, target=3)
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
        return layercam_map(a, g)


class EigenCAM(AbstractCAM):
    """Eigen-CAM: the first principal component of the layer's activations.

    Muhammad & Yeasin, *Eigen-CAM: Class Activation Map using Principal
    Components*, IJCNN 2020. The activations form a matrix with one row per
    location and one column per channel; its columns are centred (mean over
    locations) and the map is the projection of each location on the first right
    singular vector `v`. The sign of `v` is fixed deterministically: it is chosen
    so that `sum_k v_k >= 0`, equivalently so that the map correlates positively
    with the total activation `sum_k A_k` (high where the layer fires most).

    Class-agnostic: `target` is accepted for a uniform call (checked, then
    ignored). No gradient is needed (the activation is still read with a backward
    pass through the part of the model after `layer`).

    **Arguments:** as for [`eqx_attr.GradCAM`][]: `model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.EigenCAM(model, lambda m: m.conv2)(x)
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_no_eigen_smooth(
            self.eigen_smooth,
            "EigenCAM",
            "its map is already the first principal component of the activations",
        )

    def _map(self, x, target, info, key):
        if target is not None:  # class-agnostic, but a bad target still raises
            make_objective(target, info.out)
        spec = self._one_spec
        _, _, act, _ = spec.read(self.model, x, output_sum, info)
        return eigencam_map(as_float(spec.maps(act)))


class ScoreCAM(AbstractChannelScoreCAM):
    """Score-CAM: channels weighted by the score of the input they mask.

    Wang et al., *Score-CAM: Score-Weighted Visual Explanations for Convolutional
    Neural Networks*, CVPR Workshops 2020. Each channel `A_k` is upsampled
    (bilinearly) to the input's size and min-max normalised to `[0, 1]` (a
    constant channel gives an all-zero mask); `s_k = target(model(x * mask_k))`;
    the weights are `softmax_k(s_k)` (subtracting the baseline's score, as the
    paper does, would not change a softmax over channels); map
    `relu(sum_k w_k A_k)`. No gradient is used.

    **Arguments:** as for [`eqx_attr.GradCAM`][] (`model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`), and

    - `chunk_size`: forward at most this many masked inputs at a time (bounded
        memory, via `jax.lax.map`); `None` runs all channels in one batch;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][].

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.ScoreCAM(model, lambda m: m.conv2, chunk_size=16)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    input_layout: InputLayout = input_layout_field()

    def _channel_score(self, x, objective, act, maps, k):
        size = spatial_size(x, "ScoreCAM", self.input_layout)
        up = jax.image.resize(maps[k], size, "bilinear")
        lo, hi = jnp.min(up), jnp.max(up)
        mask = jnp.where(hi > lo, (up - lo) / jnp.where(hi > lo, hi - lo, 1), 0)
        layout = resolve_input_layout(x.shape, self.input_layout)
        mask = map_over_channels(mask, x.ndim, layout)
        return objective(self.model(x * mask.astype(x.dtype)))

    def _weights(self, scores, y):
        return jax.nn.softmax(scores)


class AblationCAM(AbstractChannelScoreCAM):
    """Ablation-CAM: channels weighted by the score drop when each is zeroed.

    Desai & Ramaswamy, *Ablation-CAM: Visual Explanations for Deep Convolutional
    Network via Gradient-free Localization*, WACV 2020. With `y` the target's
    score and `y_k` the score when channel `k` of the layer's output is set to
    zero (the rest of the network is rerun from the layer, see
    [`eqx_attr.replace_layer_output`][]), `w_k = (y - y_k) / y` and the map is
    `relu(sum_k w_k A_k)`. With `layout="tokens"` a channel is zeroed in the patch
    tokens only (the class/register tokens are kept). The formula divides by `y`:
    a negative score flips the map's sign, as in the paper.

    Differentiating the map (a penalty in a training loss): its derivative is the
    exact derivative of the formula (checked against finite differences), but
    the formula is singular at `y = 0`, where `w_k` and its derivative grow like
    `1 / y` and `1 / y^2`. An optimiser that moves the target's score towards 0
    meets that pole (the likely cause of a reported penalty that went from 0.58
    to 2865 in five Adam steps): choose a `target` whose value stays away from
    0, or penalise a map without the division ([`eqx_attr.GradCAM`][],
    [`eqx_attr.ScoreCAM`][]).

    **Arguments:** as for [`eqx_attr.GradCAM`][] (`model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`), and

    - `chunk_size`: rerun at most this many ablated activations at a time (bounded
        memory, via `jax.lax.map`); `None` runs all channels in one batch;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][].

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.AblationCAM(model, lambda m: m.conv2, chunk_size=16)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    input_layout: InputLayout = input_layout_field()

    def _channel_score(self, x, objective, act, maps, k):
        spec = self._one_spec
        keep = spec.keep_mask(act.shape, k)
        value = jnp.where(keep, act, jnp.zeros((), act.dtype))
        rest = replace_layer_output(
            self.model, spec.layer, value, call_index=spec.call_index
        )
        return objective(rest(x))

    def _weights(self, scores, y):
        return (y - scores) / y


_LAYER = frozenset({"layer"})

ROWS = (
    MethodEntry(
        "gradcam_plus_plus",
        GradCAMPlusPlus,
        "cam",
        "Grad-CAM++",
        layer_build(GradCAMPlusPlus),
        aliases=("gradcampp", "gradcam++"),
        needs=_LAYER,
        output="map",
        differentiable=CLIPPED_MAP,
        benchmark=(None, "no installable peer: Captum has no Grad-CAM++"),
    ),
    MethodEntry(
        "xgradcam",
        XGradCAM,
        "cam",
        "XGrad-CAM",
        layer_build(XGradCAM),
        needs=_LAYER,
        output="map",
        differentiable=CLIPPED_MAP,
        benchmark=(None, "no installable peer: Captum has no XGrad-CAM"),
    ),
    MethodEntry(
        "hirescam",
        HiResCAM,
        "cam",
        "HiRes-CAM",
        layer_build(HiResCAM),
        needs=_LAYER,
        output="map",
        differentiable=CLIPPED_MAP,
        benchmark=(None, "no installable peer: Captum has no HiRes-CAM"),
    ),
    MethodEntry(
        "layercam",
        LayerCAM,
        "cam",
        "Layer-CAM",
        layer_build(LayerCAM),
        needs=_LAYER,
        output="map",
        differentiable=CLIPPED_MAP,
        benchmark=(None, "no installable peer: Captum has no Layer-CAM"),
    ),
    MethodEntry(
        "eigencam",
        EigenCAM,
        "cam",
        "Eigen-CAM",
        layer_build(EigenCAM),
        needs=_LAYER,
        output="map",
        differentiable=Differentiability(
            1, 1, "through an SVD: undefined where the top singular values coincide"
        ),
        benchmark=(None, "no installable peer: Captum has no Eigen-CAM"),
    ),
    MethodEntry(
        "scorecam",
        ScoreCAM,
        "cam",
        "Score-CAM (chunk_size)",
        layer_build(ScoreCAM, chunked=True),
        needs=_LAYER,
        output="map",
        differentiable=CLIPPED_MAP,
        benchmark=(None, "no installable peer: Captum has no Score-CAM"),
    ),
    MethodEntry(
        "ablationcam",
        AblationCAM,
        "cam",
        "Ablation-CAM (chunk_size)",
        layer_build(AblationCAM, chunked=True),
        needs=_LAYER,
        output="map",
        differentiable=Differentiability(
            1,
            1,
            "divides by the target score y: the derivative grows like 1/y^2 as y -> 0",
        ),
        benchmark=(None, "no installable peer: Captum has no Ablation-CAM"),
    ),
)
