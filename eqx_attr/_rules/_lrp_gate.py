"""LRP with a gate at one layer: read the relevance there, and mask it.

The gate is an identity on the layer's output whose backward pass multiplies the
relevance arriving there by a mask and hands out the unmasked relevance as the
mask's cotangent. It is a `jax.custom_vjp` tagged as a rule (`RULE_TAG`), so the
LRP interpreter keeps it as it is (as it keeps `overrides`) and every other
operation still gets its composite's rule. One `jax.vjp` in the input and the
mask therefore gives the conditioned input relevance and the layer's relevance
(Concept Relevance Propagation's conditioning, and LRP at a layer), purely.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._attribution import Target, resolve_target
from ._lrp import LRP, _model_name, output_relevance
from ._lrp_canon import prepare
from ._lrp_rules import RULE_TAG
from ._lrp_trace import run

__all__ = ["gated_lrp", "lrp_checked_target", "relevance_gate"]


def _eqx_attr_lrp_rule(y, mask):
    # Named as the rules' tagged calls are, so the interpreter keeps the call.
    del mask
    return y


assert _eqx_attr_lrp_rule.__name__ == RULE_TAG
_gate = jax.custom_vjp(_eqx_attr_lrp_rule)


def _gate_fwd(y, mask):
    return y, mask


def _gate_bwd(mask, r):
    return (r * mask).astype(r.dtype), r.astype(mask.dtype)


_gate.defvjp(_gate_fwd, _gate_bwd)


def relevance_gate(y: Array, mask: Array) -> Array:
    """`y`; in LRP's backward pass the relevance `r` at `y` goes on as `r * mask`,
    and the cotangent of `mask` is `r` (the relevance before masking).

    `mask` has `y`'s shape. Inside the rule interpreter the relevance is the
    cotangent, so this reads and conditions the relevance at `y`.
    """
    return _gate(y, mask)


class _Gated(eqx.Module):
    module: Any
    mask: Array

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return relevance_gate(self.module(*args, **kwargs), self.mask)


def lrp_checked_target(method: LRP, x: Array, target: Target) -> Target:
    """The trace-time checks of `method(x, target)` (batch norms, target)."""
    return method._checked_target(x, target)


def gated_lrp(
    method: LRP, x: Array, target: Target, where: Callable, mask: Array
) -> tuple[Any, Array]:
    """`(input relevance, layer relevance)` of `method` with a gate at `where`.

    The relevance reaching the output of the sub-module `where(model)` (called
    once per forward pass; check it with `inspect_layer` first) is returned
    unmasked as the second output, and multiplied by `mask` (shaped like that
    output) before it flows on to the input. `mask = 1` gives `method`'s own
    input relevance. Called inside a trace (as `LRP.attribute` is); vmapping it
    over `mask` batches only the backward pass.
    """
    objective = resolve_target(method.model, x, target)
    model = prepare(method.model, method.overrides, method.composite.norm_rule())
    name = _model_name(method.model)
    allow = frozenset(method.allow_gradient)

    def forward(z, m):
        gated = eqx.tree_at(where, model, replace_fn=lambda s: _Gated(s, m))
        return eqx.partition(
            run(gated, z, method.composite, allow, name), eqx.is_inexact_array
        )

    scores, pull, other = jax.vjp(forward, x, jnp.asarray(mask), has_aux=True)
    rel_x, rel_layer = pull(output_relevance(objective, scores, other))
    return rel_x, rel_layer
