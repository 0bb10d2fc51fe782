"""A module's softmax, handed out: evaluate a call with a function applied to the
output of the one softmax it computes (`eqx.nn.MultiheadAttention`'s attention
probabilities, computed inside a `jax.vmap` over heads where no module boundary
reaches them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _interpreter as it
from ._patterns import region_fn, softmax_region


class SoftmaxNotFound(ValueError):
    """The call computes no softmax, or more than one."""


def call_with_softmax(
    fn: Callable, args: tuple, kwargs: dict, apply: Callable[[Any], Any]
) -> Any:
    """`fn(*args, **kwargs)`, with `apply` applied to its softmax's output.

    The call is traced (`_trace.trace`) and evaluated again by the interpreter,
    unchanged except at the softmax (found by `_patterns.softmax_region`, however
    it is written), whose output goes through `apply` (e.g. a layer tap). Raises
    [`SoftmaxNotFound`][] unless exactly one softmax is computed. Runs at trace
    time: jit-able, vmap-able, differentiable.
    """
    traced = it.trace(fn, *args, **kwargs)
    found: list[tuple[int, ...]] = []

    def match(interp, frame, i, scope):
        if frame[i].primitive.name not in ("reduce_max", "exp"):
            return None
        region = softmax_region(frame, i, lambda v: True)
        if region is None:
            return None
        eqns, inp, out, axes = region
        found.append(out.aval.shape)
        softmax = region_fn(eqns, inp, out, frame.read)

        def handler(interp, eqn, invals):
            return [apply(softmax(frame.read(inp)))]

        return it.Unit(handler, fuses=tuple(eqns[1:]), outvars=(out,))

    interp = it.Interpreter(
        table={}, method="reading the softmax", match=match, fallback=it.bind_plain
    )
    outs = it.run(interp, traced, traced.leaves)
    if len(found) != 1:
        raise SoftmaxNotFound(
            f"computes {len(found)} softmaxes"
            + (f" (output shapes {found})" if found else "")
        )
    return traced.output(outs)
