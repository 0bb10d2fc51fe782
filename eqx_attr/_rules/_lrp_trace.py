"""The LRP interpreter: evaluate a model's jaxpr with a rule on every linear operation.

The model (after the PyTree canonizers) is traced to a jaxpr, with the input as the
first argument and the model's arrays as the others. Every value that depends on
the input is an *activation*. Each equation touching an activation is evaluated
according to a table:

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

The interpreter runs at trace time: the result is jit-able, vmap-able and
differentiable, and each operation's backward pass is a `jax.custom_vjp`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.extend.core as jex
import jax.numpy as jnp

from ._jax_internals import JIT as _JIT, bind as _bind, fn_name, where as _summary
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


@dataclasses.dataclass
class _State:
    composite: AbstractComposite
    allow: frozenset
    name: str
    model: Any = None  # to name the batch norms of an error
    first_done: bool = False


def _is_float(aval: Any) -> bool:
    return jnp.issubdtype(getattr(aval, "dtype", jnp.int32), jnp.floating)


def _tag(eqn) -> str | None:
    name = fn_name(eqn.params.get("call_jaxpr"))
    return name if name in (LAYER_TAG, RULE_TAG) else None


def _call_name(eqn) -> str:
    return str(eqn.params.get("name") or fn_name(eqn.params.get("call_jaxpr")))


def _no_rule(state: _State, eqn, what: str) -> ValueError:
    prim = eqn.primitive.name
    return ValueError(
        f"LRP has no rule for {what} (`{prim}`) at {_summary(eqn)} in the forward "
        f"pass of {state.name}; it would silently fall back to the plain gradient. "
        "To proceed, either give the layer that calls it a rule with "
        "`overrides=((lambda m: m.that_layer, xa.lrp.Epsilon()),)` (any rule in "
        "`xa.lrp`; `xa.lrp.Pass()` for an elementwise operation), or accept the "
        f"plain gradient through this operation type with `allow_gradient=('{prim}',)`."
    )


def _uses(jaxpr) -> dict:
    uses: dict = {}
    for i, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if isinstance(v, jex.Var):
                uses.setdefault(v, []).append(i)
    for v in jaxpr.outvars:
        if isinstance(v, jex.Var):
            uses.setdefault(v, []).append(-1)
    return uses


def _follow(jaxpr, i: int, uses: dict, act: set, terminals: tuple):
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
        if isinstance(other, jex.Var) and other in act:
            return None
        if eqn.outvars[0].aval.shape != var.aval.shape:
            return None
        if eqn.primitive.name == "div" and pos != 0:
            return None
        return chain, eqn, pos


def _fused(jaxpr, i, x_flags, invals, uses, act, read, terminals):
    """`fn(x, w, b)` for equation `i` completed by its terminal (see `_follow`).

    `b` is the terminal's constant operand (a bias, a mean's count); `w` the
    equation's other operand, if any. Returns fn, x, w, b, the output variable
    and the fused equations.
    """
    eqn = jaxpr.eqns[i]
    xpos = x_flags.index(True)
    found = _follow(jaxpr, i, uses, act, terminals)
    chain, end, bpos = found if found is not None else ([], None, 0)
    const = None if end is None else read(end.invars[1 - bpos])
    others = [v for k, v in enumerate(invals) if k != xpos]

    def fn(x, w, b):
        ops = list(w)
        ops.insert(xpos, x)
        (y,) = _bind(eqn, ops)
        for step in chain:
            (y,) = _bind(step, [y])
        if end is not None and b is not None:  # a rule may drop the bias
            (y,) = _bind(end, [y, b] if bpos == 0 else [b, y])
        return y

    out = eqn.outvars[0] if end is None else end.outvars[0]
    fused = {id(e) for e in chain} | ({id(end)} if end is not None else set())
    return fn, invals[xpos], tuple(others), const, out, fused


def _layer_rule(state: _State, eqn):
    """The composite's rule for linear equation `eqn` (the first layer's, once)."""
    kind = _LINEAR[eqn.primitive.name]
    rule = None
    if not state.first_done:
        rule = state.composite.first_rule(kind)
        state.first_done = rule is not None
    return state.composite.layer_rule(kind) if rule is None else rule


def _linear(jaxpr, i, invals, flags, uses, act, state, env, read) -> set:
    """Evaluate linear equation `i` (and its fused bias) with its rule."""
    eqn = jaxpr.eqns[i]
    if all(flags):
        raise _no_rule(state, eqn, "a product of two activations")
    rule = _layer_rule(state, eqn)
    fn, x, (w,), b, out, fused = _fused(
        jaxpr, i, flags, invals, uses, act, read, ("add",)
    )
    # The rule modifies the weight `w` and the bias `b`; `fn` takes `w` as a
    # tuple of the equation's other operands.
    env[out] = apply_rule(rule, lambda x_, w_, b_: fn(x_, (w_,), b_), x, w, b)
    act.add(out)
    return fused


def _norm(jaxpr, i, invals, flags, uses, act, state, env, read) -> set:
    """A sum or a sum pool, fused with a following division (a mean): `norm_rule`."""
    fn, x, _, count, out, fused = _fused(
        jaxpr, i, flags, invals, uses, act, read, ("div", "mul")
    )
    rule = state.composite.norm_rule()
    # The count is part of the operation, not a weight: no rule modifies it (as
    # Zennit's rules leave a pool's forward pass alone). It is a constant, so the
    # closure holds no value being differentiated.
    env[out] = apply_rule(rule, lambda x_, w_, b_: fn(x_, (), count), x)
    act.add(out)
    return fused


def _one(state: _State, eqn, invals: list, flags: list) -> list:
    """Evaluate one non-linear equation with an activation operand."""
    prim = eqn.primitive.name
    outs = eqn.outvars
    if prim in state.allow or prim in _STRUCTURAL:
        return _bind(eqn, invals)
    if not any(_is_float(v.aval) for v in outs):
        return _bind(eqn, invals)  # comparisons, argmax: no gradient flows
    if in_batch_norm(eqn):
        if prim.startswith(("reduce", "psum", "pmean", "pmax")):
            at = f" (its batch statistics are taken at {_summary(eqn)})"
            raise training_error(state.model, state.name, at)
        raise unmerged_error(eqn, state.name)
    if prim == "custom_vjp_call" and _tag(eqn) is not None:
        if _tag(eqn) == LAYER_TAG:
            state.first_done = True
        return _bind(eqn, invals)
    if prim == "custom_jvp_call":
        if _call_name(eqn) not in _ACTIVATION_CALLS or len(invals) != 1:
            raise _no_rule(state, eqn, f"the function `{_call_name(eqn)}`")
        return [apply_rule(Pass(), lambda x, w, b: _bind(eqn, [x])[0], invals[0])]
    if prim in _ACTIVATION_PRIMS:
        return [apply_rule(Pass(), lambda x, w, b: _bind(eqn, [x])[0], invals[0])]
    if prim == "max" and not all(flags):
        return _pass_with_constant(state, eqn, invals, flags, "a maximum")
    if prim in _SCALE:
        if (len(flags) == 2 and all(flags)) or (prim == "div" and flags[1]):
            raise _no_rule(state, eqn, f"a `{prim}` of two activations")
        return _pass_with_constant(state, eqn, invals, flags, "a scaling")
    if prim == "add" and all(flags):
        rule = state.composite.norm_rule()
        fn = lambda x, w, b: _bind(eqn, list(x))[0]
        return [apply_rule(rule, fn, tuple(invals))]
    if prim == "add":
        raise _no_rule(
            state,
            eqn,
            "an addition of a constant to an activation that is not the bias of a "
            "linear layer (e.g. a batch norm that does not follow a convolution)",
        )
    raise _no_rule(state, eqn, "this operation")


def _pass_with_constant(state, eqn, invals, flags, what) -> list:
    xpos = flags.index(True)
    x = invals[xpos]
    if jnp.shape(x) != eqn.outvars[0].aval.shape:
        raise _no_rule(state, eqn, f"{what} that changes the activation's shape")
    others = [v for k, v in enumerate(invals) if k != xpos]

    def fn(x_, w, b):
        ops = list(w)
        ops.insert(xpos, x_)
        return _bind(eqn, ops)[0]

    return [apply_rule(Pass(), fn, x, tuple(others))]


def evaluate(jaxpr, consts: Sequence, args: Sequence, flags: Sequence[bool], state):
    """Evaluate `jaxpr`; `flags[k]` says whether argument k is an activation."""
    env: dict = {}
    act: set = set()

    def read(atom):
        return atom.val if isinstance(atom, jex.Literal) else env[atom]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    act.update(v for v, f in zip(jaxpr.invars, flags, strict=True) if f)
    uses = _uses(jaxpr)
    producers = {v: e for e in jaxpr.eqns for v in e.outvars}
    done: set = set()
    # A linear equation with a batch norm to fold is evaluated at the batch norm's
    # last equation, when every constant of the batch norm has been computed.
    pending: dict = {}
    for i, eqn in enumerate(jaxpr.eqns):
        if id(eqn) in pending:
            m, rule, x, w = pending.pop(id(eqn))
            fn, weight, bias = _bn_fold(m, w, read)
            env[m.out] = apply_rule(rule, fn, x, weight, bias)
            continue
        if id(eqn) in done:
            continue
        invals = [read(v) for v in eqn.invars]
        in_flags = [isinstance(v, jex.Var) and v in act for v in eqn.invars]
        if not any(in_flags):
            outs = _bind(eqn, invals)
        elif eqn.primitive.name in _JIT:
            inner = eqn.params["jaxpr"]
            outs, out_flags = evaluate(
                inner.jaxpr, inner.consts, invals, in_flags, state
            )
            env.update(zip(eqn.outvars, outs, strict=True))
            act.update(v for v, f in zip(eqn.outvars, out_flags, strict=True) if f)
            continue
        elif eqn.primitive.name in _LINEAR and eqn.primitive.name not in state.allow:
            m = _bn_match(jaxpr, i, in_flags, uses, act, producers)
            if m is not None:
                rule = _layer_rule(state, eqn)
                x, w = invals[m.xpos], invals[1 - m.xpos]
                pending[id(m.last)] = (m, rule, x, w)
                done |= m.fused()
                act.add(m.out)
                continue
            done |= _linear(jaxpr, i, invals, in_flags, uses, act, state, env, read)
            continue
        elif eqn.primitive.name in _NORM and eqn.primitive.name not in state.allow:
            done |= _norm(jaxpr, i, invals, in_flags, uses, act, state, env, read)
            continue
        else:
            outs = _one(state, eqn, invals, in_flags)
            act.update(v for v in eqn.outvars if _is_float(v.aval))
        env.update(zip(eqn.outvars, outs, strict=True))
    outs = [read(v) for v in jaxpr.outvars]
    return outs, [isinstance(v, jex.Var) and v in act for v in jaxpr.outvars]


def run(
    model: Callable, x: Any, composite: AbstractComposite, allow: frozenset, name: str
) -> Any:
    """`model(x)`, with LRP rules attached to every operation on the activations."""
    dynamic, static = eqx.partition(model, eqx.is_array)
    leaves, treedef = jax.tree_util.tree_flatten(dynamic)

    def flat_call(x_, *leaves_):
        m = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves_), static)
        return m(x_)

    closed, out_shape = jax.make_jaxpr(flat_call, return_shape=True)(x, *leaves)
    state = _State(composite, frozenset(allow), name, model)
    flags = [True] + [False] * len(leaves)
    outs, _ = evaluate(closed.jaxpr, closed.consts, [x, *leaves], flags, state)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)
