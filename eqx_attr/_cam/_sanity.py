"""Sanity baselines of pytorch-grad-cam: Random-CAM (random channel weights) and
Sobel-CAM (the input's edges, independent of the model).
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
    check_key,
    forward_output,
)
from .._layout import (
    InputLayout,
    channels_first,
    input_layout_field,
    resolve_input_layout,
)
from .._method_entry import Differentiability, MethodEntry
from ._base import (
    AbstractCAM,
    Map,
    as_float,
    check_agnostic_target,
    layer_build,
    read_activation,
    spatial_size,
)
from ._spec import Layers

__all__ = ["RandomCAM", "SobelCAM"]


class RandomCAM(AbstractCAM):
    """Random-CAM: the activations weighted by random channel weights.

    pytorch-grad-cam's `random_cam.py` (`RandomCAM.get_cam_weights`:
    `np.random.uniform(-1, 1, size=(batch, channels))`): `w_k ~ U(-1, 1)` drawn
    from `key`, map `relu(sum_k w_k A_k)`. A sanity baseline: a metric that cannot
    tell a method from this one does not measure faithfulness. Class-agnostic:
    `target` is checked, then ignored.

    **Arguments:** as for [`eqx_attr.GradCAM`][]: `model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`);
    calling needs `key`.

    ```python
    h = xa.RandomCAM(model, lambda m: m.conv2)(x, 3, key=jax.random.key(0))
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    input_layout: InputLayout = input_layout_field()

    def _map(self, x, target, info, key):
        key = check_key(key, "RandomCAM")
        check_agnostic_target(target, info.out)
        a = read_activation(self, x, info)
        weights = jax.random.uniform(key, (a.shape[0],), a.dtype, -1.0, 1.0)
        return self._weighted(weights, a)


_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_RGB_TO_GRAY = (0.299, 0.587, 0.114)


def sobel_map(x: Array) -> Array:
    """`0.5 |S_x * gray| + 0.5 |S_y * gray|`, borders reflected as OpenCV does."""
    h, w = x.shape[-2:]
    planes = as_float(x).reshape(-1, h, w)
    if planes.shape[0] == 3:
        gray = jnp.tensordot(jnp.asarray(_RGB_TO_GRAY, planes.dtype), planes, axes=1)
    else:
        gray = jnp.mean(planes, axis=0)
    # OpenCV's default border, BORDER_REFLECT_101, is numpy's "reflect" (a
    # 1-pixel image has nothing to reflect: its edges repeat).
    mode = "reflect" if min(h, w) > 1 else "edge"
    p = jnp.pad(gray, 1, mode=mode)
    kx = jnp.asarray(_SOBEL_X, gray.dtype)

    def correlate(k):
        return sum(
            k[u, v] * p[u : u + h, v : v + w] for u in range(3) for v in range(3)
        )

    return 0.5 * jnp.abs(correlate(kx)) + 0.5 * jnp.abs(correlate(kx.T))


class SobelCAM(AbstractAttribution):
    """Sobel-CAM: the input image's edge magnitude, a model-independent baseline.

    pytorch-grad-cam's `sobel_cam.py` (`sobel_cam(img)`): the image in grey
    (`0.299 R + 0.587 G + 0.114 B` for 3 channels, as `cv2.COLOR_RGB2GRAY`; the
    channel mean otherwise), filtered by the 3x3 Sobel kernels (`cv2.Sobel`,
    `ksize=3`, reflected borders `BORDER_REFLECT_101`), map
    `0.5 |G_x| + 0.5 |G_y|` (`cv2.addWeighted`). OpenCV's `convertScaleAbs` also
    rounds and saturates to `uint8`; this map stays in floating point. A map of the
    input only: a metric that ranks it with the real methods does not test the
    model. The model is used to check `x` and `target` only.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores (not evaluated).

    - `input_layout`: `"chw"`, `"hwc"` or `None` (default: inferred from `x`'s
        shape, see [`eqx_attr.AbstractAttribution`][]): where the channels are.

    **Returns:** `method(x, target)` gives an `(H, W)` map over `x`'s spatial
    axes, in `x`'s dtype.

    ```python
    h = xa.SobelCAM(model)(x, target=3)                # (28, 28)
    ```
    """

    model: Callable[..., Any]
    input_layout: InputLayout = input_layout_field()

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Map:
        x = check_input(x)
        spatial_size(x, "SobelCAM", self.input_layout)
        check_agnostic_target(target, forward_output(self.model, x))
        layout = resolve_input_layout(x.shape, self.input_layout)
        return sobel_map(channels_first(x, layout)).astype(x.dtype)


_LAYER = frozenset({"layer"})
_NO_PEER = "no installable peer: pytorch-grad-cam needs torchvision"

ROWS = (
    MethodEntry(
        "randomcam",
        RandomCAM,
        "cam",
        "Random-CAM (random channel weights; a sanity baseline)",
        layer_build(RandomCAM),
        needs=frozenset({"layer", "key"}),
        output="map",
        differentiable=Differentiability(1, 1, "for a fixed key"),
        benchmark=(None, "a sanity baseline: nothing to time"),
    ),
    MethodEntry(
        "sobelcam",
        SobelCAM,
        "cam",
        "Sobel-CAM (the input's edge magnitude; a model-independent baseline)",
        lambda c: SobelCAM(c.model),
        output="map",
        differentiable=Differentiability(
            1, 1, "does not depend on the parameters (derivative 0)"
        ),
        benchmark=(None, "a sanity baseline: nothing to time"),
    ),
)
