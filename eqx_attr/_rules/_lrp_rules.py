"""LRP rules: each maps output relevance to input relevance for one linear operation.

A rule sees a linear operation as a function `fn(x, w, b)` of its input `x` (an array,
or a tuple of arrays for a sum of branches), its weights `w` (an array, a PyTree of
arrays, or None) and its bias `b` (an array or None). It returns the input relevance
the gradient way: modified forward passes `z_k = fn(x_k, w_k, b_k)`, the output
relevance divided by a stabilised denominator, one vector-Jacobian product per pass,
and a weighted sum of `x_k * grad_k`. Every rule follows Zennit's rule of the same
name: its input modifiers, parameter modifiers (applied to every weight leaf; the
bias is dropped where Zennit's `zero_bias` drops it), gradient mapper and reducer.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

# ---------------------------------------------------------------------------------
# Helpers on (PyTrees of) arrays; `None` stands for a missing parameter.


def stabilize(z: Any, epsilon: float) -> Any:
    """`z + epsilon * sign(z)` with `sign(0) = +1`, as Zennit's stabiliser."""
    sign = jnp.where(z >= 0, jnp.ones_like(z), -jnp.ones_like(z))
    return z + sign * jnp.asarray(epsilon, z.dtype)


def _map(f: Callable, tree: Any) -> Any:
    return None if tree is None else jax.tree.map(f, tree)


def _widen(tree: Any) -> Any:
    """Floating leaves in at least float32 (a bfloat16/float16 one is upcast)."""
    return _map(
        lambda a: (
            a.astype(jnp.promote_types(a.dtype, jnp.float32))
            if jnp.issubdtype(a.dtype, jnp.floating)
            else a
        ),
        tree,
    )


def _pos(tree: Any) -> Any:
    return _map(lambda a: jnp.maximum(a, jnp.zeros_like(a)), tree)


def _neg(tree: Any) -> Any:
    return _map(lambda a: jnp.minimum(a, jnp.zeros_like(a)), tree)


def _ones(tree: Any) -> Any:
    return _map(jnp.ones_like, tree)


def _axpy(gamma: float, w: Any, part: Any) -> Any:
    """`w + gamma * part`, leafwise (Zennit's `GammaMod`)."""
    if w is None:
        return None
    return jax.tree.map(lambda a, p: a + jnp.asarray(gamma, a.dtype) * p, w, part)


def _mul(x: Any, g: Any) -> Any:
    return jax.tree.map(lambda a, b: a * b, x, g)


def _add(*trees: Any) -> Any:
    return jax.tree.map(lambda *a: sum(a[1:], a[0]), *trees)


def _scale(c: float, tree: Any) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(c, a.dtype) * a, tree)


def _pass(fn: Callable, x: Any, w: Any, b: Any) -> tuple[Any, Callable]:
    """One modified forward pass: its output and its vector-Jacobian product in x."""
    z, pull = jax.vjp(lambda x_: fn(x_, w, b), x)
    # `g` may be wider than the pass (float32 ratios of a bfloat16 model).
    return z, lambda g: pull(jax.tree.map(lambda a, r: a.astype(r.dtype), g, z))[0]


def _broadcast_to(value: Any, x: Any) -> Any:
    return jax.tree.map(
        lambda a: jnp.broadcast_to(jnp.asarray(value, a.dtype), a.shape), x
    )


# ---------------------------------------------------------------------------------
# The rules


class AbstractRule(eqx.Module):
    """An LRP rule: maps a linear operation's output relevance to its input.

    Concrete rules are final Equinox modules with their hyperparameters as fields;
    they are used by [`eqx_attr.LRP`][] (through a composite, `rule=`, or
    `overrides=`), never called on arrays directly.

    **Arguments:** none here; subclasses hold their hyperparameters as fields.

    **Returns:** a subclass's `relevance(fn, x, w, b, r)` returns the input
    relevance of the operation `fn(x, w, b)` given its output relevance `r`.
    """

    @abc.abstractmethod
    def relevance(self, fn: Callable, x: Any, w: Any, b: Any, r: Any) -> Any:
        """Input relevance of `fn(x, w, b)` given the output relevance `r`."""


