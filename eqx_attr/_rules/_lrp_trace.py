"""LRP's rule table on the engine: a rule on every linear operation of the jaxpr.

The model (after the PyTree canonizers) is traced to a jaxpr (`_engine._trace`)
and evaluated again by the engine's one interpreter (`_engine._interpreter`) as a
one-stream client: every value that depends on the input is an *activation*, an
`Act` with one stream. Each equation touching an activation is evaluated
according to the table below; the fusions (a layer with its bias, a batch norm
folded into its layer) are found by the `match` hook, every other case is a
handler of the table, and `jit` bodies are evaluated with the same rules:

- linear operations with one activation operand (`dot_general`: dense layers,
  `x @ w`, `einsum`; `conv_general_dilated`: convolutions) get the composite's rule
  for their kind, with a following `add` of a constant fused in as their bias
  (looking through `squeeze`/`reshape`-like steps in between, as `eqx.nn.Conv`
  does), and an `eqx.nn.BatchNorm` in inference mode right after them folded in
  (`_lrp_bn`);
- sums of two activations, `reduce_sum` (`jnp.mean`, `jnp.sum`) and
  `reduce_window_sum` (average pools) get the composite's `norm_rule`;
- activations (`jax.nn.relu`, `relu6`, `softplus`, `silu`, `sigmoid`,
  `jnp.maximum(x, 0)`, `tanh`, `logistic`) and products or quotients with a
  constant pass the relevance through unchanged;
- shape-only operations and max pools keep their gradient (relevance is moved or
  routed to the winner, never rescaled);
- rules attached in the PyTree (overrides, pools) are kept as they are;
- anything else raises, naming the operation and where the model calls it.

Everything runs at trace time: the result is jit-able, vmap-able and
differentiable, and each operation's backward pass is a `jax.custom_vjp`.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

import jax.numpy as jnp

from .._engine import _interpreter as it, _jax_internals as ji
from ._lrp_bn import (
    fold as _bn_fold,
    in_batch_norm,
    match as _bn_match,
    training_error,
    unmerged_error,
)
from ._lrp_composites import AbstractComposite
from ._lrp_rules import LAYER_TAG, RULE_TAG, Pass, apply_rule

_LINEAR = {"dot_general": "linear", "conv_general_dilated": "conv"}
_NORM = ("reduce_sum", "reduce_window_sum")
# Operations that move, copy or select values: their gradient moves the relevance
# with them (a max pool routes it to the winner).
_STRUCTURAL = (
    "reshape",
    "squeeze",
    "expand_dims",
    "broadcast_in_dim",
    "transpose",
    "convert_element_type",
    "copy",
    "copy_p",
    "slice",
    "dynamic_slice",
    "gather",
    "concatenate",
    "pad",
    "rev",
    "reduce_max",
    "reduce_window_max",
)
# Steps allowed between a linear operation and the `add` of its bias.
_CHAIN = ("squeeze", "reshape", "expand_dims", "transpose", "convert_element_type")
_ACTIVATION_CALLS = ("relu", "relu6", "softplus", "silu", "sigmoid")
_ACTIVATION_PRIMS = ("tanh", "logistic")
_SCALE = ("mul", "div", "neg")


def _is_float(aval: Any) -> bool:
    return jnp.issubdtype(getattr(aval, "dtype", jnp.int32), jnp.floating)


def _plain(value: Any) -> Any:
    """The value of the one stream of an `Act`, or the constant itself."""
    return value.streams[0] if isinstance(value, it.Act) else value


def _wrap(eqn, outs: list) -> list:
    """An equation's outputs on an activation: its floating ones are activations."""
    return [
        it.Act(jnp.expand_dims(o, 0)) if _is_float(v.aval) else o
        for v, o in zip(eqn.outvars, outs, strict=True)
    ]


def _is_act(value: Any, atom: Any) -> bool:
    """Whether `atom`, of value `value`, is an activation: a floating value that
    depends on the input (an `Act`)."""
    return isinstance(value, it.Act) and _is_float(atom.aval)


