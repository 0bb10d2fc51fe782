"""Shapley values of features: exact over all coalitions, or sampled permutations."""

from __future__ import annotations

import math
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
from .._method_entry import PERTURBATION, PERTURBATION_KEYED, MethodEntry
from ._coalitions import AbstractMaskedPerturbation
from ._common import Baseline, FeatureMask
from ._defaults import baseline_or_zero, default_mask, exact_mask

__all__ = ["ShapleyValueSampling", "ShapleyValues"]

MAX_EXACT_FEATURES = 14
"""`ShapleyValues` evaluates all 2**F coalitions; above this F it refuses."""


def shapley_matrix(n: int) -> np.ndarray:
    """The `(n, 2**n)` matrix mapping coalition values to Shapley values.

    Coalition `s` keeps feature `i` when bit `i` of `s` is set. Feature `i` gets
    `sum_S |S|! (n - |S| - 1)! / n! (v(S + i) - v(S))` over coalitions S without i.
    """
    s = np.arange(2**n)
    member = (s[None, :] >> np.arange(n)[:, None]) & 1  # (n, 2**n)
    size = member.sum(0)
    fact = [math.factorial(k) for k in range(n + 1)]

    def w(k):
        return np.array([fact[j] * fact[n - j - 1] / fact[n] for j in k])

    with_i = w(np.maximum(size - 1, 0))  # weight of S = T + i, T of size |S| - 1
    without_i = w(np.minimum(size, n - 1))
    return np.where(member == 1, with_i[None], -without_i[None])


def all_coalitions(n: int) -> np.ndarray:
    s = np.arange(2**n)
    return ((s[:, None] >> np.arange(n)[None, :]) & 1).astype(np.int8)


class ShapleyValues(AbstractMaskedPerturbation):
    """Exact Shapley values of features, as Captum's `ShapleyValues`.

    The value of a coalition is the target's score with its features kept and the
    others replaced by the baseline. All `2**F` coalitions are evaluated in one
    vectorised batch (`chunk_size` at a time), shared across targets, and combined
    with the Shapley weights. The attributions of the features sum to
    `f(x) - f(baseline)` (efficiency); every element carries its feature's value.

    **Arguments:**

    - `model`: maps one example to a vector of scores.
    - `mask`: integer feature ids broadcastable to `x`, at most
        `MAX_EXACT_FEATURES` (14) distinct ids.
    - `baseline`: a number or an array broadcastable to `x`. Default 0.0.
    - `chunk_size`: evaluate at most this many coalitions at once (`None`: all;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][]).

    **Returns:** an array shaped like `x`.

    ```python
    a = xa.ShapleyValues(model, mask=xa.masks.grid((28, 28), 14))(x, target=3)
    ```
    """

    model: Callable[..., Any]
    mask: Any
    baseline: Any
    n_features: int = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        mask: FeatureMask,
        baseline: Baseline = 0.0,
        chunk_size: int | Literal["auto"] | None = "auto",
        *,
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
        self._init_masked(model, mask, baseline, chunk_size)

    def __check_init__(self):
        if self.n_features > MAX_EXACT_FEATURES:
            raise ValueError(
                f"`mask` has {self.n_features} features; exact ShapleyValues needs "
                f"2**F forward passes and allows at most {MAX_EXACT_FEATURES}. Use "
                "`xa.ShapleyValueSampling` or `xa.KernelShap` for more features, or "
                "a coarser mask."
            )

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "*dims"]:
        n = self.n_features
        mask, _, v = self._coalition_scores(x, target, jnp.asarray(all_coalitions(n)))
        phi = jnp.asarray(shapley_matrix(n), jnp.float32) @ v
        return phi[mask].astype(x.dtype)


