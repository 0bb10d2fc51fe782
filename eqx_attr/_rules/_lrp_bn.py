"""The trace-side batch-norm canonizer: `eqx.nn.BatchNorm` in inference mode.

`eqx.nn.BatchNorm` keeps its running statistics in an `eqx.nn.State`, which the
model receives at call time (`model(x, state)`), so the PyTree canonizer of
`_lrp_canon` cannot see them. It can be seen in the traced program instead:
Equinox names every equation of the layer's call with the scope
`"eqx.nn.BatchNorm"`, and in inference mode that call is an affine map per
channel, `(y - mean) / sqrt(var + eps) * weight + bias`, a chain of `sub`, `div`,
`mul` and `add` with constant operands.

When such a chain directly follows a dense layer or a convolution (through the
layer's bias `add` and shape-only steps such as `eqx.nn.Conv`'s `squeeze`), the
two are one affine layer: the per-channel scale `a` and shift `c` of the chain
fold into the weight (`w * a` along its output-channel axis) and the bias
(`a * b + c`), as Zennit's `MergeBatchNorm` does, and the composite's rule sees
the folded layer. The fold is checked on shapes at trace time: every constant of
the chain must be a scalar or vary along the channel axis only.

A batch norm in training mode normalises with batch statistics (a reduction of
the activations): LRP on it is ill-defined, and it raises, naming the module.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Container
from typing import Any

import equinox as eqx
import jax
import jax.extend.core as jex
import jax.numpy as jnp

from .._engine._jax_internals import bind as _bind, scope as _scope, where as _summary

BN_SCOPE = "eqx.nn.BatchNorm"
_TAIL = ("sub", "add", "mul", "div")
# Shape-only steps allowed between the linear operation and the batch norm: they
# must keep the row-major order of the elements (no transpose).
_CHAIN = ("squeeze", "reshape", "expand_dims", "convert_element_type")


def in_batch_norm(eqn: Any) -> bool:
    """Whether `eqn` was traced inside an `eqx.nn.BatchNorm` call."""
    return BN_SCOPE in _scope(eqn)


@dataclasses.dataclass(frozen=True)
class Match:
    """A linear equation, its shape steps and bias, and the batch norm after it."""

    eqn: Any  # the dot_general / conv_general_dilated
    xpos: int  # which operand is the activation
    chain: tuple  # shape-only steps
    bias: Any  # the bias `add` (not in the batch norm), or None
    bias_pos: int  # the position of the linear branch in the bias `add`
    tail: tuple  # ((eqn, activation position, constant source, reduce?), ...)
    axis: int | None  # the weight's output-channel axis (None: one channel)
    channels: int
    ndim: int  # rank of the batch norm's input (channel axis first)

    @property
    def last(self) -> Any:
        return self.tail[-1][0]

    @property
    def out(self) -> Any:
        return self.last.outvars[0]

    def fused(self) -> set:
        """The equations evaluated with the fold, except the last."""
        eqns = [*self.chain, *([self.bias] if self.bias is not None else [])]
        eqns += [t[0] for t in self.tail[:-1]]
        return {id(e) for e in eqns}


def _single_user(jaxpr, var, uses):
    users = uses.get(var, [])
    if len(users) != 1 or users[0] < 0:
        return None
    return jaxpr.eqns[users[0]]


def _const(atom, act) -> bool:
    return not (isinstance(atom, jex.Var) and atom in act)


def _per_channel(atom, producers: dict, channels: int, ndim: int):
    """`(source, reduce)` if constant `atom` varies along axis 0 only, else None.

    The source is `atom` itself, or, for a `broadcast_in_dim` of a `(C,)` vector
    onto axis 0, that vector (`reduce=True`: reshape it to `(C, 1, ..., 1)`).
    """
    shape = tuple(atom.aval.shape)
    if shape == () or (
        len(shape) == ndim and shape[0] in (1, channels) and set(shape[1:]) <= {1}
    ):
        return atom, False
    eqn = producers.get(atom) if isinstance(atom, jex.Var) else None
    if eqn is None or eqn.primitive.name != "broadcast_in_dim":
        return None
    src = eqn.invars[0]
    src_shape = tuple(src.aval.shape)
    if src_shape == ():
        return src, False
    dims = tuple(eqn.params.get("broadcast_dimensions", ()))
    if len(src_shape) == 1 and src_shape[0] in (1, channels) and dims == (0,):
        return src, True
    return None


def _channel_axis(eqn, xpos: int, out_shape: tuple, channels: int) -> tuple | None:
    """`(ok, weight axis)`: the weight axis that makes the output's channel axis.

    The output's channel axis is its first axis of size other than 1 (so that a
    reshape keeping the element order maps it to the batch norm's axis 0).
    """
    if channels == 1:
        return (True, None)
    k = next((d for d, n in enumerate(out_shape) if n != 1), None)
    if k is None or out_shape[k] != channels:
        return None
    if eqn.primitive.name == "conv_general_dilated":
        dn = eqn.params["dimension_numbers"]
        if xpos != 0 or eqn.params.get("batch_group_count", 1) != 1:
            return None
        if k != dn.out_spec[1]:
            return None
        return (True, dn.rhs_spec[0])
    (contract, batch) = eqn.params["dimension_numbers"]
    sources = [("b", d) for d in batch[0]]
    for pos in (0, 1):
        ndim = len(eqn.invars[pos].aval.shape)
        taken = set(contract[pos]) | set(batch[pos])
        sources += [(pos, d) for d in range(ndim) if d not in taken]
    pos, d = sources[k]
    return (True, d) if pos == 1 - xpos else None


def match(jaxpr, i: int, flags: list, uses: dict, act: Container, producers: dict):
    """The batch norm completing linear equation `i`, as a [`Match`][], or None."""
    eqn = jaxpr.eqns[i]
    if sum(flags) != 1 or len(eqn.invars) != 2:
        return None
    xpos = flags.index(True)
    var, chain = eqn.outvars[0], []
    while True:
        user = _single_user(jaxpr, var, uses)
        if user is None:
            return None
        if user.primitive.name in _CHAIN and len(user.invars) == 1:
            chain.append(user)
            var = user.outvars[0]
            continue
        break
    bias, bias_pos = None, 0
    if (
        user.primitive.name == "add"
        and not in_batch_norm(user)
        and len(user.invars) == 2
        and user.outvars[0].aval.shape == var.aval.shape
    ):
        bias_pos = 0 if user.invars[0] is var else 1
        if not _const(user.invars[1 - bias_pos], act):
            return None
        bias, var = user, user.outvars[0]
        user = _single_user(jaxpr, var, uses)
    shape = tuple(var.aval.shape)
    if not shape or math.prod(shape) != math.prod(eqn.outvars[0].aval.shape):
        return None
    channels, ndim = shape[0], len(shape)
    tail = []
    while user is not None and in_batch_norm(user) and user.primitive.name in _TAIL:
        if len(user.invars) != 2 or user.outvars[0].aval.shape != shape:
            break
        pos = 0 if user.invars[0] is var else 1
        other = user.invars[1 - pos]
        if not _const(other, act) or (user.primitive.name == "div" and pos != 0):
            break
        found = _per_channel(other, producers, channels, ndim)
        if found is None:
            break
        tail.append((user, pos, *found))
        var = user.outvars[0]
        user = _single_user(jaxpr, var, uses)
    if not tail:
        return None
    if user is not None and in_batch_norm(user):
        return None  # the batch norm goes on: not the affine form we fold
    axis = _channel_axis(eqn, xpos, tuple(eqn.outvars[0].aval.shape), channels)
    if axis is None:
        return None
    return Match(
        eqn, xpos, tuple(chain), bias, bias_pos, tuple(tail), axis[1], channels, ndim
    )


def fold(m: Match, w: Any, read) -> tuple:
    """`(fn, weight, bias)` of the folded layer; `read` gives constants' values."""
    reduced = (m.channels,) + (1,) * (m.ndim - 1)
    consts = []
    for _, _, src, reduce in m.tail:
        value = read(src)
        consts.append(jnp.reshape(value, reduced) if reduce else value)

    def tail(y):
        for (eqn, pos, _, _), c in zip(m.tail, consts, strict=True):
            (y,) = _bind(eqn, [y, c] if pos == 0 else [c, y])
        return y

    dtype = m.out.aval.dtype
    zero = jnp.zeros(reduced, dtype)
    _, scale = jax.jvp(tail, (zero,), (jnp.ones(reduced, dtype),))
    scale = jnp.broadcast_to(scale, reduced).reshape(m.channels)
    if m.bias is not None:
        b = read(m.bias.invars[1 - m.bias_pos])
        b = b if jnp.ndim(b) in (0, m.ndim) else jnp.broadcast_to(b, m.out.aval.shape)
        shift = tail(jnp.asarray(b, dtype) + zero)
    else:
        shift = tail(zero)
    shape = [1] * jnp.ndim(w)
    if m.axis is not None:
        shape[m.axis] = m.channels
    weight = w * scale.reshape(shape).astype(w.dtype)

    def fn(x, w_, b_):
        ops = [w_]
        ops.insert(m.xpos, x)
        (y,) = _bind(m.eqn, ops)
        for step in m.chain:
            (y,) = _bind(step, [y])
        return y if b_ is None else y + b_  # a rule may drop the bias

    return fn, weight, shift