def _flags(eqn, invals: list) -> list[bool]:
    """Which operands of `eqn` are activations."""
    return [_is_act(v, a) for v, a in zip(invals, eqn.invars, strict=True)]


class _Acts:
    """`var in acts`: whether `var` is an activation of the frame (computed, or
    promised by a batch-norm fold evaluated later)."""

    def __init__(self, frame: it.Frame):
        self.frame = frame

    def __contains__(self, var: Any) -> bool:
        f = self.frame
        if f.promised(var):
            return True
        return f.has(var) and _is_act(f.read(var), var)


def _tag(eqn) -> str | None:
    name = ji.fn_name(eqn.params.get("call_jaxpr"))
    return name if name in (LAYER_TAG, RULE_TAG) else None


def _call_name(eqn) -> str:
    return str(eqn.params.get("name") or ji.fn_name(eqn.params.get("call_jaxpr")))


def _follow(jaxpr, i: int, uses: dict, act: Container, terminals: tuple):
    """The equation that completes linear equation `i`, if there is one.

    Follows single-use shape steps (`_CHAIN`) from the equation's output to an
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
        if eqn.primitive.name in _CHAIN and len(eqn.invars) == 1:
            chain.append(eqn)
            var = eqn.outvars[0]
            continue
        if eqn.primitive.name not in terminals or len(eqn.invars) != 2:
            return None
        pos = 0 if eqn.invars[0] is var else 1
        other = eqn.invars[1 - pos]
        if not isinstance(other, ji.Literal) and other in act:
            return None
        if eqn.outvars[0].aval.shape != var.aval.shape:
            return None
        if eqn.primitive.name == "div" and pos != 0:
            return None
        return chain, eqn, pos


def _fused_fn(eqn, xpos: int, chain: list, end, bpos: int) -> Callable:
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


class _Lrp:
    """One LRP pass: the composite's rules as the handlers of the engine's
    interpreter (one stream), the fusions as its `match` hook."""

    def __init__(self, composite: AbstractComposite, allow: frozenset, name, model):
        self.composite = composite
        self.allow = allow
        self.name = name
        self.model = model  # to name the batch norms of an error
        self.first_done = False
        checked = self._checked
        table: dict[str, it.Handler] = {p: self._moved for p in _STRUCTURAL}
        # Higher-order primitives other than `jit` have no rule (their bodies are
        # not evaluated with the rules), except the rules' own tagged calls.
        for p in (*ji.REMAT, *ji.CUSTOM, ji.SCAN, ji.WHILE, ji.COND):
            table[p] = checked(self._unknown)
        table["custom_vjp_call"] = checked(self._tagged)
        table["custom_jvp_call"] = checked(self._activation_call)
        for p in _ACTIVATION_PRIMS:
            table[p] = checked(self._activation)
        table["max"] = checked(self._maximum)
        for p in _SCALE:
            table[p] = checked(self._scale)
        table["add"] = checked(self._add)
        self.interp = it.Interpreter(
            table=table,
            method="LRP",
            streams=1,
            match=self.match,
            fallback=checked(self._unknown),
        )

    # -- errors ---------------------------------------------------------------------

    def no_rule(self, eqn, what: str) -> it.NoRuleError:
        prim = eqn.primitive.name
        return it.NoRuleError(
            f"LRP has no rule for {what} (`{prim}`) at {ji.where(eqn)} in the forward "
            f"pass of {self.name}; it would silently fall back to the plain gradient. "
            "To proceed, either give the layer that calls it a rule with "
            "`overrides=((lambda m: m.that_layer, xa.lrp.Epsilon()),)` (any rule in "
            "`xa.lrp`; `xa.lrp.Pass()` for an elementwise operation), or accept the "
            "plain gradient through this operation type with "
            f"`allow_gradient=('{prim}',)`."
        )

    # -- the match hook: what is evaluated as one unit ------------------------------

    def match(self, interp: it.Interpreter, frame: it.Frame, i: int, scope) -> Any:
        eqn = frame[i]
        prim = eqn.primitive.name
        flags = _flags(eqn, [frame.read(v) for v in eqn.invars])
        if not any(flags):
            return it.Unit(self._constant)
        if prim in ji.JIT:
            return None  # inlined by the interpreter: its body gets these rules
        if prim in self.allow:
            return it.Unit(self._moved)
        if prim in _LINEAR:
            return self._linear(frame, i, flags)
        if prim in _NORM:
            return self._norm(frame, i, flags)
        return None  # the table

    def _layer_rule(self, eqn):
        """The composite's rule for linear equation `eqn` (the first layer's, once)."""
        kind = _LINEAR[eqn.primitive.name]
        rule = None
        if not self.first_done:
            rule = self.composite.first_rule(kind)
            self.first_done = rule is not None
        return self.composite.layer_rule(kind) if rule is None else rule

    def _linear(self, frame: it.Frame, i: int, flags: list) -> it.Unit:
        """A linear equation with its rule: fused with the batch norm after it, or
        with its bias `add` (and the shape steps in between)."""
        eqn, acts = frame[i], _Acts(frame)
        m = _bn_match(frame.jaxpr, i, flags, frame.uses, acts, frame.producers)
        if m is not None:
            rule = self._layer_rule(eqn)
            read = lambda atom: _plain(frame.read(atom))

            def fold(interp, eqn, invals):
                # Evaluated at the batch norm's last equation, when every constant
                # of the batch norm has been computed.
                x, w = _plain(invals[m.xpos]), _plain(invals[1 - m.xpos])
                fn, weight, bias = _bn_fold(m, w, read)
                return [
                    it.Act(jnp.expand_dims(apply_rule(rule, fn, x, weight, bias), 0))
                ]

            fuses = (*m.chain, *([m.bias] if m.bias is not None else []))
            fuses += tuple(t[0] for t in m.tail[:-1])
            return it.Unit(fold, fuses=fuses, outvars=(m.out,), at=m.last)
        if all(flags):
            raise self.no_rule(eqn, "a product of two activations")
        rule = self._layer_rule(eqn)

        def layer(fn, x, others, b):
            # The rule modifies the weight (the other operand) and the bias `b`.
            (w,) = others
            return apply_rule(rule, lambda x_, w_, b_: fn(x_, (w_,), b_), x, w, b)

        return self._fused(frame, i, flags, ("add",), layer)

    def _norm(self, frame: it.Frame, i: int, flags: list) -> it.Unit:
        """A sum or a sum pool, fused with a following division (a mean): the
        composite's `norm_rule`."""
        rule = self.composite.norm_rule()
        # The count is part of the operation, not a weight: no rule modifies it (as
        # Zennit's rules leave a pool's forward pass alone). It is a constant, so
        # the closure holds no value being differentiated.

        def norm(fn, x, others, count):
            return apply_rule(rule, lambda x_, w_, b_: fn(x_, (), count), x)

        return self._fused(frame, i, flags, ("div", "mul"), norm)

    def _fused(self, frame, i, flags, terminals, apply) -> it.Unit:
        """Equation `i` completed by its terminal (see `_follow`), as one unit:
        `apply(fn, x, w, b)` with `fn(x, w, b)` the fused operation, `b` the
        terminal's constant operand (a bias, a mean's count), `w` the tuple of the
        equation's other operands."""
        eqn = frame[i]
        xpos = flags.index(True)
        found = _follow(frame.jaxpr, i, frame.uses, _Acts(frame), terminals)
        chain, end, bpos = found if found is not None else ([], None, 0)
        const = None if end is None else _plain(frame.read(end.invars[1 - bpos]))
        fn = _fused_fn(eqn, xpos, chain, end, bpos)

        def handler(interp, eqn, invals):
            invals = [_plain(v) for v in invals]
            others = tuple(v for k, v in enumerate(invals) if k != xpos)
            return [it.Act(jnp.expand_dims(apply(fn, invals[xpos], others, const), 0))]

        out = eqn.outvars[0] if end is None else end.outvars[0]
        fuses = (*chain, *([end] if end is not None else []))
        return it.Unit(handler, fuses=fuses, outvars=(out,))

    # -- the table: one equation with an activation operand -------------------------

    def _constant(self, interp, eqn, invals: list) -> list:
        """No activation operand: evaluated unchanged, a constant."""
        return ji.bind(eqn, [_plain(v) for v in invals])

    def _moved(self, interp, eqn, invals: list) -> list:
        """Moved, copied or selected values (or an accepted plain gradient)."""
        return _wrap(eqn, ji.bind(eqn, [_plain(v) for v in invals]))

    def _checked(self, rule: Callable) -> it.Handler:
        """`rule(eqn, values, flags)`, after the checks every rule shares."""

        def handler(interp, eqn, invals: list) -> list:
            flags = _flags(eqn, invals)
            values = [_plain(v) for v in invals]
            if not any(_is_float(v.aval) for v in eqn.outvars):
                return ji.bind(eqn, values)  # comparisons, argmax: no gradient flows
            if in_batch_norm(eqn):
                if eqn.primitive.name.startswith(("reduce", "psum", "pmean", "pmax")):
                    at = f" (its batch statistics are taken at {ji.where(eqn)})"
                    raise training_error(self.model, self.name, at)
                raise unmerged_error(eqn, self.name)
            return _wrap(eqn, rule(eqn, values, flags))

        return handler

    def _unknown(self, eqn, values: list, flags: list) -> list:
        raise self.no_rule(eqn, "this operation")

    def _tagged(self, eqn, values: list, flags: list) -> list:
        """A rule attached in the PyTree (overrides, pools): kept as it is."""
        if _tag(eqn) is None:
            return self._unknown(eqn, values, flags)
        if _tag(eqn) == LAYER_TAG:
            self.first_done = True
        return ji.bind(eqn, values)

    def _activation_call(self, eqn, values: list, flags: list) -> list:
        if _call_name(eqn) not in _ACTIVATION_CALLS or len(values) != 1:
            raise self.no_rule(eqn, f"the function `{_call_name(eqn)}`")
        return self._activation(eqn, values, flags)

    def _activation(self, eqn, values: list, flags: list) -> list:
        fn = lambda x, w, b: ji.bind(eqn, [x])[0]
        return [apply_rule(Pass(), fn, values[0])]

    def _maximum(self, eqn, values: list, flags: list) -> list:
        if all(flags):
            return self._unknown(eqn, values, flags)
        return self._pass_with_constant(eqn, values, flags, "a maximum")

    def _scale(self, eqn, values: list, flags: list) -> list:
        prim = eqn.primitive.name
        if (len(flags) == 2 and all(flags)) or (prim == "div" and flags[1]):
            raise self.no_rule(eqn, f"a `{prim}` of two activations")
        return self._pass_with_constant(eqn, values, flags, "a scaling")

    def _add(self, eqn, values: list, flags: list) -> list:
        if all(flags):
            rule = self.composite.norm_rule()
            fn = lambda x, w, b: ji.bind(eqn, list(x))[0]
            return [apply_rule(rule, fn, tuple(values))]
        raise self.no_rule(
            eqn,
            "an addition of a constant to an activation that is not the bias of a "
            "linear layer (e.g. a batch norm that does not follow a convolution)",
        )

    def _pass_with_constant(self, eqn, values, flags, what) -> list:
        xpos = flags.index(True)
        x = values[xpos]
        if jnp.shape(x) != eqn.outvars[0].aval.shape:
            raise self.no_rule(eqn, f"{what} that changes the activation's shape")
        others = [v for k, v in enumerate(values) if k != xpos]

        def fn(x_, w, b):
            ops = list(w)
            ops.insert(xpos, x_)
            return ji.bind(eqn, ops)[0]

        return [apply_rule(Pass(), fn, x, tuple(others))]


def run(
    model: Callable, x: Any, composite: AbstractComposite, allow: frozenset, name: str
) -> Any:
    """`model(x)`, with LRP rules attached to every operation on the activations."""
    traced = it.trace(model, x)  # the model's arrays, then `x`, as jaxpr inputs
    lrp = _Lrp(composite, frozenset(allow), name, model)
    flat = [*traced.leaves[:-1], it.Act(jnp.expand_dims(traced.leaves[-1], 0))]
    outs = it.run(lrp.interp, traced, flat)
    return traced.output([_plain(o) for o in outs])
