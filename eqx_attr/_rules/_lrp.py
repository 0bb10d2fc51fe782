"""Layer-wise Relevance Propagation with Zennit's rules and composites."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jaxtyping import Array, PRNGKeyArray

from .._attribution import (
    AbstractCompiledAttribution,
    Attribution,
    Target,
    resolve_target,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry
from ._lrp_bn import training_batch_norms, training_error
from ._lrp_canon import prepare
from ._lrp_composites import (
    AbstractComposite,
    EpsilonPlusFlat,
    SingleRule,
    composite_by_name,
)
from ._lrp_rules import AbstractRule
from ._lrp_trace import run

__all__ = ["LRP"]


def _model_name(model: Any) -> str:
    if isinstance(model, eqx.Module) or not hasattr(model, "__name__"):
        return type(model).__name__
    return model.__name__


class LRP(AbstractCompiledAttribution):
    """Layer-wise Relevance Propagation (Bach et al. 2015), as Zennit computes it.

    The relevance starts at the model's output `out` as `out * dt/dout` (leaf by
    leaf for a PyTree output, zero on integer leaves), where `t` is the target
    as a function of the whole output. For `target=c`,
    `xa.targets.ClassIndex(c)` or `lambda out: out[c]` this is the usual start:
    the score `f_c(x)` at class `c` and zero elsewhere. Every rule is linear in
    the relevance it receives, so for any target the result is
    `sum_i dt/dout_i * LRP(class i)`: `xa.targets.Margin(c)` gives
    `LRP(c) - LRP(runner-up)`, and a nonlinear target (`xa.targets.LogSoftmax`)
    its first-order split. The input relevances then sum to about
    `sum_i out_i dt/dout_i`, which is `t(out)` when `t` is linear in the output
    (a class, a label set, a segmentation region, `lambda out: out["logits"][3]`)
    and 0 for a scale-invariant target (`xa.targets.EmbeddingSimilarity`). The
    relevance then flows back through every
    operation of the model by a rule: the composite's rule for dense layers and
    convolutions (a special one for the first layer), a proportional split
    (`Norm`) for average pools, means and the sums of skip connections, and the
    relevance passes through activations and max pools (to the winner). Batch
    norm is merged into the layer before it first (the zoo's `FrozenBatchNorm2d`
    into its convolution; `eqx.nn.BatchNorm` in inference mode, with its running
    statistics read from the `eqx.nn.State` the model closes over, into the
    convolution or `eqx.nn.Linear` before it). Linear operations are
    reached both as Equinox modules and inline (`x @ w`, `jnp.einsum`,
    `lax.conv_general_dilated`, `jnp.mean`); an operation with no rule raises,
    naming the operation and where it is called.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores, or to any PyTree (a
        dict, a tuple of heads) explained through a callable `target`.
    - `composite`: an `xa.lrp` composite (`EpsilonPlusFlat()` by default,
        `EpsilonPlus()`, `EpsilonAlpha2Beta1()`, `EpsilonGammaBox(low, high)`).
    - `rule`: instead of a composite, one rule for every dense layer,
        convolution, average pool and sum (e.g. `xa.lrp.Epsilon(1e-6)`).
    - `overrides`: `((where, rule), ...)`: sub-modules named by `where` (as for
        `eqx.tree_at`) get `rule` instead, whatever they contain.
    - `allow_gradient`: primitive names (e.g. `("exp",)`) through which the plain
        gradient is accepted where LRP has no rule.

    **Returns:** the input relevance, shaped like `x`.

    ```python
    a = xa.LRP(model, composite=xa.lrp.EpsilonGammaBox(low=0.0, high=1.0))(x, 3)
    a = xa.LRP(model, rule=xa.lrp.Epsilon(1e-6))(x, 3)
    ```
    """

    model: Callable[..., Any]
    composite: AbstractComposite
    overrides: tuple
    allow_gradient: tuple[str, ...] = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        composite: AbstractComposite | None = None,
        *,
        rule: AbstractRule | None = None,
        overrides: tuple | list = (),
        allow_gradient: tuple[str, ...] | list[str] = (),
        input_layout: InputLayout = None,
    ):
        self.input_layout = input_layout
        if composite is not None and rule is not None:
            raise ValueError(
                "Pass either `composite=` or `rule=` to LRP, not both; to change the "
                "rule of some layers of a composite use `overrides=`."
            )
        if rule is not None:
            if not isinstance(rule, AbstractRule):
                raise TypeError(
                    f"`rule` must be an `xa.lrp` rule such as `xa.lrp.Epsilon()`, got "
                    f"{type(rule).__name__}."
                )
            composite = SingleRule(rule)
        elif composite is None:
            composite = EpsilonPlusFlat()
        if not isinstance(composite, AbstractComposite):
            raise TypeError(
                "`composite` must be an `xa.lrp` composite such as "
                f"`xa.lrp.EpsilonPlusFlat()`, got {type(composite).__name__}."
            )
        pairs = []
        for k, pair in enumerate(overrides):
            if (
                not isinstance(pair, (tuple, list))
                or len(pair) != 2
                or not callable(pair[0])
                or not isinstance(pair[1], AbstractRule)
            ):
                raise TypeError(
                    f"`overrides[{k}]` must be a pair `(where, rule)`, e.g. "
                    "`(lambda m: m.features[0], xa.lrp.Flat())`."
                )
            pairs.append((pair[0], pair[1]))
        if isinstance(allow_gradient, str):
            raise TypeError(
                "`allow_gradient` must be a tuple of primitive names, e.g. "
                f"`allow_gradient=({allow_gradient!r},)`."
            )
        self.model = model
        self.composite = composite
        self.overrides = tuple(pairs)
        self.allow_gradient = tuple(allow_gradient)

    def _checked_target(self, x: Array, target: Target) -> Target:
        if training_batch_norms(self.model):
            raise training_error(self.model, _model_name(self.model))
        try:  # trace-time checks, with clear errors
            return super()._checked_target(x, target)
        except NameError as e:
            # A collective on an unbound axis: an eqx.nn.BatchNorm in training mode.
            if "axis name" not in str(e):
                raise
            raise training_error(self.model, _model_name(self.model)) from e

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Attribution:
        # Compiled as one program: the interpreter and the rules' backward passes
        # would otherwise run (and compile) primitive by primitive.
        objective = resolve_target(self.model, x, target)
        model = prepare(self.model, self.overrides, self.composite.norm_rule())
        name = _model_name(self.model)
        allow = frozenset(self.allow_gradient)

        def forward(z):
            # The floating leaves carry relevance; the others (integer labels of a
            # PyTree output) ride along for the target.
            return eqx.partition(
                run(model, z, self.composite, allow, name), eqx.is_inexact_array
            )

        scores, pull, other = jax.vjp(forward, x, has_aux=True)
        return pull(output_relevance(objective, scores, other))[0]


def output_relevance(objective: Callable, scores: Any, other: Any = None) -> Any:
    """The relevance LRP starts from: `out * d objective / d out`, leaf by leaf.

    For `objective = lambda out: out[c]` this is the usual start (the score at
    `c`, zero elsewhere). `scores` holds the output's floating leaves, `other`
    the rest of the output (combined back before calling `objective`).
    """
    grads = jax.grad(lambda s: objective(eqx.combine(s, other)))(scores)
    return jax.tree_util.tree_map(lambda s, g: (s * g).astype(s.dtype), scores, grads)


ROWS = (
    MethodEntry(
        "lrp",
        LRP,
        "rules",
        "Layer-wise Relevance Propagation (composite: epsilon_plus_flat, "
        "epsilon_plus, epsilon_alpha2_beta1, epsilon_gamma_box)",
        lambda c: LRP(
            c.model,
            composite=composite_by_name(
                c.option("composite", "epsilon_plus_flat"),
                low=c.option("low", 0.0),
                high=c.option("high", 1.0),
            ),
        ),
        differentiable=Differentiability(
            1, 1, "the stabiliser's sign(z) and rule selection are piecewise"
        ),
        benchmark=("bench_lrp.py", "Zennit EpsilonPlusFlat and Captum LRP"),
    ),
)
