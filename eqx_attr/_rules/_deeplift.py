"""DeepLIFT (Rescale rule) and DeepLiftShap, on the rule engine."""

import abc
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    AbstractCompiledAttribution,
    Attribution,
    Image,
    Target,
    batched_map,
    check_chunk_size,
    make_objective,
)
from .._engine import _interpreter as it
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry
from ..baselines import (
    AbstractBaseline,
    UniformNoise,
    Zeros,
    as_baseline,
    draw_baselines,
)
from ._deeplift_rules import DeepLiftRules

__all__ = ["AbstractDeepLift", "DeepLift", "DeepLiftShap"]

Delta = Float[Array, ""]


def _score(model: Callable, target: Target, x: Array) -> Array:
    out = model(x)  # an array of scores, or a PyTree for a callable target
    return make_objective(target, out)(out)


def deeplift_multipliers(
    model: Callable,
    target: Target,
    x: Array,
    b: Array,
    eps: float,
    plain: tuple[str, ...],
) -> tuple[Array, Array]:
    """DeepLIFT's multipliers of the target's score at `x` against reference `b`,
    and the two scores `[f(x), f(b)]`.

    The whole scalar function (model and target reduction) is evaluated by the
    rule engine on the input and the reference together.
    """
    rules = DeepLiftRules(eps, plain)
    traced = it.trace(_score, model, target, x)
    scope = rules.scope(traced.closed)
    fixed = traced.leaves[:-1]  # x is the last leaf of (model, target, x)

    def f(z):
        # The gradient is taken with respect to `z` alone; the reference stream
        # stays differentiable for derivatives of the attribution itself (a
        # baseline computed from x, parameters in a training loss).
        pair = it.Act(jnp.stack([z, b]))
        (out,) = it.run(rules.interpreter, traced, [*fixed, pair], scope)
        out = rules.interpreter.promote(out)
        return out.streams[0], out.streams

    grads, scores = jax.grad(f, has_aux=True)(x)
    return grads, scores


def _deeplift(
    model: Callable, x: Array, target: Target, b: Array, eps: float, plain: tuple
) -> tuple[Attribution, Delta]:
    # Runs inside the compiled call (the interpreter runs at trace time).
    m, scores = deeplift_multipliers(model, target, x, b, eps, plain)
    attr = (m * (x - b)).astype(x.dtype)
    delta = jnp.sum(attr.astype(jnp.float32)) - (scores[0] - scores[1]).astype(
        jnp.float32
    )
    return attr, delta


