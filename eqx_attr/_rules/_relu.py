"""The replacement ReLUs (guided, deconvnet) and what a PyTree ReLU becomes."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._attribution import check_choice
from .._engine._pytree import path_str, replace_at


@jax.custom_vjp
def guided_relu(x: Float[ArrayLike, " *dims"]) -> Float[Array, " *dims"]:
    """A ReLU whose backward pass is guided backpropagation.

    Springenberg et al., *Striving for Simplicity: The All Convolutional Net*, 2015.
    The forward pass is `max(x, 0)`; the backward pass lets the incoming gradient `g`
    through only where the input was positive *and* `g` is positive.

    **Arguments:**

    - `x`: any floating array.

    **Returns:** `max(x, 0)`.

    ```python
    g = jax.grad(lambda x: xa.guided_relu(x).sum())(x)
    ```
    """
    x = jnp.asarray(x)
    return jnp.where(x > 0, x, jnp.zeros_like(x))


# The forward rules compute the primal with plain operations, not by calling the
# custom-VJP function again: differentiating the map (a gradient of the model)
# differentiates these forward rules as ordinary code, and the forward pass's own
# derivative must be the ReLU's, not the guided rule (issue 33: calling
# `guided_relu` here made the map's derivative clip negative cotangents).
def _guided_fwd(x):
    x = jnp.asarray(x)
    return jnp.where(x > 0, x, jnp.zeros_like(x)), x > 0


def _guided_bwd(positive, g):
    return (jnp.where(positive & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconvnet_relu(x: Float[ArrayLike, " *dims"]) -> Float[Array, " *dims"]:
    """A ReLU whose backward pass is the deconvnet's: `relu(g)`, ignoring the input.

    Zeiler & Fergus, *Visualizing and Understanding Convolutional Networks*, 2014:
    the "deconvolutional network" rectifies the signal it projects back and does not
    use the forward pass's ReLU mask.

    **Arguments:**

    - `x`: any floating array.

    **Returns:** `max(x, 0)`.

    ```python
    g = jax.grad(lambda x: xa.deconvnet_relu(x).sum())(x)
    ```
    """
    x = jnp.asarray(x)
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def _deconvnet_fwd(x):
    x = jnp.asarray(x)
    return jnp.where(x > 0, x, jnp.zeros_like(x)), None


def _deconvnet_bwd(_, g):
    return (jnp.where(g > 0, g, jnp.zeros_like(g)),)


deconvnet_relu.defvjp(_deconvnet_fwd, _deconvnet_bwd)

RULES: dict[str, Callable] = {"guided": guided_relu, "deconvnet": deconvnet_relu}
POLICIES = ("raise", "ignore")

# Rectifier-like activations that play the ReLU's role but have no guided or
# deconvnet variant in the literature (Springenberg et al. and Zeiler & Fergus define
# the rules for the ReLU only). They raise unless `other_activations="ignore"`.
# Squashing functions and gates (sigmoid, tanh, hard_tanh, softmax) are not on this
# list: every guided-backprop implementation passes plain gradients through them.
OTHER_ACTIVATIONS: tuple[str, ...] = (
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "swish",
    "softplus",
    "mish",
    "hard_silu",
    "hard_swish",
    "squareplus",
    "sparse_plus",
)
OTHER_FUNCTIONS: dict[int, str] = {}
for _name in OTHER_ACTIVATIONS:  # aliases (swish = silu) keep the first name
    if hasattr(jax.nn, _name):
        OTHER_FUNCTIONS.setdefault(id(getattr(jax.nn, _name)), _name)

# ReLU-like functions held in a PyTree, and the cap of the clipped ones: relu6 is
# min(relu(x), 6), so its ReLU part takes the rule and the cap keeps its gradient.
RELU_FUNCTIONS: dict[int, float | None] = {id(jax.nn.relu): None}
if hasattr(jax.nn, "relu6"):
    RELU_FUNCTIONS[id(jax.nn.relu6)] = 6.0
RELU_CALLS: dict[str, float | None] = {"relu": None, "relu6": 6.0}


def _eqx_attr_relu_rule(rule, x):
    return rule(x)


# A named jit marks a swapped ReLU in the jaxpr, so the interpreter counts it and
# never rewrites the rule's own forward pass.
MARK = _eqx_attr_relu_rule.__name__
apply_rule = eqx.filter_jit(_eqx_attr_relu_rule)


class SwappedReLU(eqx.Module):
    """What a PyTree ReLU becomes: `rule(x)`, then the cap of a clipped ReLU."""

    rule: Callable
    cap: float | None = eqx.field(static=True, default=None)

    def __call__(self, x: ArrayLike, *, key: Any = None) -> Array:
        y = apply_rule(self.rule, x)
        if self.cap is not None:
            # Where the cap binds its gradient is zero, as for relu6 itself.
            y = jnp.where(y < self.cap, y, jnp.asarray(self.cap, y.dtype))
        return y


def resolve_rule(rule: str | Callable) -> Callable:
    """`"guided"`, `"deconvnet"` or a callable `x -> relu(x)` -> the callable."""
    if isinstance(rule, str):
        check_choice(rule, "rule", tuple(RULES))
        return RULES[rule]
    if not callable(rule):
        raise TypeError(
            "`rule` must be 'guided', 'deconvnet' or a callable `x -> relu(x)` with "
            f"its own backward pass (a `jax.custom_vjp`), got {type(rule).__name__}."
        )
    probe = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    try:
        out = jax.eval_shape(rule, probe)
    except Exception as e:
        raise TypeError(
            f"`rule` must map a float array to an array of the same shape; calling it "
            f"on a float32[2, 3] array failed with {type(e).__name__}: {e}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != (2, 3):
        raise TypeError(
            "`rule` must be elementwise: it must map a float32[2, 3] array to an array "
            f"of the same shape, but it returned {out}."
        )
    return rule


# The rules' own bodies: their `jnp.where` is not a model's ReLU.
RULE_BODIES = ("guided_relu", "deconvnet_relu")


def pytree_activations(model: Any) -> tuple[list, list[tuple[str, str]]]:
    """ReLU leaves `(path, cap)` and other activations `(where, name)` of a PyTree."""
    is_prelu = lambda n: isinstance(n, eqx.nn.PReLU)
    leaves = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_prelu)[0]
    relus, others = [], []
    for path, leaf in leaves:
        if isinstance(leaf, functools.partial):  # e.g. partial(gelu, approximate=...)
            leaf = leaf.func
        if is_prelu(leaf):
            others.append((path_str(path), "PReLU (eqx.nn.PReLU)"))
        elif callable(leaf) and id(leaf) in RELU_FUNCTIONS:
            relus.append((path, RELU_FUNCTIONS[id(leaf)]))
        elif callable(leaf) and id(leaf) in OTHER_FUNCTIONS:
            others.append((path_str(path), OTHER_FUNCTIONS[id(leaf)]))
    return relus, others


def swap_pytree_relus(model: Any, rule: Callable) -> tuple[Any, int]:
    """Copy of `model` with every PyTree ReLU leaf replaced by `SwappedReLU(rule)`.

    The leaves are found by path, so a ReLU instance shared by several layers (as in
    SmallCNN) is replaced at each place it is used. Returns the copy and the count.
    """
    relus, _ = pytree_activations(model)
    paths = [p for p, _ in relus]
    replace = [SwappedReLU(rule, cap) for _, cap in relus]
    return replace_at(model, paths, replace), len(relus)
