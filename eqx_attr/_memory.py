"""The one memory budget, and the chunk size it implies for a many-point method.

Methods that expand one example into many points (IG's path points, SmoothGrad's
noisy copies, occlusion windows, RISE masks, Score-CAM channels, a metric's
perturbed images) evaluate them `chunk_size` at a time. Left at `"auto"`, the
chunk comes from one budget in bytes:

    chunk = max(1, floor(budget / (bytes_per_point * batch))), capped by the points

`bytes_per_point` is measured at trace time from the traced program of ONE
point (the function a method maps over the points): the peak, over the program
in order, of the bytes of the values alive at once that depend on the point
(values that depend only on the model and the example, such as the parameters,
are the same for every point and are not counted). `batch` is the size of the
`jax.vmap`s around the call: under a vmap over a batch of examples, every chunk
holds that many copies. When every point fits, all run in one `vmap` (XLA's own
convolutions); otherwise the chunk is sized on the form a loop body runs (on
CPU, convolutions as im2col products, which take more memory per point). No
compilation is needed: the measurement is one or two extra traces of one point,
done once per compilation (`jax.jit` caches the program per model structure,
input shape and dtype).

What the budget covers: the working memory of the many-point evaluation (XLA's
temporary buffers, `compiled.memory_analysis().temp_size_in_bytes`). It does not
cover the arguments (the model's parameters, the input) nor the outputs, which a
call needs whatever its chunking; nor one point's worth at the least (a chunk is
never empty).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import numpy as np

from ._engine import vmapped_size
from ._engine._fast_derivatives import loop_body

__all__ = ["memory_budget", "set_memory_budget"]

ENV_VAR = "EQX_ATTR_MEMORY_BUDGET"
# On CPU: an eighth of the physical memory, at most 2 GiB (larger chunks gain no
# speed on CPU, and the rest of the process needs memory too). On an accelerator:
# half of the memory XLA may use (the other half: parameters, inputs, outputs).
CPU_FRACTION, CPU_CAP, DEVICE_FRACTION = 1 / 8, 2 << 30, 1 / 2
_FALLBACK = 1 << 30  # where the machine's memory cannot be read
# XLA's buffer assignment plans more than the in-order liveness peak of the traced
# program: it does not free every value at its last use, materialises some values
# that the jaxpr fuses away (random bits, erf_inv's polynomial), and keeps loop
# buffers across iterations. Per point it planned 0.2-2.5x the peak measured here
# (the most: SmoothGrad on an MLP, whose per-point work is noise generation), on
# the CNNs and MLPs of tests/test_memory_budget.py.
PLANNING_FACTOR = 3.0

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")
_FORMS = (
    'an int number of bytes, a string such as "2GiB", "512MB" or "1.5 GB" '
    "(units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), or None for the default"
)

_budget: int | None = None  # set by `set_memory_budget`; None: env var, or default


def parse_bytes(value: Any, name: str = "budget") -> int:
    """`value` (an int, or a string such as `"2GiB"`) as a number of bytes >= 1."""
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be {_FORMS}; got {value!r}.")
    if isinstance(value, int | np.integer):
        if value < 1:
            raise ValueError(
                f"`{name}` must be {_FORMS}, at least 1 byte; got {value!r}."
            )
        return int(value)
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match and match.group(2).upper() in _UNITS:
            n = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
            if n >= 1:
                return n
    raise ValueError(f"`{name}` must be {_FORMS}; got {value!r}.")


def default_memory_budget() -> int:
    """The budget when none is set: see `set_memory_budget`."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without memory statistics (CPU) raise or say None
        stats = None
    if stats and stats.get("bytes_limit"):
        return max(1, int(stats["bytes_limit"] * DEVICE_FRACTION))
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return _FALLBACK
    return max(1, min(int(physical * CPU_FRACTION), CPU_CAP))


