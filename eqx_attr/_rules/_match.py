"""The ReLU pattern matcher: which equations of a jaxpr are a model's ReLUs.

A ReLU can be written inline in many ways; this module recognises, statically
(nothing is evaluated):

- `jax.nn.relu(x)`, `jax.nn.relu6(x)`: a `custom_jvp_call` named `relu`/`relu6`;
- `jnp.maximum(x, 0)`, `lax.max`, `jnp.clip(x, 0, ...)`: a `max` against a
  constant zero;
- `jnp.where(x > 0, x, 0)` and `lax.select`: a `select_n` whose predicate compares
  the same `x` with a constant zero (`x > 0`, `x >= 0`, `0 < x`, or `x <= 0` /
  `x < 0` with the branches swapped, or `~` of one of these) and whose other branch
  is a constant zero (a literal, `jnp.zeros_like(x)`, or `0.0 * x`);
- `x * (x > 0)` (either order, the test cast to x's dtype).

A float-to-float cast of `x` counts as `x`. Only operations written by model code
count: a `max(., 0)` inside library code (the variance clamp of Equinox's
normalisation layers, `jax.image.resize`) is not an activation. Not recognised
(they keep their plain gradient): other spellings, e.g. `(x + abs(x)) / 2`, or a
`jnp.where` whose `x` is reshaped between the test and the branch. A hand-written
leaky ReLU `jnp.where(x > 0, x, a * x)` is not a ReLU.

[`classify`][] turns one equation into a typed [`Action`][]; [`scan_sites`][]
lists every activation of a jaxpr, recursively, for the checks made before a
rewrite.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._engine import _jax_internals as ji
from ._actions import (
    Action,
    Blocked,
    Descend,
    Opaque,
    Other,
    Plain,
    ReluCall,
    ReluOp,
    Site,
    Swapped,
)
from ._relu import MARK, OTHER_ACTIVATIONS, RELU_CALLS, RULE_BODIES

# The engine's and the rules' own source: their frames are not the model's.
_OWN_DIRS = (ji.ENGINE_DIR, os.path.dirname(__file__) + os.sep)

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


def _is_zero_value(value) -> bool:
    if ji.is_tracer(value):
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
class Known:
    """What the enclosing jaxpr knows about a (sub-)jaxpr: one `Fact` per input,
    and whether the code that called it was model code (see `_written_as_relu`)."""

    facts: tuple
    caller: bool = True

    @classmethod
    def nothing(cls, n: int, caller: bool = True) -> Known:
        return cls((False,) * n, caller)


# Comparisons against zero, by which operand the zero is: +1 for a test that is
# true where x > 0 (`x > 0`, `x >= 0`, `0 < x`), -1 for its negation (`x <= 0`).
# `>=` and `>` differ only at x == 0, where a ReLU gives 0 either way.
_SIGN_ZERO_RIGHT = {"gt": 1, "ge": 1, "lt": -1, "le": -1}
_SIGN_ZERO_LEFT = {"lt": 1, "le": 1, "gt": -1, "ge": -1}
_CASTS = ("convert_element_type", "copy", "copy_p")


def _is_float(atom) -> bool:
    return jnp.issubdtype(atom.aval.dtype, jnp.floating)


class Facts:
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

    def __init__(self, jaxpr, consts: Sequence, known: Known):
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
        if isinstance(atom, ji.Literal):
            return _is_zero_value(atom.val)
        return atom in self.zero

    def find(self, atom):
        """The canonical variable holding the same value as `atom` (None: literal)."""
        if isinstance(atom, ji.Literal):
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
    pass of the rules); a jax frame that is not numpy/lax plumbing on the
    way means library code.

    None when every recorded frame is jax plumbing (or Equinox call forwarding):
    the body of a jitted jax function (as `jnp.where` and `jnp.clip` are) records
    only the frames of its own trace, which is cached and shared by every caller,
    and jax keeps only the innermost few frames of any stack.
    """
    for frame in ji.frames(eqn):  # innermost first
        name = frame.file
        if name.startswith(ji.EQX_FORWARDING):
            continue
        if name.startswith(_OWN_DIRS):
            # The rules' own forward passes are not the model's ReLUs; any other
            # frame here is the engine calling the model itself.
            return frame.function not in RULE_BODIES
        if not name.startswith(ji.JAX_DIR):
            return not name.startswith(ji.EQX_DIR)
        if not name.startswith(ji.PLUMBING):
            return False
    return None


