"""Reading a layer's activation and gradient by a `where` function, purely.

The layer named by `where` (exactly as for `eqx.tree_at`) is swapped, in a copy of
the model, for a wrapper module that carries three extra zero arrays. The wrapper
passes the layer's output through a `jax.custom_vjp` identity whose backward rule
hands out, as the "cotangents" of those arrays:

- the true cotangent `d target / d activation` (the gradient),
- the activation itself (a residual of the forward pass),
- the number 1 (so the caller can check the layer was reached exactly once).

One `jax.vjp` of the target therefore returns activation and gradient from one
forward and one backward pass, with no Python side effects and nothing leaking
out of the trace: it works under `jit`, `vmap` (over examples and over targets,
where only the backward pass is batched) and `grad`.

Which call of the layer to read is decided at trace time by a counter that lives
in a closure created afresh for every trace.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, Float

from ._attribution import (
    Image,
    Target,
    check_index,
    check_input,
    check_where,
    make_objective,
    model_rejected_input,
)

# ---------------------------------------------------------------------------------
# The tap: identity forward, (gradient, activation, 1) backward.


@jax.custom_vjp
def _tap(y, probe, carrier, flag):
    del probe, carrier, flag
    return y


def _tap_fwd(y, probe, carrier, flag):
    del probe, carrier, flag
    return y, y


def _tap_bwd(y, g):
    # The count must be batched whenever `g` is, so that a layer run inside a vmap
    # *within* the model (whose lanes JAX sums into the unbatched leaves) reports
    # the number of lanes rather than 1; a `select` keeps it NaN-free.
    one = jnp.where(True, jnp.ones((), jnp.float32), jnp.sum(g).astype(jnp.float32))
    return g, g, y, one


_tap.defvjp(_tap_fwd, _tap_bwd)


class _Hook(eqx.Module):
    """Stands in for the hooked layer; `action` decides what each call returns."""

    module: Any
    leaves: Any
    action: Callable = eqx.field(static=True)

    def __call__(self, *args, **kwargs):
        return self.action(self.module, self.leaves, args, kwargs)


# ---------------------------------------------------------------------------------
# Validation of `where` and inspection of the layer's calls


def resolve_layer(model: Any, layer: Any, name: str = "layer") -> Any:
    """Return the sub-module `layer(model)`, or raise a clear error.

    `layer` must be a `where` function as for `eqx.tree_at`, naming one callable
    sub-module (or callable field) of `model`.
    """
    check_where(layer, name, "lambda m: m.conv2")
    try:
        node = layer(model)
    except (AttributeError, IndexError, KeyError, TypeError) as e:
        raise ValueError(
            f"`{name}` could not select a sub-module of the model "
            f"({type(e).__name__}: {e}). Point it at an existing sub-module, e.g. "
            f"`{name}=lambda m: m.conv2` or `lambda m: m.blocks[-1].norm1`; "
            f"`print(model)` shows the attribute names."
        ) from e
    if isinstance(node, (jax.Array, np.ndarray, np.generic)):
        raise ValueError(
            f"`{name}` selects an array of shape {jnp.shape(node)}, not a module. "
            f"Point it at the module whose output you want, e.g. "
            f"`{name}=lambda m: m.conv2` rather than `lambda m: m.conv2.weight`."
        )
    if isinstance(node, (tuple, list)) and not isinstance(node, eqx.Module):
        raise ValueError(
            f"`{name}` must select ONE sub-module, but it returned a "
            f"{type(node).__name__} of {len(node)} items. Pick one, e.g. "
            f"`{name}=lambda m: m.blocks[-1]`."
        )
    if not callable(node):
        raise ValueError(
            f"`{name}` selects a {type(node).__name__}, which is not callable, so it "
            f"has no output to read. Point it at a module that the forward pass "
            f"calls, e.g. `{name}=lambda m: m.conv2`."
        )
    return node


@dataclass(frozen=True)
class LayerInfo:
    """What one trace of the model says about the hooked layer."""

    out: jax.ShapeDtypeStruct  # the model's output for one example
    act: jax.ShapeDtypeStruct  # the chosen call's output
    index: int  # the chosen call
    n_calls: int


def inspect_layer(
    model: Callable, layer: Callable, x: Array, call_index: int | None = None
) -> LayerInfo:
    """Trace the model once (no FLOPs) and check how `layer` is called.

    Raises if `layer` is never called, called several times without `call_index`,
    called inside a transformation within the model, or returns no single
    floating-point array.
    """
    resolve_layer(model, layer)
    check_index(call_index, "call_index")
    calls: list[tuple[Any, bool]] = []
    top: list[type] = []

    def action(module, leaves, args, kwargs):
        del leaves
        out = module(*args, **kwargs)
        inner = isinstance(out, Tracer) and bool(top) and not isinstance(out, top[0])
        # Keep shapes only: no tracer may outlive this trace.
        if isinstance(out, jax.Array):
            calls.append((jax.ShapeDtypeStruct(out.shape, out.dtype), inner))
        else:
            calls.append((type(out).__name__, inner))
        return out

    def run(m, x):
        top.append(type(x))
        hooked = eqx.tree_at(layer, m, replace_fn=lambda s: _Hook(s, None, action))
        return hooked(x)

    try:
        out = eqx.filter_eval_shape(run, model, x)
    except (TypeError, ValueError) as e:
        raise model_rejected_input(x, e) from e
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            "The model must return a single array of scores for one example; it "
            f"returned {type(out).__name__}."
        )
    n = len(calls)
    if n == 0:
        raise ValueError(
            "`layer` selects a sub-module that the model's forward pass never calls, "
            "so it has no activation. Point `layer` at a module used in "
            "`model.__call__` (check for a typo, or a module kept but unused)."
        )
    if call_index is None and n > 1:
        raise ValueError(
            f"`layer` is called {n} times in one forward pass (a shared module, or "
            "an activation function field applied after every layer), so its "
            "activation is ambiguous. Pick one call with `call_index=k` "
            f"(0 <= k < {n}, in call order), or point `layer` at a distinct "
            "sub-module called once."
        )
    index = 0 if call_index is None else int(call_index)
    if index >= n:
        raise ValueError(
            f"`call_index={index}` is out of range: `layer` is called {n} time(s) per "
            f"forward pass; use 0 <= call_index < {n}."
        )
    act, inner = calls[index]
    if inner:
        raise ValueError(
            "`layer` is called inside a transformation within the model's forward "
            "pass (typically `jax.vmap` over tokens or rows, e.g. a per-token "
            "LayerNorm), so each call sees one slice of the activation. Point "
            "`layer` at the enclosing module that maps the whole activation, e.g. "
            "the transformer block `lambda m: m.blocks[-1]` or a norm module that "
            "takes the whole `(N, D)` token array."
        )
    if not isinstance(act, jax.ShapeDtypeStruct):
        raise ValueError(
            f"`layer` must return a single array, but it returns "
            f"{act}. Point `layer` at a sub-module that returns one "
            "array (e.g. the convolution or block, not a module returning a tuple)."
        )
    if not jnp.issubdtype(act.dtype, jnp.floating):
        raise ValueError(
            f"`layer`'s output has dtype {act.dtype}; only floating-point "
            "activations have gradients. Point `layer` at a floating-point layer."
        )
    return LayerInfo(out=out, act=act, index=index, n_calls=n)


# ---------------------------------------------------------------------------------
# Reading activation and gradient


def read_layer(
    model: Callable,
    layer: Callable,
    x: Array,
    objective: Callable[[Array], Array],
    info: LayerInfo,
) -> tuple[Array, Array, Array, Array]:
    """One forward and one backward pass: `(scores, score, activation, gradient)`.

    `objective` maps the model's output to a scalar; `info` comes from
    [`inspect_layer`][] on the same model, layer and input.
    """
    act_zeros = jnp.zeros(info.act.shape, info.act.dtype)
    leaves = (act_zeros, act_zeros, jnp.zeros((), jnp.float32))

    def f(leaves):
        count = [0]

        def action(module, lv, args, kwargs):
            out = module(*args, **kwargs)
            i = count[0]
            count[0] += 1
            return _tap(out, *lv) if i == info.index else out

        hooked = eqx.tree_at(
            layer, model, replace_fn=lambda s: _Hook(s, leaves, action)
        )
        scores = hooked(x)
        return objective(scores), scores

    score, vjp, scores = jax.vjp(f, leaves, has_aux=True)
    ((grad, act, reached),) = vjp(jnp.ones_like(score))
    act = eqx.error_if(
        act,
        reached != 1,
        "The backward pass of the target did not reach `layer` exactly once, so "
        "its activation and gradient cannot be read. Either the target's score does "
        "not depend differentiably on `layer` (it goes through stop_gradient or an "
        "integer operation), or `layer` runs inside a loop (`lax.scan`, "
        "`fori_loop`) or a `vmap` within the model: point `layer` at a module "
        "called once, outside such loops.",
    )
    return scores, score, act, grad


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
    objective = make_objective(target, info.out.shape)
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

    ```python
    act = xa.layer_activation(model, lambda m: m.conv2, x)   # (64, 14, 14)
    ```
    """
    x = check_input(x)
    info = inspect_layer(model, layer, x, call_index)
    _, _, act, _ = read_layer(model, layer, x, lambda s: jnp.sum(s), info)
    return act


