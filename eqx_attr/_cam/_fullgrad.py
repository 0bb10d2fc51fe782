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
    check_input,
    forward_shape,
    make_objective,
)
from .._layers import inspect_layers, read_layers
from .._method_entry import MethodEntry
from ._base import (
    Map,
    as_float,
    scale_map,
    spatial_size,
)

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


def _scaled_planes(planes: Array, size: tuple[int, int]) -> Array:
    """`scale_accross_batch_and_channels`: each plane scaled, resized, then summed."""
    scaled = jax.vmap(scale_map)(planes)
    if scaled.shape[1:] != size:
        scaled = jax.image.resize(scaled, (scaled.shape[0], *size), "bilinear")
    return jnp.sum(scaled, axis=0)


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

    **Returns:** `method(x, target)` gives an `(H, W)` map over `x`'s last two
    axes, in `[0, 1]`, in `x`'s dtype.

    ```python
    h = xa.FullGrad(model)(x, target=3)               # (28, 28)
    ```
    """

    model: Callable[..., Any]

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Map:
        return self._attribution_and_scores(x, target, key)[0]

    def _attribution_and_scores(
        self, x: Image, target: Target, key: PRNGKeyArray | None
    ) -> tuple[Map, Array | None]:
        x = check_input(x)
        size = spatial_size(x, "FullGrad")
        objective = make_objective(target, forward_shape(self.model, x).shape)
        grad_x = jax.grad(lambda z: objective(self.model(z)))(x)
        total = _scaled_planes(
            jnp.abs(as_float(grad_x) * as_float(x)).reshape(-1, *size), size
        )
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
                total = total + _scaled_planes(jnp.abs(b * g), size)
        return scale_map(total).astype(x.dtype), scores


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
        benchmark=(None, _NO_PEER),
    ),
)