class ShapleyValueSampling(AbstractMaskedPerturbation):
    """Shapley values estimated from random permutations, as Captum's.

    For each of `n_permutations` random orders of the features, the features are
    added one by one to the baseline and each gets its marginal change of the
    target's score; the estimate is the mean over orders. Each order telescopes, so
    the features' attributions sum exactly to `f(x) - f(baseline)`; on a model
    that is additive over features the estimate is exact. The `n_permutations *
    (F - 1) + 2` forward passes run as one vectorised batch shared across targets.

    **Arguments:**

    - `model`: maps one example to a vector of scores.
    - `mask`: integer feature ids broadcastable to `x`.
    - `n_permutations`: number of random orders (static). Default 25.
    - `baseline`: a number or an array broadcastable to `x`. Default 0.0.
    - `chunk_size`: evaluate at most this many coalitions at once (`None`: all;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][]).

    **Returns:** an array shaped like `x`. Needs `key`; the orders are
    `jax.random.permutation(k, F)` for `k` in `jax.random.split(key, n_permutations)`.

    ```python
    svs = xa.ShapleyValueSampling(model, mask=mask, n_permutations=25)
    a = svs(x, target=3, key=jax.random.key(0))
    ```
    """

    model: Callable[..., Any]
    mask: Any
    baseline: Any
    n_features: int = eqx.field(static=True)
    n_permutations: int = eqx.field(static=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        mask: FeatureMask,
        n_permutations: int = 25,
        baseline: Baseline = 0.0,
        chunk_size: int | Literal["auto"] | None = "auto",
        *,
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
        self._init_masked(model, mask, baseline, chunk_size)
        self.n_permutations = n_permutations

    def __check_init__(self):
        check_positive_int(self.n_permutations, "n_permutations")

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "*dims"]:
        key = check_key(key, "ShapleyValueSampling")
        n, p = self.n_features, self.n_permutations
        keys = jax.random.split(key, p)
        perms = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)
        rank = jnp.argsort(perms, axis=1)  # rank[p, i]: position of feature i
        # Coalitions: empty, full, and per order the proper non-empty prefixes.
        sizes = jnp.arange(1, n)
        prefixes = (rank[:, None, :] < sizes[None, :, None]).astype(jnp.int8)
        coalitions = jnp.concatenate(
            [
                jnp.zeros((1, n), jnp.int8),
                jnp.ones((1, n), jnp.int8),
                prefixes.reshape(p * (n - 1), n),
            ]
        )
        mask, _, v = self._coalition_scores(x, target, coalitions)
        v_empty, v_full = v[0], v[1]
        path = jnp.concatenate(
            [
                jnp.broadcast_to(v_empty, (p, 1)),
                v[2:].reshape(p, n - 1),
                jnp.broadcast_to(v_full, (p, 1)),
            ],
            axis=1,
        )
        gains = path[:, 1:] - path[:, :-1]  # gains[p, j]: j-th feature of order p
        phi = jnp.mean(jnp.take_along_axis(gains, rank, axis=1), axis=0)
        return phi[mask].astype(x.dtype)


ROWS = (
    MethodEntry(
        "shapley_values",
        ShapleyValues,
        "perturbation",
        "exact Shapley values over all coalitions (the given mask when it has "
        "<= 14 features, else a 2 x 2 grid)",
        lambda c: ShapleyValues(
            c.model, exact_mask(c), baseline_or_zero(c), c.option("chunk_size", "auto")
        ),
        needs=frozenset({"mask"}),
        differentiable=PERTURBATION,
        benchmark=(
            None,
            "not timed: 2**F forwards, the same batch as FeatureAblation's per "
            "coalition; equality with Captum's ShapleyValues is tested",
        ),
    ),
    MethodEntry(
        "shapley_value_sampling",
        ShapleyValueSampling,
        "perturbation",
        "Shapley values from random permutations (n_permutations)",
        lambda c: ShapleyValueSampling(
            c.model,
            default_mask(c),
            c.option("n_permutations", 8),
            baseline_or_zero(c),
            c.option("chunk_size", "auto"),
        ),
        aliases=("svs",),
        needs=frozenset({"mask", "key"}),
        differentiable=PERTURBATION_KEYED,
        benchmark=("bench_perturbation.py", "Captum ShapleyValueSampling"),
    ),
)