class Epsilon(AbstractRule):
    """LRP-ε: `R_i = x_i w_ij R_j / (z_j + ε sign(z_j))`, bias included in `z`.

    Bach et al. 2015. `epsilon=0` is LRP-0. Zennit's `Epsilon`.

    **Arguments:** `epsilon` (default `1e-6`).

    **Returns:** a rule, to pass to [`eqx_attr.LRP`][] as `rule=`, in `overrides=`,
    or inside a composite.

    ```python
    xa.LRP(model, rule=xa.lrp.Epsilon(0.25))(x, 3)
    ```
    """

    epsilon: float = eqx.field(static=True, default=1e-6)

    def relevance(self, fn, x, w, b, r):
        z, grad = _pass(fn, x, w, b)
        return _mul(x, grad(r / stabilize(z, self.epsilon)))


class Norm(AbstractRule):
    """Proportional split: each input gets its share of the output it contributed.

    LRP-ε with a tiny ε as a pure stabiliser, for parameter-free linear operations
    (average pools, the sum of the two branches of a skip connection). Zennit's
    `Norm`.

    **Arguments:** `stabilizer` (default `1e-6`).

    **Returns:** a rule, to pass to [`eqx_attr.LRP`][] as `rule=`, in `overrides=`,
    or inside a composite.

    ```python
    xa.LRP(model, overrides=((lambda m: m.avgpool, xa.lrp.Norm()),))
    ```
    """

    stabilizer: float = eqx.field(static=True, default=1e-6)

    def relevance(self, fn, x, w, b, r):
        z, grad = _pass(fn, x, w, b)
        return _mul(x, grad(r / stabilize(z, self.stabilizer)))


class ZPlus(AbstractRule):
    """LRP-z⁺: only positive contributions `x⁺w⁺ + x⁻w⁻`; the bias only with `x⁺w⁺`.

    Bach et al. 2015, Montavon et al. 2017 (alpha=1, beta=0 for negative inputs too).
    Zennit's `ZPlus`.

    **Arguments:** `stabilizer` (default `1e-6`).

    **Returns:** a rule, to pass to [`eqx_attr.LRP`][] as `rule=`, in `overrides=`,
    or inside a composite.

    ```python
    xa.LRP(model, rule=xa.lrp.ZPlus())(x, 3)
    ```
    """

    stabilizer: float = eqx.field(static=True, default=1e-6)

    def relevance(self, fn, x, w, b, r):
        xp, xn = _pos(x), _neg(x)
        z1, g1 = _pass(fn, xp, _pos(w), _pos(b))
        z2, g2 = _pass(fn, xn, _neg(w), None)
        s = r / stabilize(z1 + z2, self.stabilizer)
        return _add(_mul(xp, g1(s)), _mul(xn, g2(s)))


class AlphaBeta(AbstractRule):
    """LRP-αβ: `α` times the positive share minus `β` times the negative share.

    Bach et al. 2015. Positive part `x⁺w⁺ + b⁺ + x⁻w⁻`, negative part
    `x⁺w⁻ + b⁻ + x⁻w⁺`, each normalised on its own. Zennit's `AlphaBeta`.

    **Arguments:** `alpha` (default 2), `beta` (default 1), with `alpha - beta = 1`,
    both non-negative; `stabilizer` (default `1e-6`).

    **Returns:** a rule, to pass to [`eqx_attr.LRP`][] as `rule=`, in `overrides=`,
    or inside a composite.

    ```python
    xa.LRP(model, rule=xa.lrp.AlphaBeta(alpha=1.0, beta=0.0))(x, 3)
    ```
    """

    alpha: float = eqx.field(static=True, default=2.0)
    beta: float = eqx.field(static=True, default=1.0)
    stabilizer: float = eqx.field(static=True, default=1e-6)

    def __check_init__(self):
        if self.alpha < 0 or self.beta < 0:
            raise ValueError(
                "AlphaBeta needs `alpha >= 0` and `beta >= 0`, got "
                f"alpha={self.alpha}, beta={self.beta}."
            )
        if abs(self.alpha - self.beta - 1.0) > 1e-12:
            raise ValueError(
                "AlphaBeta needs `alpha - beta == 1` to conserve relevance, got "
                f"alpha={self.alpha}, beta={self.beta}; e.g. alpha=2.0, beta=1.0."
            )

    def relevance(self, fn, x, w, b, r):
        xp, xn = _pos(x), _neg(x)
        wp, wn = _pos(w), _neg(w)
        z1, g1 = _pass(fn, xp, wp, _pos(b))
        z2, g2 = _pass(fn, xn, wn, None)
        z3, g3 = _pass(fn, xp, wn, _neg(b))
        z4, g4 = _pass(fn, xn, wp, None)
        sp = r / stabilize(z1 + z2, self.stabilizer)
        sn = r / stabilize(z3 + z4, self.stabilizer)
        positive = _add(_mul(xp, g1(sp)), _mul(xn, g2(sp)))
        negative = _add(_mul(xp, g3(sn)), _mul(xn, g4(sn)))
        return _add(_scale(self.alpha, positive), _scale(-self.beta, negative))


