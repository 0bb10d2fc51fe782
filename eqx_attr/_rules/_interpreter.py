"""The rule engine: evaluate a traced program with a table of rules.

A model call is traced to a jaxpr (its weights as inputs, see [`trace`][]) and
evaluated again, equation by equation, by an [`Interpreter`][]. Each equation is
looked up, in order, in:

1. the client's `match` hook (patterns spanning one or several equations, e.g. a
   ReLU written as `jnp.where(x > 0, x, 0)`, or the equations of `jax.nn.gelu`);
2. in tracked mode (`streams` set), equations with no input that depends on the
   explained input are bound unchanged: they are constants (weights, targets);
3. the client's `table`, from primitive name to [`Handler`][];
4. the built-in handlers of the higher-order primitives (`jit`, `checkpoint`,
   `custom_jvp_call`/`custom_vjp_call` bodies, `scan`, `while`, `cond`), which
   evaluate their bodies with the same rules;
5. in tracked mode, equations that carry no gradient (no floating input that
   depends on the input, or no floating output) are evaluated on every stream;
6. the names in `plain` (an explicit opt-in), evaluated unchanged on every stream;
7. `fallback`, or else a [`NoRuleError`][] naming the primitive, where the model
   calls it, and how to proceed.

In tracked mode, a value that depends on the explained input is an [`Act`][]: its
`streams` stacked on a leading axis (one stream for LRP; two, the input and the
reference, for DeepLIFT, so every equation is evaluated on both and a rule sees
both). The interpreter runs at trace time, so the result stays jit-able,
vmap-able and differentiable; a rule changes derivatives by returning values
from a `jax.custom_vjp`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _jax_internals as ji


class Act(NamedTuple):
    """A value that depends on the explained input: one array per stream, stacked.

    `streams[0]` is the input's stream; `streams[1]` (DeepLIFT) the reference's.
    """

    streams: jax.Array


# `handler(interp, eqn, invals) -> outvals`, one value per `eqn.outvars`.
Handler = Callable[["Interpreter", Any, list], list]


@dataclasses.dataclass(frozen=True)
class Unit:
    """What a `match` hook found: `handler` for the next `length` equations.

    With `region=False` (then `length == 1`) the handler is an ordinary
    [`Handler`][]. With `region=True`, the `length` equations form one region
    with exactly one input and one output that matter (see
    [`region_function`][]), and the handler is called as
    `handler(interp, fn, [input]) -> [output]`, `fn` being the region as a plain
    function of its input.
    """

    handler: Handler
    length: int = 1
    region: bool = False


class NoRuleError(ValueError):
    """An operation on the explained input that the method has no rule for."""


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """Evaluates jaxprs with a table from primitive name to handler.

    **Arguments:**

    - `table`: primitive name -> [`Handler`][].
    - `method`: the method's name, for error messages.
    - `streams`: `None` (plain values), or how many streams tracked values carry.
    - `match`: `(interp, eqns, i, scope) -> Unit | None`, consulted first.
    - `enter`: `(eqn, scope) -> [scope per sub-jaxpr]`: static facts passed down
        to sub-jaxprs (the ReLU matcher's); `scope` is None without it.
    - `plain`: primitive names the user accepted with their plain derivative.
    - `fallback`: handler for every other primitive; `None` raises.
    - `hint`: how to proceed, appended to a [`NoRuleError`][].
    """

    table: Mapping[str, Handler]
    method: str
    streams: int | None = None
    match: Callable[..., Unit | None] | None = None
    enter: Callable[[Any, Any], list] | None = None
    plain: frozenset[str] = frozenset()
    fallback: Handler | None = None
    hint: str = ""

    # -- evaluation ---------------------------------------------------------------

    def eval_jaxpr(self, jaxpr: Any, consts: Sequence, args: Sequence, scope=None):
        """Evaluate `jaxpr` on `args` (values or [`Act`][]s) with the rules."""
        env: dict = {}

        def read(atom):
            return atom.val if isinstance(atom, ji.Literal) else env[atom]

        env.update(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        eqns = jaxpr.eqns
        i = 0
        while i < len(eqns):
            unit = None if self.match is None else self.match(self, eqns, i, scope)
            if unit is not None and unit.region:
                region = eqns[i : i + unit.length]
                later = [*eqns[i + unit.length :], jaxpr.outvars]
                ins, outs = region_boundary(region, later)
                if len(ins) != 1 or len(outs) != 1:
                    raise self.no_rule(
                        region[0],
                        f"a region of {len(region)} equations with {len(ins)} inputs "
                        f"and {len(outs)} outputs",
                        "a region rule needs one input and one output",
                    )
                fn = region_function(region, later)
                (val,) = unit.handler(self, fn, [read(ins[0])])
                env[outs[0]] = val
                i += unit.length
                continue
            eqn = eqns[i]
            invals = [read(v) for v in eqn.invars]
            if unit is not None:
                handler = unit.handler
            else:
                handler = self.lookup(eqn, invals, scope)
            outs = handler(self, eqn, invals)
            env.update(zip(eqn.outvars, outs, strict=True))
            i += 1
        return [read(v) for v in jaxpr.outvars]

    def lookup(self, eqn: Any, invals: list, scope: Any = None) -> Handler:
        """The handler for one equation (steps 2 to 7 of the module docstring)."""
        name = eqn.primitive.name
        tracked = self.streams is not None
        if tracked and not any(isinstance(v, Act) for v in invals):
            return bind_plain
        if name in self.table:
            return self.table[name]
        if name in HIGHER_ORDER:
            return functools.partial(descend, scope=scope)
        if tracked and not carries_gradient(eqn, invals):
            return on_streams
        if name in self.plain:
            return on_streams if tracked else bind_plain
        if self.fallback is not None:
            return self.fallback
        raise self.no_rule(eqn, f"the `{name}` primitive")

    def no_rule(self, eqn: Any, what: str, why: str = "") -> NoRuleError:
        """The error for an operation without a rule (see the module docstring)."""
        why = f" ({why})" if why else ""
        return NoRuleError(
            f"{self.method} has no rule for {what}{why}, called at "
            f"{ji.where(eqn)}. {self.hint}".rstrip()
        )

    def scopes(self, eqn: Any, scope: Any) -> list:
        subs = ji.sub_jaxprs(eqn)
        if self.enter is None:
            return [None] * len(subs)
        return self.enter(eqn, scope)

    def promote(self, value: Any) -> Act:
        """A constant as an [`Act`][] (the same value on every stream)."""
        if isinstance(value, Act):
            return value
        v = jnp.asarray(value)
        return Act(jnp.broadcast_to(v, (self.streams or 1, *v.shape)))


# ---------------------------------------------------------------------------------
# Generic handlers


def bind_plain(interp: Interpreter, eqn: Any, invals: list) -> list:
    """Evaluate `eqn` unchanged (on plain values)."""
    return ji.bind(eqn, invals)


def map_streams(fn: Callable[[list], list], invals: list) -> list:
    """Apply `fn` (plain values -> plain values) to every stream of the [`Act`][]s.

    Constants are shared by the streams; every output becomes an `Act`.
    """
    acts = [i for i, v in enumerate(invals) if isinstance(v, Act)]
    if not acts:
        return fn(invals)

    def one(*arrays):
        merged = list(invals)
        for i, a in zip(acts, arrays, strict=True):
            merged[i] = a
        return fn(merged)

    n = invals[acts[0]].streams.shape[0]
    if n == 1:  # no vmap for a single stream: a cheaper trace, the same program
        outs = one(*(invals[i].streams[0] for i in acts))
        return [Act(jnp.expand_dims(o, 0)) for o in outs]
    outs = jax.vmap(one)(*(invals[i].streams for i in acts))
    return [Act(o) for o in outs]


def on_streams(interp: Interpreter, eqn: Any, invals: list) -> list:
    """Evaluate `eqn` unchanged on every stream (a linear operation's rule)."""
    return map_streams(lambda vals: ji.bind(eqn, vals), invals)


def carries_gradient(eqn: Any, invals: list) -> bool:
    """Whether a derivative can flow through `eqn` from a tracked input."""
    floats = lambda aval: jnp.issubdtype(aval.dtype, jnp.inexact)
    tracked_float = any(
        isinstance(v, Act) and floats(a.aval)
        for v, a in zip(invals, eqn.invars, strict=True)
    )
    return tracked_float and any(floats(o.aval) for o in eqn.outvars)


def region_boundary(region: Sequence, later: Sequence) -> tuple[list, list]:
    """The variables a region of equations reads from outside and writes for later.

    `later` holds the equations after the region, then the jaxpr's outvars.
    """
    defined = {v for e in region for v in e.outvars}
    inputs = []
    for e in region:
        for v in e.invars:
            if not isinstance(v, ji.Literal) and v not in defined and v not in inputs:
                inputs.append(v)
    used = set()
    for item in later:
        atoms = item if isinstance(item, (list, tuple)) else item.invars
        used.update(a for a in atoms if not isinstance(a, ji.Literal))
    outputs = [v for e in region for v in e.outvars if v in used]
    return inputs, outputs


def region_function(region: Sequence, later: Sequence) -> Callable:
    """The region as a plain function of its one input (to one output)."""
    (inp,), (out,) = region_boundary(region, later)

    def fn(x):
        env = {inp: x}
        read = lambda a: a.val if isinstance(a, ji.Literal) else env[a]
        for e in region:
            outs = ji.bind(e, [read(v) for v in e.invars])
            env.update(zip(e.outvars, outs, strict=True))
        return env[out]

    return fn


# ---------------------------------------------------------------------------------
# Higher-order primitives: evaluate the bodies with the same rules


def _inline(interp: Interpreter, eqn: Any, invals: list, scope: Any = None) -> list:
    ((jaxpr, consts),) = ji.sub_jaxprs(eqn)[:1]
    return interp.eval_jaxpr(jaxpr, consts, invals, scope)


def _jit(interp: Interpreter, eqn: Any, invals: list, scopes=None) -> list:
    # Inlined: a jit boundary has no effect on values or derivatives.
    (jaxpr, consts), *_ = ji.sub_jaxprs(eqn)
    return interp.eval_jaxpr(jaxpr, consts, invals, (scopes or [None])[0])


def _custom(interp: Interpreter, eqn: Any, invals: list, scopes=None) -> list:
    # The body is evaluated with the rules; its own derivative rule is dropped,
    # as the rules define the backward pass. (The ReLU swap refuses this instead.)
    closed = eqn.params["call_jaxpr"]
    scope = (scopes or [None])[0]
    return interp.eval_jaxpr(closed.jaxpr, closed.consts, invals, scope)


def _remat(interp: Interpreter, eqn: Any, invals: list, scopes=None) -> list:
    (jaxpr, consts), *_ = ji.sub_jaxprs(eqn)
    scope = (scopes or [None])[0]
    p = eqn.params

    def body(*args):
        return interp.eval_jaxpr(jaxpr, consts, list(args), scope)

    ckpt = jax.checkpoint(body, prevent_cse=p["prevent_cse"], policy=p["policy"])
    return list(ckpt(*invals))


def _any_act(values: Sequence) -> bool:
    return any(isinstance(v, Act) for v in values)


def _scan(interp: Interpreter, eqn: Any, invals: list, scopes=None) -> list:
    (jaxpr, consts), *_ = ji.sub_jaxprs(eqn)
    scope = (scopes or [None])[0]
    p = eqn.params
    nc, ncarry = p["num_consts"], p["num_carry"]
    c, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]
    tracked = interp.streams is not None and _any_act(invals)
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


def _plain_predicate(interp: Interpreter, eqn: Any, value: Any) -> Any:
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


def _while(interp: Interpreter, eqn: Any, invals: list, scopes=None) -> list:
    p = eqn.params
    cj, bj = p["cond_jaxpr"], p["body_jaxpr"]
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cc, bc, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
    cscope, bscope = scopes or [None, None]
    tracked = interp.streams is not None and _any_act(invals)
    if tracked:
        init = [interp.promote(v) for v in init]

    def cond(s):
        (pred,) = interp.eval_jaxpr(cj.jaxpr, cj.consts, [*cc, *s], cscope)
        return _plain_predicate(interp, eqn, pred)

    def body(s):
        out = interp.eval_jaxpr(bj.jaxpr, bj.consts, [*bc, *s], bscope)
        return [interp.promote(v) for v in out] if tracked else out

    return list(jax.lax.while_loop(cond, body, list(init)))


def _cond(interp: Interpreter, eqn: Any, invals: list, scopes=None) -> list:
    index, ops = _plain_predicate(interp, eqn, invals[0]), invals[1:]
    subs = ji.sub_jaxprs(eqn)
    scopes = scopes or [None] * len(subs)
    tracked = interp.streams is not None and _any_act(ops)

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


def descend(interp: Interpreter, eqn: Any, invals: list, scope: Any = None) -> list:
    """Evaluate a higher-order `eqn` with its bodies under the rules, passing the
    static facts `scope` down (for a `match` hook that returns it)."""
    fn = HIGHER_ORDER[eqn.primitive.name]
    return fn(interp, eqn, invals, interp.scopes(eqn, scope))


# ---------------------------------------------------------------------------------
# Tracing a call


@dataclasses.dataclass(frozen=True)
class Traced:
    """A traced call: its jaxpr, its flat inputs, and how to rebuild its output."""

    closed: Any
    leaves: list
    paths: list
    out_tree: Any

    def output(self, flat: Sequence) -> Any:
        return jax.tree_util.tree_unflatten(self.out_tree, list(flat))


def trace(fn: Callable, *args: Any, **kwargs: Any) -> Traced:
    """Trace `fn(*args, **kwargs)` with every array leaf (the model's weights too)
    as an input of the jaxpr, so the weights never become captured constants
    (which would leak the tracers of an enclosing jit or grad).

    `paths[i]` is the key path of flat input `i` within `(fn, args, kwargs)`.
    """
    dynamic, static = eqx.partition((fn, args, kwargs), eqx.is_array)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(dynamic)
    paths = [p for p, _ in with_path]
    leaves = [v for _, v in with_path]

    def flat_call(*flat):
        f, a, k = eqx.combine(jax.tree_util.tree_unflatten(treedef, flat), static)
        return f(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_call, return_shape=True)(*leaves)
    out_tree = jax.tree_util.tree_structure(out_shape)
    return Traced(closed, leaves, paths, out_tree)


def run(interp: Interpreter, traced: Traced, flat: Sequence, scope: Any = None):
    """Evaluate a [`Traced`][] call on `flat` inputs with the rules (flat outputs)."""
    c = traced.closed
    return interp.eval_jaxpr(c.jaxpr, c.consts, list(flat), scope)
