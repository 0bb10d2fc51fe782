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
    """The demo's MNIST CNN: `(1, 28, 28) -> (10,)`.

    `conv1` (conv, ReLU, conv, ReLU, 2x2 max-pool) -> `conv2` (conv, ReLU) ->
    global average pooling -> `fc`. `conv2`'s output is the last feature map, so
    `layer=lambda m: m.conv2` with `classifier=lambda m: m.fc` is an exact CAM.
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
        key: PRNGKeyArray,
    ):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        relu = eqx.nn.Lambda(jax.nn.relu)
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

    def features(self, x: Float[Array, "c h w"]) -> Float[Array, "k h2 w2"]:
        """The last feature map (the output of `conv2`)."""
        return self.conv2(self.conv1(x))

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " n"]:
        a = self.features(x)
        return self.fc(jnp.mean(a, axis=(1, 2)))
