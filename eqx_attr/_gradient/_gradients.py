"""Plain gradient methods: saliency (Gradients) and Gradients x Input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Attribution,
    Image,
    Target,
    check_input,
    scalar_function,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import SMOOTH, MethodEntry

__all__ = ["Gradients", "GradientsXInput"]


def input_gradient(model: Callable, x: Image, target: Target) -> Attribution:
    """d target(model(x)) / dx, with the shared input and target checks."""
    x = check_input(x)
    f = scalar_function(model, x, target)
    return jax.grad(f)(x)


class Gradients(AbstractAttribution):
    """The gradient of the target score with respect to the input ("saliency").

    Simonyan, Vedaldi & Zisserman, *Deep Inside Convolutional Networks*, 2014.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `abs`: return `|gradient|` (the original saliency map) instead of the signed
        gradient. Default `False`.

    **Returns:** an array shaped like `x`.

    ```python
    a = xa.Gradients(model)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    abs: bool = False
    input_layout: InputLayout = input_layout_field()

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Attribution:
        g = input_gradient(self.model, x, target)
        return jnp.abs(g) if self.abs else g


class GradientsXInput(AbstractAttribution):
    """The input times the gradient of the target score, elementwise.

    Shrikumar et al., *Not Just a Black Box*, 2016. For a linear model it is each
    input's exact contribution to the score.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.

    **Returns:** an array shaped like `x`.

    ```python
    a = xa.GradientsXInput(model)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    input_layout: InputLayout = input_layout_field()

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Attribution:
        g = input_gradient(self.model, x, target)
        return jnp.asarray(x, g.dtype) * g


ROWS = (
    MethodEntry(
        "gradients",
        Gradients,
        "gradient",
        "gradient of the score (saliency)",
        lambda c: Gradients(c.model),
        aliases=("saliency",),
        differentiable=SMOOTH,
        benchmark=("run.py", "Captum Saliency (--methods grad)"),
    ),
    MethodEntry(
        "gradients_x_input",
        GradientsXInput,
        "gradient",
        "input times gradient",
        lambda c: GradientsXInput(c.model),
        aliases=("gxi",),
        differentiable=SMOOTH,
        benchmark=("run.py", "Captum InputXGradient (--methods gxi)"),
    ),
)