def written_as_relu(eqn, caller: bool = True) -> bool:
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


def relu_operand(eqn, facts: Facts) -> int | None:
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
    if idx is None or not written_as_relu(eqn, facts.caller):
        return None
    return idx


def sub_known(eqn, facts: Facts) -> list[tuple[Any, Sequence, Known]]:
    """`(jaxpr, consts, known)` for every jaxpr in `eqn.params`."""
    name = eqn.primitive.name
    caller = written_as_relu(eqn, facts.caller)
    out = []
    for jaxpr, consts in ji.sub_jaxprs(eqn):
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
        out.append((jaxpr, consts, Known(tuple(facts.describe(atoms)), caller)))
    return out


def is_relu_call(eqn) -> float | None | bool:
    """For a `custom_jvp_call` of `jax.nn.relu`/`relu6`: its cap; else False."""
    if eqn.primitive.name != "custom_jvp_call":
        return False
    closed = eqn.params["call_jaxpr"]
    name = ji.fn_name(closed)
    if name not in RELU_CALLS or len(eqn.invars) != 1 or len(eqn.outvars) != 1:
        return False
    if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
        return False
    # The name alone could be anyone's; the body must really be a ReLU.
    inner = scan_sites(closed.jaxpr, closed.consts, Known.nothing(1), {})
    if not any(s.kind == "relu" for s in inner):
        return False
    return RELU_CALLS[name]


def classify(eqn, facts: Facts, cache: dict) -> Action:
    """What the ReLU swap does with one equation."""
    name = eqn.primitive.name
    # First: anything traced inside a jax.nn rectifier (elu's body has a max(x, 0)).
    act = ji.nn_function(eqn, OTHER_ACTIVATIONS)
    if act is not None:
        return Other(act)
    idx = relu_operand(eqn, facts)
    if idx is not None:
        return ReluOp(idx)
    cap = is_relu_call(eqn)
    if cap is not False:
        return ReluCall(cap)  # pyright: ignore[reportArgumentType]
    if name in ji.JIT:
        jit_name = eqn.params.get("name")
        if jit_name == MARK:
            return Swapped()
        if jit_name in OTHER_ACTIVATIONS:
            return Other(jit_name)
    subs = sub_known(eqn, facts)
    if not subs:
        return Plain()
    inner = tuple(s for j, c, m in subs for s in scan_sites(j, c, m, cache))
    if not any(s.kind in ("relu", "swapped", "blocked") for s in inner):
        # Nothing to swap inside: bind it unchanged, but report what it holds.
        return Opaque(inner)
    if name in ji.CUSTOM:
        what = f"the `{name}` function `{ji.fn_name(eqn.params['call_jaxpr'])}`"
        why = "its derivative is its own rule, which ignores the ReLU inside"
        return Blocked(what, why)
    if name not in (*ji.JIT, *ji.REMAT, ji.SCAN, ji.WHILE, ji.COND):
        what = f"the `{name}` primitive"
        why = "eqx_attr does not know how to rebuild this primitive"
        return Blocked(what, why)
    return Descend(inner)


def scan_sites(jaxpr, consts, mask: Known, cache: dict) -> list[Site]:
    """Every activation in `jaxpr`, recursively (static: nothing is evaluated)."""
    key = (id(jaxpr), mask)
    if key in cache:
        return cache[key][1]
    facts = Facts(jaxpr, consts, mask)
    sites = []
    for eqn in jaxpr.eqns:
        action = classify(eqn, facts, cache)
        where = ji.where(eqn)
        if isinstance(action, (ReluOp, ReluCall)):
            sites.append(Site("relu", where))
        elif isinstance(action, Swapped):
            sites.append(Site("swapped", where))
        elif isinstance(action, Other):
            sites.append(Site("other", where, name=action.name))
        elif isinstance(action, Blocked):
            detail = f"a ReLU inside {action.what}: {action.why}"
            sites.append(Site("blocked", where, detail))
        elif isinstance(action, (Descend, Opaque)):
            sites.extend(action.sites)
    # Keep the jaxpr alive so its id is not reused while the cache lives.
    cache[key] = (jaxpr, sites)
    return sites
