"""LIME: a sparse linear surrogate fitted to random coalitions of features."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    Target,
    check_key,
    check_positive_int,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry
from ._coalitions import AbstractMaskedPerturbation
from ._common import Baseline, FeatureMask
from ._defaults import baseline_or_zero, default_mask
from ._linear import weighted_lasso, weighted_lstsq

__all__ = ["Lime"]


def cosine_kernel(
    x: Array, b: Array, mask: Array, z: Array, n_features: int, width: float
) -> Array:
    """Captum's default LIME weight of each coalition: `exp(-d^2 / (2 width^2))`.

    `d` is the cosine distance between `x` and the perturbed input, computed from
    per-feature sums so the perturbed inputs are never materialised here.
    """
    xf, bf = x.astype(jnp.float32).ravel(), b.astype(jnp.float32).ravel()
    ids = mask.ravel()

    def per_feature(v):
        return jax.ops.segment_sum(v, ids, num_segments=n_features)

    sxx, sxb, sbb = per_feature(xf * xf), per_feature(xf * bf), per_feature(bf * bf)
    zf = z.astype(jnp.float32)
    dot = zf @ sxx + (1 - zf) @ sxb
    norm_p = jnp.sqrt(zf @ sxx + (1 - zf) @ sbb)
    norm_x = jnp.sqrt(jnp.sum(sxx))
    eps = 1e-8
    cos = dot / (jnp.maximum(norm_x, eps) * jnp.maximum(norm_p, eps))
    d = 1.0 - cos
    return jnp.exp(-(d**2) / (2.0 * width**2))


class Lime(AbstractMaskedPerturbation):
    """LIME (Ribeiro et al., 2016) with Captum's defaults.

    `n_samples` coalitions keep each feature with probability 1/2 (the others take
    the baseline); each is weighted by `exp(-d^2 / (2 kernel_width^2))` with `d` the
    cosine distance between `x` and the perturbed input, and a linear surrogate with
    intercept is fitted: scikit-learn's `Lasso(alpha)` objective (Captum's default
    `alpha=0.01`), solved by coordinate descent in JAX, or with `alpha=0` plain
    weighted least squares (then exact on a model linear in the features). All
    forward passes are one batch shared across targets.

    **Arguments:**

    - `model`: maps one example to a vector of scores.
    - `mask`: integer feature ids broadcastable to `x`.
    - `n_samples`: coalitions evaluated (static, >= 1). Default 256.
    - `kernel_width`: width of the exponential kernel. Default 1.0.
    - `alpha`: L1 penalty of the surrogate. Default 0.01.
    - `baseline`: a number or an array broadcastable to `x`. Default 0.0.
    - `n_sweeps`: coordinate-descent passes for the lasso (static). Default 500.
    - `chunk_size`: evaluate at most this many coalitions at once (`None`: all;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][]).

    **Returns:** an array shaped like `x`; every element carries its feature's
    surrogate coefficient. Needs `key`.

    ```python
    lime = xa.Lime(model, mask=xa.masks.grid((28, 28), 7), n_samples=256)
    a = lime(x, target=3, key=jax.random.key(0))
    ```
    """

    model: Callable[..., Any]
    mask: Any
    baseline: Any
    n_features: int = eqx.field(static=True)
    n_samples: int = eqx.field(static=True)
    kernel_width: float = eqx.field(static=True)
    alpha: float = eqx.field(static=True)
    n_sweeps: int = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        mask: FeatureMask,
        n_samples: int = 256,
        kernel_width: float = 1.0,
        alpha: float = 0.01,
        baseline: Baseline = 0.0,
        n_sweeps: int = 500,
        chunk_size: int | Literal["auto"] | None = "auto",
        *,
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
        self._init_masked(model, mask, baseline, chunk_size)
        self.n_samples = n_samples
        self.kernel_width = float(kernel_width)
        self.alpha = float(alpha)
        self.n_sweeps = n_sweeps

    def __check_init__(self):
        check_positive_int(self.n_samples, "n_samples")
        check_positive_int(self.n_sweeps, "n_sweeps")
        if not self.kernel_width > 0:
            raise ValueError(f"`kernel_width` must be > 0, got {self.kernel_width}.")
        if not self.alpha >= 0:
            raise ValueError(f"`alpha` must be >= 0, got {self.alpha}.")

    def coalitions(self, key: PRNGKeyArray) -> Array:
        """The `(n_samples, F)` coalitions `__call__` evaluates for this `key`."""
        shape = (self.n_samples, self.n_features)
        return jax.random.bernoulli(key, 0.5, shape).astype(jnp.int8)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "*dims"]:
        key = check_key(key, "Lime")
        z = self.coalitions(key)
        mask, b, v = self._coalition_scores(x, target, z)
        w = cosine_kernel(x, b, mask, z, self.n_features, self.kernel_width)
        zf = z.astype(jnp.float32)
        if self.alpha == 0.0:
            coef, _ = weighted_lstsq(zf, v, w)
        else:
            coef, _ = weighted_lasso(zf, v, w, self.alpha, self.n_sweeps)
        return coef[mask].astype(x.dtype)


ROWS = (
    MethodEntry(
        "lime",
        Lime,
        "perturbation",
        "LIME: lasso surrogate on random coalitions (n_samples)",
        lambda c: Lime(
            c.model,
            default_mask(c),
            n_samples=c.option("n_samples", 128),
            baseline=baseline_or_zero(c),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        needs=frozenset({"mask", "key"}),
        differentiable=Differentiability(
            1,
            1,
            "fixed masks for a fixed key; the lasso is piecewise (zeroed "
            "coefficients have derivative 0); float32 sums",
        ),
        benchmark=(
            None,
            "not timed: the same coalition batch as KernelShap (timed) plus a "
            "lasso solve; equality with Captum's Lime is tested",
        ),
    ),
)
