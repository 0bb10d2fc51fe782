"""Baselines (reference inputs) for path methods such as Integrated Gradients.

A baseline is an Equinox module that, given the input `x` (and a `key` when it is
random), returns a stack of reference inputs of shape `(n_draws, *x.shape)`. Path
methods average their attributions over the draws in one vectorised pass.

```python
import eqx_attr as xa

ig = xa.IntegratedGradients(model, baseline=xa.baselines.UniformNoise(n_draws=8))
a = ig(x, target=3, key=jax.random.key(0))
```

Anywhere a baseline is expected you may also pass a float (a constant image), an
array (broadcast to the input's shape), or `None` (black: zeros).
"""

from __future__ import annotations

import abc
import numbers
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Shaped

from ._attribution import check_key, check_positive_int

__all__ = [
    "AbstractBaseline",
    "Blur",
    "Constant",
    "Custom",
    "DatasetMean",
    "GaussianNoise",
    "UniformNoise",
    "Zeros",
    "as_baseline",
]


class AbstractBaseline(eqx.Module):
    """Base class of baselines: `baseline(x, key=None) -> (n_draws, *x.shape)`.

    **Arguments:** none here; subclasses hold their options as fields.

    **Returns:** calling a baseline on `x` (with `key` for a random one) gives
    an array `(n_draws, *x.shape)` of reference inputs.
    """

    @abc.abstractmethod
    def __call__(
        self, x: Float[Array, "*dims"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " n *dims"]:
        """Return `n_draws` reference inputs shaped like `x`."""

    def _key(self, key: PRNGKeyArray | None) -> PRNGKeyArray:
        return check_key(key, f"The baseline {type(self).__name__}")


class Zeros(AbstractBaseline):
    """An all-zero (black, after normalisation-free preprocessing) reference.

    **Arguments:** none.

    **Returns:** `Zeros()(x)` is `zeros((1, *x.shape))`.
    """

    def __call__(
        self, x: Float[Array, "*dims"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " n *dims"]:
        return jnp.zeros((1, *x.shape), x.dtype)


class Constant(AbstractBaseline):
    """A constant image, e.g. `Constant(1.0)` for white on [0, 1] pixels.

    **Arguments:** `value`, the constant.

    **Returns:** `Constant(v)(x)` is `full((1, *x.shape), v)`.
    """

    value: float | Float[Array, ""] = 0.0

    def __call__(
        self, x: Float[Array, "*dims"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " n *dims"]:
        return jnp.full((1, *x.shape), self.value, x.dtype)


class UniformNoise(AbstractBaseline):
    """Uniform noise in `[low, high)`, drawn `n_draws` times (needs `key`).

    Attributions are averaged over the draws (Sturmfels, Lundberg & Lee,
    *Visualizing the Impact of Feature Attribution Baselines*, Distill 2020).

    **Arguments:**

    - `n_draws`: how many baselines to draw.
    - `low`, `high`: the range of the noise.

    **Returns:** `baseline(x, key=key)` is an array `(n_draws, *x.shape)`.
    """

    n_draws: int = eqx.field(static=True, default=10)
    low: float = 0.0
    high: float = 1.0

    def __check_init__(self):
        _check_draws(self.n_draws)

    def __call__(
        self, x: Float[Array, "*dims"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " n *dims"]:
        # Draw in float32 so a key gives the same baselines whatever x's dtype.
        u = jax.random.uniform(
            self._key(key), (self.n_draws, *x.shape), jnp.float32, self.low, self.high
        )
        return u.astype(x.dtype)


class GaussianNoise(AbstractBaseline):
    """The input plus Gaussian noise of standard deviation `stdev`, `n_draws` times.

    Optionally clipped to `[clip_low, clip_high]` (e.g. the valid pixel range).
    Needs `key`.

    **Arguments:**

    - `n_draws`: how many baselines to draw.
    - `stdev`: the noise's standard deviation.
    - `clip_low`, `clip_high`: optional bounds of the result (`None`: unbounded).

    **Returns:** `baseline(x, key=key)` is an array `(n_draws, *x.shape)`.
    """

    n_draws: int = eqx.field(static=True, default=10)
    stdev: float = 0.1
    clip_low: float | None = None
    clip_high: float | None = None

    def __check_init__(self):
        _check_draws(self.n_draws)

    def __call__(
        self, x: Float[Array, "*dims"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " n *dims"]:
        noise = jax.random.normal(self._key(key), (self.n_draws, *x.shape), jnp.float32)
        out = (x[None] + self.stdev * noise).astype(x.dtype)
        if self.clip_low is not None or self.clip_high is not None:
            out = jnp.clip(out, self.clip_low, self.clip_high)
        return out


class Blur(AbstractBaseline):
    """A Gaussian-blurred copy of the input (blur over the last two, spatial, axes).

    Fong & Vedaldi, *Interpretable Explanations of Black Boxes by Meaningful
    Perturbation*, 2017; used as an IG baseline by Sturmfels et al. 2020.

    **Arguments:** `sigma`, the blur's standard deviation in pixels.

    **Returns:** `Blur(sigma)(x)` is the blurred image, shaped `(1, *x.shape)`.
    """

    sigma: float = eqx.field(static=True, default=5.0)

    def __check_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"`sigma` must be > 0, got {self.sigma!r}.")

    def __call__(
        self, x: Float[Array, "*dims"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " n *dims"]:
        if x.ndim < 2:
            raise ValueError(
                f"Blur needs an image with two spatial axes last, got shape {x.shape}."
            )
        return gaussian_blur(x, self.sigma)[None]


class DatasetMean(AbstractBaseline):
    """The mean image of a data set.

    Build it with `DatasetMean(mean_image)` or `DatasetMean.from_data(xs)` where
    `xs` has a leading data axis.

    **Arguments:** `mean`, the mean image (broadcastable to the input).

    **Returns:** `DatasetMean(mean)(x)` is `mean` broadcast to `(1, *x.shape)`.
    """

    mean: Float[Array, "..."]

    @classmethod
    def from_data(cls, xs: Shaped[Array, "n ..."] | np.ndarray) -> DatasetMean:
        """The mean over the leading axis of `xs`."""
        xs = jnp.asarray(xs)
        if not jnp.issubdtype(xs.dtype, jnp.floating):
            xs = xs.astype(jnp.float32)
        return cls(jnp.mean(xs, axis=0))

    def __call__(
        self, x: Float[Array, "*dims"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " n *dims"]:
        return _broadcast_to_input(self.mean, x, "DatasetMean.mean")[None]


class Custom(AbstractBaseline):
    """Any user array, broadcast to the input's shape.

    With `draws=True` the array's leading axis holds several baselines, and the
    method averages over them.

    **Arguments:**

    - `value`: an array broadcastable to the input (with `draws=True`: a stack of
        such arrays along a leading axis).
    - `draws`: whether the leading axis of `value` indexes several baselines.

    **Returns:** `Custom(value)(x)` is an array `(n_draws, *x.shape)` (one draw
    unless `draws=True`).
    """

    value: Float[Array, "..."]
    draws: bool = eqx.field(static=True, default=False)

    def __call__(
        self, x: Float[Array, "*dims"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " n *dims"]:
        if self.draws:
            if self.value.ndim < 1:
                raise ValueError(
                    "`Custom(value, draws=True)` needs a leading axis of draws."
                )
            return jax.vmap(lambda v: _broadcast_to_input(v, x, "baseline"))(self.value)
        return _broadcast_to_input(self.value, x, "baseline")[None]


def as_baseline(value: Any) -> AbstractBaseline:
    """Convert `None`, a float, or an array into a baseline module.

    **Arguments:** `value`: `None` (zeros), a number, a float array, or already a
    baseline module.

    **Returns:** a baseline module: [`eqx_attr.baselines.Zeros`][],
    [`eqx_attr.baselines.Constant`][], [`eqx_attr.baselines.Custom`][], or `value`
    itself.
    """
    if value is None:
        return Zeros()
    if isinstance(value, AbstractBaseline):
        return value
    if isinstance(value, bool):
        raise TypeError("`baseline` must be a baseline, a number or an array.")
    if isinstance(value, numbers.Real):
        return Constant(float(value))
    if isinstance(value, (jax.Array, np.ndarray)):
        arr = jnp.asarray(value)
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            arr = arr.astype(jnp.float32)
        return Custom(arr)
    raise TypeError(
        "`baseline` must be None (zeros), a number (constant image), an array "
        "broadcastable to the input, or a module from `eqx_attr.baselines`; got "
        f"{type(value).__name__}."
    )


def draw_baselines(
    baseline: AbstractBaseline, x: Array, key: PRNGKeyArray | None
) -> Float[Array, " n *dims"]:
    """Evaluate `baseline` for `x`, checking the shape of what comes back."""
    b = baseline(x, key=key)
    if b.ndim != x.ndim + 1 or b.shape[1:] != x.shape:
        raise ValueError(
            f"The baseline {type(baseline).__name__} returned shape {b.shape}; "
            f"expected (n_draws, *{x.shape})."
        )
    return b.astype(x.dtype)


def _broadcast_to_input(value: Array, x: Array, name: str) -> Array:
    value = jnp.asarray(value)
    try:
        shape = jnp.broadcast_shapes(value.shape, x.shape)
    except ValueError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"`{name}` has shape {value.shape}, which does not broadcast to the "
            f"input's shape {x.shape}. Pass an array of shape {x.shape} (or one that "
            "broadcasts to it, e.g. per-channel values shaped (C, 1, 1))."
        )
    value = jnp.reshape(value, (1,) * (x.ndim - value.ndim) + value.shape)
    return jnp.broadcast_to(value, x.shape).astype(x.dtype)


def _check_draws(n_draws: Any) -> None:
    check_positive_int(n_draws, "n_draws")


def gaussian_blur(x: Float[Array, "*c h w"], sigma: float) -> Float[Array, "*c h w"]:
    """Separable Gaussian blur over the last two axes, edges padded by reflection."""
    radius = max(1, int(3 * sigma + 0.5))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = jnp.asarray(k / k.sum(), x.dtype)
    *lead, h, w = x.shape
    z = x.reshape(-1, h, w)
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    # Reflection needs the pad to be smaller than the axis; clamp the kernel too.
    kh = k[radius - pad_h : radius + pad_h + 1]
    kw = k[radius - pad_w : radius + pad_w + 1]
    kh, kw = kh / kh.sum(), kw / kw.sum()
    z = jnp.pad(z, ((0, 0), (pad_h, pad_h), (pad_w, pad_w)), mode="reflect")
    conv = jax.vmap(lambda row: jnp.convolve(row, kw, mode="valid"))
    z = jax.vmap(conv)(z)
    z = jnp.swapaxes(z, 1, 2)
    conv_h = jax.vmap(lambda col: jnp.convolve(col, kh, mode="valid"))
    z = jax.vmap(conv_h)(z)
    z = jnp.swapaxes(z, 1, 2)
    return z.reshape(*lead, h, w)