class AbstractDeepLift(AbstractCompiledAttribution):
    """Base of the DeepLIFT methods: the model, baseline, stabiliser and options.

    Concrete subclasses ([`eqx_attr.DeepLift`][], [`eqx_attr.DeepLiftShap`][])
    declare these fields.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `baseline`: the reference input(s), a module of `eqx_attr.baselines`.
    - `return_delta`: if `True`, calls return `(attribution, delta)`.
    - `eps`: below this `|x - x0|` the Rescale rule uses the plain derivative.
    - `plain`: names of primitives that may pass their plain gradient.
    - `input_layout`: `"chw"`, `"hwc"` or `None` (inferred), keyword-only;
        checked, and otherwise without effect: the attribution is shaped like `x`
        in either layout.

    **Returns:** `method(x, target)` gives an attribution shaped like `x` (or
    `(attribution, delta)` with `return_delta=True`).
    """

    model: eqx.AbstractVar[Callable[..., Any]]
    baseline: eqx.AbstractVar[AbstractBaseline]
    return_delta: eqx.AbstractVar[bool]
    eps: eqx.AbstractVar[float]
    plain: eqx.AbstractVar[tuple[str, ...]]
    input_layout: eqx.AbstractVar[InputLayout]

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution | tuple[Attribution, Delta]:
        attr, delta = self._with_delta(x, target, key)
        return (attr, delta) if self.return_delta else attr

    def attribute_with_delta(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> tuple[Attribution, Delta]:
        """Attributions and the 0-d delta `sum(attr) - (f(x) - f(b))`.

        **Arguments:** as `__call__`.

        **Returns:** `(attribution, delta)`, whatever `return_delta` says.
        """
        return self._compiled(self._with_delta, x, target, key)

    def _with_delta(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> tuple[Attribution, Delta]:
        return self._attribute(x, target, draw_baselines(self.baseline, x, key))

    @abc.abstractmethod
    def _attribute(
        self, x: Array, target: Target, b: Array
    ) -> tuple[Attribution, Delta]:
        """Attributions and delta for `x` against the baselines `b` (n, *x.shape)."""


def _check_options(eps: Any, plain: Any) -> None:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"`eps` must be a number >= 0, got {eps!r}.")
    if not isinstance(plain, tuple) or not all(isinstance(p, str) for p in plain):
        raise TypeError(
            "`plain` must be a tuple of primitive names, e.g. `plain=('mul',)`; "
            f"got {plain!r}."
        )


class DeepLift(AbstractDeepLift):
    """DeepLIFT with the Rescale rule (Shrikumar et al., 2017), as Captum's `DeepLift`.

    The model is evaluated on the input and the baseline together by the rule
    engine. Every nonlinearity of one activation (ReLU, sigmoid, tanh, softplus,
    GELU, ELU, ..., whether held in the PyTree or called inline, even as
    `jnp.where(x > 0, x, 0)`) passes `g * Δy / Δx` back, or its plain derivative
    where `|Δx| < eps`; max pooling routes the differences as Captum does;
    linear operations pass the multipliers through. Attributions are the
    multipliers times `x - baseline` and sum to `f(x) - f(baseline)`.

    The target is part of the function the rule engine evaluates: for a
    callable target `t` (one of `xa.targets`, or `lambda out: out["logits"][3]`
    on a model returning a PyTree, which `t` sees whole) the attributions are
    those of `x -> t(model(x))` and sum to `t(f(x)) - t(f(baseline))`; for a
    target linear in the output they are the same combination of the classes'
    attributions.

    An operation with no DeepLIFT rule (a product or quotient of two activations,
    a `jnp.where` on the input, an unknown primitive) raises a `ValueError`
    naming it and its source line; `plain=("mul",)` accepts its plain gradient.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores (or to any PyTree,
        explained through a callable `target`).
    - `baseline`: `None`/number/array, or one `eqx_attr.baselines` draw.
    - `return_delta`: also return the 0-d `sum(a) - (f(x) - f(baseline))`.
    - `eps`: where `|x - x0| < eps` the plain derivative is used (Captum: 1e-10).
    - `plain`: primitive names whose plain gradient you accept.

    **Returns:** an array shaped like `x` (and the delta, see above).

    ```python
    a, delta = xa.DeepLift(model, baseline=0.0, return_delta=True)(x, 3)
    ```
    """

    model: Callable[..., Any]
    baseline: AbstractBaseline = eqx.field(default_factory=Zeros, converter=as_baseline)
    return_delta: bool = eqx.field(static=True, default=False)
    eps: float = eqx.field(static=True, default=1e-10)
    plain: tuple[str, ...] = eqx.field(static=True, default=())
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        _check_options(self.eps, self.plain)

    def _attribute(
        self, x: Array, target: Target, b: Array
    ) -> tuple[Attribution, Delta]:
        if b.shape[0] != 1:
            raise ValueError(
                f"DeepLift takes one baseline, got {b.shape[0]} draws; use "
                "`xa.DeepLiftShap` to average DeepLIFT over several baselines."
            )
        return _deeplift(self.model, x, target, b[0], self.eps, self.plain)


class DeepLiftShap(AbstractDeepLift):
    """DeepLIFT averaged over a set of baselines, as Captum's `DeepLiftShap`.

    One vectorised pass over the baselines (`chunk_size` at a time when given).
    The delta is `sum(a) - (f(x) - mean_b f(b))`.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `baseline`: the baselines, e.g. `xa.baselines.Custom(bs, draws=True)`.
    - `chunk_size`: baselines per vectorised chunk (`None`: all at once;
        `"auto"`, the default: as many as fit [`eqx_attr.set_memory_budget`][]).
    - `return_delta`, `eps`, `plain`: as [`eqx_attr.DeepLift`][].

    **Returns:** an array shaped like `x` (and the delta).

    ```python
    dls = xa.DeepLiftShap(model, baseline=xa.baselines.Custom(bs, draws=True))
    a = dls(x, target=3)
    ```
    """

    model: Callable[..., Any]
    baseline: AbstractBaseline = eqx.field(converter=as_baseline)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")
    return_delta: bool = eqx.field(static=True, default=False)
    eps: float = eqx.field(static=True, default=1e-10)
    plain: tuple[str, ...] = eqx.field(static=True, default=())
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        _check_options(self.eps, self.plain)
        check_chunk_size(self.chunk_size)

    def _attribute(
        self, x: Array, target: Target, b: Array
    ) -> tuple[Attribution, Delta]:
        one = lambda bb: _deeplift(self.model, x, target, bb, self.eps, self.plain)
        attrs, deltas = batched_map(one, b, self.chunk_size)
        return jnp.mean(attrs, axis=0).astype(x.dtype), jnp.mean(deltas)


ROWS = (
    MethodEntry(
        "deeplift",
        DeepLift,
        "rules",
        "DeepLIFT, Rescale rule (baseline)",
        lambda c: DeepLift(
            c.model, baseline=c.baseline if c.baseline is not None else 0.0
        ),
        aliases=("deep_lift",),
        baselines="one",
        needs=frozenset({"baseline"}),
        differentiable=Differentiability(
            1, 1, "Rescale rule; the plain derivative within 1e-10 of the baseline"
        ),
        benchmark=("bench_rules.py", "Captum DeepLift"),
    ),
    MethodEntry(
        "deeplift_shap",
        DeepLiftShap,
        "rules",
        "DeepLIFT averaged over baselines (baseline draws, chunk_size)",
        lambda c: DeepLiftShap(
            c.model,
            baseline=c.baseline
            if c.baseline is not None
            else UniformNoise(n_draws=c.option("n_samples", 8)),
            chunk_size=c.option("chunk_size", "auto"),
        ),
        aliases=("deepliftshap",),
        baselines="many",
        needs=frozenset({"baseline", "key"}),
        differentiable=Differentiability(1, 1, "Rescale rule; for a fixed key"),
        benchmark=("bench_rules.py", "Captum DeepLiftShap"),
    ),
)
