"""`swap_relu`: a model whose ReLUs all have a modified backward pass.

ReLUs held in the PyTree are replaced with `eqx.tree_at` (see
`_relu.swap_pytree_relus`); ReLUs written inline (see `_match.py` for the
spellings recognised) are rewritten by evaluating the traced call with the rule
engine (`_engine/_interpreter.py`),
whose `match` hook here is the ReLU matcher. Everything else is bound unchanged,
so custom primitives (e.g. `eqx.error_if`) keep working. A ReLU that cannot be
rewritten (inside a user's `custom_jvp`/`custom_vjp`, whose derivative rule is
user-defined, or inside an unknown higher-order primitive) raises, as does a model
with no ReLU at all: a modified-backward method must never silently return the
plain gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._attribution import check_choice
from .._engine import _interpreter as it
from ._match import (
    Descend,
    Facts,
    Known,
    ReluCall,
    ReluOp,
    Site,
    Swapped,
    classify,
    scan_sites,
    sub_known,
)
from ._relu import POLICIES, pytree_activations, resolve_rule, swap_pytree_relus


@dataclass
class _Context:
    """One rewrite: the rule, the matcher's cache, and the call sites swapped."""

    rule: Callable
    cache: dict = field(default_factory=dict)
    sites: set = field(default_factory=set)

    def enter(self, eqn: Any, scope: tuple) -> list:
        facts, path = scope
        return [
            (Facts(j, c, known), (*path, id(eqn), i))
            for i, (j, c, known) in enumerate(sub_known(eqn, facts))
        ]

    def match(self, interp: it.Interpreter, eqns, i: int, scope: tuple) -> it.Unit:
        eqn = eqns[i]
        facts, path = scope
        action = classify(eqn, facts, self.cache)
        here = (*path, id(eqn))
        if isinstance(action, ReluOp):
            return it.Unit(lambda _, e, v: self._relu_op(e, v, action.index, here))
        if isinstance(action, ReluCall):
            return it.Unit(lambda _, e, v: self._relu_call(v, action.cap, here))
        if isinstance(action, Swapped):
            self.sites.add(here)
        if isinstance(action, Descend):
            return it.Unit(lambda ip, e, v: it.descend(ip, e, v, scope))
        # Plain, Opaque, Swapped, and Other once the policy has accepted it.
        return it.Unit(it.bind_plain)

    def _relu_op(self, eqn, invals, index: int, here: tuple) -> list:
        x = invals[index]
        shape = eqn.outvars[0].aval.shape
        if jnp.shape(x) != shape:
            x = jnp.broadcast_to(x, shape)
        self.sites.add(here)
        return [self.rule(x)]

    def _relu_call(self, invals, cap: float | None, here: tuple) -> list:
        y = self.rule(invals[0])
        if cap is not None:
            y = jnp.where(y < cap, y, jnp.asarray(cap, y.dtype))
        self.sites.add(here)
        return [y]


def _model_name(model: Any) -> str:
    if isinstance(model, eqx.Module) or not hasattr(model, "__name__"):
        return type(model).__name__
    return model.__name__


def _no_relu_message(name: str, sites: Sequence[Site]) -> str:
    others = sorted({s.name for s in sites if s.kind == "other"})
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
        found += [f"{s.name} at {s.where}" for s in sites if s.kind == "other"]
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
    traced = it.trace(fn, *args, **kwargs)
    closed = traced.closed
    ctx = _Context(rule)
    mask = Known.nothing(len(traced.leaves))
    sites = scan_sites(closed.jaxpr, closed.consts, mask, ctx.cache)
    _, pytree_others = pytree_activations(fn)
    _check_sites(name, sites, pytree_others, other_activations)
    interp = it.Interpreter(
        {}, "swap_relu", match=ctx.match, enter=ctx.enter, fallback=it.bind_plain
    )
    scope = (Facts(closed.jaxpr, closed.consts, mask), ())
    out = traced.output(it.run(interp, traced, traced.leaves, scope))
    return out, len(ctx.sites)


# ---------------------------------------------------------------------------------
# The public surgery


class ReLUSwapped(eqx.Module):
    """A model whose ReLUs all use a modified backward pass; see
    [`eqx_attr.swap_relu`][].

    `model` is a copy of the original with its PyTree ReLUs replaced (via
    `eqx.tree_at`); calling this module also rewrites the ReLUs that `model.__call__`
    calls inline. The forward pass is unchanged.

    **Arguments:**

    - `model`: the model with its PyTree ReLUs already swapped.
    - `rule`: the elementwise `jax.custom_vjp` ReLU to substitute.
    - `other_activations`: `"raise"` (default) or `"ignore"` for rectifiers that
        have no variant of the rule.
    - `original`: the name used for the model in error messages.

    **Returns:** calling it gives the original model's output (same forward pass);
    its gradient uses `rule` at every ReLU.
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
    - `rule`: `"guided"` ([`eqx_attr.guided_relu`][]), `"deconvnet"`
    ([`eqx_attr.deconvnet_relu`][]),
        or your own elementwise `x -> relu(x)` with a `jax.custom_vjp`.
    - `other_activations`: `"raise"` (default) or `"ignore"` (keep the plain
        gradient of the non-ReLU rectifiers).

    **Returns:** a [`eqx_attr.ReLUSwapped`][] module, called exactly like `model`.

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
