"""The rule engine: evaluate a traced program with a table of rules.

A model call is traced to a jaxpr (its weights as inputs, see [`trace`][]) and
evaluated again, equation by equation, by an [`Interpreter`][]. Each equation is
looked up, in order, in:

1. the client's `match` hook (patterns spanning one or several equations, e.g. a
   ReLU written as `jnp.where(x > 0, x, 0)`, the equations of `jax.nn.gelu`, or a
   layer fused with its bias `add`: see [`Unit`][] and [`Frame`][]);
2. in tracked mode (`streams` set), equations with no input that depends on the
   explained input are bound unchanged: they are constants (weights, targets);
3. the client's `table`, from primitive name to [`Handler`][];
4. the built-in handlers of the higher-order primitives (`jit`, `checkpoint`,
   `custom_jvp_call`/`custom_vjp_call` bodies, `scan`, `while`, `cond`; in
   `_higher_order.py`), which evaluate their bodies with the same rules;
5. in tracked mode, equations that carry no gradient (no floating input that
   depends on the input, or no floating output) are evaluated on every stream;
6. the names in `plain` (an explicit opt-in), evaluated unchanged on every stream;
7. `fallback`, or else a [`NoRuleError`][] naming the primitive, where the model
   calls it, and how to proceed.

In tracked mode, a value that depends on the explained input is an [`Act`][]: its
`streams` stacked on a leading axis (one stream for LRP; two, the input and the
reference, for DeepLIFT, so every equation is evaluated on both and a rule sees
both). Without `streams` (the ReLU swap, the fast-derivative pass) values are
plain. The interpreter runs at trace time, so the result stays jit-able,
vmap-able and differentiable; a rule changes derivatives by returning values
from a `jax.custom_vjp`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp

from . import _jax_internals as ji
from ._higher_order import HIGHER_ORDER, descend as descend
from ._streams import Act as Act, map_streams as map_streams
from ._trace import Traced as Traced, trace as trace

# `handler(interp, eqn, invals) -> outvals`, one value per `eqn.outvars`.
Handler = Callable[["Interpreter", Any, list], list]


@dataclasses.dataclass(frozen=True)
class Unit:
    """What a `match` hook found: `handler` for the next `length` equations.

    With `region=False` (then `length == 1`) the handler is an ordinary
    [`Handler`][], called on the equation's input values. With `region=True`, the
    `length` equations form one region with exactly one input and one output that
    matter (see [`region_function`][]), and the handler is called as
    `handler(interp, fn, [input]) -> [output]`, `fn` being the region as a plain
    function of its input.

    A unit may also stand for later equations, not necessarily adjacent (an
    operation fused with the `add` of its bias, LRP's batch-norm fold):

    - `fuses`: later equations it evaluates too; they are skipped when reached.
    - `outvars`: the variables its handler's outputs go to (default: the
        equation's own `outvars`), e.g. the output of the last fused equation.
    - `at`: a later equation at which the unit is evaluated instead of now (for
        an operation whose constants are computed in between); that equation is
        not evaluated itself. Its `outvars` are [`Frame.promised`][] until then.
    """

    handler: Handler
    length: int = 1
    region: bool = False
    fuses: tuple = ()
    outvars: tuple | None = None
    at: Any = None


class Frame(Sequence):
    """One jaxpr being evaluated, as a `match` hook sees it.

    A sequence of the jaxpr's equations (`frame[i]`, `len(frame)`), with:

    - `jaxpr`: the jaxpr itself;
    - `read(atom)`: the value of a literal or of a variable computed so far;
    - `has(atom)`: whether `read` can give it now;
    - `promised(var)`: whether `var` is an output of a unit deferred to a later
        equation (see [`Unit`][]`.at`);
    - `uses`: variable -> indices of the equations that read it (once per
        operand; `-1` for each output of the jaxpr);
    - `producers`: variable -> the equation that writes it.
    """

    def __init__(self, jaxpr: Any, consts: Sequence, args: Sequence):
        self.jaxpr = jaxpr
        self.env: dict = {}
        self.env.update(zip(jaxpr.constvars, consts, strict=True))
        self.env.update(zip(jaxpr.invars, args, strict=True))
        self._skip: set[int] = set()
        self._deferred: dict[int, tuple[Unit, Any]] = {}
        self._promised: set = set()

    def __getitem__(self, i):  # pyright: ignore[reportIncompatibleMethodOverride]
        return self.jaxpr.eqns[i]

    def __len__(self) -> int:
        return len(self.jaxpr.eqns)

    def read(self, atom: Any) -> Any:
        return atom.val if isinstance(atom, ji.Literal) else self.env[atom]

    def has(self, atom: Any) -> bool:
        return isinstance(atom, ji.Literal) or atom in self.env

    def promised(self, var: Any) -> bool:
        return not isinstance(var, ji.Literal) and var in self._promised

    @functools.cached_property
    def uses(self) -> dict:
        uses: dict = {}
        for i, eqn in enumerate(self.jaxpr.eqns):
            for v in eqn.invars:
                if not isinstance(v, ji.Literal):
                    uses.setdefault(v, []).append(i)
        for v in self.jaxpr.outvars:
            if not isinstance(v, ji.Literal):
                uses.setdefault(v, []).append(-1)
        return uses

    @functools.cached_property
    def producers(self) -> dict:
        return {v: e for e in self.jaxpr.eqns for v in e.outvars}

    def write(self, outvars: Sequence, values: Sequence) -> None:
        self.env.update(zip(outvars, values, strict=True))


class NoRuleError(ValueError):
    """An operation on the explained input that the method has no rule for."""


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """Evaluates jaxprs with a table from primitive name to handler.

    **Arguments:**

    - `table`: primitive name -> [`Handler`][].
    - `method`: the method's name, for error messages.
    - `streams`: `None` (plain values), or how many streams tracked values carry.
    - `match`: `(interp, frame, i, scope) -> Unit | None`, consulted first;
        `frame` is the [`Frame`][] being evaluated (its equations, and the
        values computed so far), `i` the position of the next equation.
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
        frame = Frame(jaxpr, consts, args)
        i = 0
        while i < len(frame):
            eqn = frame[i]
            if id(eqn) in frame._deferred:
                unit, first = frame._deferred.pop(id(eqn))
                self._apply(frame, unit, first)
                i += 1
                continue
            if id(eqn) in frame._skip:
                i += 1
                continue
            unit = None if self.match is None else self.match(self, frame, i, scope)
            if unit is not None and unit.region:
                self._region(frame, i, unit)
                i += unit.length
                continue
            if unit is None:
                invals = [frame.read(v) for v in eqn.invars]
                handler = self.lookup(eqn, invals, scope)
                frame.write(eqn.outvars, handler(self, eqn, invals))
            elif unit.at is not None:
                frame._skip.update(id(e) for e in unit.fuses)
                frame._deferred[id(unit.at)] = (unit, eqn)
                frame._promised.update(unit.outvars or unit.at.outvars)
            else:
                frame._skip.update(id(e) for e in unit.fuses)
                self._apply(frame, unit, eqn)
            i += 1
        return [frame.read(v) for v in jaxpr.outvars]

    def _apply(self, frame: Frame, unit: Unit, eqn: Any) -> None:
        outs = unit.handler(self, eqn, [frame.read(v) for v in eqn.invars])
        outvars = unit.outvars
        if outvars is None:
            outvars = eqn.outvars if unit.at is None else unit.at.outvars
        frame._promised.difference_update(outvars)
        frame.write(outvars, outs)

    def _region(self, frame: Frame, i: int, unit: Unit) -> None:
        region = frame.jaxpr.eqns[i : i + unit.length]
        later = [*frame.jaxpr.eqns[i + unit.length :], frame.jaxpr.outvars]
        ins, outs = region_boundary(region, later)
        if self.streams is not None and not any(
            isinstance(frame.read(v), Act) for v in ins
        ):
            # Computed from constants alone (a prefix of the network held fixed,
            # as the layer methods do): no stream to rescale, plain values.
            for eqn in region:
                invals = [frame.read(v) for v in eqn.invars]
                frame.write(eqn.outvars, bind_plain(self, eqn, invals))
            return
        if len(ins) != 1 or len(outs) != 1:
            raise self.no_rule(
                region[0],
                f"a region of {len(region)} equations with {len(ins)} inputs "
                f"and {len(outs)} outputs",
                "a region rule needs one input and one output",
            )
        fn = region_function(region, later)
        (val,) = unit.handler(self, fn, [frame.read(ins[0])])
        frame.write(outs, [val])

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

    def refuse(self, eqn: Any, invals: list, what: str, why: str = "") -> list:
        """For a handler that cannot serve `eqn`: the plain evaluation when the
        user opted in (`plain`), else raise [`NoRuleError`][]."""
        if eqn.primitive.name in self.plain:
            return on_streams(self, eqn, invals)
        raise self.no_rule(eqn, what, why)

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
# Tracing a call


def run(interp: Interpreter, traced: Traced, flat: Sequence, scope: Any = None):
    """Evaluate a [`Traced`][] call on `flat` inputs with the rules (flat outputs)."""
    c = traced.closed
    return interp.eval_jaxpr(c.jaxpr, c.consts, list(flat), scope)
