"""Local devices and hosts: the batch mesh, padding, and cross-process barriers.

Each process shards its batches over a 1-D mesh of its *local* devices; the
processes of a multi-host run never exchange arrays, they only agree on which
batches each computes and wait for each other at barriers. So a run needs no
collectives except the barrier (on CPU: `jax_cpu_collectives_implementation` =
`"gloo"`, set before `jax.distributed.initialize`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"
_T = TypeVar("_T")


def local_mesh() -> Mesh:
    """A 1-D mesh over every device of this process, along the batch axis."""
    return Mesh(np.array(jax.local_devices()), (AXIS,))


def padded_size(batch_size: int, n_devices: int) -> int:
    """The smallest multiple of `n_devices` that holds `batch_size` rows."""
    return -(-batch_size // n_devices) * n_devices


def pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """`a` with its last row repeated up to `size` rows (padding is trimmed later).

    A real row, not zeros, so that padding never trips a check on the input.
    """
    missing = size - a.shape[0]
    if missing == 0:
        return a
    return np.concatenate([a, np.repeat(a[-1:], missing, axis=0)], axis=0)


def shard(tree: Any, mesh: Mesh) -> Any:
    """Put every array of `tree` on `mesh`, split along its first axis.

    On one device, NumPy arrays are returned as they are: the jitted program
    copies them in itself, cheaper than a separate `device_put` per batch.
    """
    if mesh.size == 1:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    return jax.device_put(tree, sharding)


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def barrier(name: str) -> None:
    """Wait for every process of a multi-host run (a no-op with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def my_share(units: list[_T]) -> list[_T]:
    """The units (chunks) this process computes: every `process_count()`-th one."""
    return units[process_index() :: process_count()]
