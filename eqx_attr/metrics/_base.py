"""What every metric shares: the abstract base and the input checks."""

from __future__ import annotations

import abc
import numbers
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._attribution import (
    Target,
    batched_map,
    check_choice,
    check_chunk_size as check_chunk_size,
    check_input,
    check_positive_int,
    resolve_target,
)

SCORES = ("probability", "logit")


class AbstractMetric(eqx.Module):
    """Base class of every evaluation metric.

    A metric is an Equinox module holding its options (and the model, where it
    needs one). `__call__` takes ONE example and returns a 0-d float32 array;
    batches are `eqx.filter_vmap(metric)(...)`. Metrics that expand an example into
    many model calls take `chunk_size`; random ones take `key`.

    **Arguments:** none here; each metric lists its own options.

    **Returns:** calling a metric on one example gives a 0-d float32 array.
    """

    @abc.abstractmethod
    def __call__(self, *args: Any, **kwargs: Any) -> Float[Array, ""]:
        """Evaluate one example; see each metric for its arguments."""


class AbstractCurveMetric(AbstractMetric):
    """Base of the metrics that summarise a curve of scores over one example.

    Concrete metrics implement `curve(x, target, a, *, key=None)` and
    `_summarise(curve)`; calling the metric gives `_summarise(curve(...))`.

    **Arguments:** none here; each metric lists its own options.

    **Returns:** `metric(x, target, a, *, key=None)` gives a 0-d float32 array.
    """

    @abc.abstractmethod
    def curve(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " steps"]:
        """The curve this metric summarises."""

    @abc.abstractmethod
    def _summarise(self, curve: Array) -> Array:
        """The metric's value from its curve."""

    def __call__(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        a: Float[Array, "..."],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        return self._summarise(self.curve(x, target, a, key=key))


def checked_pair(x: Any, a: Any) -> tuple[Array, Array]:
    """`x` checked as an input and `a` as its attribution (see `check_attribution`)."""
    x = check_input(x)
    return x, check_attribution(a, x)


def check_noise_options(
    n_samples: Any, scale: Any, scale_name: str, chunk_size: Any
) -> None:
    """Trace-time checks shared by the metrics that draw `n_samples` noises."""
    check_positive_int(n_samples, "n_samples")
    check_positive_float(scale, scale_name)
    check_chunk_size(chunk_size)


def relevance_ranks(s: Array, order: str) -> Array:
    """Ranks of `s`, most relevant first for `"morf"`, least relevant for `"lerf"`."""
    return descending_ranks(s if order == "morf" else -s)


def check_attribution(a: Any, x: Array | None = None, name: str = "a") -> Array:
    """`a` as a float32 array; shaped like `x`, or `(H, W)` like `x`'s last two axes.

    Errors are raised at trace time and say what shape was expected.
    """
    a = check_input(a, name)
    if x is not None and a.shape != x.shape and a.shape != x.shape[-2:]:
        raise ValueError(
            f"The attribution `{name}` has shape {a.shape}, which matches neither the "
            f"input's shape {x.shape} nor its spatial shape {x.shape[-2:]}. Pass the "
            "attribution of this very input (shaped like `x`, or an (H, W) map)."
        )
    if a.ndim < 1:
        raise ValueError(f"The attribution `{name}` must not be a scalar.")
    return a.astype(jnp.float32)


def spatial_map(a: Array, name: str = "a") -> Float[Array, "h w"]:
    """Sum an attribution over its leading (channel) axes: `(..., H, W) -> (H, W)`."""
    if a.ndim < 2:
        raise ValueError(
            f"`{name}` must have two spatial axes last (H, W), got shape {a.shape}."
        )
    return a.reshape(-1, *a.shape[-2:]).sum(axis=0)


def check_mask(mask: Any, shape: tuple[int, ...]) -> Bool[Array, "h w"]:
    """A boolean `(H, W)` ground-truth mask matching the attribution's `shape`."""
    if not isinstance(mask, (jax.Array, np.ndarray)):
        raise TypeError(
            f"`mask` must be a boolean array of shape {shape}, got "
            f"{type(mask).__name__}."
        )
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"`mask` must be boolean, got dtype {mask.dtype}; pass "
            "`mask.astype(bool)` (or `mask > 0.5` for a soft mask)."
        )
    if mask.shape != shape:
        raise ValueError(
            f"`mask` has shape {mask.shape}; it must be the (H, W) shape {shape} of "
            "the attribution's spatial axes (the same mask for every channel)."
        )
    return jnp.asarray(mask)


