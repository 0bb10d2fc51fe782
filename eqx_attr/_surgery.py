"""Model surgery: swap every ReLU of a model for one with a modified backward pass.

A ReLU can live in two places, and both are reached:

1. In the model's PyTree: `eqx.nn.Lambda(jax.nn.relu)`, the `activation` of
   `eqx.nn.MLP`, or any callable field equal to `jax.nn.relu` / `jax.nn.relu6`.
   These are replaced with `eqx.tree_at`, giving a copy of the model.
2. Inline in `__call__`: `jax.nn.relu(x)` (a `custom_jvp_call` named `relu` in the
   jaxpr) or `jnp.maximum(x, 0)` (a `max` against a constant zero). No PyTree
   rewrite reaches these, so the model's call is traced to a jaxpr and evaluated
   again by a small interpreter that substitutes the new ReLU, recursing into
   `jit`, `scan`, `while`, `cond` and `checkpoint` bodies (`vmap` needs nothing
   special: it is traced away into batched primitives). The interpreter runs at
   trace time, so the result is still jit-able, vmap-able and differentiable.

Everything else is bound unchanged with `prim.bind(*invals, **params)`, so custom
primitives (e.g. `eqx.error_if`) keep working. A ReLU that cannot be rewritten (inside
a user's `custom_jvp`/`custom_vjp`, whose derivative rule is user-defined, or inside
an unknown higher-order primitive) raises, as does a model with no ReLU at all: a
modified-backward method must never silently return the plain gradient.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._attribution import check_choice

# ---------------------------------------------------------------------------------
# The replacement ReLUs


@jax.custom_vjp
def guided_relu(x: Float[ArrayLike, " *dims"]) -> Float[Array, " *dims"]:
    """A ReLU whose backward pass is guided backpropagation.

    Springenberg et al., *Striving for Simplicity: The All Convolutional Net*, 2015.
    The forward pass is `max(x, 0)`; the backward pass lets the incoming gradient `g`
    through only where the input was positive *and* `g` is positive.

    **Arguments:**

    - `x`: any floating array.

    **Returns:** `max(x, 0)`.

    ```python
    g = jax.grad(lambda x: xa.guided_relu(x).sum())(x)
    ```
    """
    x = jnp.asarray(x)
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def _guided_fwd(x):
    x = jnp.asarray(x)
    return guided_relu(x), x > 0


def _guided_bwd(positive, g):
    return (jnp.where(positive & (g > 0), g, jnp.zeros_like(g)),)


guided_relu.defvjp(_guided_fwd, _guided_bwd)


@jax.custom_vjp
def deconvnet_relu(x: Float[ArrayLike, " *dims"]) -> Float[Array, " *dims"]:
    """A ReLU whose backward pass is the deconvnet's: `relu(g)`, ignoring the input.

    Zeiler & Fergus, *Visualizing and Understanding Convolutional Networks*, 2014:
    the "deconvolutional network" rectifies the signal it projects back and does not
    use the forward pass's ReLU mask.

    **Arguments:**

    - `x`: any floating array.

    **Returns:** `max(x, 0)`.

    ```python
    g = jax.grad(lambda x: xa.deconvnet_relu(x).sum())(x)
    ```
    """
    x = jnp.asarray(x)
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def _deconvnet_fwd(x):
    return deconvnet_relu(x), None


def _deconvnet_bwd(_, g):
    return (jnp.where(g > 0, g, jnp.zeros_like(g)),)


deconvnet_relu.defvjp(_deconvnet_fwd, _deconvnet_bwd)

RULES: dict[str, Callable] = {"guided": guided_relu, "deconvnet": deconvnet_relu}
POLICIES = ("raise", "ignore")

# Rectifier-like activations that play the ReLU's role but have no guided or
# deconvnet variant in the literature (Springenberg et al. and Zeiler & Fergus define
# the rules for the ReLU only). They raise unless `other_activations="ignore"`.
# Squashing functions and gates (sigmoid, tanh, hard_tanh, softmax) are not on this
# list: every guided-backprop implementation passes plain gradients through them.
OTHER_ACTIVATIONS: tuple[str, ...] = (
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "swish",
    "softplus",
    "mish",
    "hard_silu",
    "hard_swish",
    "squareplus",
    "sparse_plus",
)
_OTHER_FUNCTIONS: dict[int, str] = {}
for _name in OTHER_ACTIVATIONS:  # aliases (swish = silu) keep the first name
    if hasattr(jax.nn, _name):
        _OTHER_FUNCTIONS.setdefault(id(getattr(jax.nn, _name)), _name)

# ReLU-like functions held in a PyTree, and the cap of the clipped ones: relu6 is
# min(relu(x), 6), so its ReLU part takes the rule and the cap keeps its gradient.
_RELU_FUNCTIONS: dict[int, float | None] = {id(jax.nn.relu): None}
if hasattr(jax.nn, "relu6"):
    _RELU_FUNCTIONS[id(jax.nn.relu6)] = 6.0
_RELU_CALLS: dict[str, float | None] = {"relu": None, "relu6": 6.0}


def _eqx_attr_relu_rule(rule, x):
    return rule(x)


# A named jit marks a swapped ReLU in the jaxpr, so the interpreter counts it and
# never rewrites the rule's own forward pass.
_MARK = _eqx_attr_relu_rule.__name__
_apply_rule = eqx.filter_jit(_eqx_attr_relu_rule)


class SwappedReLU(eqx.Module):
    """What a PyTree ReLU becomes: `rule(x)`, then the cap of a clipped ReLU."""

    rule: Callable
    cap: float | None = eqx.field(static=True, default=None)

    def __call__(self, x: ArrayLike, *, key: Any = None) -> Array:
        y = _apply_rule(self.rule, x)
        if self.cap is not None:
            # Where the cap binds its gradient is zero, as for relu6 itself.
            y = jnp.where(y < self.cap, y, jnp.asarray(self.cap, y.dtype))
        return y


def resolve_rule(rule: str | Callable) -> Callable:
    """`"guided"`, `"deconvnet"` or a callable `x -> relu(x)` -> the callable."""
    if isinstance(rule, str):
        check_choice(rule, "rule", tuple(RULES))
        return RULES[rule]
    if not callable(rule):
        raise TypeError(
            "`rule` must be 'guided', 'deconvnet' or a callable `x -> relu(x)` with "
            f"its own backward pass (a `jax.custom_vjp`), got {type(rule).__name__}."
        )
    probe = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    try:
        out = jax.eval_shape(rule, probe)
    except Exception as e:
        raise TypeError(
            f"`rule` must map a float array to an array of the same shape; calling it "
            f"on a float32[2, 3] array failed with {type(e).__name__}: {e}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != (2, 3):
        raise TypeError(
            "`rule` must be elementwise: it must map a float32[2, 3] array to an array "
            f"of the same shape, but it returned {out}."
        )
    return rule


# ---------------------------------------------------------------------------------
# PyTree surgery


def _path_str(path) -> str:
    return "model" + jax.tree_util.keystr(path)


def pytree_activations(model: Any) -> tuple[list, list[tuple[str, str]]]:
    """ReLU leaves `(path, cap)` and other activations `(where, name)` of a PyTree."""
    is_prelu = lambda n: isinstance(n, eqx.nn.PReLU)
    leaves = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_prelu)[0]
    relus, others = [], []
    for path, leaf in leaves:
        if isinstance(leaf, functools.partial):  # e.g. partial(gelu, approximate=...)
            leaf = leaf.func
        if is_prelu(leaf):
            others.append((_path_str(path), "PReLU (eqx.nn.PReLU)"))
        elif callable(leaf) and id(leaf) in _RELU_FUNCTIONS:
            relus.append((path, _RELU_FUNCTIONS[id(leaf)]))
        elif callable(leaf) and id(leaf) in _OTHER_FUNCTIONS:
            others.append((_path_str(path), _OTHER_FUNCTIONS[id(leaf)]))
    return relus, others


def swap_pytree_relus(model: Any, rule: Callable) -> tuple[Any, int]:
    """Copy of `model` with every PyTree ReLU leaf replaced by `SwappedReLU(rule)`.

    The leaves are found by path, so a ReLU instance shared by several layers (as in
    SmallCNN) is replaced at each place it is used. Returns the copy and the count.
    """
    relus, _ = pytree_activations(model)
    if not relus:
        return model, 0
    paths = [p for p, _ in relus]
    wanted = set(paths)

    def where(m):
        found = {
            p: leaf
            for p, leaf in jax.tree_util.tree_flatten_with_path(m)[0]
            if p in wanted
        }
        return [found[p] for p in paths]

    replace = [SwappedReLU(rule, cap) for _, cap in relus]
    return eqx.tree_at(where, model, replace=replace), len(relus)


# ---------------------------------------------------------------------------------
# Jaxpr surgery

_JIT = ("jit", "pjit")
_REMAT = ("remat2", "checkpoint", "remat")
_CUSTOM = ("custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")
# Ops that keep a constant zero a constant zero (`jnp.zeros_like(x)`, casts).
_ZERO_PRESERVING = (
    "broadcast_in_dim",
    "convert_element_type",
    "reshape",
    "squeeze",
    "expand_dims",
    "transpose",
    "copy",
    "copy_p",
)
_NN_FILE = os.path.join("jax", "_src", "nn", "functions.py")
_JAX_DIR = os.path.dirname(jax.__file__) + os.sep
_EQX_DIR = os.path.dirname(eqx.__file__) + os.sep
# The jax modules a user's `jnp.maximum(x, 0)` / `lax.max` / `jnp.clip` passes
# through on its way to the `max` primitive. A `max` reached through any other jax
# module (e.g. `jax.image.resize`'s triangle kernel) is not a ReLU.
_PLUMBING = tuple(
    os.path.join(_JAX_DIR, "_src", *p.split("/"))
    for p in (
        "interpreters/",
        "core.py",
        "pjit.py",
        "api.py",
        "api_util.py",
        "linear_util.py",
        "dispatch.py",
        "profiler.py",
        "traceback_util.py",
        "source_info_util.py",
        "numpy/ufunc_api.py",
        "numpy/ufuncs.py",
        "numpy/lax_numpy.py",
        "numpy/array_methods.py",
        "numpy/util.py",
        "lax/lax.py",
        "nn/functions.py",  # jax.nn.relu and relu6 themselves
    )
)


def _summary(eqn) -> str:
    """Where the model's code made this equation: its first frame outside jax and
    Equinox (so an `eqx.nn.Lambda`'s activation points at the model, not at
    `Lambda.__call__`)."""
    tb = getattr(eqn.source_info, "traceback", None)
    frames = [] if tb is None else tb.frames
    for frame in frames:
        if not frame.file_name.startswith((_JAX_DIR, _EQX_DIR)):
            return f"{frame.file_name}:{frame.line_num} ({frame.function_name})"
    return "an unknown location"


def _fn_name(closed) -> str:
    dbg = getattr(getattr(closed, "jaxpr", closed), "debug_info", None)
    name = getattr(dbg, "func_name", None)
    if name is None:
        src = getattr(dbg, "func_src_info", None) or ""
        name = src.split(" ")[0] if src else "<unknown>"
    return name


def _frame_activation(eqn) -> str | None:
    """The `jax.nn` rectifier this equation was traced in, if any.

    `jax.nn.gelu` is not jitted, so its equations carry no name in the jaxpr; the
    trace-time Python stack recorded with each equation still does.
    """
    tb = getattr(eqn.source_info, "traceback", None)
    if tb is None:
        return None
    for frame in tb.frames:
        if frame.function_name in OTHER_ACTIVATIONS and frame.file_name.endswith(
            _NN_FILE
        ):
            return frame.function_name
    return None


def _is_zero_value(value) -> bool:
    if isinstance(value, jax.core.Tracer):  # pyright: ignore[reportAttributeAccessIssue]
        return False
    try:
        arr = np.asarray(value)
    except Exception:
        return False
    return arr.dtype != object and arr.size > 0 and bool(np.all(arr == 0))


class _Zeros:
    """Which variables of one jaxpr are known to hold a constant zero."""

    def __init__(self, jaxpr, consts: Sequence, mask: Sequence[bool]):
        self.zero: set = {v for v, z in zip(jaxpr.invars, mask, strict=True) if z}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            # Only small constants can be a ReLU's zero; skip weight matrices.
            if np.size(c) <= 1 and _is_zero_value(c):
                self.zero.add(v)
        for eqn in jaxpr.eqns:
            if (
                eqn.primitive.name in _ZERO_PRESERVING
                and eqn.invars
                and self(eqn.invars[0])
            ):
                self.zero.update(eqn.outvars)

    def __call__(self, atom) -> bool:
        if isinstance(atom, jex.Literal):
            return _is_zero_value(atom.val)
        return atom in self.zero


def _written_as_relu(eqn) -> bool:
    """Whether a `max(x, 0)` was written by model code, as an activation.

    Libraries clamp with `max(., 0)` for other reasons: Equinox's LayerNorm,
    GroupNorm and BatchNorm clamp the variance, `jax.image.resize` its kernel.
    Swapping those would change the backward pass of a normalisation, so a `max`
    counts only when the first frame outside jax (the code that called
    `jnp.maximum`/`lax.max`/`jnp.clip`) is not Equinox's, and nothing but jax's
    numpy/lax plumbing lies in between.
    """
    tb = getattr(eqn.source_info, "traceback", None)
    if tb is None:
        return True
    for frame in tb.frames:  # innermost first
        name = frame.file_name
        if not name.startswith(_JAX_DIR):
            return not name.startswith(_EQX_DIR)
        if not name.startswith(_PLUMBING):
            return False
    return True


def _max_relu_operand(eqn, zeros: _Zeros) -> int | None:
    """For a ReLU written `max(x, 0)` or `max(0, x)` on floats, the index of `x`."""
    if eqn.primitive.name != "max" or len(eqn.invars) != 2:
        return None
    if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
        return None
    a, b = (zeros(v) for v in eqn.invars)
    idx = 0 if (b and not a) else 1 if (a and not b) else None
    if idx is None or not _written_as_relu(eqn):
        return None
    return idx


def _sub_jaxprs(eqn, zeros: _Zeros) -> list[tuple[Any, Sequence, list[bool]]]:
    """`(jaxpr, consts, zero_mask)` for every jaxpr in `eqn.params`."""
    name = eqn.primitive.name
    outer = [zeros(v) for v in eqn.invars]
    found = []
    for value in eqn.params.values():
        items = value if isinstance(value, (tuple, list)) else (value,)
        for item in items:
            if isinstance(item, jex.ClosedJaxpr):
                found.append((item.jaxpr, item.consts))
            elif isinstance(item, jex.Jaxpr):
                found.append((item, ()))
    out = []
    for jaxpr, consts in found:
        n = len(jaxpr.invars)
        if name == "scan":
            # Only the constants stay constant across iterations (the carry does not).
            nc = eqn.params["num_consts"]
            mask = outer[:nc] + [False] * (n - nc)
        elif name == "cond":
            mask = outer[1:]
        elif name == "while" or n != len(outer):
            mask = [False] * n
        else:
            mask = outer
        out.append((jaxpr, consts, mask))
    return out


@dataclass(frozen=True)
class Site:
    """One activation found in a traced forward pass."""

    kind: str  # "relu", "swapped", "blocked", or an `OTHER_ACTIVATIONS` name
    where: str
    detail: str = ""


@dataclass(frozen=True)
class _Action:
    kind: str  # "plain", "max_relu", "relu_call", "swapped", "other", "descend", ...
    arg: Any = None


def _is_relu_call(eqn) -> float | None | bool:
    """For a `custom_jvp_call` of `jax.nn.relu`/`relu6`: its cap; else False."""
    if eqn.primitive.name != "custom_jvp_call":
        return False
    closed = eqn.params["call_jaxpr"]
    name = _fn_name(closed)
    if name not in _RELU_CALLS or len(eqn.invars) != 1 or len(eqn.outvars) != 1:
        return False
    if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
        return False
    # The name alone could be anyone's; the body must really be a ReLU.
    inner = _scan(closed.jaxpr, closed.consts, [False], {})
    if not any(s.kind == "relu" for s in inner):
        return False
    return _RELU_CALLS[name]


def _classify(eqn, zeros: _Zeros, cache: dict) -> _Action:
    name = eqn.primitive.name
    # First: anything traced inside a jax.nn rectifier (elu's body has a max(x, 0)).
    act = _frame_activation(eqn)
    if act is not None:
        return _Action("other", act)
    idx = _max_relu_operand(eqn, zeros)
    if idx is not None:
        return _Action("max_relu", idx)
    cap = _is_relu_call(eqn)
    if cap is not False:
        return _Action("relu_call", cap)
    if name in _JIT:
        jit_name = eqn.params.get("name")
        if jit_name == _MARK:
            return _Action("swapped")
        if jit_name in OTHER_ACTIVATIONS:
            return _Action("other", jit_name)
    subs = _sub_jaxprs(eqn, zeros)
    if not subs:
        return _Action("plain")
    inner = [s for j, c, m in subs for s in _scan(j, c, m, cache)]
    if not any(s.kind in ("relu", "swapped", "blocked") for s in inner):
        # Nothing to swap inside: bind it unchanged, but report what it holds.
        return _Action("opaque", inner)
    if name in _CUSTOM:
        what = f"the `{name}` function `{_fn_name(eqn.params['call_jaxpr'])}`"
        why = "its derivative is its own rule, which ignores the ReLU inside"
        return _Action("blocked", (what, why))
    if name not in (*_JIT, *_REMAT, "scan", "while", "cond"):
        what = f"the `{name}` primitive"
        why = "eqx_attr does not know how to rebuild this primitive"
        return _Action("blocked", (what, why))
    return _Action("descend", inner)


def _scan(jaxpr, consts, mask, cache: dict) -> list[Site]:
    """Every activation in `jaxpr`, recursively (static: nothing is evaluated)."""
    key = (id(jaxpr), tuple(mask))
    if key in cache:
        return cache[key][1]
    zeros = _Zeros(jaxpr, consts, mask)
    sites = []
    for eqn in jaxpr.eqns:
        action = _classify(eqn, zeros, cache)
        where = _summary(eqn)
        if action.kind in ("max_relu", "relu_call"):
            sites.append(Site("relu", where))
        elif action.kind == "swapped":
            sites.append(Site("swapped", where))
        elif action.kind == "other":
            sites.append(Site(action.arg, where))
        elif action.kind == "blocked":
            what, why = action.arg
            sites.append(Site("blocked", where, f"a ReLU inside {what}: {why}"))
        elif action.kind in ("descend", "opaque"):
            sites.extend(action.arg)
    # Keep the jaxpr alive so its id is not reused while the cache lives.
    cache[key] = (jaxpr, sites)
    return sites


@dataclass
class _Context:
    rule: Callable
    cache: dict = field(default_factory=dict)
    sites: set = field(default_factory=set)


def _bind(eqn, invals):
    params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = []
    if isinstance(params, tuple):  # jax < 0.7 returned (subfuns, params)
        subfuns, params = params
    manager = getattr(getattr(eqn, "ctx", None), "manager", None)
    with manager if manager is not None else contextlib.nullcontext():
        out = eqn.primitive.bind(*subfuns, *invals, **params)
    return out if eqn.primitive.multiple_results else [out]


def _eval(jaxpr, consts, args, mask, ctx: _Context, path: tuple) -> list:
    """Evaluate `jaxpr` with every ReLU replaced by `ctx.rule`."""
    env: dict = {}
    zeros = _Zeros(jaxpr, consts, mask)

    def read(atom):
        return atom.val if isinstance(atom, jex.Literal) else env[atom]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        action = _classify(eqn, zeros, ctx.cache)
        here = (*path, id(eqn))
        if action.kind == "max_relu":
            x = invals[action.arg]
            shape = eqn.outvars[0].aval.shape
            if jnp.shape(x) != shape:
                x = jnp.broadcast_to(x, shape)
            outs = [ctx.rule(x)]
            ctx.sites.add(here)
        elif action.kind == "relu_call":
            y = ctx.rule(invals[0])
            if action.arg is not None:
                y = jnp.where(y < action.arg, y, jnp.asarray(action.arg, y.dtype))
            outs = [y]
            ctx.sites.add(here)
        elif action.kind == "swapped":
            outs = _bind(eqn, invals)
            ctx.sites.add(here)
        elif action.kind == "descend":
            outs = _eval_higher_order(eqn, invals, zeros, ctx, here)
        else:  # "plain", "opaque", and "other" once the policy has accepted it
            outs = _bind(eqn, invals)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _eval_higher_order(eqn, invals, zeros, ctx, path) -> list:
    """Rebuild a `jit`/`checkpoint`/`scan`/`while`/`cond` with a rewritten body."""
    name = eqn.primitive.name
    p = eqn.params
    subs = _sub_jaxprs(eqn, zeros)
    if name in _JIT:
        # Inlined: a jit boundary has no effect on values or derivatives.
        (jaxpr, consts, mask), *_ = subs
        return _eval(jaxpr, consts, invals, mask, ctx, path)
    if name in _REMAT:
        (jaxpr, consts, mask), *_ = subs
        body = lambda *a: _eval(jaxpr, consts, list(a), mask, ctx, path)
        return list(
            jax.checkpoint(body, prevent_cse=p["prevent_cse"], policy=p["policy"])(
                *invals
            )
        )
    if name == "scan":
        (jaxpr, consts, mask), *_ = subs
        nc, ncarry = p["num_consts"], p["num_carry"]
        c, init, xs = invals[:nc], invals[nc : nc + ncarry], invals[nc + ncarry :]

        def step(carry, x):
            out = _eval(jaxpr, consts, [*c, *carry, *x], mask, ctx, path)
            return out[:ncarry], out[ncarry:]

        carry, ys = jax.lax.scan(
            step,
            list(init),
            list(xs),
            length=p["length"],
            reverse=p["reverse"],
            unroll=p["unroll"],
        )
        return [*carry, *ys]
    if name == "while":
        cj, bj = p["cond_jaxpr"], p["body_jaxpr"]
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cc, bc, init = invals[:cn], invals[cn : cn + bn], invals[cn + bn :]
        n = len(init)
        cond = lambda s: _eval(
            cj.jaxpr, cj.consts, [*cc, *s], [False] * (cn + n), ctx, path + ("c",)
        )[0]
        body = lambda s: _eval(
            bj.jaxpr, bj.consts, [*bc, *s], [False] * (bn + n), ctx, path + ("b",)
        )
        return list(jax.lax.while_loop(cond, body, list(init)))
    if name == "cond":
        index, ops = invals[0], invals[1:]
        branches = [
            functools.partial(_run_branch, j, c, m, ctx, path + (i,))
            for i, (j, c, m) in enumerate(subs)
        ]
        return list(jax.lax.switch(index, branches, *ops))
    raise AssertionError(f"unreachable: cannot descend into {name}")  # _classify


def _run_branch(jaxpr, consts, mask, ctx, path, *ops):
    return _eval(jaxpr, consts, list(ops), mask, ctx, path)


def _model_name(model: Any) -> str:
    if isinstance(model, eqx.Module) or not hasattr(model, "__name__"):
        return type(model).__name__
    return model.__name__


def _no_relu_message(name: str, sites: Sequence[Site]) -> str:
    others = sorted({s.kind for s in sites if s.kind in OTHER_ACTIVATIONS})
    seen = f" It did find: {', '.join(others)}." if others else ""
    return (
        f"No ReLU found in the forward pass of {name}, so a guided or deconvnet "
        "backward pass would silently equal the plain gradient. eqx_attr swaps ReLUs "
        "held in the model (eqx.nn.Lambda(jax.nn.relu), "
        "eqx.nn.MLP(activation=jax.nn.relu), any field equal to jax.nn.relu or "
        "jax.nn.relu6) and ReLUs called inline (jax.nn.relu(x), jax.nn.relu6(x), "
        f"jnp.maximum(x, 0), jnp.clip(x, 0, ...)).{seen} Write the model's ReLUs in "
        "one of these forms, or use `xa.Gradients` if the plain gradient is what you "
        "want."
    )


def _check_others(name: str, found: Sequence[str]) -> None:
    if found:
        lines = "\n".join(f"  - {f}" for f in dict.fromkeys(found))
        raise ValueError(
            f"{name} uses activations that have no guided or deconvnet variant:\n"
            f"{lines}\nGuided backprop and deconvolution are defined for ReLUs (and "
            "relu6 = min(relu, 6)) only. To accept the plain gradient through these "
            "activations while the ReLUs are swapped, pass "
            "`other_activations='ignore'`."
        )


def _check_sites(
    name: str, sites: Sequence[Site], pytree_others, other_activations: str
) -> None:
    blocked = [s for s in sites if s.kind == "blocked"]
    if blocked:
        lines = "\n".join(f"  - {s.detail} (at {s.where})" for s in blocked)
        raise ValueError(
            f"{name} has ReLUs that cannot be swapped:\n{lines}\nCall jax.nn.relu "
            "outside that function, or give the function itself the modified "
            "backward pass."
        )
    if other_activations == "raise":
        found = [f"{n} at {where}" for where, n in pytree_others]
        found += [
            f"{s.kind} at {s.where}" for s in sites if s.kind in OTHER_ACTIVATIONS
        ]
        _check_others(name, found)
    if not any(s.kind in ("relu", "swapped") for s in sites):
        raise ValueError(_no_relu_message(name, sites))


def rewrite_call(
    fn: Any,
    rule: Callable,
    other_activations: str,
    args: tuple,
    kwargs: dict,
    name: str | None = None,
) -> tuple[Any, int]:
    """Call `fn(*args, **kwargs)` with its inline ReLUs replaced by `rule`.

    `fn` (usually a model, a PyTree) and the arguments are split into arrays and the
    rest, so the model's weights enter the jaxpr as inputs rather than as captured
    constants (which would leak the tracers of an enclosing jit or grad). Raises as
    described in [`swap_relu`][]. Returns the output and the number of ReLU call
    sites swapped, PyTree ones included.
    """
    name = _model_name(fn) if name is None else name
    dynamic, static = eqx.partition((fn, args, kwargs), eqx.is_array)
    flat, treedef = jax.tree_util.tree_flatten(dynamic)

    def flat_call(*leaves):
        f, a, k = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)
        return f(*a, **k)

    closed, out_shape = jax.make_jaxpr(flat_call, return_shape=True)(*flat)
    ctx = _Context(rule)
    mask = [False] * len(flat)
    sites = _scan(closed.jaxpr, closed.consts, mask, ctx.cache)
    _, pytree_others = pytree_activations(fn)
    _check_sites(name, sites, pytree_others, other_activations)
    outs = _eval(closed.jaxpr, closed.consts, flat, mask, ctx, ())
    out = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)
    return out, len(ctx.sites)


# ---------------------------------------------------------------------------------
# The public surgery


class ReLUSwapped(eqx.Module):
    """A model whose ReLUs all use a modified backward pass; see [`swap_relu`][].

    `model` is a copy of the original with its PyTree ReLUs replaced (via
    `eqx.tree_at`); calling this module also rewrites the ReLUs that `model.__call__`
    calls inline. The forward pass is unchanged.
    """

    model: Any
    rule: Callable
    other_activations: str = eqx.field(static=True, default="raise")
    original: str = eqx.field(static=True, default="model")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out, _ = rewrite_call(
            self.model, self.rule, self.other_activations, args, kwargs, self.original
        )
        return out

    def n_swapped(self, *args: Any, **kwargs: Any) -> int:
        """How many ReLU call sites one forward pass on these arguments swaps.

        Counted on the traced program, PyTree and inline ReLUs together; a ReLU
        inside a `scan` body counts once, a shared ReLU module once per use.
        """
        count = []

        def run(*a, **k):
            out, n = rewrite_call(
                self.model, self.rule, self.other_activations, a, k, self.original
            )
            count.append(n)
            return out

        jax.eval_shape(run, *args, **kwargs)
        return count[0]


def swap_relu(
    model: Any,
    rule: str | Callable = "guided",
    *,
    other_activations: str = "raise",
) -> ReLUSwapped:
    """Return a copy of `model` whose every ReLU has a modified backward pass.

    The forward pass is unchanged; only derivatives change. ReLUs held in the model's
    PyTree (`eqx.nn.Lambda(jax.nn.relu)`, `eqx.nn.MLP`'s `activation`, any field equal
    to `jax.nn.relu` or `jax.nn.relu6`) are replaced with `eqx.tree_at`; ReLUs called
    inline in `__call__` (`jax.nn.relu(x)`, `jnp.maximum(x, 0)`, also inside `jit`,
    `vmap`, `scan`, `while`, `cond` and `checkpoint` bodies) are rewritten in the
    traced jaxpr on every call. `relu6(x)` and `jnp.clip(x, 0, c)` are treated as a
    ReLU followed by a cap whose gradient is kept. A `max(., 0)` inside library code
    (the variance clamp of Equinox's normalisation layers, `jax.image.resize`) is
    not an activation and is left alone. The caller's `model` is never modified.

    Calling the result raises a `ValueError` when the forward pass has no ReLU, has
    a ReLU that cannot be rewritten (inside a user's `custom_jvp`/`custom_vjp`), or
    uses a rectifier without a defined variant (GELU, SiLU, ELU, leaky ReLU,
    softplus, PReLU, ...) unless `other_activations="ignore"`.

    **Arguments:**

    - `model`: an Equinox module (or any PyTree callable).
    - `rule`: `"guided"` ([`guided_relu`][]), `"deconvnet"` ([`deconvnet_relu`][]),
        or your own elementwise `x -> relu(x)` with a `jax.custom_vjp`.
    - `other_activations`: `"raise"` (default) or `"ignore"` (keep the plain
        gradient of the non-ReLU rectifiers).

    **Returns:** a [`ReLUSwapped`][] module, called exactly like `model`.

    ```python
    guided = xa.swap_relu(model, "guided")
    g = jax.grad(lambda x: guided(x)[3])(x)     # == xa.GuidedBackprop(model)(x, 3)
    ```
    """
    check_choice(other_activations, "other_activations", POLICIES)
    fn = resolve_rule(rule)
    _, others = pytree_activations(model)
    if other_activations == "raise":
        _check_others(_model_name(model), [f"{n} at {w}" for w, n in others])
    swapped, _ = swap_pytree_relus(model, fn)
    return ReLUSwapped(swapped, fn, other_activations, _model_name(model))
