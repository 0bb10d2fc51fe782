"""One pass that gives the gradient methods derivatives XLA:CPU computes fast.

[`fast_derivatives`][] evaluates a function's traced program with three kinds of
equation replaced by functions of the same values and derivatives:

- floating-point max pools (`_max_pool.py`): derivatives without XLA's
  select-and-scatter, exactly equal to JAX's own, in a fraction of the memory;
- on CPU, convolutions that XLA runs slowly (`_fast_conv.py`): thin ones (first
  layers on grey or RGB images) and small ones (kernels larger than their maps:
  3x3 on 2x2) everywhere, and every convolution when the
  function is traced inside a loop body of this library (see [`loop_body`][]).
  These equal XLA's convolution up to rounding.
- smooth activations (GELU, SiLU, ... however written) and softmaxes
  (`_lean.py`): derivatives that keep one array for the backward pass instead of
  two or three, equal to JAX's own up to rounding.

Every gradient method goes through it ([`scalar_function`][] and the CAM family's
layer tap). Bodies of loops, conditionals, checkpoints and custom-derivative
functions inside the function keep their own derivatives (they are bound
unchanged); `jax.jit` bodies are evaluated with the same table, so their pools and
convolutions are replaced.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

from . import _fast_conv, _jax_internals as ji, _lean, _max_pool
from ._interpreter import Interpreter, bind_plain, run
from ._trace import trace

_UNCHANGED = (*ji.CUSTOM, *ji.REMAT, ji.SCAN, ji.WHILE, ji.COND)
# What is replaced: max pools only; and thin and small convolutions; and every
# convolution.
_MODES = ("pools", "thin", "loop")
_CONV_HANDLERS = {
    "thin": _fast_conv.thin_conv_handler,
    "loop": _fast_conv.loop_conv_handler,
}
_IN_LOOP = contextvars.ContextVar("eqx_attr_in_loop_body", default=False)


@contextlib.contextmanager
def loop_body() -> Iterator[None]:
    """Functions traced in this context run in a loop body (the library's chunked
    `lax.scan`/`lax.map` calls): [`fast_derivatives`][] then computes every
    convolution as a matrix product, which XLA:CPU runs 3-10x faster there."""
    token = _IN_LOOP.set(True)
    try:
        yield
    finally:
        _IN_LOOP.reset(token)


def _interpreter(mode: str) -> Interpreter:
    table = {_max_pool.POOL: _max_pool.pool_handler}
    if mode in _CONV_HANDLERS:
        table[_fast_conv.CONV] = _CONV_HANDLERS[mode]
    return Interpreter(
        table={**table, **{n: bind_plain for n in _UNCHANGED}},
        method="the fast-derivative pass",
        match=None if mode == "pools" else _lean.match,
        fallback=bind_plain,
    )


_INTERPRETERS = {mode: _interpreter(mode) for mode in _MODES}


def _replaces_some(jaxpr: Any, mode: str) -> bool:
    if mode != "pools" and _lean.has_candidates(jaxpr):
        return True
    for eqn in jaxpr.eqns:
        if _max_pool.replaceable(eqn):
            return True
        if mode != "pools" and _fast_conv.replaceable(eqn, loop=mode == "loop"):
            return True
        if eqn.primitive.name in ji.JIT:
            if any(_replaces_some(j, mode) for j, _ in ji.sub_jaxprs(eqn)):
                return True
    return False


def _loop_convs(jaxpr: Any, reached: bool = True) -> list[bool]:
    """For each convolution in `jaxpr` and its sub-jaxprs: whether the pass
    replaces it in a loop body (`jax.jit` bodies are evaluated with the same
    table; checkpoint, custom-derivative and loop bodies are bound unchanged)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == _fast_conv.CONV:
            found.append(reached and _fast_conv.replaceable(eqn, loop=True))
        for sub, _ in ji.sub_jaxprs(eqn):
            found += _loop_convs(sub, reached and eqn.primitive.name in ji.JIT)
    return found


def convolves_fast_in_loops(fn: Callable[..., Any], *args: Any) -> bool:
    """Whether `fn(*args)` has convolutions and, traced in a [`loop_body`][], all
    of them become matrix products: then chunks of a batch, scanned, run faster on
    CPU than the whole batch at once (IG's `chunk_size="auto"`)."""
    convs = _loop_convs(trace(fn, *args).closed.jaxpr)
    return bool(convs) and all(convs)


def fast_derivatives(fn: Callable[..., Any], *, convs: bool = True) -> Callable:
    """`fn` with the same values and derivatives, computed faster (see above).

    **Arguments:**

    - `fn`: the function (a model, or a model followed by a reduction).
    - `convs`: whether convolutions are replaced too (equal up to rounding); with
        `False` only the max pools are, and derivatives are bit-equal.

    **Returns:** a function of the same arguments. A function with nothing to
    replace is called unchanged.
    """

    def call(*args: Any) -> Any:
        mode = "pools" if not convs else "loop" if _IN_LOOP.get() else "thin"
        traced = trace(fn, *args)
        if not _replaces_some(traced.closed.jaxpr, mode):
            return fn(*args)
        return traced.output(run(_INTERPRETERS[mode], traced, traced.leaves))

    return call