# ---------------------------------------------------------------------------------
# Errors


def _roots(model: Any):
    """The model and the modules a plain function uses (to name them in errors)."""
    yield "model", model
    if isinstance(model, functools.partial):
        yield "model.func", model.func
        for k, a in enumerate(model.args):
            yield f"model.args[{k}]", a
        for k, a in model.keywords.items():
            yield f"model.keywords[{k!r}]", a
    self_ = getattr(model, "__self__", None)
    if self_ is not None:
        yield "model.__self__", self_
    code, cells = getattr(model, "__code__", None), getattr(model, "__closure__", None)
    for name, cell in zip(getattr(code, "co_freevars", ()), cells or (), strict=False):
        try:
            yield name, cell.cell_contents
        except ValueError:  # an empty cell
            continue
    names = getattr(code, "co_names", ())
    for name, value in getattr(model, "__globals__", {}).items():
        if name in names and isinstance(value, eqx.Module):
            yield name, value


def training_batch_norms(model: Any) -> list[str]:
    """Where the model (or what it closes over) has a BatchNorm in training mode."""
    is_bn = lambda n: isinstance(n, eqx.nn.BatchNorm)
    found = []
    for root, obj in _roots(model):
        try:
            leaves = jax.tree_util.tree_flatten_with_path(obj, is_leaf=is_bn)[0]
        except Exception:  # not a PyTree we can walk: nothing to name
            continue
        for path, leaf in leaves:
            if is_bn(leaf) and not leaf.inference:
                found.append(f"`{root}{jax.tree_util.keystr(path)}`")
    return found


