"""Blur IG: integrated gradients along a path of increasingly blurred images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    AbstractCompiledAttribution,
    Target,
    batched_map,
    check_chunk_size,
    check_positive_int,
    scalar_function,
)
from .._layout import (
    InputLayout,
    input_layout_field,
    resolve_input_layout,
)
from .._method_entry import Differentiability, MethodEntry

__all__ = ["BlurIG"]


def blur_matrix(n: int, sigma: Float[Array, ""], max_radius: int) -> Array:
    """The `(n, n)` matrix of a 1-D Gaussian blur with zero padding outside.

    SciPy's `gaussian_filter1d(mode="constant")` with `truncate=4`: taps up to
    radius `int(4 sigma + 0.5)`, normalised over the full kernel; `sigma = 0` is
    the identity. `max_radius` bounds the radius for every `sigma` used.
    """
    safe = jnp.where(sigma > 0, sigma, 1.0)
    radius = jnp.floor(4.0 * sigma + 0.5)
    taps = jnp.arange(-max_radius, max_radius + 1, dtype=jnp.float32)
    kernel = jnp.where(jnp.abs(taps) <= radius, jnp.exp(-0.5 * (taps / safe) ** 2), 0)
    d = jnp.arange(n, dtype=jnp.float32)
    d = d.reshape(n, 1) - d.reshape(1, n)
    m = jnp.where(jnp.abs(d) <= radius, jnp.exp(-0.5 * (d / safe) ** 2), 0.0)
    return jnp.where(sigma > 0, m / jnp.sum(kernel), jnp.eye(n))


def gaussian_blur(x: Array, sigma: Float[Array, ""], max_radius: int) -> Array:
    """Blur the last two axes of `x` (zero padding) with standard deviation `sigma`."""
    h, w = x.shape[-2:]
    bh = blur_matrix(h, sigma, max_radius).astype(x.dtype)
    bw = blur_matrix(w, sigma, max_radius).astype(x.dtype)
    return jnp.einsum("ij,...jk,lk->...il", bh, x, bw)


def spatial_blur(
    x: Array, sigma: Float[Array, ""], max_radius: int, layout: InputLayout
) -> Array:
    """`gaussian_blur` over the spatial axes of `x` in the resolved `layout`: the
    last two, or the first two of a channels-last `(H, W, C)` image."""
    if layout != "hwc":
        return gaussian_blur(x, sigma, max_radius)
    return jnp.moveaxis(gaussian_blur(jnp.moveaxis(x, -1, 0), sigma, max_radius), 0, -1)


class BlurIG(AbstractCompiledAttribution):
    """Blur IG (Xu et al., *Attribution in Scale and Space*, CVPR 2020), as PAIR's.

    Integrates the gradient along the path from the input blurred with
    `max_sigma` back to the input: with `sigma_i = i max_sigma / steps`
    (or `sqrt(i max_sigma / steps)`), the attribution is
    `-sum_i (sigma_{i+1} - sigma_i) * dx/dsigma(sigma_i) * grad f(x_{sigma_i})`,
    `dx/dsigma` by a forward difference of `grad_step`. The blur acts on the two
    spatial axes, per channel, with zero padding (SciPy's `gaussian_filter`, as
    PAIR).
    All path points are one vectorised batch (`chunk_size` at a time).

    **Arguments:**

    - `model`: maps one example, `(C, H, W)` or `(H, W, C)`, to a vector of
        scores.
    - `max_sigma`: the blur at the path's start (static). Default 50.
    - `steps`: number of path points (static). Default 100.
    - `grad_step`: the finite-difference step in sigma (static). Default 0.01.
    - `sqrt`: space the sigmas as square roots (static). Default False.
    - `chunk_size`: evaluate at most this many path points at once.
    - `input_layout`: `"chw"`, `"hwc"` or `None` (default: inferred from `x`'s
        shape, see [`eqx_attr.AbstractAttribution`][]): which axes are blurred.

    **Returns:** an array shaped like `x`.

    ```python
    a = xa.BlurIG(model, max_sigma=10, steps=50)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    max_sigma: float = eqx.field(static=True, default=50.0, converter=float)
    steps: int = eqx.field(static=True, default=100)
    grad_step: float = eqx.field(static=True, default=0.01, converter=float)
    sqrt: bool = eqx.field(static=True, default=False)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_positive_int(self.steps, "steps")
        check_chunk_size(self.chunk_size)
        if not self.max_sigma > 0 or not self.grad_step > 0:
            raise ValueError(
                "`max_sigma` and `grad_step` must be > 0, got "
                f"{self.max_sigma} and {self.grad_step}."
            )

    def sigmas(self) -> np.ndarray:
        """The `steps + 1` blur levels of the path, from sharp to `max_sigma`."""
        s = np.arange(self.steps + 1) * float(self.max_sigma) / self.steps
        return np.sqrt(s) if self.sqrt else s

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "..."]:
        if x.ndim < 2:
            raise ValueError(f"BlurIG needs (..., H, W) inputs, got {x.shape}.")
        layout = resolve_input_layout(x.shape, self.input_layout)
        f = scalar_function(self.model, x, target)
        grad_f = jax.grad(f)
        sig = self.sigmas()
        radius = int(4.0 * (sig[-1] + self.grad_step) + 0.5) + 1
        step = self.grad_step
        x32 = x.astype(jnp.float32)

        def one(inputs):
            s, ds = inputs
            # The path in float32: a bfloat16 finite difference would be noise.
            xs = spatial_blur(x32, s, radius, layout)
            dx = (spatial_blur(x32, s + step, radius, layout) - xs) / step
            g = grad_f(xs.astype(x.dtype)).astype(jnp.float32)
            return ds * dx * g

        params = (
            jnp.asarray(sig[:-1], jnp.float32),
            jnp.asarray(np.diff(sig), jnp.float32),
        )
        terms = batched_map(one, params, self.chunk_size)
        return (-jnp.sum(terms, axis=0)).astype(x.dtype)


ROWS = (
    MethodEntry(
        "blur_ig",
        BlurIG,
        "gradient",
        "Blur IG: integrated gradients along a blur path (PAIR)",
        lambda c: BlurIG(
            c.model,
            max_sigma=c.option("max_sigma", 50.0),
            steps=c.option("n_steps", 32),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        differentiable=Differentiability(
            1,
            1,
            "float32 path with a forward difference in sigma: its derivative in x "
            "carries ~1e-2 rounding of its terms",
        ),
        benchmark=(
            None,
            "not timed: PAIR's saliency drives our own jitted gradient, so a ratio "
            "would time the same gradients twice; equality is tested",
        ),
    ),
)
