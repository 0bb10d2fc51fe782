"""PyTree surgery: find leaves of a model by predicate and replace them by path."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax

from ._relu import OTHER_FUNCTIONS, RELU_FUNCTIONS, SwappedReLU


def path_str(path) -> str:
    """`model.a.b[0]`: a key path as the user would write it."""
    return "model" + jax.tree_util.keystr(path)


def find_leaves(
    model: Any, predicate: Callable[[Any], bool]
) -> list[tuple[tuple, Any]]:
    """`(path, node)` for every node of `model` satisfying `predicate`.

    Nodes are matched before their children (a matched module is not entered).
    """
    is_leaf = lambda n: predicate(n)
    leaves = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_leaf)[0]
    return [(p, leaf) for p, leaf in leaves if predicate(leaf)]


def replace_at(
    model: Any,
    paths: Sequence[tuple],
    replace: Sequence[Any],
    is_leaf: Callable[[Any], bool] | None = None,
) -> Any:
    """A copy of `model` with the nodes at `paths` replaced (via `eqx.tree_at`).

    Found by path, so one instance shared by several places (as SmallCNN's ReLU) is
    replaced at each place it is used.
    """
    if not paths:
        return model
    wanted = set(paths)

    def where(m):
        found = {
            p: leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(m, is_leaf=is_leaf)[0]
            if p in wanted
        }
        return [found[p] for p in paths]

    return eqx.tree_at(where, model, replace=list(replace), is_leaf=is_leaf)


def swap_modules(
    model: Any, types: tuple[type, ...], wrap: Callable[[Any], Any]
) -> tuple[Any, int]:
    """A copy of `model` with every module of one of `types` replaced by `wrap(it)`.

    The PyTree half of a module rule (LRP's rules on `eqx.nn.Linear`, ...):
    returns the copy and how many modules were replaced.
    """
    is_match = lambda n: isinstance(n, types)
    found = find_leaves(model, is_match)
    paths = [p for p, _ in found]
    new = [wrap(m) for _, m in found]
    return replace_at(model, paths, new, is_leaf=is_match), len(found)


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