class LayerOutputReplaced(eqx.Module):
    """A model whose `layer` returns `value` instead of its own output.

    Built by [`eqx_attr.replace_layer_output`][]. Each call counts the layer's
    calls afresh (at trace time), so the check "called exactly once, or
    `call_index` in range" holds per forward pass.
    """

    model: Callable
    value: Array
    layer: Callable = eqx.field(static=True)
    call_index: int | None = eqx.field(static=True, default=None)

    def __call__(self, x: Any) -> Any:
        count = [0]
        index = 0 if self.call_index is None else self.call_index
        value = self.value

        def action(module, leaves, args, kwargs):
            del leaves
            i = count[0]
            count[0] += 1
            if i != index:
                return module(*args, **kwargs)
            out = jax.eval_shape(lambda: module(*args, **kwargs))
            if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != value.shape:
                got = getattr(out, "shape", type(out).__name__)
                raise ValueError(
                    f"The replacement `value` has shape {value.shape}, but `layer` "
                    f"returns {got}; pass a value shaped like the layer's output."
                )
            # The layer's own computation is dead code now; XLA removes it.
            return value.astype(out.dtype)

        resolve_layer(self.model, self.layer)
        hooked = eqx.tree_at(
            self.layer, self.model, replace_fn=lambda s: _Hook(s, None, action)
        )
        result = hooked(x)
        if count[0] == 0:
            raise ValueError(
                "`layer` selects a sub-module that the model's forward pass never "
                "calls, so replacing its output changes nothing. Point `layer` at a "
                "module used in `model.__call__`."
            )
        if self.call_index is None and count[0] > 1:
            raise ValueError(
                f"`layer` is called {count[0]} times in one forward pass; pick which "
                "call to replace with `call_index=k`, or point `layer` at a distinct "
                "sub-module called once."
            )
        if index >= count[0]:
            raise ValueError(
                f"`call_index={index}` is out of range: `layer` is called "
                f"{count[0]} time(s) per forward pass."
            )
        return result


def replace_layer_output(
    model: Callable,
    layer: Callable,
    value: Float[Array, "*act"],
    *,
    call_index: int | None = None,
) -> LayerOutputReplaced:
    """A copy of `model` in which `layer`'s output is replaced by `value`.

    The "rest of the network" as a function of the layer's activation: ablation
    methods (Ablation-CAM) and counterfactual edits run the model with a changed
    activation. `vmap` over `value` batches only the part after the layer.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `layer`: a `where` function naming the sub-module, as for `eqx.tree_at`.
    - `value`: the activation to use instead, shaped like the layer's output.
    - `call_index`: which call to replace when the layer is called several times.

    **Returns:**

    A callable Equinox module `x -> scores`; the original model is unchanged.

    ```python
    act = xa.layer_activation(model, lambda m: m.conv2, x)
    m0 = xa.replace_layer_output(model, lambda m: m.conv2, act.at[5].set(0.0))
    drop = model(x)[3] - m0(x)[3]              # what channel 5 contributed
    ```
    """
    resolve_layer(model, layer)
    return LayerOutputReplaced(model, value, layer, call_index)
