"""The one batch runner: a method over a batch in one compiled, vmapped call.

The demo, the benchmarks and the notebooks all run methods through
[`batch_runner`][] / [`batched`][],
so "how a batch is explained" is written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax

from ._checks import deferred_checks, raise_deferred


def batch_runner() -> Callable[..., Any]:
    """A fresh `run(method, xs, targets, keys=None)`: jitted, vmapped over the batch.

    Each call of `batch_runner` makes a new `eqx.filter_jit`, so its first run
    compiles (what timings want); later runs with the same shapes do not. The
    method's run-time checks are deferred (`eqx_attr._checks`), so the program
    has no host callback and JAX's persistent cache keeps it; an example that
    fails one is run again alone to raise its error.

    **Returns:** `run(method, xs, targets, keys=None)`; `keys` (one per example)
    only for random methods.

    ```python
    run = batch_runner()
    maps = run(xa.GradCAM(model, lambda m: m.conv2), xs, targets)
    ```
    """

    @eqx.filter_jit
    def compiled(method, xs, ts, keys):
        with deferred_checks():  # no host callback: JAX's disk cache keeps it
            if keys is None:
                return eqx.filter_vmap(lambda x, t: method(x, t))(xs, ts)
            return eqx.filter_vmap(lambda x, t, k: method(x, t, key=k))(xs, ts, keys)

    def run(method, xs, ts, keys=None):
        def rerun(i):  # example `i` alone, its checks raising
            return (
                method(xs[i], ts[i])
                if keys is None
                else method(xs[i], ts[i], key=keys[i])
            )

        return raise_deferred(compiled(method, xs, ts, keys), rerun, xs)

    return run


def batched(method: Any) -> Callable[..., Any]:
    """`run(xs, targets, keys=None)`: `method` over a batch (see [`batch_runner`][]).

    **Arguments:**

    - `method`: an attribution method (`method(x, target, *, key=None)`).

    **Returns:** `run(xs, targets, keys=None)`, compiled on its first call.

    ```python
    maps = batched(xa.GradCAM(model, lambda m: m.conv2))(xs, targets)
    ```
    """
    run = batch_runner()
    return lambda xs, ts, keys=None: run(method, xs, ts, keys)


def time_call(fn: Callable, *args: Any, repeats: int = 3) -> tuple[Any, float, float]:
    """`(output, compile_seconds, steady_seconds)` of `fn(*args)`.

    The first call compiles and runs; steady state is the best of `repeats` later
    calls; compile time is the first call minus one steady call.

    **Arguments:** `fn`, its `args`, `repeats` (>= 1).

    **Returns:** the first call's output and the two times in seconds.
    """
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return out, max(first - best, 0.0), best
