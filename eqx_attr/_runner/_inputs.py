"""Checks of the data-set arguments of `explain_dataset` and `evaluate_dataset`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def num_rows(xs: Any, name: str) -> int:
    """The number of rows of an indexable array-like, with a clear error otherwise."""
    shape = getattr(xs, "shape", None)
    if shape is None or not hasattr(xs, "__getitem__") or len(shape) < 1:
        raise TypeError(
            f"`{name}` must be an indexable array with a leading row axis (NumPy "
            f"array, memmap, Zarr array), got {type(xs).__name__}."
        )
    return int(shape[0])


def check_same_rows(n: int, other: Any, name: str) -> None:
    """`other` has `n` rows, or a ValueError naming both lengths."""
    m = num_rows(other, name)
    if m != n:
        raise ValueError(
            f"`xs` has {n} rows but `{name}` has {m}; pass one {name[:-1]} per row."
        )


def check_targets(targets: Any, n: int) -> None:
    """`targets` is a 1-D integer array-like with one entry per row."""
    check_same_rows(n, targets, "targets")
    if len(targets.shape) != 1 or not np.issubdtype(
        np.dtype(targets.dtype), np.integer
    ):
        raise TypeError(
            f"`targets` must be a 1-D integer array (got shape {tuple(targets.shape)} "
            f"and dtype {targets.dtype}), or 'predicted'."
        )


def check_rows_like(n_classes: int | None) -> Callable[[str, np.ndarray, int], None]:
    """A per-batch check that targets lie in `[0, n_classes)`, naming the row."""

    def check(name: str, rows: np.ndarray, start: int) -> None:
        if name != "targets" or n_classes is None:
            return
        bad = (rows < 0) | (rows >= n_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"`targets` row {start + i} is {int(rows[i])}, out of range for a "
                f"model with {n_classes} outputs; use class indices in "
                f"[0, {n_classes - 1}]."
            )

    return check


def storage_dtype(dtype: Any) -> np.dtype:
    """float64 stays float64; other floats (bfloat16, float16) are stored as float32."""
    dtype = np.dtype(dtype)
    if dtype == np.float64 or np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return dtype
    return np.dtype(np.float32)
