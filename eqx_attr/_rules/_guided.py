"""Guided Backprop and Deconvolution: gradients with swapped ReLU backward passes."""

from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
from jaxtyping import PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Attribution,
    Image,
    Target,
    check_choice,
    check_input,
    resolve_target,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry
from ._relu import POLICIES
from ._swap import swap_relu

__all__ = ["Deconvolution", "GuidedBackprop"]


def swapped_gradient(
    model: Callable,
    rule: str,
    other_activations: str,
    x: Image,
    target: Target,
) -> Attribution:
    """d target / dx through `model` with every ReLU's backward pass replaced.

    Only the model is rewritten, not the `target` reduction: a callable target is
    part of the question asked, not of the network.
    """
    x = check_input(x)
    objective = resolve_target(model, x, target)
    swapped = swap_relu(model, rule, other_activations=other_activations)
    return jax.grad(lambda z: objective(swapped(z)))(x)


class AbstractSwappedGradient(AbstractAttribution):
    """Base of the gradients taken with every ReLU's backward pass replaced.

    Holds `model` and `other_activations` (see [`eqx_attr.swap_relu`][]); a
    concrete subclass names its backward `rule` (`"guided"` or `"deconvnet"`) and
    owns `input_layout` (`"chw"`, `"hwc"` or `None`: checked, and otherwise
    without effect, as the gradient is shaped like `x` in either layout).
    """

    model: Callable[..., Any]
    # `eqx.AbstractClassVar` must not be a string annotation: hence no
    # `from __future__ import annotations` in this module.
    rule: eqx.AbstractClassVar[str]
    input_layout: eqx.AbstractVar[InputLayout]
    other_activations: str = eqx.field(static=True, default="raise")

    def __check_init__(self):
        check_choice(self.other_activations, "other_activations", POLICIES)

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Attribution:
        return swapped_gradient(
            self.model, self.rule, self.other_activations, x, target
        )


class GuidedBackprop(AbstractSwappedGradient):
    """Guided backpropagation: the gradient with every ReLU's backward pass guided.

    Springenberg et al., *Striving for Simplicity: The All Convolutional Net*, 2015.
    At each ReLU the backward signal passes only where the ReLU's input was positive
    *and* the signal itself is positive, which gives sharp, image-like maps (that,
    as Adebayo et al. 2018 showed, depend little on the model's upper layers).

    Every ReLU is reached, wherever it lives (see [`eqx_attr.swap_relu`][]); the
    model is never modified. A model without a ReLU raises rather than silently
    returning the plain gradient, as do rectifiers without a guided variant (GELU,
    SiLU, ELU, leaky ReLU, softplus, PReLU, ...) unless `other_activations="ignore"`.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `other_activations`: `"raise"` (default) or `"ignore"`, to keep the plain
        gradient through non-ReLU rectifiers.

    **Returns:** an array shaped like `x`.

    ```python
    a = xa.GuidedBackprop(model)(x, target=3)
    ```
    """

    rule: ClassVar[str] = "guided"
    input_layout: InputLayout = input_layout_field()


class Deconvolution(AbstractSwappedGradient):
    """Deconvnet attribution: the gradient with every ReLU's backward pass rectified.

    Zeiler & Fergus, *Visualizing and Understanding Convolutional Networks*, 2014.
    Their "deconvolutional network" projects a signal back through transposed
    convolutions, max-unpooling with the forward pass's switches, and ReLUs applied
    to the projected signal. That is exactly the gradient of the network with each
    ReLU's backward pass replaced by `g -> relu(g)`, ignoring the forward mask,
    which is how it is computed here (the test suite checks the equivalence against
    an explicit transposed-convolution network).

    The same reach and errors as [`eqx_attr.GuidedBackprop`][].

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `other_activations`: `"raise"` (default) or `"ignore"`.

    **Returns:** an array shaped like `x`.

    ```python
    a = xa.Deconvolution(model)(x, target=3)
    ```
    """

    rule: ClassVar[str] = "deconvnet"
    input_layout: InputLayout = input_layout_field()


ROWS = (
    MethodEntry(
        "guided_backprop",
        GuidedBackprop,
        "rules",
        "Guided Backpropagation",
        lambda c: GuidedBackprop(c.model),
        aliases=("guided_bp",),
        differentiable=Differentiability(1, 1, "the ReLU rule is piecewise in x"),
        benchmark=("run.py", "Captum GuidedBackprop (--methods guided)"),
    ),
    MethodEntry(
        "deconvolution",
        Deconvolution,
        "rules",
        "Deconvnet",
        lambda c: Deconvolution(c.model),
        aliases=("deconvnet",),
        differentiable=Differentiability(1, 1, "the ReLU rule is piecewise in x"),
        benchmark=("run.py", "Captum Deconvolution (--methods deconv)"),
    ),
)