class Gamma(AbstractRule):
    """Generalised LRP-γ: favour the contributions that agree with the output's sign.

    Montavon et al. 2019, Andéol et al. 2021. Where the original output is positive,
    relevance goes through `x⁺(w + γw⁺) + (b + γb⁺) + x⁻(w + γw⁻)`; where it is
    negative, through `x⁺(w + γw⁻) + (b + γb⁻) + x⁻(w + γw⁺)`. Zennit's `Gamma`.

    **Arguments:** `gamma` (default `0.25`), `stabilizer` (default `1e-6`).

    **Returns:** a rule, to pass to [`eqx_attr.LRP`][] as `rule=`, in `overrides=`,
    or inside a composite.

    ```python
    xa.LRP(model, rule=xa.lrp.Gamma(gamma=0.5))(x, 3)
    ```
    """

    gamma: float = eqx.field(static=True, default=0.25)
    stabilizer: float = eqx.field(static=True, default=1e-6)

    def relevance(self, fn, x, w, b, r):
        xp, xn = _pos(x), _neg(x)
        wp, wn = _axpy(self.gamma, w, _pos(w)), _axpy(self.gamma, w, _neg(w))
        bp, bn = _axpy(self.gamma, b, _pos(b)), _axpy(self.gamma, b, _neg(b))
        z0 = fn(x, w, b)
        z1, g1 = _pass(fn, xp, wp, bp)
        z2, g2 = _pass(fn, xn, wn, None)
        z3, g3 = _pass(fn, xp, wn, bn)
        z4, g4 = _pass(fn, xn, wp, None)
        zero = jnp.zeros_like(r)
        sa = jnp.where(z0 > 0, r / stabilize(z1 + z2, self.stabilizer), zero)
        sb = jnp.where(z0 < 0, r / stabilize(z3 + z4, self.stabilizer), zero)
        return _add(
            _mul(xp, g1(sa)), _mul(xn, g2(sa)), _mul(xp, g3(sb)), _mul(xn, g4(sb))
        )


class ZBox(AbstractRule):
    """LRP-z^B for inputs known to lie in a box `[low, high]` (a first layer).

    Montavon et al. 2017. `z = xw - low·w⁺ - high·w⁻` (the bias terms cancel).
    Zennit's `ZBox`.

    **Arguments:** `low`, `high` (floats or arrays broadcastable to the layer's
    input), `stabilizer` (default `1e-6`).

    **Returns:** a rule, to pass to [`eqx_attr.LRP`][] as `rule=`, in `overrides=`,
    or inside a composite.

    ```python
    xa.LRP(model, composite=xa.lrp.EpsilonGammaBox(low=0.0, high=1.0))(x, 3)
    ```
    """

    low: Any
    high: Any
    stabilizer: float = eqx.field(static=True, default=1e-6)

    def relevance(self, fn, x, w, b, r):
        lo, hi = _broadcast_to(self.low, x), _broadcast_to(self.high, x)
        z1, g1 = _pass(fn, x, w, b)
        z2, g2 = _pass(fn, lo, _pos(w), _pos(b))
        z3, g3 = _pass(fn, hi, _neg(w), _neg(b))
        s = r / stabilize(z1 - z2 - z3, self.stabilizer)
        return _add(
            _mul(x, g1(s)), _scale(-1.0, _mul(lo, g2(s))), _scale(-1.0, _mul(hi, g3(s)))
        )


