"""Layer access machinery: a tap that hands out activations and gradients.

The layers named by a `where` (exactly as for `eqx.tree_at`) are swapped, in a
copy of the model, for wrapper modules that each carry three extra zero arrays.
A wrapper passes its layer's output through a `jax.custom_vjp` identity whose
backward rule hands out, as the "cotangents" of those arrays:

- the true cotangent `d target / d activation` (the gradient),
- the activation itself (a residual of the forward pass),
- the number 1 (so the caller can check the layer was reached exactly once).

One `jax.vjp` of the target therefore returns every activation and gradient from
one forward and one backward pass, with no Python side effects and nothing
leaking out of the trace: it works under `jit`, `vmap` (over examples and over
targets, where only the backward pass is batched) and `grad`.

Which call of a layer to read is decided at trace time by a counter that lives
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
from jaxtyping import Array

from .._attribution import (
    MODEL_ERRORS,
    check_index,
    check_where,
    model_rejected_input,
)
from .._checks import error_if
from .._engine._fast_derivatives import fast_derivatives

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


def _call_where(model: Any, where: Any, name: str) -> Any:
    check_where(where, name, "lambda m: m.conv2")
    try:
        return where(model)
    except (AttributeError, IndexError, KeyError, TypeError) as e:
        raise ValueError(
            f"`{name}` could not select a sub-module of the model "
            f"({type(e).__name__}: {e}). Point it at an existing sub-module, e.g. "
            f"`{name}=lambda m: m.conv2` or `lambda m: m.blocks[-1].norm1`; "
            f"`print(model)` shows the attribute names."
        ) from e


def _check_node(node: Any, name: str) -> Any:
    if isinstance(node, (jax.Array, np.ndarray, np.generic)):
        raise ValueError(
            f"`{name}` selects an array of shape {jnp.shape(node)}, not a module. "
            f"Point it at the module whose output you want, e.g. "
            f"`{name}=lambda m: m.conv2` rather than `lambda m: m.conv2.weight`."
        )
    if not callable(node):
        raise ValueError(
            f"`{name}` selects a {type(node).__name__}, which is not callable, so it "
            f"has no output to read. Point it at a module that the forward pass "
            f"calls, e.g. `{name}=lambda m: m.conv2`."
        )
    return node


def _is_sequence(node: Any) -> bool:
    return isinstance(node, (tuple, list)) and not isinstance(node, eqx.Module)


def resolve_layer(model: Any, layer: Any, name: str = "layer") -> Any:
    """Return the sub-module `layer(model)`, or raise a clear error.

    `layer` must be a `where` function as for `eqx.tree_at`, naming one callable
    sub-module (or callable field) of `model`.
    """
    node = _call_where(model, layer, name)
    if _is_sequence(node):
        raise ValueError(
            f"`{name}` must select ONE sub-module, but it returned a "
            f"{type(node).__name__} of {len(node)} items. Pick one, e.g. "
            f"`{name}=lambda m: m.blocks[-1]` (several layers at once are read by "
            "`layers_activation_and_gradient`)."
        )
    return _check_node(node, name)


def resolve_layers(model: Any, layers: Any, name: str = "layers") -> list[Any]:
    """Return the sub-modules `layers(model)` as a list, or raise a clear error.

    `layers` is a `where` function as for `eqx.tree_at` that returns one callable
    sub-module or a list/tuple of them (e.g.
    `lambda m: [b.attn.attn_drop for b in m.blocks]`).
    """
    nodes = _call_where(model, layers, name)
    if not _is_sequence(nodes):
        nodes = [nodes]
    if len(nodes) == 0:
        raise ValueError(
            f"`{name}` selects no module (it returned an empty "
            f"{type(nodes).__name__}). Point it at the modules whose outputs to "
            f"read, e.g. `{name}=lambda m: [b.attn.attn_drop for b in m.blocks]`."
        )
    return [_check_node(node, name) for node in nodes]


def _as_list(where: Callable) -> Callable:
    # `eqx.tree_at` replaces a sequence of nodes given a sequence of replacements.
    def many(m):
        nodes = where(m)
        return list(nodes) if _is_sequence(nodes) else [nodes]

    return many


@dataclass(frozen=True)
class LayerInfo:
    """What one trace of the model says about the hooked layer."""

    out: Any  # the model's output for one example (a PyTree of ShapeDtypeStructs)
    act: jax.ShapeDtypeStruct  # the chosen call's output
    index: int  # the chosen call
    n_calls: int


def _check_call_index(call_index: Any) -> None:
    check_index(call_index, "call_index")


def _hooked(model: Any, layers: Callable, make_action: Callable, leaves: Any) -> Any:
    """A copy of `model` whose i-th layer of `layers` runs `make_action(i)`."""
    many = _as_list(layers)
    nodes = many(model)
    hooks = [
        _Hook(s, None if leaves is None else leaves[i], make_action(i))
        for i, s in enumerate(nodes)
    ]
    return eqx.tree_at(many, model, replace=hooks)


def _trace_calls(
    model: Callable, layers: Callable, n: int, x: Array
) -> tuple[Any, list[list[tuple[Any, bool]]]]:
    """Trace the model once (no FLOPs): its output, and every call of each layer."""
    calls: list[list[tuple[Any, bool]]] = [[] for _ in range(n)]
    top: list[type] = []

    def make_action(i):
        def action(module, leaves, args, kwargs):
            del leaves
            out = module(*args, **kwargs)
            inner = (
                isinstance(out, Tracer) and bool(top) and not isinstance(out, top[0])
            )
            # Keep shapes only: no tracer may outlive this trace.
            if isinstance(out, jax.Array):
                calls[i].append((jax.ShapeDtypeStruct(out.shape, out.dtype), inner))
            else:
                calls[i].append((type(out).__name__, inner))
            return out

        return action

    def run(m, x):
        top.append(type(x))
        return _hooked(m, layers, make_action, None)(x)

    try:
        out = eqx.filter_eval_shape(run, model, x)
    except MODEL_ERRORS as e:
        raise model_rejected_input(x, e) from e
    # A PyTree output (a dict, a tuple) is fine here: `make_objective` asks for a
    # callable target that reduces the whole output.
    return out, calls


def _layer_info(
    out: Any, calls: list[tuple[Any, bool]], call_index: int | None, label: str
) -> LayerInfo:
    """Check one layer's calls; `label` names it in the errors."""
    n = len(calls)
    if n == 0:
        raise ValueError(
            f"{label} selects a sub-module that the model's forward pass never "
            f"calls, so it has no activation. Point {label} at a module used in "
            "`model.__call__` (check for a typo, or a module kept but unused)."
        )
    if call_index is None and n > 1:
        raise ValueError(
            f"{label} is called {n} times in one forward pass (a shared module, or "
            "an activation function field applied after every layer), so its "
            "activation is ambiguous. Pick one call with `call_index=k` "
            f"(0 <= k < {n}, in call order), or point {label} at a distinct "
            "sub-module called once."
        )
    index = 0 if call_index is None else int(call_index)
    if index >= n:
        raise ValueError(
            f"`call_index={index}` is out of range: {label} is called {n} time(s) "
            f"per forward pass; use 0 <= call_index < {n}."
        )
    act, inner = calls[index]
    if inner:
        raise ValueError(
            f"{label} is called inside a transformation within the model's forward "
            "pass (typically `jax.vmap` over tokens or rows, e.g. a per-token "
            f"LayerNorm), so each call sees one slice of the activation. Point "
            f"{label} at the enclosing module that maps the whole activation, e.g. "
            "a transformer block `lambda m: m.blocks[-2]` (with a class-token head, "
            "the last block's patch tokens get no gradient) or a norm module that "
            "takes the whole `(N, D)` token array."
        )
    if not isinstance(act, jax.ShapeDtypeStruct):
        raise ValueError(
            f"{label} must return a single array, but it returns "
            f"{act}. Point {label} at a sub-module that returns one "
            "array (e.g. the convolution or block, not a module returning a tuple)."
        )
    if not jnp.issubdtype(act.dtype, jnp.floating):
        raise ValueError(
            f"{label}'s output has dtype {act.dtype}; only floating-point "
            f"activations have gradients. Point {label} at a floating-point layer."
        )
    return LayerInfo(out=out, act=act, index=index, n_calls=n)


