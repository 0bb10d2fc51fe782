"""Small building blocks shared by the zoo: frozen batch norm, layer norm, pooling.

Each block's array fields carry the same names as the PyTorch module it stands for
(`weight`, `bias`, `running_mean`, `running_var`), so that state-dict keys map onto
Equinox paths by name alone.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


class FrozenBatchNorm2d(eqx.Module):
    """Batch normalisation in inference mode: a fixed per-channel affine map.

    `y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`, over the
    channel axis of a `(C, H, W)` input. There is no state and no batch statistic,
    so a model built from it is a plain function of one example, as attribution
    methods need. Freshly built, it is the identity (up to `eps`).

    **Arguments:**

    - `channels`: number of channels `C`.
    - `eps`: added to the variance, as in `torch.nn.BatchNorm2d` (default `1e-5`).

    **Example:**

    **Returns:** calling it on a `(C, H, W)` map gives the normalised `(C, H, W)` map.

    ```python
    bn = FrozenBatchNorm2d(64)
    y = bn(jnp.ones((64, 8, 8)))
    ```
    """

    weight: Float[Array, " c"]
    bias: Float[Array, " c"]
    running_mean: Float[Array, " c"]
    running_var: Float[Array, " c"]
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, eps: float = 1e-5):
        self.weight = jnp.ones((channels,))
        self.bias = jnp.zeros((channels,))
        self.running_mean = jnp.zeros((channels,))
        self.running_var = jnp.ones((channels,))
        self.eps = eps

    def __call__(
        self, x: Float[Array, "c h w"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c h w"]:
        del key
        scale = self.weight * jax.lax.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(-1, 1, 1) + shift.reshape(-1, 1, 1)


class LayerNorm(eqx.Module):
    """Layer normalisation over the last axis, for a sequence of tokens `(N, D)`.

    Unlike `eqx.nn.LayerNorm`, which normalises one vector, this takes the whole
    token sequence so that a `where` path to it (e.g. `m.blocks[-1].norm1`) sees
    the `(N, D)` token map that ViT variants of Grad-CAM need.

    **Arguments:**

    - `dim`: the size `D` of the last axis.
    - `eps`: added to the variance (default `1e-6`, as in timm's ViT).

    **Returns:** calling it on `(N, D)` tokens gives the normalised `(N, D)` tokens.
    """

    weight: Float[Array, " d"]
    bias: Float[Array, " d"]
    eps: float = eqx.field(static=True)

    def __init__(self, dim: int, eps: float = 1e-6):
        self.weight = jnp.ones((dim,))
        self.bias = jnp.zeros((dim,))
        self.eps = eps

    def __call__(
        self, x: Float[Array, "*n d"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*n d"]:
        del key
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        shape = (1,) * (x.ndim - 1) + (-1,)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    # PyTorch's adaptive bins: [floor(i * n_in / n_out), ceil((i + 1) * n_in / n_out)).
    # Bins may overlap, and when n_out > n_in inputs are repeated.
    p = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = math.ceil((i + 1) * n_in / n_out)
        p[i, start:end] = 1.0 / (end - start)
    return p


class AdaptiveAvgPool2d(eqx.Module):
    """Average pooling to a fixed output size, with PyTorch's bin boundaries.

    Output cell `(i, j)` averages input rows `floor(i*H/h)` to `ceil((i+1)*H/h)` and
    the same for columns, exactly as `torch.nn.AdaptiveAvgPool2d`, including the
    case of an input smaller than the output (values are repeated). It is linear,
    so it is computed as two small matrix products.

    **Arguments:**

    - `output_size`: `(h, w)` or one int for both.

    **Returns:** calling it on a `(C, H, W)` map gives the pooled `(C, h, w)` map.
    """

    output_size: tuple[int, int] = eqx.field(static=True)

    def __init__(self, output_size: int | tuple[int, int]):
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = (int(output_size[0]), int(output_size[1]))

    def __call__(
        self, x: Float[Array, "c h w"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c h2 w2"]:
        del key
        ph = jnp.asarray(_pool_matrix(x.shape[1], self.output_size[0]), x.dtype)
        pw = jnp.asarray(_pool_matrix(x.shape[2], self.output_size[1]), x.dtype)
        return jnp.einsum("ih,chw,jw->cij", ph, x, pw)


def relu() -> eqx.nn.Lambda:
    """A ReLU held in the PyTree, so that surgery can swap it with `eqx.tree_at`."""
    return eqx.nn.Lambda(jax.nn.relu)


def check_image(x: Array, in_channels: int, name: str) -> None:
    """Trace-time check that `x` is ONE `(C, H, W)` image with the right `C`."""
    if x.ndim != 3:
        raise ValueError(
            f"{name} maps ONE image of shape (C, H, W) to logits; got an input of "
            f"shape {x.shape}. For a batch use `jax.vmap(model)(xs)`."
        )
    if x.shape[0] != in_channels:
        raise ValueError(
            f"{name} was built with in_channels={in_channels} but the input has "
            f"{x.shape[0]} channels (shape {x.shape}); convert the image or build "
            f"the model with in_channels={x.shape[0]}."
        )
