"""FullGrad (Srinivas & Fleuret, 2019), as pytorch-grad-cam's `fullgrad_cam.py`:
the input-gradient times the input plus every convolution's bias-gradients.
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
    Image,
    Target,
    check_bool,
    check_input,
    forward_output,
    make_objective,
)
from .._layers import inspect_layers, read_layers
from .._layout import (
    InputLayout,
    channels_first,
    input_layout_field,
    resolve_input_layout,
)
from .._method_entry import CLIPPED_MAP, MethodEntry
from ._base import (
    Map,
    as_float,
    scale_map,
    spatial_size,
    width_axis,
)
from ._smoothing import augmentation_smoothing, fullgrad_projection

__all__ = ["FullGrad"]


def _is_conv(node: Any) -> bool:
    return isinstance(node, eqx.nn.Conv)


def bias_layers(model: Any) -> list[Any]:
    """FullGrad's layers: every 2-D `eqx.nn.Conv` with a bias, in tree order."""
    return [
        n
        for n in jax.tree_util.tree_leaves(model, is_leaf=_is_conv)
        if _is_conv(n) and n.num_spatial_dims == 2 and n.bias is not None
    ]


def _each_scaled(planes: Array, size: tuple[int, int]) -> Array:
    """`scale_accross_batch_and_channels`: each plane scaled, then resized."""
    scaled = jax.vmap(scale_map)(planes)
    if scaled.shape[1:] != size:
        scaled = jax.image.resize(scaled, (scaled.shape[0], *size), "bilinear")
    return scaled


def _scaled_planes(planes: Array, size: tuple[int, int]) -> Array:
    """`scale_accross_batch_and_channels`: each plane scaled, resized, then summed."""
    return jnp.sum(_each_scaled(planes, size), axis=0)


class FullGrad(AbstractAttribution):
    """FullGrad: input-gradient times input plus every conv layer's bias-gradients.

    Srinivas & Fleuret, *Full-Gradient Representation for Neural Network
    Visualization*, NeurIPS 2019, as pytorch-grad-cam's `fullgrad_cam.py` computes
    it (`FullGrad.compute_cam_per_layer` and `aggregate_multi_layers`): with
    `S` the target's score,

    - the input term `abs(x * dS/dx)`, one plane per input channel;
    - for every layer with a bias, the bias-gradient `abs(b_c * dS/dz_c)`, `z` the
        layer's output (`(C, h, w)`), one plane per channel;

    each plane is min-max scaled (`scale_cam_image`:
    `(p - min) / (1e-7 + max(p - min))`) and resized bilinearly to the input, the
    planes are summed, and the sum is min-max scaled to `[0, 1]`.

    **Which layers count:** every 2-D `eqx.nn.Conv` (e.g. `eqx.nn.Conv2d`) with a
    bias, found with `jax.tree_util` over the model; `dS/dz` is read at each
    one's output by the library's layer tap (each must be called once per forward
    pass). pytorch-grad-cam also counts `BatchNorm2d` (its folded bias); Equinox's
    `BatchNorm` keeps state, so it is not counted. Linear layers have no spatial
    output and are not counted (as in pytorch-grad-cam). Resizing uses
    `jax.image.resize` (half-pixel bilinear, as `cv2.resize` when upsampling; it
    antialiases when downsampling, which OpenCV does not).

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `eigen_smooth`: as pytorch-grad-cam's `FullGrad.compute_cam_per_layer`:
        instead of summing the planes (each input channel's, and each layer's sum
        of its channels'), scale them again, resize them to 1/8 of the input's
        size, project them on their first principal component (sign as for
        [`eqx_attr.AbstractCAM`][]'s `eigen_smooth`), then scale and resize that
        back; needs an input of at least 8 x 8. Default `False`.
    - `aug_smooth`: average the map over pytorch-grad-cam's test-time
        augmentations (horizontal flip, intensity 0.9 / 1 / 1.1), as for
        [`eqx_attr.AbstractCAM`][]; default `False`.
    - `input_layout`: `"chw"`, `"hwc"` or `None` (default: inferred from `x`'s
        shape, see [`eqx_attr.AbstractAttribution`][]): where `x`'s channels are.

    **Returns:** `method(x, target)` gives an `(H, W)` map over `x`'s spatial
    axes, in `[0, 1]`, in `x`'s dtype.

    ```python
    h = xa.FullGrad(model)(x, target=3)               # (28, 28)
    ```
    """

    model: Callable[..., Any]
    eigen_smooth: bool = eqx.field(static=True, default=False, kw_only=True)
    aug_smooth: bool = eqx.field(static=True, default=False, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_bool(self.eigen_smooth, "eigen_smooth")
        check_bool(self.aug_smooth, "aug_smooth")

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Map:
        return self._attribution_and_scores(x, target, key)[0]

    def _attribution_and_scores(
        self, x: Image, target: Target, key: PRNGKeyArray | None
    ) -> tuple[Map, Any]:
        x = check_input(x)
        if self.aug_smooth:
            m, scores = augmentation_smoothing(
                lambda z: self._map(z, target), x, width_axis(x, self.input_layout)
            )
            return m.astype(x.dtype), scores
        m, scores = self._map(x, target)
        return m.astype(x.dtype), scores

    def _map(self, x: Array, target: Target) -> tuple[Array, Any]:
        size = spatial_size(x, "FullGrad", self.input_layout)
        layout = resolve_input_layout(x.shape, self.input_layout)
        objective = make_objective(target, forward_output(self.model, x))
        grad_x = jax.grad(lambda z: objective(self.model(z)))(x)
        gx = channels_first(jnp.abs(as_float(grad_x) * as_float(x)), layout)
        inputs = _each_scaled(gx.reshape(-1, *size), size)
        total, planes = jnp.sum(inputs, axis=0), [inputs]
        scores = None
        layers = bias_layers(self.model)
        if layers:
            infos = inspect_layers(self.model, bias_layers, x, name="FullGrad's layers")
            scores, _, _, grads = read_layers(
                self.model, bias_layers, x, objective, infos
            )
            for layer, g in zip(layers, grads, strict=True):
                g = as_float(g)
                b = as_float(jnp.asarray(layer.bias)).reshape(-1, 1, 1)
                plane = _scaled_planes(jnp.abs(b * g), size)
                total, planes = total + plane, [*planes, plane[None]]
        if self.eigen_smooth:
            total = fullgrad_projection(jnp.concatenate(planes), size)
        return scale_map(total), scores


_LAYER = frozenset({"layer"})
_NO_PEER = "no installable peer: pytorch-grad-cam needs torchvision"

ROWS = (
    MethodEntry(
        "fullgrad",
        FullGrad,
        "cam",
        "FullGrad (input-gradient x input plus every conv layer's bias-gradients)",
        lambda c: FullGrad(c.model),
        output="map",
        differentiable=CLIPPED_MAP,
        benchmark=(None, _NO_PEER),
    ),
)
