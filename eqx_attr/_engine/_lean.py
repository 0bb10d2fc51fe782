"""Smooth activations and softmaxes whose derivatives keep one array.

Differentiated as traced, `jax.nn.gelu` keeps three arrays of its input's size for
the backward pass (the product, `erfc`, `exp`), SiLU two, and a softmax (plain
equations in current JAX, with no derivative rule of its own) its `exp` besides
its output. PyTorch's kernels keep one: XLA planned 1628 MiB of temporaries for
ViT-B/16's input gradient at batch 8, 848 MiB with the forms below. The
fast-derivative pass (`_fast_derivatives.py`) replaces, found however they are
written:

- an elementwise region of one activation with a transcendental step in it by
    the same region under `jax.checkpoint`: its input is kept, its steps are
    computed again in the backward pass (a few elementwise operations against a
    matrix product's worth of memory). Computing the slope `f'(x)` in the forward
    pass instead does not help on CPU: XLA removes optimisation barriers before
    fusing, and fuses the slope into its one consumer in the backward pass, which
    keeps its pieces alive instead;
- a softmax by a `jax.custom_jvp` whose tangent is `y * (z' - sum(y * z'))` over
    its axes (`z` the `exp`'s argument): only its output `y` is kept.

Both equal JAX's own derivatives up to rounding, and stay differentiable (their
tangents are JAX functions of the primal), so second-order methods see them too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from . import _interpreter as it, _jax_internals as ji
from ._patterns import elementwise_region, region_fn, softmax_region

# Steps whose derivative JAX computes from arrays it must keep.
_TRANSCENDENTAL = frozenset(
    "exp exp2 expm1 log log1p tanh logistic erf erfc sin cos tan atan asinh "
    "acosh atanh sinh cosh".split()
)
_EVERY_VAR = lambda v: True  # noqa: E731  (regions read their input and literals)


def has_candidates(jaxpr: Any) -> bool:
    """Whether `jaxpr` (not its sub-jaxprs) has a step a lean region could hold."""
    return any(e.primitive.name in _TRANSCENDENTAL for e in jaxpr.eqns)


def _steps(eqns: list) -> tuple[int, bool]:
    """(how many primitive steps `eqns` take, counting inside `jit` and custom
    derivative bodies; whether one of them is transcendental)."""
    count, found = 0, False
    for e in eqns:
        subs = ji.sub_jaxprs(e)[:1]  # a custom_jvp's first jaxpr is its body
        if not subs:
            count, found = count + 1, found or e.primitive.name in _TRANSCENDENTAL
        for jaxpr, _ in subs:
            n, f = _steps(list(jaxpr.eqns))
            count, found = count + n, found or f
    return count, found


def lean_elementwise(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`fn` (elementwise), its derivative recomputed from its input in the
    backward pass: `jax.checkpoint`, whose barrier also stops XLA from merging
    the recomputed steps with the forward pass's (which would keep those alive)."""
    return jax.checkpoint(fn)


def lean_softmax(
    fn: Callable[[Any], Any], logits: Callable[[Any], Any], axes: tuple[int, ...]
) -> Callable[[Any], Any]:
    """`fn(x) = softmax(logits(x))` over `axes`, its tangent from its output."""

    @jax.custom_jvp
    def f(x):
        return fn(x)

    @f.defjvp
    def _(primals, tangents):
        (x,), (t,) = primals, tangents
        y = fn(x)
        dz = jax.jvp(logits, (x,), (t,))[1]
        y_dz = y * dz
        return y, y_dz - y * jnp.sum(y_dz, axis=axes, keepdims=True)

    return f


def _sums_back(den: Any, num: Any, axes: tuple[int, ...], producers: dict) -> bool:
    """Whether `den` is `num`'s sum over `axes` with those axes kept as size 1 or
    broadcast back (a `keepdims` sum), so that `num / den` normalises each group."""
    steps = []
    eqn = producers.get(den)
    while eqn is not None and eqn.primitive.name != "reduce_sum":
        if eqn.primitive.name not in ("broadcast_in_dim", "reshape"):
            return False
        steps.append(eqn)
        eqn = producers.get(eqn.invars[0])
    if eqn is None or eqn.invars[0] is not num:
        return False
    shape = num.aval.shape
    # For each axis of the value: the axis of `num` it runs along, or None (size 1
    # or broadcast: constant within a group).
    origin: list = [a for a in range(len(shape)) if a not in axes]
    for step in reversed(steps):
        before, after = step.invars[0].aval.shape, step.outvars[0].aval.shape
        if step.primitive.name == "reshape":
            kept = [o for o, n in zip(origin, before, strict=True) if n != 1]
            if [n for n in before if n != 1] != [n for n in after if n != 1]:
                return False
            it_kept = iter(kept)
            origin = [None if n == 1 else next(it_kept) for n in after]
        else:
            dims = step.params["broadcast_dimensions"]
            new: list = [None] * len(after)
            for p, k in enumerate(dims):
                new[k] = origin[p] if before[p] == after[k] else None
            origin = new
    if len(origin) != len(shape):
        return False
    return all(
        o is None if k in axes else o == k if n > 1 else o in (None, k)
        for k, (o, n) in enumerate(zip(origin, shape, strict=True))
    )


def match(interp: Any, frame: Any, i: int, scope: Any) -> it.Unit | None:
    """The fast-derivative pass's hook: a softmax or a lean elementwise region
    starting at equation `i`, replaced (see the module docstring)."""
    prim = frame[i].primitive.name
    if prim in ("reduce_max", "exp", "sub", "stop_gradient", "mul", "div"):
        found = softmax_region(frame, i, _EVERY_VAR)
        if found is not None:
            eqns, inp, out, axes = found
            div = eqns[-1]
            num, den = div.invars
            exp = frame.producers[num]
            if div.outvars[0] is out and _sums_back(den, num, axes, frame.producers):
                z = exp.invars[0]
                before = eqns[: eqns.index(exp)]
                logits = (
                    (lambda x: x) if z is inp else region_fn(before, inp, z, frame.read)
                )
                fn = lean_softmax(region_fn(eqns, inp, out, frame.read), logits, axes)
                return _unit(fn, eqns, inp, out, frame)
    found = elementwise_region(frame, i, _EVERY_VAR)
    if found is None:
        return None
    eqns, inp, out = found
    count, transcendental = _steps(eqns)
    if count < 2 or not transcendental:
        return None  # one step keeps one array already; max/where keep masks
    fn = lean_elementwise(region_fn(eqns, inp, out, frame.read))
    return _unit(fn, eqns, inp, out, frame)


def _unit(fn: Callable, eqns: list, inp: Any, out: Any, frame: Any) -> it.Unit:
    def handler(interp, eqn, invals):
        return [fn(frame.read(inp))]

    return it.Unit(handler, fuses=tuple(eqns[1:]), outvars=(out,))
