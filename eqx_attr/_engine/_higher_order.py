"""Higher-order primitives: evaluate their bodies with the same rules.

`jit` and `custom_jvp_call`/`custom_vjp_call` bodies are inlined, `checkpoint`
stays a `jax.checkpoint` of the evaluated body, and `scan`, `while` and `cond`
become the same loop or branch over bodies evaluated by the interpreter (step 4
of `_interpreter`'s docstring). The interpreter finds them in [`HIGHER_ORDER`][]
and calls them through [`descend`][].
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from . import _jax_internals as ji
from ._streams import Act, any_act


@runtime_checkable
class Evaluator(Protocol):
    """What a higher-order handler needs of the `_interpreter.Interpreter`.

    (A protocol, so that this module does not import the interpreter, which
    imports it.)
    """

    @property
    def streams(self) -> int | None: ...

    def eval_jaxpr(
        self, jaxpr: Any, consts: Sequence, args: Sequence, scope: Any = None
    ) -> list: ...

    def promote(self, value: Any) -> Act: ...

    def no_rule(self, eqn: Any, what: str, why: str = "") -> Exception: ...

    def scopes(self, eqn: Any, scope: Any) -> list: ...


def _jit(interp: Evaluator, eqn: Any, invals: list, scopes=None) -> list:
    # Inlined: a jit boundary has no effect on values or derivatives.
    (jaxpr, consts), *_ = ji.sub_jaxprs(eqn)
    return interp.eval_jaxpr(jaxpr, consts, invals, (scopes or [None])[0])


def _custom(interp: Evaluator, eqn: Any, invals: list, scopes=None) -> list:
    # The body is evaluated with the rules; its own derivative rule is dropped,
    # as the rules define the backward pass. (The ReLU swap refuses this instead.)
    closed = eqn.params["call_jaxpr"]
    scope = (scopes or [None])[0]
    return interp.eval_jaxpr(closed.jaxpr, closed.consts, invals, scope)


def _remat(interp: Evaluator, eqn: Any, invals: list, scopes=None) -> list:
    (jaxpr, consts), *_ = ji.sub_jaxprs(eqn)
    scope = (scopes or [None])[0]
    p = eqn.params

    def body(*args):
        return interp.eval_jaxpr(jaxpr, consts, list(args), scope)

    ckpt = jax.checkpoint(body, prevent_cse=p["prevent_cse"], policy=p["policy"])
    return list(ckpt(*invals))


def _scan(interp: Evaluator, eqn: Any, invals: list, scopes=None) -> list:
    (jaxpr, consts), *_ = ji.sub_jaxprs(eqn)
    scope = (scopes or [None])[0]
    p = eqn.params
    nc, ncarry = p["num_consts"], p["num_carry"]
    c, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]
    tracked = interp.streams is not None and any_act(invals)
    if tracked:  # the carry's type must not change between iterations
        init = [interp.promote(v) for v in init]
    # A tracked scanned-over input has its streams first: scan over axis 1.
    xs = [jnp.moveaxis(v.streams, 0, 1) if isinstance(v, Act) else v for v in xs]
    is_act = [isinstance(v, Act) for v in invals[nc + ncarry :]]

    def step(carry, x):
        x = [Act(v) if a else v for v, a in zip(x, is_act, strict=True)]
        out = interp.eval_jaxpr(jaxpr, consts, [*c, *carry, *x], scope)
        new = out[:ncarry]
        if tracked:
            new = [interp.promote(v) for v in new]
        ys = [interp.promote(v) if tracked else v for v in out[ncarry:]]
        ys = [v.streams if isinstance(v, Act) else v for v in ys]
        return new, ys

    carry, ys = jax.lax.scan(
        step, list(init), list(xs), length=p["length"], reverse=p["reverse"],
        unroll=p["unroll"],
    )  # fmt: skip
    ys = [Act(jnp.moveaxis(v, 1, 0)) if tracked else v for v in ys]
    return [*carry, *ys]


def _plain_predicate(interp: Evaluator, eqn: Any, value: Any) -> Any:
    """A loop or branch predicate; one that depends on the input must agree on
    every stream, which holds only for a single stream."""
    if not isinstance(value, Act):
        return value
    if value.streams.shape[0] != 1:
        raise interp.no_rule(
            eqn,
            f"a `{eqn.primitive.name}` whose predicate depends on the input",
            "the input and the reference would take different branches",
        )
    return value.streams[0]


def _while(interp: Evaluator, eqn: Any, invals: list, scopes=None) -> list:
    p = eqn.params
    cj, bj = p["cond_jaxpr"], p["body_jaxpr"]
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cc, bc, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
    cscope, bscope = scopes or [None, None]
    tracked = interp.streams is not None and any_act(invals)
    if tracked:
        init = [interp.promote(v) for v in init]

    def cond(s):
        (pred,) = interp.eval_jaxpr(cj.jaxpr, cj.consts, [*cc, *s], cscope)
        return _plain_predicate(interp, eqn, pred)

    def body(s):
        out = interp.eval_jaxpr(bj.jaxpr, bj.consts, [*bc, *s], bscope)
        return [interp.promote(v) for v in out] if tracked else out

    return list(jax.lax.while_loop(cond, body, list(init)))


def _cond(interp: Evaluator, eqn: Any, invals: list, scopes=None) -> list:
    index, ops = _plain_predicate(interp, eqn, invals[0]), invals[1:]
    subs = ji.sub_jaxprs(eqn)
    scopes = scopes or [None] * len(subs)
    tracked = interp.streams is not None and any_act(ops)

    def branch(jaxpr, consts, scope, *args):
        out = interp.eval_jaxpr(jaxpr, consts, list(args), scope)
        return [interp.promote(v) for v in out] if tracked else out

    branches = [
        functools.partial(branch, j, c, s)
        for (j, c), s in zip(subs, scopes, strict=True)
    ]
    return list(jax.lax.switch(index, branches, *ops))


HIGHER_ORDER: dict[str, Callable] = {
    **{n: _jit for n in ji.JIT},
    **{n: _remat for n in ji.REMAT},
    **{n: _custom for n in ji.CUSTOM},
    ji.SCAN: _scan,
    ji.WHILE: _while,
    ji.COND: _cond,
}


def descend(interp: Evaluator, eqn: Any, invals: list, scope: Any = None) -> list:
    """Evaluate a higher-order `eqn` with its bodies under the rules, passing the
    static facts `scope` down (for a `match` hook that returns it)."""
    fn = HIGHER_ORDER[eqn.primitive.name]
    # A body traced inside jax or Equinox (`jnp.cumsum`'s jit) has no frame of
    # the model's own: its errors name where the model made this call instead.
    with ji.calling(eqn):
        return fn(interp, eqn, invals, interp.scopes(eqn, scope))