def training_error(model: Any, name: str, at: str = "") -> ValueError:
    """The error for a batch norm normalising with batch statistics."""
    found = training_batch_norms(model)
    which = (
        f"{', '.join(found)} {'is' if len(found) == 1 else 'are'}"
        if found
        else "an eqx.nn.BatchNorm of the model is"
    )
    return ValueError(
        f"LRP needs every eqx.nn.BatchNorm in inference mode, but {which} in "
        f"training mode (inference=False){at} in {name}: normalising by batch "
        "statistics makes LRP ill-defined (an example's relevance would depend on "
        "the rest of its batch); set inference=True (eqx.nn.inference_mode): "
        "`model = eqx.nn.inference_mode(model)`, so that the batch norm uses the "
        "running statistics in its `state` and can be merged into the layer "
        "before it."
    )


def unmerged_error(eqn: Any, name: str) -> ValueError:
    """The error for an inference-mode batch norm that follows no linear layer."""
    return ValueError(
        f"LRP cannot merge the eqx.nn.BatchNorm called at {_summary(eqn)} in the "
        f"forward pass of {name}: it does not directly follow a convolution or a "
        "dense layer (an activation, a pool or a second use of that layer's output "
        "sits in between). LRP's rules assume each batch norm folded into the "
        "linear layer before it (Zennit's MergeBatchNorm); put the batch norm "
        "right after its convolution or eqx.nn.Linear."
    )
