"""Model surgery: swap every ReLU of a model for one with a modified backward pass.

A ReLU can live in two places, and both are reached:

1. In the model's PyTree: `eqx.nn.Lambda(jax.nn.relu)`, the `activation` of
   `eqx.nn.MLP`, or any callable field equal to `jax.nn.relu` / `jax.nn.relu6`.
   These are replaced with `eqx.tree_at`, giving a copy of the model.
2. Inline in `__call__`, found in the traced jaxpr:
   - `jax.nn.relu(x)`, `jax.nn.relu6(x)`: a `custom_jvp_call` named `relu`/`relu6`;
   - `jnp.maximum(x, 0)`, `lax.max`, `jnp.clip(x, 0, ...)`: a `max` against a
     constant zero;
   - `jnp.where(x > 0, x, 0)` and `lax.select`: a `select_n` whose predicate
     compares the same `x` with a constant zero (`x > 0`, `x >= 0`, `0 < x`, or
     `x <= 0` / `x < 0` with the branches swapped, or `~` of one of these) and
     whose other branch is a constant zero (a literal, `jnp.zeros_like(x)`, or
     `0.0 * x`);
   - `x * (x > 0)` (either order, the test cast to x's dtype): a `mul` of `x`
     by the cast of such a test.
   A float-to-float cast of `x` counts as `x`. No PyTree rewrite reaches these, so
   the model's call is traced to a jaxpr and evaluated again by a small
   interpreter that substitutes the new ReLU, recursing into `jit`, `scan`,
   `while`, `cond` and `checkpoint` bodies (`vmap` needs nothing special: it is
   traced away into batched primitives). The interpreter runs at trace time, so
   the result is still jit-able, vmap-able and differentiable. The rewritten
   forward pass is the rule's (`jnp.where(x > 0, x, 0)` for the built-in rules),
   so it differs from `x * (x > 0)` or `jnp.where(x > 0, x, 0.0 * x)` only where
   `x` is not finite (those give NaN at `x = -inf` or NaN).

Not recognised (the plain gradient flows through them, so `swap_relu` can only
raise "No ReLU found" when nothing else is a ReLU): any other spelling, e.g.
`jnp.where(x > 0, x, 0)` where `x` is reshaped, broadcast or sliced between the
test and the branch, `(x + abs(x)) / 2`, or `x * jnp.heaviside(x, 0)`. (A ReLU
inside a user's own `custom_jvp`/`custom_vjp` is recognised but raises, as its
rule cannot be swapped.) A hand-written leaky ReLU
`jnp.where(x > 0, x, a * x)` is not a ReLU and is left alone: unlike
`jax.nn.leaky_relu` it is not reported as an activation without a guided variant.

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
_THIS_FILE = __file__
_RULE_BODIES = ("guided_relu", "deconvnet_relu")
# Equinox modules that only forward a call (`eqx.nn.Lambda`, `eqx.nn.Sequential`,
# `filter_jit`, ...): a frame there says nothing about who wrote the operation.
_EQX_FORWARDING = tuple(
    os.path.join(_EQX_DIR, *p.split("/"))
    for p in ("nn/_sequential.py", "_jit.py", "_vmap_pmap.py", "_ad.py", "_module/")
)
# The jax modules a user's `jnp.maximum(x, 0)` / `lax.max` / `jnp.clip` /
# `jnp.where` / `*` passes through on its way to the primitive. One reached through
# any other jax module (e.g. `jax.image.resize`'s triangle kernel) is not a ReLU.
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
        # The machinery of transformations, which only forwards a call.
        "custom_derivatives.py",
        "ad_checkpoint.py",
        "lax/control_flow/",
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


# A fact about one input of a sub-jaxpr, as passed down from the enclosing jaxpr
# (hashable, and relative to the sub-jaxpr's own inputs so that the scan cache is
# shared between call sites): False (nothing known), True (a constant zero),
# ("same", j) (the same value as input j), ("sign", s, j) (a boolean `x > 0`, or
# its negation when s == -1, of input j) or ("indicator", j) (`1.0 where x > 0
# else 0.0` for x = input j).
Fact = Any


@dataclass(frozen=True)
class _Known:
    """What the enclosing jaxpr knows about a (sub-)jaxpr: one `Fact` per input,
    and whether the code that called it was model code (see `_written_as_relu`)."""

    facts: tuple
    caller: bool = True

    @classmethod
    def nothing(cls, n: int, caller: bool = True) -> _Known:
        return cls((False,) * n, caller)


# Comparisons against zero, by which operand the zero is: +1 for a test that is
# true where x > 0 (`x > 0`, `x >= 0`, `0 < x`), -1 for its negation (`x <= 0`).
# `>=` and `>` differ only at x == 0, where a ReLU gives 0 either way.
_SIGN_ZERO_RIGHT = {"gt": 1, "ge": 1, "lt": -1, "le": -1}
_SIGN_ZERO_LEFT = {"lt": 1, "le": 1, "gt": -1, "ge": -1}
_CASTS = ("convert_element_type", "copy", "copy_p")


def _is_float(atom) -> bool:
    return jnp.issubdtype(atom.aval.dtype, jnp.floating)


class _Facts:
    """What is statically known about the variables of one jaxpr.

    - `zero`: variables holding a constant zero (a literal or small constant, a
      broadcast or cast of one, or `0 * x`, which is zero for finite `x`).
    - `root`: a variable that is the same value as another under a new name (a
      sub-jaxpr input, a float-to-float cast), mapped to a canonical one, so that
      `jnp.where(x > 0, x, 0)` is recognised across the `jit` that `jnp.where`
      wraps around its `select_n`.
    - `sign`: boolean variables that test the sign of a float `x` against a
      constant zero, as `(+1 or -1, root of x)`.
    - `indicator`: floats cast from a `+1` sign test, as the root of `x`.
    """

    def __init__(self, jaxpr, consts: Sequence, known: _Known):
        mask = known.facts
        self.caller = known.caller
        self.zero: set = set()
        self.root: dict = {}
        self.sign: dict = {}
        self.indicator: dict = {}
        invars = jaxpr.invars
        for v, fact in zip(invars, mask, strict=True):
            if fact is True:
                self.zero.add(v)
            elif isinstance(fact, tuple) and fact[0] == "same":
                self.root[v] = invars[fact[1]]
        for v, fact in zip(invars, mask, strict=True):
            if isinstance(fact, tuple) and fact[0] == "sign":
                self.sign[v] = (fact[1], self.find(invars[fact[2]]))
            elif isinstance(fact, tuple) and fact[0] == "indicator":
                self.indicator[v] = self.find(invars[fact[1]])
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            # Only small constants can be a ReLU's zero; skip weight matrices.
            if np.size(c) <= 1 and _is_zero_value(c):
                self.zero.add(v)
        for eqn in jaxpr.eqns:
            self._learn(eqn)

    def __call__(self, atom) -> bool:
        """Whether `atom` is a constant zero."""
        if isinstance(atom, jex.Literal):
            return _is_zero_value(atom.val)
        return atom in self.zero

    def find(self, atom):
        """The canonical variable holding the same value as `atom` (None: literal)."""
        if isinstance(atom, jex.Literal):
            return None
        return self.root.get(atom, atom)

    def sign_of(self, atom) -> tuple[int, Any] | None:
        root = self.find(atom)
        return None if root is None else self.sign.get(root)

    def indicator_of(self, atom):
        root = self.find(atom)
        return None if root is None else self.indicator.get(root)

    def _learn(self, eqn) -> None:
        name = eqn.primitive.name
        ins, outs = eqn.invars, eqn.outvars
        if len(outs) != 1 or not ins:
            return
        (out,) = outs
        if name in _ZERO_PRESERVING and self(ins[0]):
            self.zero.add(out)
        elif name == "mul" and any(self(v) for v in ins):
            self.zero.add(out)
        elif name in _CASTS and len(ins) == 1:
            (a,) = ins
            if self.find(a) is None:
                return
            if _is_float(a) and _is_float(out):
                self.root[out] = self.find(a)
            elif (sign := self.sign_of(a)) is not None:
                s, x = sign
                if out.aval.dtype == jnp.bool_:
                    self.sign[out] = (s, x)
                elif s == 1 and _is_float(out):
                    self.indicator[out] = x
        elif name == "not" and (sign := self.sign_of(ins[0])) is not None:
            s, x = sign
            self.sign[out] = (-s, x)
        elif name in _SIGN_ZERO_RIGHT and len(ins) == 2:
            a, b = ins
            if not (_is_float(a) and _is_float(b)):
                return
            if self(b) and not self(a) and self.find(a) is not None:
                self.sign[out] = (_SIGN_ZERO_RIGHT[name], self.find(a))
            elif self(a) and not self(b) and self.find(b) is not None:
                self.sign[out] = (_SIGN_ZERO_LEFT[name], self.find(b))

    def describe(self, atoms: Sequence) -> list[Fact]:
        """The facts for a sub-jaxpr whose i-th input is `atoms[i]` (None: an input
        that is not a fixed value of this jaxpr, such as a scan's carry)."""
        roots = [None if a is None else self.find(a) for a in atoms]
        first: dict = {}
        for i, r in enumerate(roots):
            if r is not None:
                first.setdefault(r, i)
        out: list[Fact] = []
        for i, (a, r) in enumerate(zip(atoms, roots, strict=True)):
            sign = None if r is None else self.sign.get(r)
            ind = None if r is None else self.indicator.get(r)
            if a is not None and self(a):
                out.append(True)
            elif r is None:
                out.append(False)
            elif first[r] != i:
                out.append(("same", first[r]))
            elif sign is not None and sign[1] in first:
                out.append(("sign", sign[0], first[sign[1]]))
            elif ind is not None and ind in first:
                out.append(("indicator", first[ind]))
            else:
                out.append(False)
        return out


def _frames_verdict(eqn) -> bool | None:
    """Whether `eqn` was traced from model code, judged by its own stack: the first
    frame outside jax decides (model code unless it is Equinox's, or the forward
    pass of this module's rules); a jax frame that is not numpy/lax plumbing on the
    way means library code.

    None when every recorded frame is jax plumbing (or Equinox call forwarding):
    the body of a jitted jax function (as `jnp.where` and `jnp.clip` are) records
    only the frames of its own trace, which is cached and shared by every caller,
    and jax keeps only the innermost few frames of any stack.
    """
    tb = getattr(eqn.source_info, "traceback", None)
    if tb is None:
        return None
    for frame in tb.frames:  # innermost first
        name = frame.file_name
        if name.startswith(_EQX_FORWARDING):
            continue
        if name == _THIS_FILE:
            # The rules' own forward passes are not the model's ReLUs; any other
            # frame here is `rewrite_call` calling the model itself.
            return frame.function_name not in _RULE_BODIES
        if not name.startswith(_JAX_DIR):
            return not name.startswith(_EQX_DIR)
        if not name.startswith(_PLUMBING):
            return False
    return None


def _written_as_relu(eqn, caller: bool = True) -> bool:
    """Whether a ReLU-shaped operation was written by model code, as an activation.

    Libraries clamp with `max(., 0)` or gate with `jnp.where` for other reasons:
    Equinox's LayerNorm, GroupNorm and BatchNorm clamp the variance,
    `jax.image.resize` its kernel, and the rules `guided_relu`/`deconvnet_relu`
    are themselves written with `jnp.where`. Swapping those would change the
    backward pass of a normalisation, so an operation counts only when the code
    that called `jnp.maximum`/`lax.max`/`jnp.clip`/`jnp.where`/`*` is model code
    (see `_frames_verdict`). When its own frames cannot tell, the enclosing
    equation's verdict `caller` decides (the `jnp.where` call site, for the
    `select_n` inside `jnp.where`'s jit).
    """
    verdict = _frames_verdict(eqn)
    return caller if verdict is None else verdict


def _relu_operand(eqn, facts: _Facts) -> int | None:
    """For an equation that is a ReLU of a float `x`, the index of `x` in its inputs.

    Recognised: `max(x, 0)` and `max(0, x)`; `select_n(p, 0, x)` with `p` testing
    `x > 0` (or `x >= 0`, `0 < x`), or `select_n(p, x, 0)` with `p` testing
    `x <= 0` (how `jnp.where` and `lax.select` spell it); and `x * (x > 0)` in
    either order, the test cast to `x`'s dtype.
    """
    name = eqn.primitive.name
    if name not in ("max", "select_n", "mul") or len(eqn.outvars) != 1:
        return None
    if not _is_float(eqn.outvars[0]):
        return None
    ins = eqn.invars
    idx = None
    if name == "max" and len(ins) == 2:
        a, b = (facts(v) for v in ins)
        idx = 0 if (b and not a) else 1 if (a and not b) else None
    elif name == "select_n" and len(ins) == 3:
        pred = ins[0]
        sign = facts.sign_of(pred)
        if sign is not None and pred.aval.dtype == jnp.bool_:
            s, x = sign
            # select_n(p, a, b) is `b where p else a`: x is b when p tests x > 0
            # (s == +1) and a when p tests x <= 0 (s == -1); the other is zero.
            on, off = (2, 1) if s == 1 else (1, 2)
            if facts(ins[off]) and facts.find(ins[on]) is x:
                idx = on
    elif name == "mul" and len(ins) == 2:
        for i in (0, 1):
            x = facts.find(ins[i])
            if x is not None and facts.indicator_of(ins[1 - i]) is x:
                idx = i
                break
    if idx is None or not _written_as_relu(eqn, facts.caller):
        return None
    return idx


def _sub_jaxprs(eqn, facts: _Facts) -> list[tuple[Any, Sequence, _Known]]:
    """`(jaxpr, consts, known)` for every jaxpr in `eqn.params`."""
    name = eqn.primitive.name
    caller = _written_as_relu(eqn, facts.caller)
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
        atoms: list = [None] * n
        if name == "scan":
            # Only the constants stay fixed across iterations (the carry does not).
            nc = eqn.params["num_consts"]
            atoms[:nc] = eqn.invars[:nc]
        elif name == "cond":
            atoms = list(eqn.invars[1:])
        elif name != "while" and n == len(eqn.invars):
            atoms = list(eqn.invars)
        out.append((jaxpr, consts, _Known(tuple(facts.describe(atoms)), caller)))
    return out


@dataclass(frozen=True)
class Site:
    """One activation found in a traced forward pass."""

    kind: str  # "relu", "swapped", "blocked", or an `OTHER_ACTIVATIONS` name
    where: str
    detail: str = ""


@dataclass(frozen=True)
class _Action:
    kind: str  # "plain", "relu_op", "relu_call", "swapped", "other", "descend", ...
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
    inner = _scan(closed.jaxpr, closed.consts, _Known.nothing(1), {})
    if not any(s.kind == "relu" for s in inner):
        return False
    return _RELU_CALLS[name]


def _classify(eqn, facts: _Facts, cache: dict) -> _Action:
    name = eqn.primitive.name
    # First: anything traced inside a jax.nn rectifier (elu's body has a max(x, 0)).
    act = _frame_activation(eqn)
    if act is not None:
        return _Action("other", act)
    idx = _relu_operand(eqn, facts)
    if idx is not None:
        return _Action("relu_op", idx)
    cap = _is_relu_call(eqn)
    if cap is not False:
        return _Action("relu_call", cap)
    if name in _JIT:
        jit_name = eqn.params.get("name")
        if jit_name == _MARK:
            return _Action("swapped")
        if jit_name in OTHER_ACTIVATIONS:
            return _Action("other", jit_name)
    subs = _sub_jaxprs(eqn, facts)
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


def _scan(jaxpr, consts, mask: _Known, cache: dict) -> list[Site]:
    """Every activation in `jaxpr`, recursively (static: nothing is evaluated)."""
    key = (id(jaxpr), mask)
    if key in cache:
        return cache[key][1]
    facts = _Facts(jaxpr, consts, mask)
    sites = []
    for eqn in jaxpr.eqns:
        action = _classify(eqn, facts, cache)
        where = _summary(eqn)
        if action.kind in ("relu_op", "relu_call"):
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


def _eval(jaxpr, consts, args, mask: _Known, ctx: _Context, path: tuple) -> list:
    """Evaluate `jaxpr` with every ReLU replaced by `ctx.rule`."""
    env: dict = {}
    facts = _Facts(jaxpr, consts, mask)

    def read(atom):
        return atom.val if isinstance(atom, jex.Literal) else env[atom]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        action = _classify(eqn, facts, ctx.cache)
        here = (*path, id(eqn))
        if action.kind == "relu_op":
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
            outs = _eval_higher_order(eqn, invals, facts, ctx, here)
        else:  # "plain", "opaque", and "other" once the policy has accepted it
            outs = _bind(eqn, invals)
        env.update(zip(eqn.outvars, outs, strict=True))
    return [read(v) for v in jaxpr.outvars]


def _eval_higher_order(eqn, invals, facts, ctx, path) -> list:
    """Rebuild a `jit`/`checkpoint`/`scan`/`while`/`cond` with a rewritten body."""
    name = eqn.primitive.name
    p = eqn.params
    subs = _sub_jaxprs(eqn, facts)
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
        caller = _written_as_relu(eqn, facts.caller)
        cmask, bmask = _Known.nothing(cn + n, caller), _Known.nothing(bn + n, caller)
        cond = lambda s: _eval(
            cj.jaxpr, cj.consts, [*cc, *s], cmask, ctx, path + ("c",)
        )[0]
        body = lambda s: _eval(
            bj.jaxpr, bj.consts, [*bc, *s], bmask, ctx, path + ("b",)
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
        "jnp.maximum(x, 0), jnp.clip(x, 0, ...), jnp.where(x > 0, x, 0), "
        f"x * (x > 0)).{seen} Write the model's ReLUs in "
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
    mask = _Known.nothing(len(flat))
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
    inline in `__call__` (`jax.nn.relu(x)`, `jnp.maximum(x, 0)`,
    `jnp.where(x > 0, x, 0)`, `x * (x > 0)`, also inside `jit`, `vmap`, `scan`,
    `while`, `cond` and `checkpoint` bodies) are rewritten in the traced jaxpr on
    every call. `relu6(x)` and `jnp.clip(x, 0, c)` are treated as a
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
