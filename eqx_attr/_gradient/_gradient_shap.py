"""GradientShap (Lundberg & Lee, 2017), with Captum's definition."""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._attribution import (
    AbstractCompiledAttribution,
    Attribution,
    Target,
    batched_map,
    check_chunk_size,
    check_key,
    check_positive_int,
    scalar_function,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry
from ..baselines import AbstractBaseline, UniformNoise, as_baseline, draw_baselines

__all__ = ["GradientShap"]


def gradient_shap_draws(
    key: PRNGKeyArray,
    n_baselines: int,
    n_samples: int,
    x: Array,
    stdev: float,
) -> tuple[Int[Array, " s"], Float[Array, " s"], Float[Array, " s *dims"]]:
    """The random choices of GradientShap: per sample a baseline index (uniform),
    a point on the path `alpha ~ U[0, 1]`, and Gaussian noise of `stdev` on `x`."""
    # Drawn in float32 whatever x's dtype, so a bfloat16 call draws the same.
    k_idx, k_alpha, k_noise = jax.random.split(key, 3)
    idx = jax.random.randint(k_idx, (n_samples,), 0, n_baselines)
    alpha = jax.random.uniform(k_alpha, (n_samples,), jnp.float32)
    noise = stdev * jax.random.normal(k_noise, (n_samples, *x.shape), jnp.float32)
    return idx, alpha.astype(x.dtype), noise.astype(x.dtype)


def gradient_shap_from_draws(
    f: Callable[[Array], Array],
    x: Array,
    baselines: Array,
    idx: Array,
    alpha: Array,
    noise: Array,
    chunk_size: int | Literal["auto"] | None = "auto",
) -> Attribution:
    """The mean over samples of `(x~ - b) * grad f(b + alpha (x~ - b))`, where
    `x~ = x + noise` and `b = baselines[idx]`."""
    expand = (1,) * x.ndim

    def one(sample):
        i, a, n = sample
        xt, b = x + n, baselines[i]
        point = b + a.reshape(expand) * (xt - b)
        return ((xt - b) * jax.grad(f)(point)).astype(jnp.float32)

    attrs = batched_map(one, (idx, alpha, noise), chunk_size)
    return jnp.mean(attrs, axis=0).astype(x.dtype)


class GradientShap(AbstractCompiledAttribution):
    """GradientShap: expected gradients × (input − baseline), as Captum's.

    Per sample: a baseline drawn uniformly from `baseline`'s draws, a point
    `b + alpha (x~ - b)` with `alpha ~ U[0, 1]`, Gaussian noise of standard
    deviation `stdev` on the input (`x~ = x + noise`); the attribution is the mean
    of `(x~ - b) * grad f(point)` over `n_samples` samples. Needs `key`.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `baseline`: the baseline distribution, e.g.
        `xa.baselines.Custom(bs, draws=True)` (or a number, an array, any
        `eqx_attr.baselines` module).
    - `n_samples`: samples per example (Captum's default 5).
    - `stdev`: the noise on the input (Captum's default 0.0).
    - `chunk_size`: samples per vectorised chunk (`None`: all at once;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][]).

    **Returns:** an array shaped like `x`.

    ```python
    gs = xa.GradientShap(model, baseline=xa.baselines.Custom(bs, draws=True),
                         n_samples=50, stdev=0.0)
    a = gs(x, 3, key=jax.random.key(0))
    ```
    """

    model: Callable[..., Any]
    baseline: AbstractBaseline = eqx.field(converter=as_baseline)
    n_samples: int = eqx.field(static=True, default=5)
    stdev: float = eqx.field(static=True, default=0.0)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_positive_int(self.n_samples, "n_samples")
        check_chunk_size(self.chunk_size)
        stdev = self.stdev
        if not isinstance(stdev, (int, float)) or isinstance(stdev, bool) or stdev < 0:
            raise ValueError(f"`stdev` must be a number >= 0, got {stdev!r}.")

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        key = check_key(key, "GradientShap")
        f = scalar_function(self.model, x, target)
        k_base, k_draw = jax.random.split(key)
        bs = draw_baselines(self.baseline, x, k_base)
        idx, alpha, noise = gradient_shap_draws(
            k_draw, bs.shape[0], self.n_samples, x, self.stdev
        )
        return gradient_shap_from_draws(f, x, bs, idx, alpha, noise, self.chunk_size)


ROWS = (
    MethodEntry(
        "gradient_shap",
        GradientShap,
        "gradient",
        "GradientShap (baseline draws, n_samples, stdev)",
        lambda c: GradientShap(
            c.model,
            baseline=c.baseline if c.baseline is not None else UniformNoise(n_draws=8),
            n_samples=c.option("n_samples", 32),
            stdev=c.option("stdev", 0.0),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        aliases=("gradientshap",),
        baselines="many",
        needs=frozenset({"baseline", "key"}),
        differentiable=Differentiability(
            1, 1, "for a fixed key; noise and sums in float32"
        ),
        benchmark=(
            None,
            "not timed: its cost is n_samples gradients, as SmoothGrad's (timed); "
            "equality with Captum's GradientShap is tested",
        ),
    ),
)
