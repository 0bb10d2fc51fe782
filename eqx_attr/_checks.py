"""Run-time checks of values, in a form JAX's persistent cache can keep.

A check of values (a NaN in the input, a target out of range, a CAM layer that
is not pooled into the classifier) must run inside the compiled program, and
`eqx.error_if` raises from there through a host callback. JAX refuses to write
a program with a host callback to its persistent compilation cache, so every
method would compile again in every process.

[`error_if`][] is the library's one way to check a value. By default it is
`eqx.error_if`. Traced inside [`deferred_checks`][] (the data-set runner and
the batch runner do), a failed check instead multiplies the checked
floating-point value by NaN, so that derivatives carry the NaN too: the
program has no callback and is cached. The runner then looks for non-finite
rows in the outputs and the inputs ([`finite_rows`][]) and computes each such
example again with the checks raising ([`raise_deferred`][]), which reports the
exact error. An integer value cannot carry a NaN, so its check raises in
either mode.

A compiled function that holds checks keys its cache on [`deferred`][] (see
`eqx_attr._attribution.call_compiled`), so a program traced in one mode is
never reused in the other. The mode is per thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

_T = TypeVar("_T")
_MODE = threading.local()  # per thread: the data-set runner's writer reruns rows


def deferred() -> bool:
    """Whether checks traced now turn failures into NaN instead of raising."""
    stack = getattr(_MODE, "stack", ())
    return bool(stack) and stack[-1]


@contextlib.contextmanager
def deferred_checks(on: bool = True) -> Iterator[None]:
    """Checks traced inside the block poison floating values with NaN (`on`), or
    raise (`on=False`, e.g. for the rerun that reports the error)."""
    _MODE.stack = (*getattr(_MODE, "stack", ()), on)
    try:
        yield
    finally:
        _MODE.stack = _MODE.stack[:-1]


def error_if(x: _T, pred: Array, msg: str) -> _T:
    """`x`, raising `msg` at run time where `pred` holds (`eqx.error_if`); inside
    [`deferred_checks`][], `x`'s floating leaves become NaN there instead."""
    leaves = jax.tree.leaves(x)
    if not deferred() or not leaves or not all(map(eqx.is_inexact_array, leaves)):
        return eqx.error_if(x, pred, msg)
    # A product, not a `where`: the NaN reaches derivatives too (`where`'s
    # derivative would be a clean zero, a gradient method's finite map).
    return jax.tree.map(lambda a: a * jnp.where(pred, jnp.nan, 1).astype(a.dtype), x)


def raise_deferred(out: Any, rerun: Callable[[int], Any], inputs: Any = None) -> Any:
    """`out` (stacked per example), after reporting a deferred check's failure.

    Where a floating leaf of `out` or of `inputs` holds a non-finite value,
    `rerun(i)` computes example `i` again with the checks raising: a failed check
    raises its own message. (A NaN in the input need not reach the output, e.g.
    through a ReLU's derivative, hence `inputs`.) Reruns that raise nothing mean
    the method's true results are not finite, and `out` is returned as it is.
    """
    bad = np.flatnonzero(~finite_rows((out, inputs)))
    with deferred_checks(False):
        for i in bad:
            jax.block_until_ready(rerun(int(i)))
    return out


def finite_rows(tree: Any) -> np.ndarray:
    """Per row (leading axis), whether every floating leaf of `tree` is finite."""
    flags = [
        np.isfinite(np.asarray(a)).reshape(a.shape[0], -1).all(axis=1)
        for a in jax.tree.leaves(tree)
        if eqx.is_inexact_array_like(a) and np.ndim(a) > 0
    ]
    return np.logical_and.reduce(flags) if flags else np.ones(0, bool)


NON_FINITE = (
    "`{name}` contains NaN or inf; attributions of a non-finite input are "
    "meaningless. Clean, clip or impute the input first "
    "(e.g. `jnp.nan_to_num({name})`)."
)


class FiniteXChecked(eqx.Module):
    """`fn` whose outputs carry `check_input`'s run-time check of `x` (see
    `eqx_attr._attribution`): a map that does not depend on `x`'s values (the
    gradient at a layer followed only by linear operations) would otherwise let
    XLA drop the check as dead code."""

    fn: Callable[..., Any]

    def __call__(self, x: Array, target: Any, key: Any) -> Any:
        bad = jnp.any(~jnp.isfinite(x))
        return jax.tree.map(
            lambda o: (
                error_if(o, bad, NON_FINITE.format(name="x"))
                if eqx.is_inexact_array(o)
                else o
            ),
            self.fn(x, target, key),
        )
