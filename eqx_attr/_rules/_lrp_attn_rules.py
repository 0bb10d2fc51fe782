"""AttnLRP's rules for what a transformer adds to a network: products of two
activations and the softmax (Achtibat et al., "AttnLRP: Attention-aware
Layer-wise Relevance Propagation for Transformers", ICML 2024, Section 3).

Both are [`AbstractRule`][]s, attached by `_lrp_trace` where the traced program
multiplies two activations (attention's `q @ k.T` and `weights @ v`, a gated
unit's `gate * up`) or takes a softmax. The identity rule on elementwise
functions and on normalisers needs no class of its own: it is `Pass`, and a
normaliser is held constant (see `_engine/_patterns.py`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._lrp_rules import AbstractRule, stabilize


class Uniform(AbstractRule):
    """AttnLRP's uniform rule for a product of two activations `z = f(a, b)`.

    `f` is bilinear (an elementwise product, a matrix product, an `einsum`). Each
    operand is treated as the other's weights, LRP-ε gives it
    `a * d/da [f(a, b)] . (R / (z + ε sign z))` (which sums to the output
    relevance), and the two halves are averaged: `R_a` and `R_b` each carry half,
    so relevance is conserved. For an elementwise product `R_a = R_b = R / 2`
    (Eq. 7 of the paper; the matrix-product form is its Eq. 8).

    **Arguments:** `epsilon`, the stabiliser (default `1e-6`).

    **Returns:** a rule; [`eqx_attr.lrp.AttnLRP`][] attaches it to every product
    of two activations.
    """

    epsilon: float = eqx.field(static=True, default=1e-6)

    def relevance(self, fn, x, w, b, r):
        a, c = x
        z, pull = jax.vjp(lambda a_, c_: fn((a_, c_), w, b), a, c)
        ga, gc = pull(r / stabilize(z, self.epsilon))
        half = jnp.asarray(0.5, r.dtype)
        return half * a * ga, half * c * gc


class Softmax(AbstractRule):
    """AttnLRP's softmax rule: `R_in = x * (R - s * sum(R))` over the softmax axes.

    `x` is the softmax's input (the attention logits), `s` its output and the sum
    runs over the normalised axes (Proposition 3.3 of the paper: the softmax's
    first-order Taylor expansion at `x` with the bias it implies). Relevance is
    not conserved exactly: the bias term absorbs some, as a layer's bias does.

    **Arguments:** `axes`, the axes the softmax normalises over (found in the
    traced program).

    **Returns:** a rule; [`eqx_attr.lrp.AttnLRP`][] attaches it to every softmax.
    """

    axes: tuple[int, ...] = eqx.field(static=True, default=(-1,))

    def relevance(self, fn, x, w, b, r):
        s = fn(x, w, b)
        total = jnp.sum(r, axis=self.axes, keepdims=True)
        return x * (r - s * total)
