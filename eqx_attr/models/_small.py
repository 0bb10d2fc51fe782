"""Small models for MNIST-sized inputs: an MLP and the demo's CNN."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class MLP(eqx.Module):
    """Flatten, then a ReLU multilayer perceptron: `(*in_shape) -> (n_classes,)`.

    The ReLU lives in `self.mlp.activation` (an `eqx.nn.MLP` field).

    **Arguments:**

    - `in_shape`: the shape of one input, e.g. `(1, 28, 28)`.
    - `n_classes`: the number of outputs.
    - `width`, `depth`: the hidden layers' width and count.
    - `key`: the PRNG key of the initialisation.

    **Returns:** calling it on one input gives the logits `(n_classes,)`.
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
    """The MNIST CNN of the demo and the tests: `(1, 28, 28) -> (10,)`.

    `conv1` -> `conv2` -> global average pooling -> `fc`:

    - `conv1` = conv, ReLU, 2x2 max-pool, conv (to `2 * width` channels), ReLU,
        2x2 max-pool: 28x28 -> 7x7;
    - `conv2` = conv, ReLU, conv, ReLU at 7x7 with `4 * width` channels (receptive
        field 26 pixels, the whole digit);
    - `fc`: linear, `4 * width -> n_classes`.

    `conv2`'s output (after its last ReLU) is the last feature map,
    `(4 * width, 7, 7)` for a 28x28 input, and is average-pooled straight into
    `fc`, so `layer=lambda m: m.conv2` with `classifier=lambda m: m.fc` is an exact
    CAM. Convolutions use He-normal weights and zero biases (the net has no
    normalisation layers). With the default `width=16` this is the demo's model:
    > 97% on the held-out digits after a short training run (see
    `eqx_attr.training.pretrained_small_cnn`).

    **Arguments:** `in_channels`, `n_classes`, `width` (channels of the first
    convolution), `key`.

    **Returns:** calling it on one `(in_channels, H, W)` image gives the logits
    `(n_classes,)`.

    ```python
    model = SmallCNN(key=jax.random.key(0))            # (1, 28, 28) -> (10,)
    tiny = SmallCNN(width=4, key=jax.random.key(0))   # the same layout, fewer channels
    ```
    """

    conv1: eqx.nn.Sequential
    conv2: eqx.nn.Sequential
    fc: eqx.nn.Linear

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width: int = 16,
        *,
        key: PRNGKeyArray,
    ):
        relu = eqx.nn.Lambda(jax.nn.relu)
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        self.conv1 = eqx.nn.Sequential(
            [
                _he_conv(in_channels, width, k1),
                relu,
                eqx.nn.MaxPool2d(2, 2),
                _he_conv(width, 2 * width, k2),
                relu,
                eqx.nn.MaxPool2d(2, 2),
            ]
        )
        self.conv2 = eqx.nn.Sequential(
            [_he_conv(2 * width, 4 * width, k3), relu,
             _he_conv(4 * width, 4 * width, k4), relu]
        )  # fmt: skip
        self.fc = eqx.nn.Linear(4 * width, n_classes, key=k5)

    def features(self, x: Float[Array, "c h w"]) -> Float[Array, "k h2 w2"]:
        """The last feature map (the output of `conv2`)."""
        if x.ndim != 3 or min(x.shape[1:]) < 4:
            # Below 4x4 the two max-pools leave an empty map, whose global average
            # is NaN: refuse it rather than return NaN scores. (The convolutions
            # check the channels.)
            raise ValueError(
                f"SmallCNN expects one example of shape (C, H, W) with H, W >= 4, "
                f"got shape {x.shape}."
            )
        return self.conv2(self.conv1(x))

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " n"]:
        a = self.features(x)
        return self.fc(jnp.mean(a, axis=(1, 2)))


def _he_conv(c_in: int, c_out: int, key: PRNGKeyArray) -> eqx.nn.Conv2d:
    """A 3x3 'same' convolution with He-normal weights and zero bias.

    Equinox's own (uniform) initialisation is only shaped, never run: these values
    would be replaced, and built eagerly each initialiser op compiles on its own
    (SmallCNN built in half the time).
    """
    conv = eqx.filter_eval_shape(eqx.nn.Conv2d, c_in, c_out, 3, padding=1, key=key)
    std = (2.0 / (c_in * 9)) ** 0.5
    weight = std * jax.random.normal(key, conv.weight.shape, conv.weight.dtype)
    bias = jnp.zeros(conv.bias.shape, conv.bias.dtype)
    return eqx.tree_at(lambda c: (c.weight, c.bias), conv, (weight, bias))
