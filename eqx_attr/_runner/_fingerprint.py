"""Stable descriptions of a method's configuration and of a data set.

A store written by `explain_dataset` records what produced it, so that a resumed
run can refuse a store written by another method, other data or other options.
The descriptions must be equal across processes and across runs, so nothing in
them may depend on memory addresses (a `where` lambda is named by its qualified
name, an array by its shape, dtype and a hash of its bytes).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# How many rows of the data set are hashed: enough to tell data sets apart, few
# enough that a data set on a slow disk is not read twice.
N_SAMPLED_ROWS = 16


def _hash_bytes(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.shape}{a.dtype}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _describe_array(a: Any) -> dict[str, Any]:
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a = jax.random.key_data(a)
    arr = np.asarray(a)
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "hash": _hash_bytes(arr)}


def describe(obj: Any, depth: int = 0) -> Any:
    """A JSON-able description of `obj` (a method, a model, an option).

    Modules are described field by field, arrays by shape, dtype and a hash of
    their values, functions by their qualified name.
    """
    if depth > 64:
        return "<too deep>"
    if isinstance(obj, (jax.Array, np.ndarray, np.generic)) and not isinstance(
        obj, (np.bool_,)
    ):
        if np.ndim(obj) == 0 and not jnp.issubdtype(obj.dtype, jax.dtypes.prng_key):
            return np.asarray(obj).item()
        return _describe_array(obj)
    if obj is None or isinstance(obj, (bool, int, float, str, np.bool_)):
        return obj if not isinstance(obj, np.bool_) else bool(obj)
    if isinstance(obj, (list, tuple)):
        return [describe(v, depth + 1) for v in obj]
    if isinstance(obj, dict):
        return {str(k): describe(v, depth + 1) for k, v in sorted(obj.items())}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {
            f.name: describe(getattr(obj, f.name, None), depth + 1)
            for f in dataclasses.fields(obj)
        }
        return {"class": _qualname(type(obj)), **fields}
    if isinstance(obj, functools.partial):
        return {
            "partial": describe(obj.func, depth + 1),
            "args": describe(list(obj.args), depth + 1),
            "kwargs": describe(dict(obj.keywords), depth + 1),
        }
    if callable(obj):
        return _qualname(obj)
    return f"<{_qualname(type(obj))}>"


def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}.{name}" if module else name


def config_hash(description: Any) -> str:
    """A short hash of a JSON-able description."""
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sample_rows(n: int) -> np.ndarray:
    """The row indices hashed for a data set of `n` rows (first and last included)."""
    if n == 0:
        return np.zeros((0,), np.int64)
    return np.unique(np.linspace(0, n - 1, min(n, N_SAMPLED_ROWS)).astype(np.int64))


def data_fingerprint(xs: Any) -> dict[str, Any]:
    """Shape, dtype and a hash of a sample of rows of an array-like data set."""
    n = int(xs.shape[0])
    rows = [np.asarray(xs[int(i)]) for i in sample_rows(n)]
    return {
        "shape": [int(d) for d in xs.shape],
        "dtype": str(np.dtype(xs.dtype)),
        "sample_hash": _hash_bytes(*rows),
    }


def targets_fingerprint(targets: Any) -> Any:
    """`"predicted"`, or the hash of every target (targets are small)."""
    if isinstance(targets, str):
        return targets
    if callable(targets):  # a stack of target objects: its structure and fields
        leaves = jax.tree_util.tree_leaves(targets)
        arrays = [np.asarray(v) for v in leaves]
        return {
            "n": int(arrays[0].shape[0]) if arrays else 0,
            "structure": type(targets).__qualname__,
            "hash": _hash_bytes(*arrays),
        }
    return {"n": int(targets.shape[0]), "hash": _hash_bytes(np.asarray(targets[:]))}