def inspect_layer(
    model: Callable, layer: Callable, x: Array, call_index: int | None = None
) -> LayerInfo:
    """Trace the model once (no FLOPs) and check how `layer` is called.

    Raises if `layer` is never called, called several times without `call_index`,
    called inside a transformation within the model, or returns no single
    floating-point array.
    """
    resolve_layer(model, layer)
    _check_call_index(call_index)
    out, calls = _trace_calls(model, layer, 1, x)
    return _layer_info(out, calls[0], call_index, "`layer`")


def inspect_layers(
    model: Callable,
    layers: Callable,
    x: Array,
    call_index: int | None = None,
    name: str = "layers",
) -> tuple[LayerInfo, ...]:
    """[`inspect_layer`][] for a `where` naming several layers, in one trace.

    `call_index`, when given, picks the same call of every layer; `name` is the
    argument's name in error messages.
    """
    n = len(resolve_layers(model, layers, name))
    _check_call_index(call_index)
    out, calls = _trace_calls(model, layers, n, x)
    return tuple(
        _layer_info(out, c, call_index, f"item {i} of `{name}`")
        for i, c in enumerate(calls)
    )


# ---------------------------------------------------------------------------------
# Reading activations and gradients

_NOT_REACHED = (
    "The backward pass of the target did not reach {label} exactly once, so "
    "its activation and gradient cannot be read. Either the target's score does "
    "not depend differentiably on it (it goes through stop_gradient or an "
    "integer operation), or it runs inside a loop (`lax.scan`, `fori_loop`) or a "
    "`vmap` within the model: point {label} at a module called once, outside "
    "such loops."
)


