"""Path and reference methods at a layer: integrated gradients, conductance,
internal influence, DeepLIFT and GradientSHAP (Captum's `Layer*` classes)."""

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
    batched_map,
    check_bool,
    check_chunk_size,
    check_key,
    check_positive_int,
)
from .._gradient._gradient_shap import gradient_shap_draws
from .._gradient._integrated import path_mean_gradients, quadrature
from .._layout import InputLayout, input_layout_field
from .._memory import chunk_for_budget
from .._method_entry import BuildContext, Differentiability, MethodEntry
from .._rules._deeplift import deeplift_multipliers
from ..baselines import (
    AbstractBaseline,
    UniformNoise,
    Zeros,
    as_baseline,
    draw_baselines,
)
from ._layer_common import AbstractLayerAttribution, LayerSite, RestOfNetwork

__all__ = [
    "InternalInfluence",
    "LayerConductance",
    "LayerDeepLift",
    "LayerGradientShap",
    "LayerIntegratedGradients",
]

LayerAttr = Float[Array, "*layer"]
# Captum's quadratures (our IG's `riemann_linspace` has no Captum counterpart).
_CAPTUM_METHODS = (
    "gausslegendre",
    "riemann_left",
    "riemann_right",
    "riemann_middle",
    "riemann_trapezoid",
)


def _check_path(method: str, n_steps: int) -> None:
    check_positive_int(n_steps, "n_steps")
    if method not in _CAPTUM_METHODS:
        options = ", ".join(map(repr, _CAPTUM_METHODS))
        raise ValueError(f"Unknown `method={method!r}`; choose one of {options}.")


def _input_path(x: Array, bs: Array, alphas: np.ndarray) -> Array:
    """The points `b + a (x - b)`, draws outer and steps inner, flattened."""
    a = jnp.asarray(alphas, x.dtype).reshape(1, -1, *(1,) * x.ndim)
    points = bs[:, None] + a * (x[None, None] - bs[:, None])
    return points.reshape(-1, *x.shape)


def _wide(values: Array) -> Array:
    # Sums over path points and samples run in at least float32 (float64 stays).
    return values.astype(jnp.promote_types(values.dtype, jnp.float32))


def _per_draw(values: Array, n_draws: int) -> Array:
    return values.reshape(n_draws, -1, *values.shape[1:])


class LayerIntegratedGradients(AbstractLayerAttribution):
    """Integrated gradients at a layer, as Captum's `LayerIntegratedGradients`.

    The path runs in the LAYER's space, from `y0 = layer(baseline)` to
    `y = layer(x)`; the target's gradient with respect to the layer's output
    (the rest of the network run on the interpolated activation, the input
    staying `x`) is integrated along it and multiplied by `y - y0`. For a network
    in which everything passes through the layer, the attributions sum to
    `f(x) - f(baseline)` up to the quadrature error (completeness).

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `where`: a `where` function naming ONE sub-module, e.g. `lambda m: m.conv2`.
    - `n_steps`: quadrature nodes (static). Default 50.
    - `method`: `"gausslegendre"` (default), `"riemann_left"`, `"riemann_right"`,
        `"riemann_middle"` or `"riemann_trapezoid"`, as Captum's.
    - `baseline`: the INPUT-space baseline: `None` (zeros), a number, an array
        broadcastable to `x`, or a module of `eqx_attr.baselines` (several draws
        are averaged).
    - `multiply_by_inputs`: `False` returns the integrated gradient alone.
    - `chunk_size`: path points per chunk (`None`: all at once; `"auto"`, the
        default: as many as fit the memory budget, [`eqx_attr.set_memory_budget`][]).
    - `to_layer_input`: the path and the attribution at the layer's first
        positional argument instead of its output.
    - `input_layout`: `"chw"`, `"hwc"` or `None`, keyword-only; checked only.

    **Returns:** `method(x, target)` gives an array shaped like the layer's output.

    ```python
    a = xa.LayerIntegratedGradients(model, lambda m: m.conv2, n_steps=16)(x, 3)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    n_steps: int = eqx.field(static=True, default=50)
    method: str = eqx.field(static=True, default="gausslegendre")
    baseline: AbstractBaseline = eqx.field(default_factory=Zeros, converter=as_baseline)
    multiply_by_inputs: bool = eqx.field(static=True, default=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    to_layer_input: bool = eqx.field(static=True, default=False, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        _check_path(self.method, self.n_steps)
        check_bool(self.multiply_by_inputs, "multiply_by_inputs")
        check_chunk_size(self.chunk_size)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> LayerAttr:
        site = self._site(x, target)
        bs = draw_baselines(self.baseline, x, key)
        y = site.act(x)
        y0s = jax.vmap(site.act)(bs)
        rest, chunk = site.rest(x), self.chunk_size
        if chunk == "auto":  # one path point: a pass from the layer on, and back
            chunk = chunk_for_budget(jax.grad(rest), y, y0s.shape[0] * self.n_steps)
        grads = path_mean_gradients(rest, y, y0s, self.method, self.n_steps, chunk)
        if self.multiply_by_inputs:
            grads = (y[None] - y0s) * grads
        return jnp.mean(grads, axis=0).astype(y.dtype)


def _path_reads(
    site: LayerSite, x: Array, bs: Array, alphas: np.ndarray, chunk: int | str | None
) -> tuple[Array, Array]:
    """The point's values and gradients along the input paths, `(draws, steps, ...)`."""
    acts, grads = batched_map(site.act_grad, _input_path(x, bs, alphas), chunk)
    return _per_draw(acts, bs.shape[0]), _per_draw(grads, bs.shape[0])


