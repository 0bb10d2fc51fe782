"""Reading layers' activations and gradients by a `where` function, purely.

The public entry points; the machinery (the tap, the hooks, the checks) is in
`_tap.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._attribution import Image, Target, check_input, make_objective
from ._tap import inspect_layer, inspect_layers, read_layer, read_layers


def layer_activation_and_gradient(
    model: Callable,
    layer: Callable,
    x: Image,
    target: Target = None,
    *,
    call_index: int | None = None,
) -> tuple[Float[Array, "*act"], Float[Array, "*act"]]:
    """The output of a layer and the gradient of the target with respect to it.

    One forward and one backward pass, purely: the layer is swapped (in a copy of
    the model) for a wrapper whose extra zero arrays receive the activation and
    its gradient from a `jax.custom_vjp` rule. Works under `jit`, `vmap` (over
    examples or over targets: the forward pass is then shared and only the
    backward pass batched) and `grad`.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `layer`: a `where` function as for `eqx.tree_at`, naming the sub-module whose
        output to read, e.g. `lambda m: m.conv2` or `lambda m: m.blocks[-1].norm1`.
    - `x`: one example, without a batch axis.
    - `target`: an int class index, a 0-d integer array, a callable
        `scores -> scalar`, or `None` for a model returning a scalar.
    - `call_index`: which call to read when the layer is called several times
        per forward pass (0-based, in call order); `None` requires exactly one call.

    **Returns:**

    `(activation, gradient)`, both shaped like the layer's output.

    ```python
    act, grad = xa.layer_activation_and_gradient(model, lambda m: m.conv2, x, 3)
    weights = grad.mean(axis=(1, 2))            # Grad-CAM's channel weights
    ```
    """
    x = check_input(x)
    info = inspect_layer(model, layer, x, call_index)
    objective = make_objective(target, info.out)
    _, _, act, grad = read_layer(model, layer, x, objective, info)
    return act, grad


def layer_activation(
    model: Callable,
    layer: Callable,
    x: Image,
    *,
    call_index: int | None = None,
) -> Float[Array, "*act"]:
    """The output of a layer for input `x`, read purely.

    Runs the forward pass, and a backward pass through the part of the model after
    the layer only (that is how the activation is handed out without side
    effects). Arguments as for [`eqx_attr.layer_activation_and_gradient`][].

    **Arguments:** `model`, `layer` (a `where` function), `x` (one example) and
    `call_index`, as for [`eqx_attr.layer_activation_and_gradient`][].

    **Returns:** the layer's output for `x`.

    ```python
    act = xa.layer_activation(model, lambda m: m.conv2, x)   # (64, 14, 14)
    ```
    """
    x = check_input(x)
    info = inspect_layer(model, layer, x, call_index)
    _, _, act, _ = read_layer(model, layer, x, lambda s: jnp.sum(s), info)
    return act


def layers_activation_and_gradient(
    model: Callable,
    layers: Callable,
    x: Image,
    target: Target = None,
    *,
    call_index: int | None = None,
) -> tuple[list[Float[Array, "..."]], list[Float[Array, "..."]]]:
    """The outputs of several layers and the target's gradients with respect to them.

    Like [`eqx_attr.layer_activation_and_gradient`][], but `layers` is a `where`
    that returns a list (or tuple) of sub-modules; all of them are read in ONE
    forward and ONE backward pass. Works under `jit`, `vmap` (over examples, or
    over targets with the forward pass shared) and `grad`.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `layers`: a `where` function returning the sub-modules whose outputs to read,
        e.g. `lambda m: [b.attn.attn_drop for b in m.blocks]`.
    - `x`: one example, without a batch axis.
    - `target`: an int class index, a 0-d integer array, a callable
        `scores -> scalar`, or `None` for a model returning a scalar.
    - `call_index`: which call of every layer to read when they are called several
        times per forward pass; `None` requires exactly one call each.

    **Returns:**

    `(activations, gradients)`: two lists in the order of `layers`, each entry
    shaped like that layer's output.

    ```python
    attn = lambda m: [b.attn.attn_drop for b in m.blocks]
    acts, grads = xa.layers_activation_and_gradient(vit, attn, x, 3)
    ```
    """
    x = check_input(x)
    infos = inspect_layers(model, layers, x, call_index)
    objective = make_objective(target, infos[0].out)
    _, _, acts, grads = read_layers(model, layers, x, objective, infos)
    return acts, grads


def layers_activation(
    model: Callable,
    layers: Callable,
    x: Image,
    *,
    call_index: int | None = None,
) -> list[Float[Array, "..."]]:
    """The outputs of several layers for input `x`, read purely in one pass.

    Under `jit` only the forward pass runs (the backward pass that hands the
    activations out is dead code). Arguments as for
    [`eqx_attr.layers_activation_and_gradient`][].

    **Arguments:** `model`, `layers` (a `where` returning a list of modules), `x`
    and `call_index`, as for [`eqx_attr.layers_activation_and_gradient`][].

    **Returns:** a list with each layer's output, in the order of `layers`.

    ```python
    maps = xa.layers_activation(vit, lambda m: [b.attn.attn_drop for b in m.blocks], x)
    ```
    """
    x = check_input(x)
    infos = inspect_layers(model, layers, x, call_index)
    _, _, acts, _ = read_layers(model, layers, x, lambda s: jnp.sum(s), infos)
    return acts
