"""Tracing a call for the rule engine, with every array leaf as a jaxpr input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax

from . import _jax_internals as ji


@dataclasses.dataclass(frozen=True)
class Traced:
    """A traced call: its jaxpr, its flat inputs, and how to rebuild its output."""

    closed: Any
    leaves: list
    paths: list
    out_tree: Any

    def output(self, flat: Sequence) -> Any:
        return jax.tree_util.tree_unflatten(self.out_tree, list(flat))


def trace(fn: Callable, *args: Any, **kwargs: Any) -> Traced:
    """Trace `fn(*args, **kwargs)` with every array leaf (the model's weights too)
    as an input of the jaxpr, so the weights never become captured constants
    (which would leak the tracers of an enclosing jit or grad).

    `paths[i]` is the key path of flat input `i` within `(fn, args, kwargs)`.
    """
    dynamic, static = eqx.partition((fn, args, kwargs), eqx.is_array)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(dynamic)
    paths = [p for p, _ in with_path]
    leaves = [v for _, v in with_path]

    def flat_call(*flat):
        f, a, k = eqx.combine(jax.tree_util.tree_unflatten(treedef, flat), static)
        return f(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_call, return_shape=True)(*leaves)
    closed = ji.without_dead_code(closed)
    out_tree = jax.tree_util.tree_structure(out_shape)
    return Traced(closed, leaves, paths, out_tree)
