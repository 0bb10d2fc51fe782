"""ResNet-18/34/50/101/152 in inference mode, laid out like torchvision's."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import check_positive_int
from ._blocks import FrozenBatchNorm2d, check_image, relu


def _conv(c_in: int, c_out: int, kernel: int, stride: int, key) -> eqx.nn.Conv2d:
    return eqx.nn.Conv2d(
        c_in, c_out, kernel, stride, padding=kernel // 2, use_bias=False, key=key
    )


def _downsample(c_in: int, c_out: int, stride: int, key) -> eqx.nn.Sequential:
    # torchvision's `downsample`: a strided 1x1 convolution and batch norm, so that
    # the state-dict keys are `downsample.0.weight` and `downsample.1.*`.
    return eqx.nn.Sequential(
        [_conv(c_in, c_out, 1, stride, key), FrozenBatchNorm2d(c_out)]
    )


class BasicBlock(eqx.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34).

    `relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))`. Each ReLU is a
    separate `eqx.nn.Lambda` applied once, so each is a valid `where` target and
    reachable by surgery.

    **Arguments:** input channels `c_in`, output channels `planes`, the `stride`
    of the first convolution, and the PRNG `key`.

    **Returns:** calling it on a `(c_in, H, W)` map gives `(planes, H / stride,
    W / stride)`.
    """

    conv1: eqx.nn.Conv2d
    bn1: FrozenBatchNorm2d
    relu1: eqx.nn.Lambda
    conv2: eqx.nn.Conv2d
    bn2: FrozenBatchNorm2d
    downsample: eqx.nn.Sequential | None
    relu2: eqx.nn.Lambda
    expansion: int = eqx.field(static=True, default=1)

    def __init__(self, c_in: int, planes: int, stride: int, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = _conv(c_in, planes, 3, stride, k1)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.relu1 = relu()
        self.conv2 = _conv(planes, planes, 3, 1, k2)
        self.bn2 = FrozenBatchNorm2d(planes)
        needs = stride != 1 or c_in != planes
        self.downsample = _downsample(c_in, planes, stride, k3) if needs else None
        self.relu2 = relu()

    def __call__(
        self, x: Float[Array, "c h w"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c2 h2 w2"]:
        del key
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class Bottleneck(eqx.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a residual (ResNet-50+).

    The stride sits on the 3x3 convolution, as in torchvision ("ResNet v1.5").

    **Arguments:** input channels `c_in`, the bottleneck width `planes` (the
    output has `4 * planes` channels), the `stride`, and the PRNG `key`.

    **Returns:** calling it on a `(c_in, H, W)` map gives `(4 * planes,
    H / stride, W / stride)`.
    """

    conv1: eqx.nn.Conv2d
    bn1: FrozenBatchNorm2d
    relu1: eqx.nn.Lambda
    conv2: eqx.nn.Conv2d
    bn2: FrozenBatchNorm2d
    relu2: eqx.nn.Lambda
    conv3: eqx.nn.Conv2d
    bn3: FrozenBatchNorm2d
    downsample: eqx.nn.Sequential | None
    relu3: eqx.nn.Lambda
    expansion: int = eqx.field(static=True, default=4)

    def __init__(self, c_in: int, planes: int, stride: int, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        c_out = planes * 4
        self.conv1 = _conv(c_in, planes, 1, 1, k1)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.relu1 = relu()
        self.conv2 = _conv(planes, planes, 3, stride, k2)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.relu2 = relu()
        self.conv3 = _conv(planes, c_out, 1, 1, k3)
        self.bn3 = FrozenBatchNorm2d(c_out)
        needs = stride != 1 or c_in != c_out
        self.downsample = _downsample(c_in, c_out, stride, k4) if needs else None
        self.relu3 = relu()

    def __call__(
        self, x: Float[Array, "c h w"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c2 h2 w2"]:
        del key
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + shortcut)


_CONFIGS: dict[int, tuple[type, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(eqx.Module):
    """Residual network: `(C, H, W) -> (n_classes,)`, batch norm in inference mode.

    The layout and names follow `torchvision.models.resnet*`: `conv1`, `bn1`,
    `relu`, `maxpool`, then `layer1`..`layer4` (each an `eqx.nn.Sequential` of
    [`eqx_attr.models.BasicBlock`][] or [`eqx_attr.models.Bottleneck`][]), global
    average pooling and `fc`. Batch norms are
    [`eqx_attr.models.FrozenBatchNorm2d`][], so the model has no state.

    `m.layer4` (or `m.layer4[-1]`, its last block) is the last feature map, and it
    is average-pooled straight into `m.fc`: `GradCAM(m, lambda m: m.layer4)` and
    `CAM(m, lambda m: m.layer4, classifier=lambda m: m.fc)` are the standard
    choices.

    **Arguments:**

    - `depth`: 18, 34, 50, 101 or 152.
    - `n_classes`: number of logits (1000 for ImageNet).
    - `in_channels`: image channels (3 for RGB).
    - `width`: channels of the stem and `layer1`'s planes (64 in the paper);
        later stages double it, for small test models.
    - `key`: PRNG key for the random initialisation.

    **Example:**

    **Returns:** calling it on one `(C, H, W)` image gives the logits
    `(n_classes,)`.

    ```python
    m = ResNet(depth=18, n_classes=10, width=8, key=jax.random.key(0))
    logits = m(jnp.zeros((3, 64, 64)))                  # (10,)
    h = xa.GradCAM(m, lambda m: m.layer4[-1])(x, target=3)
    ```
    """

    conv1: eqx.nn.Conv2d
    bn1: FrozenBatchNorm2d
    relu: eqx.nn.Lambda
    maxpool: eqx.nn.MaxPool2d
    layer1: eqx.nn.Sequential
    layer2: eqx.nn.Sequential
    layer3: eqx.nn.Sequential
    layer4: eqx.nn.Sequential
    fc: eqx.nn.Linear
    depth: int = eqx.field(static=True)
    in_channels: int = eqx.field(static=True)

    def __init__(
        self,
        depth: int = 50,
        n_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        *,
        key: PRNGKeyArray,
    ):
        if depth not in _CONFIGS:
            raise ValueError(
                f"`depth` must be one of {sorted(_CONFIGS)} for ResNet, got {depth!r}."
            )
        for name, value in [
            ("n_classes", n_classes),
            ("in_channels", in_channels),
            ("width", width),
        ]:
            check_positive_int(value, name)
        block, counts = _CONFIGS[depth]
        expansion = 4 if block is Bottleneck else 1
        kstem, kfc, *kstages = jax.random.split(key, 6)
        self.conv1 = eqx.nn.Conv2d(
            in_channels, width, 7, 2, padding=3, use_bias=False, key=kstem
        )
        self.bn1 = FrozenBatchNorm2d(width)
        self.relu = relu()
        self.maxpool = eqx.nn.MaxPool2d(3, 2, padding=1)
        c_in = width
        stages = []
        for i, (count, kstage) in enumerate(zip(counts, kstages, strict=True)):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            blocks = []
            for j, kblock in enumerate(jax.random.split(kstage, count)):
                blocks.append(block(c_in, planes, stride if j == 0 else 1, key=kblock))
                c_in = planes * expansion
            stages.append(eqx.nn.Sequential(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = eqx.nn.Linear(c_in, n_classes, key=kfc)
        self.depth = depth
        self.in_channels = in_channels

    def features(self, x: Float[Array, "..."]) -> Float[Array, "k h2 w2"]:
        """The last feature map (the output of `layer4`)."""
        check_image(x, self.in_channels, "ResNet")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def __call__(self, x: Float[Array, "..."]) -> Float[Array, " n"]:
        return self.fc(jnp.mean(self.features(x), axis=(1, 2)))


def _factory(depth: int):
    def make(
        n_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        *,
        key: PRNGKeyArray,
    ) -> ResNet:
        return ResNet(depth, n_classes, in_channels, width, key=key)

    make.__name__ = make.__qualname__ = f"resnet{depth}"
    make.__doc__ = (
        f"ResNet-{depth}: `ResNet(depth={depth}, ...)`. Arguments as for "
        f"[`eqx_attr.models.ResNet`][]; torchvision's `resnet{depth}` when left at "
        "defaults.\n\n**Arguments:** `n_classes`, `in_channels`, `width` and the "
        "PRNG `key`, as for [`eqx_attr.models.ResNet`][]."
        "\n\n**Returns:** a randomly initialised [`eqx_attr.models.ResNet`][]."
    )
    return make


resnet18 = _factory(18)
resnet34 = _factory(34)
resnet50 = _factory(50)
resnet101 = _factory(101)
resnet152 = _factory(152)
