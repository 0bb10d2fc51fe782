"""Values on streams: what the interpreter evaluates in tracked mode.

A value that depends on the explained input is an [`Act`][]: its streams stacked on
a leading axis (one for LRP; two, the input and the reference, for DeepLIFT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Act(NamedTuple):
    """A value that depends on the explained input: one array per stream, stacked.

    `streams[0]` is the input's stream; `streams[1]` (DeepLIFT) the reference's.
    """

    streams: jax.Array


def any_act(values: Sequence) -> bool:
    """Whether any of `values` is an [`Act`][]."""
    return any(isinstance(v, Act) for v in values)


def map_streams(fn: Callable[[list], list], invals: list) -> list:
    """Apply `fn` (plain values -> plain values) to every stream of the [`Act`][]s.

    Constants are shared by the streams; every output becomes an `Act`.
    """
    acts = [i for i, v in enumerate(invals) if isinstance(v, Act)]
    if not acts:
        return fn(invals)

    def one(*arrays):
        merged = list(invals)
        for i, a in zip(acts, arrays, strict=True):
            merged[i] = a
        return fn(merged)

    n = invals[acts[0]].streams.shape[0]
    if n == 1:  # no vmap for a single stream: a cheaper trace, the same program
        outs = one(*(invals[i].streams[0] for i in acts))
        return [Act(jnp.expand_dims(o, 0)) for o in outs]
    outs = jax.vmap(one)(*(invals[i].streams for i in acts))
    return [Act(o) for o in outs]