def set_memory_budget(budget: int | str | None) -> None:
    """Set the memory budget that every many-point method chunks to fit.

    Methods that evaluate many points for one example (Integrated Gradients and
    its path variants, SmoothGrad, GradientShap, DeepLiftShap, Occlusion, the
    ablation and Shapley family, KernelSHAP, LIME, RISE, Score-CAM, Ablation-CAM,
    and the metrics that score many perturbed inputs) choose their chunk size
    from this budget when their `chunk_size` is `"auto"` (the default):
    `max(1, budget // bytes_per_point)`, where `bytes_per_point` is measured
    at trace time from the program of one point, times the size of any
    `jax.vmap` around the call. An integer `chunk_size` overrides the budget.

    The budget covers the working memory of the points (XLA's temporary
    buffers), not the model's parameters, the input or the output. It is read
    when a method is traced: set it before the first call (a compiled call keeps
    the chunking it was traced with).

    **Arguments:**

    - `budget`: bytes as an int, or a string such as `"2GiB"`, `"512MB"`,
        `"1.5 GB"` (decimal units KB, MB, GB, TB; binary KiB, MiB, GiB, TiB).
        `None` returns to the default: the environment variable
        `EQX_ATTR_MEMORY_BUDGET` (same forms) if set, else half of the
        accelerator's memory, or on CPU an eighth of the physical memory, at
        most 2 GiB.

    **Returns:** nothing.

    ```python
    xa.set_memory_budget("512MiB")
    ig = xa.IntegratedGradients(model, n_steps=64)  # chunk_size="auto"
    a = ig(x, target=3)                               # path points chunked to fit
    xa.set_memory_budget(None)                        # back to the default
    ```
    """
    global _budget
    _budget = None if budget is None else parse_bytes(budget, "budget")


def memory_budget() -> int:
    """The memory budget in bytes that `chunk_size="auto"` fits (see
    [`eqx_attr.set_memory_budget`][]).

    **Arguments:** none.

    **Returns:** an int: the budget set by `set_memory_budget`, else the
    environment variable `EQX_ATTR_MEMORY_BUDGET`, else the machine's default.

    ```python
    xa.set_memory_budget("2GiB")
    assert xa.memory_budget() == 2 * 2**30
    ```
    """
    if _budget is not None:
        return _budget
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_bytes(env, ENV_VAR)
    return default_memory_budget()


def _nbytes(aval: Any) -> int:
    shape, dtype = getattr(aval, "shape", None), getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    try:
        return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    except TypeError:  # extended dtypes (PRNG keys): a key is a few words
        return int(np.prod(shape, dtype=np.int64)) * 8


def _subjaxprs(params: dict) -> list[Any]:
    found = []
    for value in params.values():
        for v in value if isinstance(value, tuple | list) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                found.append(v.jaxpr)
            elif isinstance(v, jax.extend.core.Jaxpr):
                found.append(v)
    return found


def _is_var(v: Any) -> bool:
    return not isinstance(v, jax.extend.core.Literal)


def _peak(jaxpr: Any, depends: list[bool]) -> int:
    """Peak bytes of the values alive at once that depend on the inputs flagged
    in `depends` (one flag per invar), walking the equations in order: a value
    is alive from the equation that makes it to its last use."""
    dep: dict[Any, bool] = {v: d for v, d in zip(jaxpr.invars, depends, strict=True)}
    last: dict[Any, int] = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if _is_var(v):
                last[v] = i
    for v in jaxpr.outvars:
        if _is_var(v):
            last[v] = len(jaxpr.eqns)
    alive = sum(_nbytes(v.aval) for v in jaxpr.invars if dep.get(v) and v in last)
    peak = alive
    for i, eqn in enumerate(jaxpr.eqns):
        flags = [_is_var(v) and dep.get(v, False) for v in eqn.invars]
        out_dep = any(flags)
        inner = 0
        for sub in _subjaxprs(eqn.params):
            # Inputs map to the body's invars by position where the counts agree
            # (jit, custom derivatives, scan); otherwise every input is assumed to
            # depend on the point (a cond's branches take all but the predicate).
            n = len(sub.invars)
            sub_flags = flags[-n:] if len(flags) >= n else [out_dep] * n
            body = _peak(sub, sub_flags)
            # The body's own inputs are already counted as alive here.
            own = sum(
                _nbytes(v.aval) for v, d in zip(sub.invars, sub_flags, strict=True) if d
            )
            inner = max(inner, body - own)
        out = sum(_nbytes(v.aval) for v in eqn.outvars) if out_dep else 0
        for v in eqn.outvars:
            dep[v] = out_dep
        peak = max(peak, alive + max(inner, out))
        alive += out
        for v in {v for v in eqn.invars if _is_var(v)}:
            if last.get(v) == i and dep.get(v):
                alive -= _nbytes(v.aval)
        for v in eqn.outvars:
            if out_dep and v not in last:  # never used: freed at once
                alive -= _nbytes(v.aval)
    return peak