class LayerConductance(AbstractLayerAttribution):
    """Conductance of a layer's neurons, as Captum's `LayerConductance`.

    The path runs in INPUT space, `x(a) = b + a (x - b)`, at `n_steps + 1` nodes
    `a_0 < ... < a_n` of `method`; neuron `j` gets
    `sum_k dF/dy_j(x(a_k)) * (y_j(x(a_{k+1})) - y_j(x(a_k)))`. The attributions
    sum to about `F(x(a_n)) - F(x(a_0))`, close to `f(x) - f(b)` for many steps.

    **Arguments:** `model`, `where`, `n_steps` (default 50), `method`,
    `baseline`, `chunk_size`, `to_layer_input`, `input_layout`, as
    [`eqx_attr.LayerIntegratedGradients`][].

    **Returns:** `method(x, target)` gives an array shaped like the layer's output.

    ```python
    a = xa.LayerConductance(model, lambda m: m.conv2, n_steps=16)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    n_steps: int = eqx.field(static=True, default=50)
    method: str = eqx.field(static=True, default="gausslegendre")
    baseline: AbstractBaseline = eqx.field(default_factory=Zeros, converter=as_baseline)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    to_layer_input: bool = eqx.field(static=True, default=False, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        _check_path(self.method, self.n_steps)
        check_chunk_size(self.chunk_size)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> LayerAttr:
        site = self._site(x, target)
        bs = draw_baselines(self.baseline, x, key)
        alphas, _ = quadrature(self.method, self.n_steps + 1)
        acts, grads = _path_reads(site, x, bs, alphas, self.chunk_size)
        steps = _wide(grads[:, :-1] * (acts[:, 1:] - acts[:, :-1]))
        return jnp.mean(jnp.sum(steps, axis=1), axis=0).astype(acts.dtype)


class InternalInfluence(AbstractLayerAttribution):
    """Internal influence of a layer, as Captum's `InternalInfluence`.

    The target's gradient with respect to the layer's output, integrated along
    the INPUT path `b + a (x - b)` by the quadrature `method` (not multiplied by
    a difference).

    **Arguments:** `model`, `where`, `n_steps` (default 50), `method`,
    `baseline`, `chunk_size`, `to_layer_input`, `input_layout`, as
    [`eqx_attr.LayerIntegratedGradients`][].

    **Returns:** `method(x, target)` gives an array shaped like the layer's output.

    ```python
    a = xa.InternalInfluence(model, lambda m: m.conv2, n_steps=16)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    n_steps: int = eqx.field(static=True, default=50)
    method: str = eqx.field(static=True, default="gausslegendre")
    baseline: AbstractBaseline = eqx.field(default_factory=Zeros, converter=as_baseline)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    to_layer_input: bool = eqx.field(static=True, default=False, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        _check_path(self.method, self.n_steps)
        check_chunk_size(self.chunk_size)

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> LayerAttr:
        site = self._site(x, target)
        bs = draw_baselines(self.baseline, x, key)
        alphas, weights = quadrature(self.method, self.n_steps)
        _, grads = _path_reads(site, x, bs, alphas, self.chunk_size)
        wide = _wide(grads)
        mean = jnp.tensordot(jnp.asarray(weights, wide.dtype), wide, axes=(0, 1))
        return jnp.mean(mean, axis=0).astype(grads.dtype)  # the layer's dtype


class LayerDeepLift(AbstractLayerAttribution):
    """DeepLIFT (Rescale rule) at a layer, as Captum's `LayerDeepLift`.

    DeepLIFT's multipliers of the target at the layer (every nonlinearity after
    the layer by the Rescale rule, as [`eqx_attr.DeepLift`][]), times
    `layer(x) - layer(baseline)`. For a network in which everything passes
    through the layer, they sum to `f(x) - f(baseline)` (completeness).

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `where`: a `where` function naming ONE sub-module, e.g. `lambda m: m.conv2`.
    - `baseline`: the INPUT-space baseline: `None` (zeros), a number, an array
        or one draw of an `eqx_attr.baselines` module.
    - `multiply_by_inputs`: `False` returns the multipliers alone.
    - `eps`: where `|y - y0| < eps` a nonlinearity uses its plain derivative.
    - `to_layer_input`: attribute to the layer's first positional argument
        (the layer's own nonlinearity, if it is one, then follows the rule).
    - `input_layout`: `"chw"`, `"hwc"` or `None`, keyword-only; checked only.

    **Returns:** `method(x, target)` gives an array shaped like the layer's output.

    ```python
    a = xa.LayerDeepLift(model, lambda m: m.conv2, baseline=0.0)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    baseline: AbstractBaseline = eqx.field(default_factory=Zeros, converter=as_baseline)
    multiply_by_inputs: bool = eqx.field(static=True, default=True)
    eps: float = eqx.field(static=True, default=1e-10)
    to_layer_input: bool = eqx.field(static=True, default=False, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_bool(self.multiply_by_inputs, "multiply_by_inputs")
        eps = self.eps
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
            raise ValueError(f"`eps` must be a number >= 0, got {eps!r}.")

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> LayerAttr:
        site = self._site(x, target)
        bs = draw_baselines(self.baseline, x, key)
        if bs.shape[0] != 1:
            raise ValueError(
                f"LayerDeepLift takes one baseline, got {bs.shape[0]} draws; pass "
                "one baseline (a number, an array shaped like `x`)."
            )
        y, y0 = site.act(x), site.act(bs[0])
        rest = RestOfNetwork(site.model, x, site.where)
        mult, _ = deeplift_multipliers(rest, target, y, y0, self.eps, ())
        return (mult * (y - y0) if self.multiply_by_inputs else mult).astype(y.dtype)


class LayerGradientShap(AbstractLayerAttribution):
    """GradientSHAP at a layer, as Captum's `LayerGradientShap`.

    Per sample: a baseline `b` drawn uniformly from `baseline`'s draws, Gaussian
    noise of `stdev` on the input (`x~ = x + noise`), `a ~ U[0, 1]`; the
    target's gradient at the layer for the input `b + a (x~ - b)`, times
    `layer(x~) - layer(b)`; averaged over `n_samples`. The draws are those of
    [`eqx_attr.GradientShap`][] for the same key. Needs `key`.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `where`: a `where` function naming ONE sub-module, e.g. `lambda m: m.conv2`.
    - `baseline`: the input-space baseline distribution, e.g.
        `xa.baselines.Custom(bs, draws=True)`, or a number or an array.
    - `n_samples`: samples per example (Captum's default 5).
    - `stdev`: the noise on the input (Captum's default 0.0).
    - `multiply_by_inputs`: `False` returns the mean gradient alone.
    - `chunk_size`: samples per vectorised chunk (`None`: all at once; `"auto"`,
        the default: as many as fit the memory budget).
    - `to_layer_input`, `input_layout`: as [`eqx_attr.LayerIntegratedGradients`][].

    **Returns:** `method(x, target, key=key)` gives an array shaped like the
    layer's output.

    ```python
    gs = xa.LayerGradientShap(model, lambda m: m.conv2, baseline=0.0, n_samples=8)
    a = gs(x, 3, key=jax.random.key(0))
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    baseline: AbstractBaseline = eqx.field(converter=as_baseline)
    n_samples: int = eqx.field(static=True, default=5)
    stdev: float = eqx.field(static=True, default=0.0)
    multiply_by_inputs: bool = eqx.field(static=True, default=True)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    to_layer_input: bool = eqx.field(static=True, default=False, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_positive_int(self.n_samples, "n_samples")
        check_bool(self.multiply_by_inputs, "multiply_by_inputs")
        check_chunk_size(self.chunk_size)
        stdev = self.stdev
        if not isinstance(stdev, (int, float)) or isinstance(stdev, bool) or stdev < 0:
            raise ValueError(f"`stdev` must be a number >= 0, got {stdev!r}.")

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> LayerAttr:
        key = check_key(key, "LayerGradientShap")
        site = self._site(x, target)
        # The same splits as `GradientShap`, so one key gives the same draws.
        k_base, k_draw = jax.random.split(key)
        bs = draw_baselines(self.baseline, x, k_base)
        idx, alpha, noise = gradient_shap_draws(
            k_draw, bs.shape[0], self.n_samples, x, self.stdev
        )
        expand = (1,) * x.ndim

        def one(sample):
            i, a, n = sample
            xt, b = x + n, bs[i]
            _, grad = site.act_grad(b + a.reshape(expand) * (xt - b))
            if self.multiply_by_inputs:
                grad = (site.act(xt) - site.act(b)) * grad
            return _wide(grad)

        attrs = batched_map(one, (idx, alpha, noise), self.chunk_size)
        return jnp.mean(attrs, axis=0).astype(site.info.act.dtype)


def _baseline(c: BuildContext) -> Any:
    return c.baseline if c.baseline is not None else 0.0


def _path_build(cls: type) -> Callable[[BuildContext], Any]:
    def build(c: BuildContext) -> Any:
        return cls(
            c.model,
            c.need("layer"),
            n_steps=c.option("n_steps", 32),
            baseline=_baseline(c),
            chunk_size=c.option("chunk_size", "auto"),
        )

    return build


_PATH = Differentiability(1, 1, "the path's terms are summed in float32 or wider")
_NEEDS = frozenset({"layer", "baseline"})

ROWS = (
    MethodEntry(
        "layer_integrated_gradients",
        LayerIntegratedGradients,
        "neuron",
        "Integrated gradients at a layer (n_steps, baseline)",
        _path_build(LayerIntegratedGradients),
        aliases=("layer_ig",),
        needs=_NEEDS,
        output="layer",
        axioms=frozenset({"completeness"}),
        differentiable=_PATH,
        benchmark=(None, "not timed: n_steps gradients after the layer, as IG's"),
    ),
    MethodEntry(
        "layer_conductance",
        LayerConductance,
        "neuron",
        "Conductance of a layer's neurons (n_steps, baseline)",
        _path_build(LayerConductance),
        needs=_NEEDS,
        output="layer",
        differentiable=_PATH,
        benchmark=(None, "not timed: n_steps + 1 gradients, as IG's"),
    ),
    MethodEntry(
        "internal_influence",
        InternalInfluence,
        "neuron",
        "Internal influence: layer gradients integrated on the input path",
        _path_build(InternalInfluence),
        needs=_NEEDS,
        output="layer",
        differentiable=_PATH,
        benchmark=(None, "not timed: n_steps gradients, as IG's"),
    ),
    MethodEntry(
        "layer_deeplift",
        LayerDeepLift,
        "neuron",
        "DeepLIFT (Rescale) at a layer (baseline)",
        lambda c: LayerDeepLift(c.model, c.need("layer"), baseline=_baseline(c)),
        needs=_NEEDS,
        output="layer",
        baselines="one",
        axioms=frozenset({"completeness"}),
        differentiable=Differentiability(
            1, 1, "Rescale rule; the plain derivative within 1e-10 of the baseline"
        ),
        benchmark=(None, "not timed: one DeepLIFT pass after the layer"),
    ),
    MethodEntry(
        "layer_gradient_shap",
        LayerGradientShap,
        "neuron",
        "GradientSHAP at a layer (baseline draws, n_samples, stdev)",
        lambda c: LayerGradientShap(
            c.model,
            c.need("layer"),
            baseline=c.baseline if c.baseline is not None else UniformNoise(n_draws=8),
            n_samples=c.option("n_samples", 16),
            stdev=c.option("stdev", 0.0),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        needs=frozenset({"layer", "baseline", "key"}),
        output="layer",
        baselines="many",
        differentiable=Differentiability(1, 1, "for a fixed key; sums in float32"),
        benchmark=(None, "not timed: n_samples gradients, as GradientShap's"),
    ),
)
