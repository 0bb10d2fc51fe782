"""Small models for MNIST-sized inputs: an MLP and the demo's CNN."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class MLP(eqx.Module):
    """Flatten, then a ReLU multilayer perceptron: `(*in_shape) -> (n_classes,)`.

    The ReLU lives in `self.mlp.activation` (an `eqx.nn.MLP` field).
    """

    mlp: eqx.nn.MLP
    in_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        in_shape: tuple[int, ...] = (1, 28, 28),
        n_classes: int = 10,
        width: int = 256,
        depth: int = 2,
        *,
        key: PRNGKeyArray,
    ):
        size = 1
        for d in in_shape:
            size *= d
        self.in_shape = tuple(in_shape)
        self.mlp = eqx.nn.MLP(size, n_classes, width, depth, jax.nn.relu, key=key)

    def __call__(self, x: Float[Array, "..."]) -> Float[Array, " n"]:
        if x.shape != self.in_shape:
            raise ValueError(
                f"MLP expects one example of shape {self.in_shape}, got {x.shape}."
            )
        return self.mlp(x.reshape(-1))


class SmallCNN(eqx.Module):
    """The MNIST CNN of the tests and the demo: `(1, 28, 28) -> (10,)`.

    `conv1` -> `conv2` -> global average pooling -> `fc`. `conv2`'s output (after
    its ReLU) is the last feature map and is average-pooled straight into `fc`, so
    `layer=lambda m: m.conv2` with `classifier=lambda m: m.fc` is an exact CAM.

    - `deep=False` (default): `conv1` = conv, ReLU, conv, ReLU, 2x2 max-pool;
        `conv2` = conv, ReLU; the last feature map is `(2 * width, 14, 14)`. Small
        and quick, the model of the unit tests (and of the PyTorch twin in
        `eqx_attr.torch_twins`); its receptive field (10 pixels) is too small to
        reach 97% on MNIST.
    - `deep=True`: `conv1` = conv, ReLU, 2x2 max-pool, conv (to `2 * width`),
        ReLU, 2x2 max-pool; `conv2` = conv, ReLU, conv, ReLU at 7x7 with
        `4 * width` channels (receptive field 26 pixels, the whole digit).
        Weights use He-normal initialisation (the net has no normalisation layers).
        This is the demo's model (`width=16`): > 97% on the held-out digits after
        a short training run (see `eqx_attr.training.pretrained_small_cnn`).

    **Arguments:** `in_channels`, `n_classes`, `width` (channels of the first
    convolution), `deep` (see above), `key`.

    ```python
    model = SmallCNN(key=jax.random.key(0))                      # (1, 28, 28) -> (10,)
    demo = SmallCNN(width=16, deep=True, key=jax.random.key(0))  # the demo's CNN
    ```
    """

    conv1: eqx.nn.Sequential
    conv2: eqx.nn.Sequential
    fc: eqx.nn.Linear

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width: int = 32,
        *,
        deep: bool = False,
        key: PRNGKeyArray,
    ):
        relu = eqx.nn.Lambda(jax.nn.relu)
        if not deep:
            k1, k2, k3, k4 = jax.random.split(key, 4)
            self.conv1 = eqx.nn.Sequential(
                [
                    eqx.nn.Conv2d(in_channels, width, 3, padding=1, key=k1),
                    relu,
                    eqx.nn.Conv2d(width, width, 3, padding=1, key=k2),
                    relu,
                    eqx.nn.MaxPool2d(2, 2),
                ]
            )
            self.conv2 = eqx.nn.Sequential(
                [eqx.nn.Conv2d(width, 2 * width, 3, padding=1, key=k3), relu]
            )
            self.fc = eqx.nn.Linear(2 * width, n_classes, key=k4)
            return
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        convs = [
            _he_conv(in_channels, width, k1),
            _he_conv(width, 2 * width, k2),
            _he_conv(2 * width, 4 * width, k3),
            _he_conv(4 * width, 4 * width, k4),
        ]
        self.conv1 = eqx.nn.Sequential(
            [convs[0], relu, eqx.nn.MaxPool2d(2, 2), convs[1], relu,
             eqx.nn.MaxPool2d(2, 2)]
        )  # fmt: skip
        self.conv2 = eqx.nn.Sequential([convs[2], relu, convs[3], relu])
        self.fc = eqx.nn.Linear(4 * width, n_classes, key=k5)

    def features(self, x: Float[Array, "c h w"]) -> Float[Array, "k h2 w2"]:
        """The last feature map (the output of `conv2`)."""
        return self.conv2(self.conv1(x))

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " n"]:
        a = self.features(x)
        return self.fc(jnp.mean(a, axis=(1, 2)))


def _he_conv(c_in: int, c_out: int, key: PRNGKeyArray) -> eqx.nn.Conv2d:
    """A 3x3 'same' convolution with He-normal weights and zero bias."""
    conv = eqx.nn.Conv2d(c_in, c_out, 3, padding=1, key=key)
    std = (2.0 / (c_in * 9)) ** 0.5
    weight = std * jax.random.normal(key, conv.weight.shape, conv.weight.dtype)
    bias = jnp.zeros_like(conv.bias) if conv.bias is not None else None
    return eqx.tree_at(lambda c: (c.weight, c.bias), conv, (weight, bias))
