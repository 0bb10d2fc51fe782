"""Which equations LRP evaluates as one layer: a linear operation, the shape steps
after it and the `add` of its bias (or the division of a mean), found in the
jaxpr by [`follow`][] and evaluated together by [`fused_fn`][]."""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

from .._engine import _jax_internals as ji

# Steps allowed between a linear operation and the `add` of its bias.
CHAIN = ("squeeze", "reshape", "expand_dims", "transpose", "convert_element_type")


def follow(jaxpr, i: int, uses: dict, act: Container, terminals: tuple):
    """The equation that completes linear equation `i`, if there is one.

    Follows single-use shape steps (`CHAIN`) from the equation's output to an
    equation in `terminals` (the bias `add` of a layer, the `div` of a mean) whose
    other operand is a constant and whose output keeps the shape. Returns the
    steps in between, that equation, and the linear branch's operand position.
    """
    var = jaxpr.eqns[i].outvars[0]
    chain = []
    while True:
        users = uses.get(var, [])
        if len(users) != 1 or users[0] < 0:
            return None
        eqn = jaxpr.eqns[users[0]]
        if eqn.primitive.name in CHAIN and len(eqn.invars) == 1:
            chain.append(eqn)
            var = eqn.outvars[0]
            continue
        if eqn.primitive.name not in terminals or len(eqn.invars) != 2:
            return None
        pos = 0 if eqn.invars[0] is var else 1
        other = eqn.invars[1 - pos]
        if not isinstance(other, ji.Literal) and (
            other in act or not computed_from_constants(jaxpr, other, act)
        ):
            return None
        if eqn.outvars[0].aval.shape != var.aval.shape:
            return None
        if eqn.primitive.name == "div" and pos != 0:
            return None
        return chain, eqn, pos


def computed_from_constants(jaxpr, var: Any, act: Any) -> bool:
    """Whether `var` is a constant: computed already (and not an activation), or
    made later from constants only (a bias broadcast after its layer)."""
    if act.frame.has(var):
        return var not in act
    producers = act.frame.producers
    todo, seen = [var], set()
    while todo:
        v = todo.pop()
        if isinstance(v, ji.Literal) or v in seen:
            continue
        seen.add(v)
        if act.frame.has(v):
            if v in act:
                return False
            continue
        eqn = producers.get(v)
        if eqn is None:
            return False
        todo.extend(eqn.invars)
    return True


def fused_fn(eqn, xpos: int, chain: list, end, bpos: int) -> Callable:
    """`fn(x, w, b)`: equation `eqn` with its operand `xpos` as `x` and the others
    as the tuple `w`, then the shape steps `chain` and the terminal `end` with
    `b` as its constant operand (see `_follow`)."""

    def fn(x, w, b):
        ops = list(w)
        ops.insert(xpos, x)
        (y,) = ji.bind(eqn, ops)
        for step in chain:
            (y,) = ji.bind(step, [y])
        if end is not None and b is not None:  # a rule may drop the bias
            (y,) = ji.bind(end, [y, b] if bpos == 0 else [b, y])
        return y

    return fn
