"""PyTree surgery: find leaves of a model by predicate and replace them by path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax


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
