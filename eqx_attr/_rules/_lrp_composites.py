"""LRP composites: which rule each kind of operation gets, as Zennit's composites.

An operation is one of four kinds: `"linear"` (a dense layer, `x @ w`, `einsum`),
`"conv"` (a convolution), `"norm"` (an average pool, a global mean, the sum of two
branches) and activations (always passed through). A composite names a rule for
each kind, and optionally a different rule for the network's first layer. A
composite for transformers also names the rules of products of two activations
and of the softmax ([`AttnLRP`][eqx_attr.lrp.AttnLRP]); the others refuse those.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx

from ._lrp_attn_rules import Softmax, Uniform
from ._lrp_rules import (
    AbstractRule,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    ZBox,
    ZPlus,
)

KINDS = ("linear", "conv")


class AbstractComposite(eqx.Module):
    """Assigns LRP rules to the kinds of operation of a network.

    Concrete composites are final; build your own by subclassing this with
    `layer_rule`, `first_rule` and `norm_rule`.

    **Arguments:** none here; a subclass holds its rules' hyperparameters as
    fields.

    **Returns:** a subclass's `layer_rule`, `first_rule` and `norm_rule` return
    the [`eqx_attr.lrp.AbstractRule`][] for each kind of operation.
    """

    @abc.abstractmethod
    def layer_rule(self, kind: str) -> AbstractRule:
        """The rule of a `"linear"` or `"conv"` layer (not the first one)."""

    def first_rule(self, kind: str) -> AbstractRule | None:
        """The rule of the first layer of this kind, or None for no special rule."""
        del kind
        return None

    def norm_rule(self) -> AbstractRule:
        """The rule of average pools and of sums of branches."""
        return Norm(self.stabilizer_value())

    def stabilizer_value(self) -> float:
        return 1e-6

    def product_rule(self) -> AbstractRule | None:
        """The rule of a product of two activations (attention's `q @ k.T`), or
        None to refuse one (every composite but [`AttnLRP`][eqx_attr.lrp.AttnLRP])."""
        return None

    def softmax_rule(self, axes: tuple[int, ...]) -> AbstractRule | None:
        """The rule of a softmax over `axes`, or None to refuse one."""
        del axes
        return None


class SingleRule(AbstractComposite):
    """One rule on every linear layer, convolution, average pool and sum.

    What `xa.LRP(model, rule=...)` builds.

    **Arguments:** `rule`, an [`eqx_attr.lrp.AbstractRule`][].

    **Returns:** a composite, to pass to [`eqx_attr.LRP`][] as `composite=`.
    """

    rule: AbstractRule

    def layer_rule(self, kind: str) -> AbstractRule:
        return self.rule

    def norm_rule(self) -> AbstractRule:
        return self.rule


class EpsilonPlus(AbstractComposite):
    """`ZPlus` on convolutions, `Epsilon` on dense layers (Zennit's `EpsilonPlus`).

    **Arguments:** `epsilon` (of `Epsilon`, default `1e-6`), `stabilizer` (of the
    other rules, default `1e-6`).

    **Returns:** a composite, to pass to [`eqx_attr.LRP`][] as `composite=`.

    ```python
    a = xa.LRP(model, composite=xa.lrp.EpsilonPlus())(x, 3)
    ```
    """

    epsilon: float = eqx.field(static=True, default=1e-6)
    stabilizer: float = eqx.field(static=True, default=1e-6)

    def layer_rule(self, kind: str) -> AbstractRule:
        if kind == "conv":
            return ZPlus(self.stabilizer)
        return Epsilon(self.epsilon)

    def stabilizer_value(self) -> float:
        return self.stabilizer


class EpsilonPlusFlat(AbstractComposite):
    """`EpsilonPlus` with `Flat` on the first layer, dense or convolutional.

    Zennit's `EpsilonPlusFlat`, the recommended default for image classifiers.

    **Arguments:** `epsilon` (default `1e-6`), `stabilizer` (default `1e-6`).

    **Returns:** a composite, to pass to [`eqx_attr.LRP`][] as `composite=`.

    ```python
    a = xa.LRP(model, composite=xa.lrp.EpsilonPlusFlat())(x, 3)
    ```
    """

    epsilon: float = eqx.field(static=True, default=1e-6)
    stabilizer: float = eqx.field(static=True, default=1e-6)

    def layer_rule(self, kind: str) -> AbstractRule:
        if kind == "conv":
            return ZPlus(self.stabilizer)
        return Epsilon(self.epsilon)

    def first_rule(self, kind: str) -> AbstractRule | None:
        return Flat(self.stabilizer)

    def stabilizer_value(self) -> float:
        return self.stabilizer


class EpsilonAlpha2Beta1(AbstractComposite):
    """`AlphaBeta(2, 1)` on convolutions, `Epsilon` on dense layers.

    Zennit's `EpsilonAlpha2Beta1`.

    **Arguments:** `epsilon` (default `1e-6`), `stabilizer` (default `1e-6`).

    **Returns:** a composite, to pass to [`eqx_attr.LRP`][] as `composite=`.

    ```python
    a = xa.LRP(model, composite=xa.lrp.EpsilonAlpha2Beta1())(x, 3)
    ```
    """

    epsilon: float = eqx.field(static=True, default=1e-6)
    stabilizer: float = eqx.field(static=True, default=1e-6)

    def layer_rule(self, kind: str) -> AbstractRule:
        if kind == "conv":
            return AlphaBeta(2.0, 1.0, self.stabilizer)
        return Epsilon(self.epsilon)

    def stabilizer_value(self) -> float:
        return self.stabilizer


class EpsilonGammaBox(AbstractComposite):
    """`ZBox` on the first convolution, `Gamma` on the others, `Epsilon` on dense.

    Zennit's `EpsilonGammaBox`. `low` and `high` bound the input (after any
    normalisation the model expects), e.g. `low=0.0, high=1.0` for raw pixels.

    **Arguments:** `low`, `high` (floats or arrays broadcastable to the input),
    `epsilon` (default `1e-6`), `gamma` (default `0.25`), `stabilizer` (default
    `1e-6`).

    **Returns:** a composite, to pass to [`eqx_attr.LRP`][] as `composite=`.

    ```python
    a = xa.LRP(model, composite=xa.lrp.EpsilonGammaBox(low=-1.0, high=1.0))(x, 3)
    ```
    """

    low: Any
    high: Any
    epsilon: float = eqx.field(static=True, default=1e-6)
    gamma: float = eqx.field(static=True, default=0.25)
    stabilizer: float = eqx.field(static=True, default=1e-6)

    def layer_rule(self, kind: str) -> AbstractRule:
        if kind == "conv":
            return Gamma(self.gamma, self.stabilizer)
        return Epsilon(self.epsilon)

    def first_rule(self, kind: str) -> AbstractRule | None:
        if kind == "conv":
            return ZBox(self.low, self.high, self.stabilizer)
        return None

    def stabilizer_value(self) -> float:
        return self.stabilizer


class AttnLRP(AbstractComposite):
    """AttnLRP (Achtibat et al., ICML 2024): LRP for transformers and modern layers.

    `Epsilon` on every dense layer and convolution (or `Gamma(gamma)` when
    `gamma` is given, as LXT does for vision transformers), the uniform rule on
    products of two activations ([`eqx_attr.lrp.Uniform`][]: attention's
    `q @ k.T` and `weights @ v`, gated units), the softmax rule
    ([`eqx_attr.lrp.Softmax`][]), and, as in every composite, the identity rule
    on elementwise functions (GELU, SiLU, ...) and on normalisers (LayerNorm's
    `1 / std` is held constant). The rules are found in the traced program, not
    bound to module types: `eqx.nn.MultiheadAttention`, `eqx.nn.LayerNorm`, and
    the same written inline are all covered.

    **Arguments:** `epsilon` (default `1e-6`), `gamma` (default `None`: Epsilon
    on the layers).

    **Returns:** a composite, to pass to [`eqx_attr.LRP`][] as `composite=`.

    ```python
    a = xa.LRP(vit, composite=xa.lrp.AttnLRP())(x, 3)
    ```
    """

    epsilon: float = eqx.field(static=True, default=1e-6)
    gamma: float | None = eqx.field(static=True, default=None)

    def layer_rule(self, kind: str) -> AbstractRule:
        if self.gamma is not None:
            return Gamma(self.gamma, self.epsilon)
        return Epsilon(self.epsilon)

    def stabilizer_value(self) -> float:
        return self.epsilon

    def product_rule(self) -> AbstractRule | None:
        return Uniform(self.epsilon)

    def softmax_rule(self, axes: tuple[int, ...]) -> AbstractRule | None:
        return Softmax(axes)


COMPOSITE_NAMES = (
    "epsilon_plus_flat",
    "epsilon_plus",
    "epsilon_alpha2_beta1",
    "epsilon_gamma_box",
    "attn_lrp",
)
"""The Zennit names of the composites, as [`eqx_attr.lrp.composite_by_name`][] and the
CLI accept them."""


def composite_by_name(
    name: str | AbstractComposite, low: Any = 0.0, high: Any = 1.0
) -> AbstractComposite:
    """A composite from its Zennit name (`"epsilon_plus_flat"`, ...), for the CLI.

    `low`/`high` bound the input for `"epsilon_gamma_box"`. A composite passes
    through unchanged.

    **Arguments:**

    - `name`: one of [`eqx_attr.lrp.COMPOSITE_NAMES`][] (case and `-`/`_`
        insensitive), or a composite.
    - `low`, `high`: the input's bounds, used by `"epsilon_gamma_box"` only.

    **Returns:** an [`eqx_attr.lrp.AbstractComposite`][].

    **Raises:** `ValueError` listing the known names.
    """
    if isinstance(name, AbstractComposite):
        return name
    key = str(name).strip().lower().replace("-", "_")
    if key not in COMPOSITE_NAMES:
        options = ", ".join(map(repr, COMPOSITE_NAMES))
        raise ValueError(f"Unknown `composite={name!r}`; choose one of {options}.")
    if key == "epsilon_gamma_box":
        return EpsilonGammaBox(low, high)
    return {
        "epsilon_plus_flat": EpsilonPlusFlat,
        "epsilon_plus": EpsilonPlus,
        "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
        "attn_lrp": AttnLRP,
    }[key]()
