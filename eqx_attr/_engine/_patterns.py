"""Patterns of modern layers in a traced program, for the interpreter's clients.

Static pattern finding for a `match` hook (nothing is evaluated here): LRP
(`_rules/_lrp_trace.py`) attaches its rules to them, and the attention methods
read a module's softmax through them (`_engine/_softmax.py`):

- **elementwise regions**: consecutive equations that compute an elementwise
  function of ONE activation (GELU in both forms, SiLU, softplus, ELU, leaky ReLU,
  Mish, `x * jax.nn.sigmoid(x)`, `jnp.where(x > 0, x, a * x)`, ...), however the
  function is written (inline, or inside a `jit` such as `jax.nn.silu`), found by
  their primitives rather than by their names. They get the identity rule
  (Zennit's `Pass` on activations, AttnLRP's identity rule).
- **softmax**: `exp(x - max) / sum(exp(x - max))` over one axis (`jax.nn.softmax`
  and hand-written forms), which gets AttnLRP's softmax rule.
- **statistics**: an operand of a product or quotient of two activations that is
  broadcast from fewer values (the `1 / std` of a LayerNorm or RMSNorm, a
  softmax's denominator): AttnLRP's identity rule on normalisers holds it
  constant, so the relevance goes to the other operand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from . import _jax_internals as ji

# Elementwise primitives (the output has the shape of the broadcast operands).
_UNARY_NONLINEAR = frozenset(
    "exp exp2 expm1 log log1p tanh logistic erf erfc erf_inv sqrt rsqrt cbrt "
    "integer_pow square abs sign sin cos tan atan asinh acosh atanh sinh cosh "
    "floor ceil round is_finite".split()
)
_AFFINE = frozenset("add sub mul div neg convert_element_type copy copy_p".split())
_NONLINEAR_BINARY = frozenset("max min pow atan2 select_n rem".split())
_COMPARE = frozenset("gt ge lt le eq ne and or not xor".split())
ELEMENTWISE = _UNARY_NONLINEAR | _AFFINE | _NONLINEAR_BINARY | _COMPARE
_NONLINEAR = _UNARY_NONLINEAR | _NONLINEAR_BINARY
# Steps that only copy, reshape or broadcast a value.
_SHAPE_STEPS = ("broadcast_in_dim", "reshape", "convert_element_type", "squeeze")
# How far a softmax's `div` may lie after its first equation.
_SOFTMAX_SPAN = 14


def _is_float(aval: Any) -> bool:
    return jnp.issubdtype(getattr(aval, "dtype", jnp.int32), jnp.floating)


def _size(atom: Any) -> int:
    return math.prod(getattr(atom.aval, "shape", ()))


def _body_elementwise(eqn: Any) -> tuple[bool, bool]:
    """For a `jit`/`custom_jvp_call`: (its body is elementwise, it is nonlinear)."""
    subs = ji.sub_jaxprs(eqn)
    if not subs:
        return False, False
    nonlinear = False
    for jaxpr, _ in subs[:1]:  # a custom_jvp's first jaxpr is its body
        for e in jaxpr.eqns:
            ok, nl = _step(e)
            if not ok:
                return False, False
            nonlinear = nonlinear or nl
    return True, nonlinear


def _step(eqn: Any) -> tuple[bool, bool]:
    """(whether `eqn` is an elementwise step, whether it is nonlinear)."""
    prim = eqn.primitive.name
    if prim in ELEMENTWISE:
        return True, prim in _NONLINEAR
    if prim in ("broadcast_in_dim", "stop_gradient") and not eqn.invars[0].aval.shape:
        return True, False  # a scalar constant made into an array
    if prim in ji.JIT or prim in ji.CUSTOM_JVP:
        return _body_elementwise(eqn)
    return False, False


def elementwise_region(
    frame: Any, i: int, is_act: Callable[[Any], bool]
) -> tuple[list, Any, Any] | None:
    """The longest elementwise nonlinear region of one activation starting at `i`.

    Returns `(equations, input variable, output variable)`, or None. The region's
    equations are consecutive, read only the input, their own results and
    constants, keep the input's shape, contain at least one nonlinear step, and
    only one of their floating results (the output) is read after the region.
    """
    jaxpr = frame.jaxpr
    first = jaxpr.eqns[i]
    acts = [v for v in first.invars if not isinstance(v, ji.Literal) and is_act(v)]
    if len(acts) != 1 or not _is_float(acts[0].aval):
        return None
    inp = acts[0]
    shape = inp.aval.shape
    defined = {inp}
    best = None
    nonlinear = False
    for j in range(i, len(jaxpr.eqns)):
        eqn = jaxpr.eqns[j]
        ok, nl = _step(eqn)
        if not ok:
            break
        operands_ok = all(
            isinstance(v, ji.Literal)
            or v in defined
            or (not is_act(v) and (not v.aval.shape or v.aval.shape == shape))
            for v in eqn.invars
        )
        if not operands_ok or any(o.aval.shape not in ((), shape) for o in eqn.outvars):
            break
        if not any(not isinstance(v, ji.Literal) and v in defined for v in eqn.invars):
            break  # a constant computed in between: not part of the function
        defined.update(eqn.outvars)
        nonlinear = nonlinear or nl
        out = _single_output(frame, i, j, defined - {inp}, shape)
        if nonlinear and out is not None:
            best = (list(jaxpr.eqns[i : j + 1]), inp, out)
    return best


def _single_output(frame: Any, i: int, j: int, defined: set, shape) -> Any:
    """The one floating variable of `defined` read after equation `j`, if exactly
    one is and it has the input's shape."""
    read_later = [
        v for v in defined if any(k > j or k < 0 for k in frame.uses.get(v, []))
    ]
    if len(read_later) != 1:
        return None
    (out,) = read_later
    if not _is_float(out.aval) or out.aval.shape != shape:
        return None
    return out


