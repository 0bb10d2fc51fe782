"""VGG-11/13/16/19, with or without batch norm, laid out like torchvision's."""

from __future__ import annotations

import equinox as eqx
import jax
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import check_positive_int
from ._blocks import AdaptiveAvgPool2d, FrozenBatchNorm2d, check_image, relu

# Channels per 3x3 convolution, "M" for a 2x2 max-pool (Simonyan & Zisserman, 2015).
_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
    + [512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"]
    + [512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(eqx.Module):
    """VGG network: `(C, H, W) -> (n_classes,)`, in inference mode.

    The layout and names follow `torchvision.models.vgg*`, so `m.features[i]` is
    torchvision's `features[i]` and state-dict keys map one to one:

    - `features`: an `eqx.nn.Sequential` of 3x3 convolutions, optional
        [`eqx_attr.models.FrozenBatchNorm2d`][], ReLUs (`eqx.nn.Lambda`, reachable
        by surgery) and 2x2 max-pools. `m.features[-1]` is the last max-pool and
        `m.features[-2]` the last ReLU, the usual Grad-CAM layers.
    - `avgpool`: adaptive average pooling to `pool_size x pool_size`.
    - `classifier`: `Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear`; the
        dropouts are `eqx.nn.Identity` (inference) and keep torchvision's indices
        0, 3, 6 for the linear layers.

    **Arguments:**

    - `depth`: 11, 13, 16 or 19.
    - `batch_norm`: insert batch norm after every convolution (the `_bn` models).
    - `n_classes`: number of logits (1000 for ImageNet).
    - `in_channels`: image channels (3 for RGB).
    - `width`: channels of the first convolution (64 in the paper); every stage is
        scaled by `width / 64`, for small test models.
    - `hidden`: width of the two hidden classifier layers (4096 in the paper).
    - `pool_size`: output side of `avgpool` (7 in the paper).
    - `key`: PRNG key for the random initialisation.

    **Example:**

    **Returns:** calling it on one `(C, H, W)` image gives the logits
    `(n_classes,)`.

    ```python
    m = VGG(depth=11, n_classes=10, width=8, hidden=32, key=jax.random.key(0))
    logits = m(jnp.zeros((3, 32, 32)))                  # (10,)
    h = xa.GradCAM(m, lambda m: m.features[-2])(x, target=3)
    ```
    """

    features: eqx.nn.Sequential
    avgpool: AdaptiveAvgPool2d
    classifier: eqx.nn.Sequential
    depth: int = eqx.field(static=True)
    batch_norm: bool = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)

    def __init__(
        self,
        depth: int = 16,
        batch_norm: bool = False,
        n_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        hidden: int = 4096,
        pool_size: int = 7,
        *,
        key: PRNGKeyArray,
    ):
        if depth not in _CONFIGS:
            raise ValueError(
                f"`depth` must be one of {sorted(_CONFIGS)} for VGG, got {depth!r}."
            )
        for name, value in [
            ("n_classes", n_classes),
            ("in_channels", in_channels),
            ("width", width),
            ("hidden", hidden),
            ("pool_size", pool_size),
        ]:
            check_positive_int(value, name)
        cfg = _CONFIGS[depth]
        n_convs = sum(1 for v in cfg if v != "M")
        keys = list(jax.random.split(key, n_convs + 3))
        layers: list = []
        c_in = in_channels
        for v in cfg:
            if isinstance(v, str):  # "M": a 2x2 max-pool
                layers.append(eqx.nn.MaxPool2d(2, 2))
                continue
            c_out = max(1, v * width // 64)
            layers.append(eqx.nn.Conv2d(c_in, c_out, 3, padding=1, key=keys.pop()))
            if batch_norm:
                layers.append(FrozenBatchNorm2d(c_out))
            layers.append(relu())
            c_in = c_out
        self.features = eqx.nn.Sequential(layers)
        self.avgpool = AdaptiveAvgPool2d(pool_size)
        flat = c_in * pool_size * pool_size
        self.classifier = eqx.nn.Sequential(
            [
                eqx.nn.Linear(flat, hidden, key=keys.pop()),
                relu(),
                eqx.nn.Identity(),
                eqx.nn.Linear(hidden, hidden, key=keys.pop()),
                relu(),
                eqx.nn.Identity(),
                eqx.nn.Linear(hidden, n_classes, key=keys.pop()),
            ]
        )
        self.depth = depth
        self.batch_norm = batch_norm
        self.in_channels = in_channels

    def __call__(self, x: Float[Array, "..."]) -> Float[Array, " n"]:
        check_image(x, self.in_channels, "VGG")
        if x.shape[1] < 32 or x.shape[2] < 32:
            raise ValueError(
                f"VGG halves the image five times and needs H, W >= 32; got an "
                f"input of shape {x.shape}. Resize the image first."
            )
        a = self.avgpool(self.features(x))
        return self.classifier(a.reshape(-1))


def _factory(depth: int, batch_norm: bool):
    def make(
        n_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        hidden: int = 4096,
        pool_size: int = 7,
        *,
        key: PRNGKeyArray,
    ) -> VGG:
        return VGG(
            depth,
            batch_norm,
            n_classes,
            in_channels,
            width,
            hidden,
            pool_size,
            key=key,
        )

    name = f"vgg{depth}" + ("_bn" if batch_norm else "")
    make.__name__ = make.__qualname__ = name
    make.__doc__ = (
        f"VGG-{depth}{' with batch norm' if batch_norm else ''}: "
        f"`VGG(depth={depth}, batch_norm={batch_norm}, ...)`. Arguments as for "
        "[`eqx_attr.models.VGG`][]; torchvision's `{name}` when left at defaults."
        "\n\n**Arguments:** `n_classes`, `in_channels`, `width`, `hidden`, "
        "`pool_size` and the PRNG `key`, as for [`eqx_attr.models.VGG`][]."
        "\n\n**Returns:** a randomly initialised [`eqx_attr.models.VGG`][]."
    ).replace("{name}", name)
    return make


vgg11 = _factory(11, False)
vgg11_bn = _factory(11, True)
vgg13 = _factory(13, False)
vgg13_bn = _factory(13, True)
vgg16 = _factory(16, False)
vgg16_bn = _factory(16, True)
vgg19 = _factory(19, False)
vgg19_bn = _factory(19, True)
