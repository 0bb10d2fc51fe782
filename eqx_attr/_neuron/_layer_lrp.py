"""LRP relevance at a layer: Captum's `LayerLRP`, with Zennit's rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import AbstractCompiledAttribution, Image, Target
from .._layout import InputLayout, input_layout_field
from .._method_entry import Differentiability, MethodEntry
from .._rules._lrp_composites import AbstractComposite, composite_by_name
from .._rules._lrp_rules import AbstractRule
from ._crp_lrp import checked_call, lrp_of, relevances, set_lrp_fields

__all__ = ["LayerLRP"]


class LayerLRP(AbstractCompiledAttribution):
    """Layer-wise Relevance Propagation to a layer's output.

    The relevance of [`eqx_attr.LRP`][] (same composites, rules, overrides and
    start `out * d target / d out`) as it arrives at the output of the layer
    named by `where`, before it flows on to the input. The rules conserve
    relevance, so its sum is the relevance that reaches the layer: `f_t(x)` for
    a bias-free ReLU network under LRP-ε with ε → 0, less what biases absorb
    otherwise. Captum's `LayerLRP` (output side) with Zennit's rules.

    **Arguments:**

    - `model`: maps one example to scores (see [`eqx_attr.LRP`][]).
    - `where`: a `where` function naming the layer, as for `eqx.tree_at`
        (`lambda m: m.conv2`); it must be called once per forward pass.
    - `composite`, `rule`, `overrides`, `allow_gradient`: as for
        [`eqx_attr.LRP`][] (default `xa.lrp.EpsilonPlusFlat()`).
    - `input_layout`: checked and otherwise unused.

    **Returns:** the relevance at the layer's output, shaped like that output.

    ```python
    r = xa.LayerLRP(model, lambda m: m.conv2)(x, target=3)     # (64, 7, 7)
    r = xa.LayerLRP(model, lambda m: m.conv2, rule=xa.lrp.Epsilon(1e-6))(x, 3)
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    composite: AbstractComposite
    overrides: tuple
    allow_gradient: tuple[str, ...] = eqx.field(static=True)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        where: Callable,
        composite: AbstractComposite | None = None,
        *,
        rule: AbstractRule | None = None,
        overrides: tuple | list = (),
        allow_gradient: tuple[str, ...] | list[str] = (),
        input_layout: InputLayout = None,
    ):
        set_lrp_fields(self, model, where, composite, rule, overrides, allow_gradient)
        self.input_layout = input_layout

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "*layer"]:
        return super().__call__(x, target, key=key)

    def _checked_target(self, x: Array, target: Target) -> Target:
        return checked_call(lrp_of(self), self.where, x, target)[0]

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "*layer"]:
        del key
        return relevances(lrp_of(self), self.where, x, target)[1]


def _build(c: Any) -> LayerLRP:
    return LayerLRP(
        c.model,
        c.need("layer"),
        composite=composite_by_name(
            c.option("composite", "epsilon_plus_flat"),
            low=c.option("low", 0.0),
            high=c.option("high", 1.0),
        ),
    )


ROWS = (
    MethodEntry(
        "layer_lrp",
        LayerLRP,
        "neuron",
        "LRP relevance at a layer's output (composite as for lrp)",
        _build,
        needs=frozenset({"layer"}),
        output="layer",
        differentiable=Differentiability(
            1, 1, "the stabiliser's sign(z) and rule selection are piecewise"
        ),
        benchmark=(None, "not timed yet: the LRP pass of `lrp` plus a gate"),
    ),
)