def region_fn(eqns: list, inp: Any, out: Any, read: Callable[[Any], Any]) -> Callable:
    """The region as a plain function of its input; `read` gives the constants."""

    def fn(x):
        env = {inp: x}
        value = lambda a: (
            a.val if isinstance(a, ji.Literal) else env[a] if a in env else read(a)
        )
        for e in eqns:
            env.update(
                zip(e.outvars, ji.bind(e, [value(v) for v in e.invars]), strict=True)
            )
        return env[out]

    return fn


def softmax_region(
    frame: Any, i: int, is_act: Callable[[Any], bool]
) -> tuple[list, Any, Any, tuple[int, ...]] | None:
    """A softmax starting at equation `i`: `(equations, input, output, axes)`.

    Recognised by its `div` of an `exp(...)` by that same value's `reduce_sum`
    (broadcast back), within a few equations of `i`; the equations from `i` to
    the `div` must read one activation (the logits) and give one output.
    """
    jaxpr = frame.jaxpr
    producers = frame.producers
    end = min(len(jaxpr.eqns), i + _SOFTMAX_SPAN)
    for j in range(i, end):
        eqn = jaxpr.eqns[j]
        if eqn.primitive.name != "div" or any(
            isinstance(v, ji.Literal) for v in eqn.invars
        ):
            continue
        num, den = eqn.invars
        exp = producers.get(num)
        if exp is None or exp.primitive.name != "exp":
            continue
        total = _through_shape_steps(den, producers)
        if total is None or total.primitive.name != "reduce_sum":
            continue
        if total.invars[0] is not num:
            continue
        region = list(jaxpr.eqns[i : j + 1])
        if exp not in region or total not in region:
            continue
        found = _one_in_one_out(frame, region, j, is_act)
        if found is None:
            continue
        return region, found[0], found[1], tuple(int(a) for a in total.params["axes"])
    return None


def _through_shape_steps(var: Any, producers: dict) -> Any:
    """The first equation behind `var` that is not a shape step."""
    eqn = producers.get(var)
    while eqn is not None and eqn.primitive.name in _SHAPE_STEPS:
        eqn = producers.get(eqn.invars[0])
    return eqn


def _one_in_one_out(frame: Any, region: list, j: int, is_act) -> tuple | None:
    defined = {v for e in region for v in e.outvars}
    ins = {
        v
        for e in region
        for v in e.invars
        if not isinstance(v, ji.Literal) and v not in defined and is_act(v)
    }
    if len(ins) != 1:
        return None
    (inp,) = ins
    i = j - len(region) + 1
    out = _single_output(frame, i, j, defined, region[-1].outvars[0].aval.shape)
    if out is None or out is not region[-1].outvars[0]:
        return None
    return inp, out


def is_statistic(var: Any, out: Any, producers: dict) -> bool:
    """Whether operand `var` of a product giving `out` is broadcast from fewer
    values (a norm's `1 / std`, a softmax's denominator)."""
    if _size(var) < _size(out):
        return True
    eqn = producers.get(var)
    while eqn is not None and eqn.primitive.name in _SHAPE_STEPS:
        if eqn.primitive.name == "broadcast_in_dim" and _size(eqn.invars[0]) < _size(
            eqn.outvars[0]
        ):
            return True
        eqn = producers.get(eqn.invars[0])
    return False