def measure(fn: Callable, point: Any, *, loop: bool = True) -> tuple[int, int]:
    """`(bytes_per_point, output_bytes)` of `fn` on one point: the peak of the
    live values of its traced program that depend on the point (see the module
    docstring), and the bytes of its output.

    **Arguments:**

    - `fn`: the per-point function a method maps over its points (it may close
        over traced values: those count as fixed, not per point).
    - `point`: one point, a PyTree of arrays or `jax.ShapeDtypeStruct`s.
    - `loop`: measure the form traced in a loop body (chunks: convolutions as
        im2col products on CPU) rather than the one-`vmap` form.

    **Returns:** two ints, from one trace (no compilation).
    """
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), point)
    with loop_body() if loop else contextlib.nullcontext():
        # A fresh function: JAX's trace cache ignores the loop-body context.
        closed = jax.make_jaxpr(lambda p: fn(p))(shapes)
    jaxpr = closed.jaxpr
    peak = _peak(jaxpr, [True] * len(jaxpr.invars))
    return max(1, peak), sum(_nbytes(v.aval) for v in jaxpr.outvars)


def chunk_for_budget(
    fn: Callable,
    point: Any,
    n_points: int,
    *,
    stacked: bool = False,
    fixed_bytes: int = 0,
) -> int | None:
    """The chunk size `chunk_size="auto"` means: how many of `n_points` points
    fit the budget at once, or `None` when all of them do.

    **Arguments:**

    - `fn`, `point`: as for [`measure`][].
    - `n_points`: how many points the method evaluates.
    - `stacked`: whether the per-point outputs are stacked (alive whatever the
        chunk: taken off the budget first) rather than reduced chunk by chunk.
    - `fixed_bytes`: other bytes per example that stay alive whatever the chunk.

    **Returns:** an int in `[1, n_points)`, or `None` (everything at once).
    """
    batch = vmapped_size()

    def fitting(loop: bool) -> int:
        per_point, out = measure(fn, point, loop=loop)
        fixed = fixed_bytes + (n_points * out if stacked else 0)
        room = memory_budget() - fixed * batch
        return max(1, room // (int(per_point * PLANNING_FACTOR) * batch))

    # All at once (one vmap, XLA's own convolutions) when everything fits; else
    # chunks of the loop-body form, which the loop runs (im2col on CPU).
    if fitting(loop=False) >= n_points:
        return None
    return int(min(fitting(loop=True), n_points - 1))


def resolve_chunk_size(
    chunk_size: int | str | None, fn: Callable, xs: Any, *, stacked: bool = True
) -> int | None:
    """`chunk_size` as an int or `None`: `"auto"` becomes [`chunk_for_budget`][]
    for mapping `fn` over the leading axis of `xs` (as `jax.lax.map` does, the
    outputs `stacked`); others are returned as they are."""
    if chunk_size != "auto":
        return chunk_size  # pyright: ignore[reportReturnType]
    leaves = jax.tree.leaves(xs)
    n = leaves[0].shape[0] if leaves else 1
    point = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)
    return chunk_for_budget(fn, point, n, stacked=stacked)