class Flat(AbstractRule):
    """LRP-flat: spread relevance uniformly over each output's receptive field.

    Lapuschkin et al. 2019: all-one inputs and weights, no bias (zero padding
    counts as zero, so border outputs spread over fewer inputs). Zennit's `Flat`.

    **Arguments:** `stabilizer` (default `1e-6`).

    **Returns:** a rule, to pass to [`eqx_attr.LRP`][] as `rule=`, in `overrides=`,
    or inside a composite.

    ```python
    xa.LRP(model, composite=xa.lrp.EpsilonPlusFlat())(x, 3)
    ```
    """

    stabilizer: float = eqx.field(static=True, default=1e-6)

    def relevance(self, fn, x, w, b, r):
        z, grad = _pass(fn, _ones(x), _ones(w), None)
        return grad(r / stabilize(z, self.stabilizer))


class WSquare(AbstractRule):
    """LRP-w²: relevance in proportion to squared weights, ignoring the input.

    Montavon et al. 2017; the squared bias stays in the denominator as in Zennit's
    `WSquare`.

    **Arguments:** `stabilizer` (default `1e-6`).

    **Returns:** a rule, to pass to [`eqx_attr.LRP`][] as `rule=`, in `overrides=`,
    or inside a composite.

    ```python
    xa.LRP(model, rule=xa.lrp.WSquare())(x, 3)
    ```
    """

    stabilizer: float = eqx.field(static=True, default=1e-6)

    def relevance(self, fn, x, w, b, r):
        square = lambda t: _map(jnp.square, t)
        z, grad = _pass(fn, _ones(x), square(w), square(b))
        return grad(r / stabilize(z, self.stabilizer))


class Pass(AbstractRule):
    """Pass the relevance through unchanged (activations, shape-preserving ops).

    Zennit's `Pass`. Only valid where the input and output have the same shape.

    **Arguments:** none.

    **Returns:** a rule, to pass to [`eqx_attr.LRP`][] in `overrides=`.

    ```python
    xa.LRP(model, overrides=((lambda m: m.norm, xa.lrp.Pass()),))
    ```
    """

    def relevance(self, fn, x, w, b, r):
        if not isinstance(x, jax.Array) or x.shape != r.shape:
            shapes = jax.tree.map(jnp.shape, x)
            raise ValueError(
                f"The `Pass` rule needs an operation whose input and output have the "
                f"same shape; got input {shapes} and output {r.shape}. Use `Epsilon` "
                "or `Norm` for this layer instead."
            )
        return r


# ---------------------------------------------------------------------------------
# Attaching a rule to an operation


RULE_TAG = "_eqx_attr_lrp_rule"
LAYER_TAG = "_eqx_attr_lrp_layer"


def apply_rule(
    rule: AbstractRule,
    fn: Callable,
    x: Any,
    w: Any = None,
    b: Any = None,
    *,
    layer: bool = False,
) -> Any:
    """`fn(x, w, b)`, whose backward pass maps output relevance by `rule`.

    A `jax.custom_vjp`: the cotangent arriving at the output is read as relevance
    and the cotangent returned for `x` is the rule's input relevance (the weights
    get zero cotangents). The rule's array fields (ZBox's bounds) are passed as
    arguments, so nothing traced is closed over. `layer=True` marks a linear layer
    for the interpreter (it then counts as a network's first layer).
    """
    dyn, static = eqx.partition(rule, eqx.is_array)

    # The function's own name marks the call in the jaxpr (see `_lrp_trace`).
    def _eqx_attr_lrp_rule(d, x_, w_, b_):
        return fn(x_, w_, b_)

    def _eqx_attr_lrp_layer(d, x_, w_, b_):
        return fn(x_, w_, b_)

    call = jax.custom_vjp(_eqx_attr_lrp_layer if layer else _eqx_attr_lrp_rule)

    def fwd(d, x_, w_, b_):
        return fn(x_, w_, b_), (d, x_, w_, b_)

    def bwd(res, r):
        d, x_, w_, b_ = res
        # A half-precision model: the rule's ratios r / z are taken in float32
        # (`_widen`), the operation's own pass runs in its dtype (`_pass`), and
        # the input relevance goes back in x's dtype, as a cotangent must.
        rin = eqx.combine(d, static).relevance(fn, x_, w_, b_, _widen(r))
        rin = jax.tree.map(lambda a, ref: a.astype(ref.dtype), rin, x_)
        zeros = jax.tree.map(jnp.zeros_like, (d, w_, b_))
        return zeros[0], rin, zeros[1], zeros[2]

    call.defvjp(fwd, bwd)
    return call(dyn, x, w, b)