def check_positive_float(value: Any, name: str, allow_zero: bool = False) -> None:
    """Trace-time check of a float option such as `stdev` or `radius`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = v >= 0 if allow_zero else v > 0
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a number {bound}, got {value!r}.")


def scorer(
    model: Callable, x: Array, target: Any, score: str
) -> Callable[[Array], Array]:
    """`z -> scalar`: the target's softmax probability, or its raw score (`logit`).

    The target and `x`'s shape are checked against the model at trace time. A
    callable `target` is applied to the softmax probabilities (or to the scores).
    """
    check_choice(score, "score", SCORES)
    objective = resolve_target(model, x, target)

    def f(z):
        out = model(z)
        if score == "probability":
            out = jax.nn.softmax(out.astype(jnp.float32))
        return objective(out).astype(jnp.float32)

    return f


def descending_ranks(s: Array) -> Array:
    """Rank of every entry of `s` when sorted largest first, ties in row-major order.

    Rank 0 is the largest entry; the result has `s`'s shape.
    """
    flat = s.ravel()
    order = jnp.argsort(-flat, stable=True)
    ranks = (
        jnp.zeros(flat.shape, jnp.int32)
        .at[order]
        .set(jnp.arange(flat.size, dtype=jnp.int32))
    )
    return ranks.reshape(s.shape)


def trapezoid(curve: Array) -> Array:
    """Trapezoid area under a curve sampled evenly on [0, 1]."""
    n = curve.shape[0] - 1
    return (jnp.sum(curve) - (curve[0] + curve[-1]) / 2) / n


def safe_divide(num: Array, den: Array) -> Array:
    """`num / den`, and 0 where `den` is 0 (the documented all-zero results)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def element_ranks(a: Array, x: Array, ascending: bool = False) -> Array:
    """Ranks of the attribution broadcast to `x`'s shape (Quantus's feature order).

    Every element of `x` is a feature; rank 0 is the largest attribution (the
    smallest with `ascending=True`), ties in row-major order.
    """
    a = jnp.broadcast_to(a, x.shape)
    return descending_ranks(a if not ascending else -a)


def masked_curve(
    f: Callable[[Array], Array],
    x: Array,
    bs: Array,
    ranks: Array,
    counts: Array,
    chunk_size: int | Literal["auto"] | None,
    insert: bool = False,
) -> Array:
    """`f` at each step: the `counts[k]` lowest-ranked entries replaced by a baseline.

    `ranks` broadcasts to `x` (per element, or per pixel); `bs` holds the
    baseline's draws `(n, *x.shape)`, over which the curve is averaged. With
    `insert=True` the image starts from the baseline and the entries come from `x`.
    """

    def one_baseline(b):
        def one_step(count):
            chosen = jnp.broadcast_to(ranks < count, x.shape)
            z = jnp.where(chosen, x, b) if insert else jnp.where(chosen, b, x)
            return f(z)

        return batched_map(one_step, counts, chunk_size)

    return jnp.mean(jax.vmap(one_baseline)(bs), axis=0)


def pearson(u: Array, v: Array) -> Array:
    """Pearson correlation of two vectors; 0 when either is constant."""
    u = u - jnp.mean(u)
    v = v - jnp.mean(v)
    return safe_divide(jnp.sum(u * v), jnp.sqrt(jnp.sum(u * u) * jnp.sum(v * v)))
