"""Exposing a module's softmax as a sub-module: [`SoftmaxExposed`][].

The attention methods read attention probabilities at modules named by a `where`.
A module that computes its probabilities internally (`eqx.nn.MultiheadAttention`
takes them inside a `jax.vmap` over heads) is wrapped, in a copy of the model,
so that its softmax output passes through a sub-module of its own, `probs`,
which the layer tap reads like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx

from .._engine._softmax import SoftmaxNotFound, call_with_softmax


class Probabilities(eqx.Module):
    """The identity: the point at which a wrapped module's softmax output is read."""

    def __call__(self, p: Any) -> Any:
        return p


class SoftmaxExposed(eqx.Module):
    """`module`, called unchanged, with its softmax output passed through `probs`.

    **Arguments:** `module`, a callable whose call computes exactly one softmax.

    **Returns:** calling it returns what `module` returns; `probs` is called once,
    on the softmax output (e.g. `(heads, N, N)` attention probabilities).
    """

    module: Any
    probs: Probabilities

    def __init__(self, module: Any):
        self.module = module
        self.probs = Probabilities()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return call_with_softmax(self.module, args, kwargs, self.probs)
        except SoftmaxNotFound as e:
            raise ValueError(
                f"`attention` selects a {type(self.module).__name__} whose output "
                "is not attention probabilities and whose call "
                f"{e}, so no probabilities can be read from it. Point `attention` "
                "at a module with exactly one softmax (an attention module such as "
                "`eqx.nn.MultiheadAttention`), or at the module applied to the "
                "softmax output."
            ) from None


def expose_softmax(
    model: Any, where: Callable, which: list[int]
) -> tuple[Any, Callable]:
    """Wrap items `which` of `where(model)` in [`SoftmaxExposed`][].

    Returns the new model and a `where` naming, in the same order, the wrapped
    modules' `probs` and the other items unchanged.
    """

    def nodes(m):
        found = where(m)
        return list(found) if isinstance(found, (list, tuple)) else [found]

    chosen = lambda m: [n for k, n in enumerate(nodes(m)) if k in which]
    wrapped = eqx.tree_at(chosen, model, replace_fn=SoftmaxExposed)

    def exposed(m):
        return [n.probs if k in which else n for k, n in enumerate(nodes(m))]

    return wrapped, exposed
