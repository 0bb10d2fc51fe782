"""One target object per row: a stack of `xa.targets` read batch by batch.

`explain_dataset` takes, instead of `(N,)` class indices, a target object whose
array fields all have a leading axis of `N` (e.g.
`xa.targets.SegmentationRegion(jnp.full(N, 1), masks)`): row `i`'s target holds
row `i` of every field. Its fields become row sources of the runner's loop (read,
padded and sharded like `xs`), and each batch's rows are put back into the
target's structure, which the vmapped method then maps over.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import equinox as eqx
import jax
import numpy as np

_PREFIX = "target field "


def is_target_stack(targets: Any) -> bool:
    """Whether `targets` is a target object (a callable PyTree), not indices."""
    return callable(targets) and not isinstance(targets, (jax.Array, np.ndarray))


@dataclasses.dataclass(frozen=True)
class TargetRows:
    """A stack of targets as row sources (`sources`) and back (`batch`, `row`)."""

    stack: Any
    names: tuple[str, ...]

    @property
    def sources(self) -> dict[str, Any]:
        """Row source name -> the field's array, for the runner's loop."""
        return dict(zip(self.names, jax.tree_util.tree_leaves(self.stack), strict=True))

    def batch(self, batch: dict[str, Any]) -> Any:
        """The stack of targets of a batch's rows."""
        treedef = jax.tree_util.tree_structure(self.stack)
        return jax.tree_util.tree_unflatten(treedef, [batch[k] for k in self.names])

    def row(self, i: int) -> Any:
        """Row `i`'s target."""
        return jax.tree_util.tree_map(lambda v: v[i], self.stack)


def target_rows(targets: Any, n: int) -> TargetRows | None:
    """`targets` as row sources when it is a stack of target objects, else None.

    Every leaf must be an array with `n` rows (a trace-time error says how to
    build such a stack otherwise).
    """
    if not is_target_stack(targets):
        return None
    leaves = jax.tree_util.tree_leaves(targets)
    bad = [
        v
        for v in leaves
        if not eqx.is_array(v) or np.ndim(v) < 1 or np.shape(v)[0] != n
    ]
    if not leaves or bad:
        shapes = [getattr(v, "shape", type(v).__name__) for v in leaves]
        raise ValueError(
            f"`targets` is a {type(targets).__name__}; to give one target per row, "
            f"each of its array fields needs a leading axis of {n} (one row per "
            f"example), but its fields are {shapes}. Build a stack, e.g. "
            "`xa.targets.LogSoftmax(labels)` with `labels` of shape (N,), or "
            "`xa.targets.SegmentationRegion(jnp.full(N, c), masks)` with `masks` "
            "(N, H, W)."
        )
    names = tuple(f"{_PREFIX}{i}" for i in range(len(leaves)))
    return TargetRows(targets, names)
