"""A tiny fully convolutional segmenter for MNIST digits, and its pixel labels."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._small import _he_conv

DIGIT_THRESHOLD = 0.5
"""A pixel above this intensity belongs to the digit (see `digit_masks`)."""


def digit_masks(
    images: Float[ArrayLike, "..."], labels: Int[ArrayLike, "..."]
) -> Int[np.ndarray, "n h w"]:
    """Per-pixel classes of MNIST digits: 0 for background, `1 + digit` on it.

    A pixel is on the digit when its intensity exceeds `DIGIT_THRESHOLD` (0.5);
    these are the labels [`eqx_attr.models.SmallSegmenter`][] is trained on.

    **Arguments:**

    - `images`: `(N, 1, H, W)` digits in `[0, 1]`.
    - `labels`: `(N,)` their digits, 0 to 9.

    **Returns:** an int32 array `(N, H, W)` with values in `[0, 10]`.

    ```python
    data = xa.datasets.mnist()
    ys = xa.models.digit_masks(data.x_train, data.y_train)   # (4000, 28, 28)
    ```
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.shape[1] != 1 or labels.shape != images.shape[:1]:
        raise ValueError(
            "`images` must be (N, 1, H, W) and `labels` (N,), got "
            f"{images.shape} and {labels.shape}."
        )
    on = images[:, 0] > DIGIT_THRESHOLD
    return np.where(on, labels[:, None, None] + 1, 0).astype(np.int32)


class SmallSegmenter(eqx.Module):
    """A tiny fully convolutional net: `(1, 28, 28)` digit -> `(11, 28, 28)` logits.

    Class 0 is the background, class `1 + d` the pixels of digit `d` (the labels
    of [`eqx_attr.models.digit_masks`][]). Layers:

    - `local`: conv, ReLU at full resolution (where the digit's pixels are);
    - `context`: 2x2 max-pool, conv, ReLU, 2x2 max-pool, conv, ReLU at a quarter
        of the resolution (7x7 for 28x28; which digit it is). Its output is the
        default Grad-CAM layer;
    - `head`: a 1x1 convolution of the local features, the context repeated 4x4
        up to full resolution, and the context's global average (which digit the
        whole image shows), stacked.

    Explain a region with a segmentation target, e.g.
    `xa.targets.SegmentationRegion(1 + d, mask)`. Trained in seconds by
    [`eqx_attr.training.pretrained_mnist_segmenter`][].

    **Arguments:** `in_channels`, `n_classes` (default 11), `width` (channels of
    `local`; `context` has twice as many), `key`.

    **Returns:** calling it on one `(in_channels, H, W)` image (H, W multiples of
    4) gives the per-pixel logits `(n_classes, H, W)`.

    ```python
    seg = xa.models.SmallSegmenter(key=jax.random.key(0))
    logits = seg(jnp.zeros((1, 28, 28)))                       # (11, 28, 28)
    ```
    """

    local: eqx.nn.Sequential
    context: eqx.nn.Sequential
    head: eqx.nn.Conv2d

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 11,
        width: int = 8,
        *,
        key: PRNGKeyArray,
    ):
        relu = eqx.nn.Lambda(jax.nn.relu)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.local = eqx.nn.Sequential([_he_conv(in_channels, width, k1), relu])
        self.context = eqx.nn.Sequential(
            [
                eqx.nn.MaxPool2d(2, 2),
                _he_conv(width, 2 * width, k2),
                relu,
                eqx.nn.MaxPool2d(2, 2),
                _he_conv(2 * width, 2 * width, k3),
                relu,
            ]
        )
        head = eqx.filter_eval_shape(eqx.nn.Conv2d, 5 * width, n_classes, 1, key=k4)
        std = (1.0 / (5 * width)) ** 0.5
        weight = std * jax.random.normal(k4, head.weight.shape, head.weight.dtype)
        bias = jnp.zeros(head.bias.shape, head.bias.dtype)
        self.head = eqx.tree_at(lambda c: (c.weight, c.bias), head, (weight, bias))

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "k h w"]:
        if x.ndim != 3 or x.shape[1] % 4 or x.shape[2] % 4 or x.shape[1] < 4:
            raise ValueError(
                "SmallSegmenter expects one example (C, H, W) with H and W "
                f"multiples of 4, got shape {x.shape}."
            )
        local = self.local(x)
        context = self.context(local)
        up = jnp.repeat(jnp.repeat(context, 4, axis=1), 4, axis=2)
        whole = jnp.broadcast_to(
            jnp.mean(context, axis=(1, 2), keepdims=True), up.shape
        )
        return self.head(jnp.concatenate([local, up, whole], axis=0))
