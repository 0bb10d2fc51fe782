"""DeepLIFT's rules for the engine: Rescale on nonlinearities, max pooling as
Captum does, linear operations pass multipliers through.

Values that depend on the input are [`Act`][]s with two streams: the input's and
the reference's. Every rule's forward pass evaluates both; its backward pass
(a `jax.custom_vjp`) returns the DeepLIFT multipliers for the input's stream and
zero for the reference's (which is not differentiated).

The rules' forward passes (`fwd`) compute the plain function, not the rule
itself: differentiating an attribution again (with respect to the parameters or
the input, e.g. inside a training loss) then sees the true derivatives of the
values the multipliers are made of. Calling the rule inside `fwd` would put the
multipliers in place of those derivatives too, and the second derivative would
be silently wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._engine import _interpreter as it, _jax_internals as ji
from .._engine._patterns import elementwise_region, region_fn
from ._match import Facts, Known, relu_operand, sub_known

# Linear in every tracked operand: multipliers pass through as gradients.
LINEAR = (
    "add", "add_any", "sub", "neg", "reshape", "broadcast_in_dim", "transpose",
    "squeeze", "expand_dims", "reduce_sum", "slice", "dynamic_slice", "gather",
    "concatenate", "pad", "convert_element_type", "copy", "copy_p", "rev",
    "reduce_window_sum", "cumsum", "reduce_precision", "split", "real",
    "dynamic_update_slice", "scatter-add", "scatter_add", "stack", "unstack",
)  # fmt: skip
# Linear in each operand separately: one tracked operand at most (the weights, the
# mask, the divisor are constants); otherwise a product of two activations.
BILINEAR = {"mul": None, "dot_general": None, "conv_general_dilated": (0,)}
# Elementwise nonlinearities of one tracked operand: the Rescale rule.
ELEMENTWISE = (
    "logistic", "tanh", "exp", "exp2", "log", "log1p", "expm1", "erf", "erfc",
    "sqrt", "rsqrt", "cbrt", "integer_pow", "pow", "abs", "sin", "cos", "tan",
    "atan", "sinh", "cosh", "asinh", "atanh", "max", "min", "div", "square",
    "sign", "floor", "ceil", "round", "clamp", "select_n", "erf_inv", "atan2",
)  # fmt: skip
MAX_POOLS = ("reduce_window_max", "reduce_max")
# `jax.nn` activations that are one unit in the jaxpr (a named jit or custom_jvp
# call), or a run of equations traced inside them (`gelu` is not jitted).
UNITS = (
    "relu", "relu6", "sigmoid", "silu", "swish", "softplus", "elu", "leaky_relu",
    "celu", "selu", "gelu", "mish", "hard_tanh", "hard_sigmoid", "hard_silu",
    "hard_swish", "log_sigmoid", "squareplus", "sparse_plus", "soft_sign",
)  # fmt: skip

HINT = (
    "DeepLIFT is defined for linear operations and nonlinearities of one "
    "activation. Rewrite the operation, or pass `plain=(...)` with the primitive "
    "names listed here to accept their plain gradient (the attributions then no "
    "longer sum to f(x) - f(baseline))."
)


def _safe_div(num: jax.Array, den: jax.Array, eps: float) -> jax.Array:
    small = jnp.abs(den) < eps
    return jnp.where(small, 0, num / jnp.where(small, jnp.ones_like(den), den))


def rescale(f: Callable, eps: float) -> Callable:
    """The Rescale rule of the elementwise `f` on a two-stream value.

    Backward: `g * (f(x) - f(x0)) / (x - x0)`, or the plain derivative where
    `|x - x0| < eps` (as Captum).
    """

    @jax.custom_vjp
    def apply(s):
        return jax.vmap(f)(s)

    def fwd(s):
        y = jax.vmap(f)(s)
        return y, (s, y)

    def bwd(res, g):
        s, y = res
        dx, dy = s[0] - s[1], y[0] - y[1]
        _, vjp = jax.vjp(f, s[0])
        (plain,) = vjp(g[0])
        m = jnp.where(jnp.abs(dx) < eps, plain, g[0] * _safe_div(dy, dx, eps))
        return (jnp.stack([m, jnp.zeros_like(m)]).astype(s.dtype),)

    apply.defvjp(fwd, bwd)
    return apply


def max_pool_rule(f: Callable, eps: float) -> Callable:
    """Captum's rule for max pooling `f` on a two-stream value.

    With `y = f(x)`, `y0 = f(x0)` and `m = max(y, y0)`, the output differences
    `m - y0` (routed to the input's maxima) and `y - m` (routed to the
    reference's maxima) are divided by `x - x0`: the multipliers times `x - x0`
    sum to `y - y0`. The plain derivative where `|x - x0| < eps`.
    """

    @jax.custom_vjp
    def apply(s):
        return jax.vmap(f)(s)

    def fwd(s):
        y = jax.vmap(f)(s)
        return y, (s, y)

    def bwd(res, g):
        s, y = res
        top = jnp.maximum(y[0], y[1])
        _, vjp_x = jax.vjp(f, s[0])
        _, vjp_r = jax.vjp(f, s[1])
        (plain,) = vjp_x(g[0])
        (to_x,) = vjp_x(g[0] * (top - y[1]))
        (to_r,) = vjp_r(g[0] * (y[0] - top))
        dx = s[0] - s[1]
        m = jnp.where(jnp.abs(dx) < eps, plain, _safe_div(to_x + to_r, dx, eps))
        return (jnp.stack([m, jnp.zeros_like(m)]).astype(s.dtype),)

    apply.defvjp(fwd, bwd)
    return apply


def product_rule(f: Callable) -> Callable:
    """The rule of a bilinear `f(a, b)` of two activations (an elementwise
    product, a matrix product: attention's `q @ k.T`, LayerNorm's
    `(x - mean) * (1 / std)`) on two-stream values.

    The difference splits exactly, each factor's difference meeting the mean of
    the other factor's two streams:
    `f(a, b) - f(a0, b0) = f(a - a0, (b + b0) / 2) + f((a + a0) / 2, b - b0)`,
    so the multipliers are the derivatives of those two terms (the Shapley
    value of the two factors' differences).
    """

    @jax.custom_vjp
    def apply(sa, sb):
        return jax.vmap(f)(sa, sb)

    def fwd(sa, sb):
        return jax.vmap(f)(sa, sb), (sa, sb)

    def bwd(res, g):
        sa, sb = res
        half = jnp.asarray(0.5, sa.dtype)
        a_mean, b_mean = half * (sa[0] + sa[1]), half * (sb[0] + sb[1])
        (ma,) = jax.vjp(lambda a: f(a, b_mean), sa[0])[1](g[0])
        (mb,) = jax.vjp(lambda b: f(a_mean, b), sb[0])[1](g[0])
        return (
            jnp.stack([ma, jnp.zeros_like(ma)]).astype(sa.dtype),
            jnp.stack([mb, jnp.zeros_like(mb)]).astype(sb.dtype),
        )

    apply.defvjp(fwd, bwd)
    return apply


def _tracked(invals: Sequence) -> list[int]:
    return [i for i, v in enumerate(invals) if isinstance(v, it.Act)]


def one_operand(invals: list, k: int, fn: Callable) -> Callable:
    """`fn` of all operands as a function of operand `k` (the others fixed)."""

    def f(a):
        vals = list(invals)
        vals[k] = a
        return fn(vals)

    return f


class DeepLiftRules:
    """The rule table, `match` and `enter` hooks of DeepLIFT's interpreter."""

    def __init__(self, eps: float, plain: Sequence[str] = ()):
        self.eps = eps
        table: dict[str, it.Handler] = {n: it.on_streams for n in LINEAR}
        table.update({n: self.bilinear for n in BILINEAR})
        table.update({n: self.elementwise for n in ELEMENTWISE})
        table.update({n: self.max_pool for n in MAX_POOLS})
        # DeepLIFT explains the forward function: a `stop_gradient` (jax's
        # log_softmax shifts by a stopped max) is the identity on differences, so
        # the multipliers still account for every difference (completeness).
        table["stop_gradient"] = lambda interp, eqn, invals: list(invals)
        self.interpreter = it.Interpreter(
            table,
            "DeepLift",
            streams=2,
            match=self.match,
            enter=self.enter,
            plain=frozenset(plain),
            hint=HINT,
        )

    def scope(self, closed: Any) -> Facts:
        """The matcher's facts about the top-level jaxpr."""
        n = len(closed.jaxpr.invars)
        return Facts(closed.jaxpr, closed.consts, Known.nothing(n))

    def enter(self, eqn: Any, facts: Facts | None) -> list:
        if facts is None:
            return [None] * len(ji.sub_jaxprs(eqn))
        return [Facts(j, c, k) for j, c, k in sub_known(eqn, facts)]

    # -- handlers --------------------------------------------------------------

    def bilinear(self, interp: it.Interpreter, eqn: Any, invals: list) -> list:
        tracked = _tracked(invals)
        if len(tracked) == 2 and len(invals) == 2:
            f = lambda a, b: ji.bind(eqn, [a, b])[0]
            return [it.Act(product_rule(f)(invals[0].streams, invals[1].streams))]
        allowed = BILINEAR[eqn.primitive.name]
        if len(tracked) > 1 or (allowed is not None and tracked[0] not in allowed):
            what = f"`{eqn.primitive.name}` of two activations"
            why = "a product is not a linear operation"
            return interp.refuse(eqn, invals, what, why)
        return it.on_streams(interp, eqn, invals)

    def elementwise(self, interp: it.Interpreter, eqn: Any, invals: list) -> list:
        name = eqn.primitive.name
        tracked = _tracked(invals)
        if name == "div" and tracked == [0]:  # x / c is linear
            return it.on_streams(interp, eqn, invals)
        if name == "div" and tracked == [0, 1]:
            # a / b = a * (1 / b): Rescale on the reciprocal, then the product
            # rule; both sum to their differences, so the quotient does too (a
            # softmax's normalisation, a norm's division by its scale).
            a, b = invals
            recip = rescale(lambda t: 1 / t, self.eps)(b.streams)
            return [it.Act(product_rule(jnp.multiply)(a.streams, recip))]
        if name == "select_n" and 0 not in _tracked(invals):  # a fixed mask
            return it.on_streams(interp, eqn, invals)
        (out,) = eqn.outvars
        if len(tracked) != 1 or eqn.invars[tracked[0]].aval.shape != out.aval.shape:
            what = f"`{name}` of several activations"
            if name == "select_n":
                what = "a `select_n` (`jnp.where`) whose condition depends on the input"
            why = "it is not a function of one activation"
            return interp.refuse(eqn, invals, what, why)
        k = tracked[0]
        f = one_operand(invals, k, lambda vals: ji.bind(eqn, vals)[0])
        return [it.Act(rescale(f, self.eps)(invals[k].streams))]

    def max_pool(self, interp: it.Interpreter, eqn: Any, invals: list) -> list:
        (k,) = _tracked(invals)
        f = one_operand(invals, k, lambda vals: ji.bind(eqn, vals)[0])
        return [it.Act(max_pool_rule(f, self.eps)(invals[k].streams))]

    def unit(self) -> it.Handler:
        """A named activation of one operand (one `jit` or custom_jvp call)."""

        def handler(interp: it.Interpreter, eqn: Any, invals: list) -> list:
            (x,) = invals
            if not isinstance(x, it.Act):
                return it.bind_plain(interp, eqn, invals)
            f = lambda a: ji.bind(eqn, [a])[0]
            return [it.Act(rescale(f, self.eps)(x.streams))]

        return handler

    def relu(self, index: int) -> it.Handler:
        def handler(interp: it.Interpreter, eqn: Any, invals: list) -> list:
            x = invals[index]
            if not isinstance(x, it.Act):
                return it.bind_plain(interp, eqn, [_first(v) for v in invals])
            shape = eqn.outvars[0].aval.shape
            s = jnp.broadcast_to(x.streams, (2, *shape))
            return [it.Act(rescale(jax.nn.relu, self.eps)(s))]

        return handler

    # -- patterns ----------------------------------------------------------------

    def match(self, interp: it.Interpreter, eqns: it.Frame, i: int, facts) -> Any:
        eqn = eqns[i]
        name = ji.name_of(eqn)
        n_out = len(eqn.outvars)
        if name in UNITS and n_out == 1 and self._one_input(eqn):
            return it.Unit(self.unit())
        frame = ji.nn_function(eqn, UNITS)
        if frame is not None:
            n = 1
            while i + n < len(eqns) and ji.nn_function(eqns[i + n], (frame,)):
                n += 1
            return it.Unit(self.region(), n, region=True)
        if facts is not None:
            idx = relu_operand(eqn, facts)
            if idx is not None:
                return it.Unit(self.relu(idx))
        # Any other elementwise function of one activation, however written
        # (`x * jax.nn.sigmoid(x)`, `jnp.where(x > 0, x, 0.1 * x)`): one Rescale.
        is_act = lambda v: eqns.has(v) and isinstance(eqns.read(v), it.Act)
        found = elementwise_region(eqns, i, is_act)
        if found is not None:
            return self.elementwise_region(*found, eqns)
        return None

    def elementwise_region(self, region: list, inp: Any, out: Any, frame) -> it.Unit:
        fn = region_fn(region, inp, out, frame.read)

        def handler(interp: it.Interpreter, eqn: Any, invals: list) -> list:
            return [it.Act(rescale(fn, self.eps)(frame.read(inp).streams))]

        return it.Unit(handler, fuses=tuple(region[1:]), outvars=(out,))

    def region(self) -> Callable:
        """The equations traced inside a `jax.nn` activation that is not jitted."""

        def handler(interp: it.Interpreter, fn: Callable, invals: list) -> list:
            (x,) = invals
            if not isinstance(x, it.Act):
                return [fn(x)]
            return [it.Act(rescale(fn, self.eps)(x.streams))]

        return handler

    @staticmethod
    def _one_input(eqn: Any) -> bool:
        # The activation's input is its only operand (no captured weights).
        return len(eqn.invars) == 1


def _first(v: Any) -> Any:
    return v.streams[0] if isinstance(v, it.Act) else v
