"""KernelSHAP: Shapley values as a weighted linear regression on coalitions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
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
from .._method_entry import PERTURBATION_KEYED, MethodEntry
from ._coalitions import AbstractMaskedPerturbation
from ._common import Baseline, FeatureMask
from ._defaults import baseline_or_zero, default_mask
from ._linear import lstsq_sum_constrained

__all__ = ["KernelShap"]


def kernel_shap_coalitions(key: PRNGKeyArray, n_features: int, n: int) -> Array:
    """`n` random coalitions with the Shapley kernel's size distribution.

    The size `k` in `1..F-1` is drawn with probability proportional to
    `(F - 1) / (k (F - k))`, then `k` features uniformly; sampling this way makes
    every sample's regression weight 1 (Lundberg & Lee's kernel, as Captum).
    """
    f = n_features
    k_sizes = np.arange(1, f)
    logits = jnp.asarray(np.log((f - 1) / (k_sizes * (f - k_sizes))), jnp.float32)
    k_size, k_pick = jax.random.split(key)
    sizes = k_sizes[0] + jax.random.categorical(k_size, logits, shape=(n,))
    u = jax.random.uniform(k_pick, (n, f))
    rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
    return (rank < sizes[:, None]).astype(jnp.int8)


class KernelShap(AbstractMaskedPerturbation):
    """KernelSHAP (Lundberg & Lee, 2017), with Captum's sampling.

    The target's score on coalitions of features (kept features from `x`, the
    others from the baseline) is fitted by a linear model in the coalition's
    binary vector, weighted by the Shapley kernel. As in Captum, the first two
    samples are the full and the empty coalition with (here: exactly enforced)
    infinite weight, so the attributions sum to `f(x) - f(baseline)`; the other
    `n_samples - 2` are drawn with kernel-distributed sizes and unit weight. The
    regression is unregularised, hence exact on a model that is linear in the
    features. All forward passes are one batch shared across targets.

    **Arguments:**

    - `model`: maps one example to a vector of scores.
    - `mask`: integer feature ids broadcastable to `x`.
    - `n_samples`: coalitions evaluated, including the full and empty ones
        (static, >= 3). Default 256.
    - `baseline`: a number or an array broadcastable to `x`. Default 0.0.
    - `chunk_size`: evaluate at most this many coalitions at once (`None`: all;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][]).

    **Returns:** an array shaped like `x`; every element carries its feature's
    coefficient. Needs `key`.

    ```python
    ks = xa.KernelShap(model, mask=xa.masks.grid((28, 28), 7), n_samples=256)
    a = ks(x, target=3, key=jax.random.key(0))
    ```
    """

    model: Callable[..., Any]
    mask: Any
    baseline: Any
    n_features: int = eqx.field(static=True)
    n_samples: int = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        mask: FeatureMask,
        n_samples: int = 256,
        baseline: Baseline = 0.0,
        chunk_size: int | Literal["auto"] | None = "auto",
        *,
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
        self._init_masked(model, mask, baseline, chunk_size)
        self.n_samples = n_samples

    def __check_init__(self):
        check_positive_int(self.n_samples, "n_samples", minimum=3)

    def coalitions(self, key: PRNGKeyArray) -> Array:
        """The `(n_samples, F)` coalitions `__call__` evaluates for this `key`."""
        n = self.n_features
        ends = jnp.stack([jnp.ones(n, jnp.int8), jnp.zeros(n, jnp.int8)])
        if n == 1:
            return jnp.concatenate([ends, jnp.ones((self.n_samples - 2, 1), jnp.int8)])
        drawn = kernel_shap_coalitions(key, n, self.n_samples - 2)
        return jnp.concatenate([ends, drawn])

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "*dims"]:
        key = check_key(key, "KernelShap")
        z = self.coalitions(key)
        mask, _, v = self._coalition_scores(x, target, z)
        total = v[0] - v[1]
        if self.n_features == 1:
            phi = total[None]
        else:
            phi = lstsq_sum_constrained(z[2:].astype(jnp.float32), v[2:] - v[1], total)
        return phi[mask].astype(x.dtype)


ROWS = (
    MethodEntry(
        "kernel_shap",
        KernelShap,
        "perturbation",
        "KernelSHAP: Shapley-kernel weighted regression (n_samples)",
        lambda c: KernelShap(
            c.model,
            default_mask(c),
            c.option("n_samples", 128),
            baseline_or_zero(c),
            c.option("chunk_size", "auto"),
        ),
        aliases=("kernelshap",),
        needs=frozenset({"mask", "key"}),
        differentiable=PERTURBATION_KEYED,
        benchmark=("bench_perturbation.py", "Captum KernelShap"),
    ),
)
