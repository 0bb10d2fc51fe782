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
- sums and differences of two activations, `reduce_sum` (`jnp.mean`, `jnp.sum`)
  and `reduce_window_sum` (average pools) get the composite's `norm_rule`; an
  activation plus a constant that is not a layer's bias (a positional
  embedding, an offset) gets it too, with the constant as its bias;
- elementwise functions of one activation, found by their primitives however
  they are written (ReLU, GELU, SiLU, softplus, ELU, leaky ReLU, `tanh`, inline
  `jnp.where(x > 0, x, a * x)`, ...: `_engine/_patterns.py`), and products or quotients
  with a constant pass the relevance through unchanged (the identity rule);
- a product or quotient by a normaliser (an operand broadcast from fewer
  values: LayerNorm's `1 / std`) holds the normaliser constant; other products
  of two activations get the composite's `product_rule` and a softmax its
  `softmax_rule` (AttnLRP's; the other composites refuse them);
- `stop_gradient` makes a constant;
- shape-only operations and max pools keep their gradient (relevance is moved or
  routed to the winner, never rescaled);
- rules attached in the PyTree (overrides, pools) are kept as they are;
- anything else raises, naming the operation and where the model calls it.

Everything runs at trace time: the result is jit-able, vmap-able and
differentiable, and each operation's backward pass is a `jax.custom_vjp`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from .._engine import _interpreter as it, _jax_internals as ji
from .._engine._patterns import (
    elementwise_region,
    is_statistic,
    region_fn,
    softmax_region,
)
from ._lrp_bn import (
    fold as _bn_fold,
    in_batch_norm,
    match as _bn_match,
    training_error,
    unmerged_error,
)
from ._lrp_composites import AbstractComposite
from ._lrp_fusion import follow as _follow, fused_fn as _fused_fn
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
    "stack",
    "split",
    "pad",
    "rev",
    "reduce_max",
    "reduce_window_max",
    "select_n",
)
_ACTIVATION_CALLS = ("relu", "relu6", "softplus", "silu", "sigmoid")
_ACTIVATION_PRIMS = ("tanh", "logistic")
_SCALE = ("mul", "div", "neg")
_PRODUCTS = ("mul", "div", "dot_general")
_ATTN_HINT = (
    " For transformers and gated units, `composite=xa.lrp.AttnLRP()` has rules for "
    "products of two activations and for the softmax."
)


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
        table["sub"] = checked(self._add)
        # What `jax.lax.stop_gradient` stops is a constant: no relevance flows back.
        table["stop_gradient"] = self._constant
        self.interp = it.Interpreter(
            table=table,
            method="LRP",
            streams=1,
            match=self.match,
            fallback=checked(self._unknown),
        )

    # -- errors ---------------------------------------------------------------------

    def no_rule(self, eqn, what: str, hint: str = "") -> it.NoRuleError:
        prim = eqn.primitive.name
        return it.NoRuleError(
            f"LRP has no rule for {what} (`{prim}`) at {ji.where(eqn)} in the forward "
            f"pass of {self.name}; it would silently fall back to the plain gradient. "
            "To proceed, either give the layer that calls it a rule with "
            "`overrides=((lambda m: m.that_layer, xa.lrp.Epsilon()),)` (any rule in "
            "`xa.lrp`; `xa.lrp.Pass()` for an elementwise operation), or accept the "
            "plain gradient through this operation type with "
            f"`allow_gradient=('{prim}',)`.{hint}"
        )

    # -- the match hook: what is evaluated as one unit ------------------------------

    def match(self, interp: it.Interpreter, frame: it.Frame, i: int, scope) -> Any:
        eqn = frame[i]
        prim = eqn.primitive.name
        flags = _flags(eqn, [frame.read(v) for v in eqn.invars])
        if not any(flags):
            return it.Unit(self._constant)
        if prim in self.allow:
            return it.Unit(self._moved)
        if not in_batch_norm(eqn):  # a batch norm's equations have their own errors
            unit = self._modern(frame, i)
            if unit is not None:
                return unit
        if prim in ji.JIT:
            return None  # inlined by the interpreter: its body gets these rules
        if prim in _PRODUCTS and len(flags) == 2 and all(flags):
            return self._product(frame, i)
        if prim in _LINEAR:
            return self._linear(frame, i, flags)
        if prim in _NORM:
            return self._norm(frame, i, flags)
        return None  # the table

    def _modern(self, frame: it.Frame, i: int) -> it.Unit | None:
        """A softmax (its rule) or an elementwise function of one activation
        (GELU, SiLU, ...: the identity rule), starting at equation `i`."""
        acts = _Acts(frame)
        is_act = lambda v: v in acts
        read = lambda atom: _plain(frame.read(atom))
        if frame[i].primitive.name in ("reduce_max", "exp"):
            found = softmax_region(frame, i, is_act)
            if found is not None:
                eqns, inp, out, axes = found
                axes = tuple(int(a) for a in axes)
                rule = self.composite.softmax_rule(axes)
                if rule is None:
                    raise self.no_rule(eqns[-1], "a softmax", _ATTN_HINT)
                return self._region_unit(eqns, inp, out, rule, read)
        found = elementwise_region(frame, i, is_act)
        if found is None:
            return None
        eqns, inp, out = found
        return self._region_unit(eqns, inp, out, Pass(), read)

    def _region_unit(self, eqns, inp, out, rule, read) -> it.Unit:
        fn = region_fn(eqns, inp, out, read)

        def handler(interp, eqn, invals):
            x = read(inp)
            y = apply_rule(rule, lambda x_, w, b: fn(x_), x)
            return [it.Act(jnp.expand_dims(y, 0))]

        return it.Unit(handler, fuses=tuple(eqns[1:]), outvars=(out,))

    def _product(self, frame: it.Frame, i: int) -> it.Unit:
        """A product or quotient of two activations. An operand broadcast from
        fewer values (a norm's `1 / std`) is a normaliser, held constant (the
        identity rule on normalisers); otherwise the composite's product rule."""
        eqn = frame[i]
        prim = eqn.primitive.name
        out = eqn.outvars[0]
        stats = [is_statistic(v, out, frame.producers) for v in eqn.invars]
        if prim != "dot_general" and stats.count(True) == 1:
            keep = stats.index(False)
            if prim == "div" and keep != 0:
                raise self.no_rule(eqn, "a quotient by an activation")
            flags = [k == keep for k in range(2)]

            def normalised(interp, eqn, invals):
                values = [_plain(v) for v in invals]
                return _wrap(eqn, self._pass_with_constant(eqn, values, flags, what))

            what = "a normalisation"
            return it.Unit(normalised)
        if prim == "div":
            raise self.no_rule(eqn, "a quotient of two activations")
        rule = self.composite.product_rule()
        if rule is None:
            raise self.no_rule(eqn, "a product of two activations", _ATTN_HINT)

        def product(interp, eqn, invals):
            a, b = (_plain(v) for v in invals)
            fn = lambda x_, w, b_: ji.bind(eqn, list(x_))[0]
            return [it.Act(jnp.expand_dims(apply_rule(rule, fn, (a, b)), 0))]

        return it.Unit(product)

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
        fn = _fused_fn(eqn, xpos, chain, end, bpos)

        def handler(interp, eqn, invals):
            const = None if end is None else _plain(frame.read(end.invars[1 - bpos]))
            invals = [_plain(v) for v in invals]
            others = tuple(v for k, v in enumerate(invals) if k != xpos)
            return [it.Act(jnp.expand_dims(apply(fn, invals[xpos], others, const), 0))]

        out = eqn.outvars[0] if end is None else end.outvars[0]
        if end is not None and not frame.has(end.invars[1 - bpos]):
            # The bias is computed after the layer (e.g. broadcast in between):
            # evaluated at the bias `add`, once it is there.
            return it.Unit(handler, fuses=tuple(chain), outvars=(out,), at=end)
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
        """A sum or difference: of two activations (branches, a mean subtracted),
        the composite's `norm_rule`; of an activation and a constant (a
        positional embedding, an offset), the same rule with the constant as the
        bias it is, which absorbs its share of the relevance."""
        rule = self.composite.norm_rule()
        if all(flags):
            branches = lambda x, w, b: ji.bind(eqn, list(x))[0]
            return [apply_rule(rule, branches, tuple(values))]
        xpos = flags.index(True)
        x, c = values[xpos], values[1 - xpos]
        if jnp.shape(x) != eqn.outvars[0].aval.shape:
            raise self.no_rule(eqn, "a constant added to an activation it broadcasts")

        def fn(x_, w, b):
            b = jnp.zeros_like(c) if b is None else b  # a rule may drop the bias
            return ji.bind(eqn, [x_, b] if xpos == 0 else [b, x_])[0]

        return [apply_rule(rule, fn, x, None, c)]

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