def read_layers(
    model: Callable,
    layers: Callable,
    x: Array,
    objective: Callable[[Array], Array],
    infos: tuple[LayerInfo, ...],
) -> tuple[Any, Array, list[Array], list[Array]]:
    """One forward and one backward pass: `(scores, score, activations, gradients)`.

    `layers` is a `where` naming one module or a list of them; `infos` comes from
    [`inspect_layers`][] (or is `(inspect_layer(...),)`) on the same model, layers
    and input. Activations and gradients are lists in the order of `layers`.
    When only the activations are used, `jit` removes the backward pass as dead
    code (the activations are residuals of the forward pass).
    """
    leaves = tuple(
        (
            jnp.zeros(info.act.shape, info.act.dtype),
            jnp.zeros(info.act.shape, info.act.dtype),
            jnp.zeros((), jnp.float32),
        )
        for info in infos
    )

    def f(leaves):
        count = [0] * len(infos)

        def make_action(i):
            def action(module, lv, args, kwargs):
                out = module(*args, **kwargs)
                k = count[i]
                count[i] += 1
                return _tap(out, *lv) if k == infos[i].index else out

            return action

        scores = _hooked(model, layers, make_action, leaves)(x)
        return objective(scores), scores

    # Max pools and thin convolutions computed faster (`_engine/_fast_derivatives.py`).
    score, vjp, scores = jax.vjp(fast_derivatives(f), leaves, has_aux=True)
    (cotangents,) = vjp(jnp.ones_like(score))
    label = "`layer`" if len(infos) == 1 else "every layer it names"
    reached = jnp.stack([r for _, _, r in cotangents])
    acts = [
        error_if(a, jnp.any(reached != 1), _NOT_REACHED.format(label=label))
        for _, a, _ in cotangents
    ]
    grads = [g for g, _, _ in cotangents]
    return scores, score, acts, grads


def read_layer(
    model: Callable,
    layer: Callable,
    x: Array,
    objective: Callable[[Array], Array],
    info: LayerInfo,
) -> tuple[Any, Array, Array, Array]:
    """One forward and one backward pass: `(scores, score, activation, gradient)`.

    `objective` maps the model's output to a scalar; `info` comes from
    [`inspect_layer`][] on the same model, layer and input.
    """
    scores, score, acts, grads = read_layers(model, layer, x, objective, (info,))
    return scores, score, acts[0], grads[0]
