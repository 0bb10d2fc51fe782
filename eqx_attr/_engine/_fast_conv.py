"""Convolutions in forms that XLA:CPU runs fast.

XLA:CPU runs a convolution fast through a library kernel, but not always:

- a **thin** convolution, whose every output reads only a few inputs
  (`in_channels` times the kernel's size: 9 for a 3x3 convolution of a grey image,
  27 of an RGB one), is lowered to a matrix product with an inner dimension of 9
  or 27 and runs at a few GFLOP/s. That is the first layer of most vision models:
  on the small MNIST CNN it took about a third of the time of the whole gradient;
- a **small** convolution, whose kernel covers more positions than its input or
  its output has (a 3x3 convolution on a 2x2 or 1x1 map: the last blocks of a VGG
  or ResNet on small images), has its operands swapped by XLA (the map becomes
  the kernel) and then runs in XLA's generic loop emitter: a 3x3, 512-channel
  convolution of 128 maps of 2x2 took 1.6 s, 27x longer than on 3x3 maps; its
  input derivative, a convolution of the same shape, as long;
- inside a **loop body** (`lax.scan`, `lax.map`: chunked methods), convolutions do
  not get the layouts the library kernel needs and run 5-8x slower than outside.

On CPU (other backends keep their convolutions), [`thin_conv_handler`][] computes
a thin convolution with the same value and derivatives as:

- its value: a sum of the kernel's taps, each a strided view of the padded input
  times one weight per output channel, in one fused elementwise loop (the
  weights copied once so that each tap's are contiguous);
- its tangent in the input: an im2col product, the views (`_windows.py`)
  concatenated channels-last and multiplied by the weights in one `dot_general`;
  reverse mode transposes it into one product and a sum of strided pads, instead
  of XLA's transposed convolution with one or three output channels;
- its tangent in the weights: the original convolution, bound unchanged.

A small convolution, and in loop bodies ([`loop_conv_handler`][]) every other
convolution, is computed as that same im2col product, which XLA runs as a matrix
product (JAX differentiates it: slices, pads and products). A small
convolution's columns hold at most its kernel's size times its input.

Values and derivatives equal the original's up to floating-point rounding (the
sums run in another order). Dilated inputs (`lhs_dilation`: transposed
convolutions) and grouped convolutions keep their own implementation.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from . import _jax_internals as ji
from ._interpreter import Interpreter
from ._windows import window_views

CONV = "conv_general_dilated"
# Inputs per output (in_channels x kernel size) up to which a convolution is
# "thin": 27 covers a 3x3 RGB convolution, and a 5x5 grey one.
MAX_TAPS = 27


def _rewritable(eqn: Any) -> bool:
    """A floating, ungrouped convolution without input dilation, on CPU."""
    if eqn.primitive.name != CONV or jax.default_backend() != "cpu":
        return False
    p = eqn.params
    lhs, rhs = (v.aval for v in eqn.invars)
    return (
        jnp.issubdtype(lhs.dtype, jnp.floating)
        and lhs.dtype == rhs.dtype
        and p["preferred_element_type"] in (None, lhs.dtype)
        and p["feature_group_count"] == 1
        and p["batch_group_count"] == 1
        and all(d == 1 for d in p["lhs_dilation"])
    )


def _n_taps(eqn: Any) -> int:
    rhs = eqn.invars[1].aval
    spec = eqn.params["dimension_numbers"].rhs_spec
    return math.prod(rhs.shape[d] for d in spec[1:])


def _small(eqn: Any) -> bool:
    """Whether the kernel covers more positions than the input or the output has:
    then XLA swaps the convolution's operands (or those of its input derivative,
    a convolution over the output's positions) and runs it in a generic loop."""
    p = eqn.params
    dims = p["dimension_numbers"]
    lhs, rhs = (v.aval for v in eqn.invars)
    kernel = math.prod(rhs.shape[d] for d in dims.rhs_spec[2:])
    inputs = math.prod(lhs.shape[d] for d in dims.lhs_spec[2:])
    outputs = math.prod(eqn.outvars[0].aval.shape[d] for d in dims.out_spec[2:])
    return kernel > min(inputs, outputs)


def replaceable(eqn: Any, loop: bool = False) -> bool:
    """Whether `eqn` is a convolution that this module computes differently: a
    thin or small one, or with `loop` (in a loop body) any floating one without
    groups or input dilation."""
    return _rewritable(eqn) and (loop or _n_taps(eqn) <= MAX_TAPS or _small(eqn))


def _layouts(eqn: Any):
    """For `eqn`: the weights as `(O, I, *kernel)`; the output's layout from
    `(N, O, *spatial)`; and `taps(x, w, last)`: the strided view of the padded
    input that each kernel tap reads (row-major), each `(N, C, *out_spatial)`, or
    `(N, *out_spatial, C)` with `last`."""
    p = eqn.params
    dims = p["dimension_numbers"]
    out_back = tuple(int(i) for i in np.argsort(dims.out_spec))
    out_spatial = tuple(eqn.outvars[0].aval.shape[d] for d in dims.out_spec[2:])
    to_rhs = lambda w: jnp.transpose(w, dims.rhs_spec)

    def taps(x, w, last=False):
        x = jnp.transpose(x, dims.lhs_spec)
        n, c = x.shape[:2]
        x = jnp.moveaxis(x, 1, -1) if last else x

        def around(spatial, batch, channel):  # the other axes around the spatial
            return (batch, *spatial, channel) if last else (batch, channel, *spatial)

        return window_views(
            x,
            0,
            around(p["padding"], (0, 0), (0, 0)),
            around(to_rhs(w).shape[2:], 1, 1),
            around(p["window_strides"], 1, 1),
            around(out_spatial, n, c),
            around(p["rhs_dilation"], 1, 1),
        )

    return to_rhs, lambda y: jnp.transpose(y, out_back), taps


def _im2col_conv(eqn: Any):
    """`eqn`'s convolution as one matrix product, its columns channels-last."""
    to_rhs, from_out, taps = _layouts(eqn)

    def conv(x, w):
        wc = to_rhs(w)  # (O, C, *kernel)
        cols = jnp.concatenate(taps(x, w, last=True), -1)  # (N, *spatial, taps x C)
        # Tap-major, channel-minor, as `cols`: (taps x C, O).
        weights = jnp.moveaxis(wc, (0, 1), (-1, -2)).reshape(-1, wc.shape[0])
        return from_out(jnp.moveaxis(cols @ weights, -1, 1))

    return conv


def _contiguous_taps(wc: jax.Array) -> jax.Array:
    """`(O, C, *kernel)` weights as `(C, *kernel, O)`, materialised.

    The sum of taps reads one weight per output channel and tap. Read from the
    `(O, C, *kernel)` array those are strided, and XLA fuses any transpose of the
    weights into the loop that reads them, which then cannot vectorise over the
    output channels (the minor axis of its channels-last output): with weights
    passed as arguments (not compile-time constants) SmallCNN's input gradient
    took 10% longer. A product with the identity is exact for finite weights (up
    to the sign of a zero), and XLA does not fuse a matrix product into a loop, so
    it writes the contiguous array once.
    """
    moved = jnp.moveaxis(wc, 0, -1)
    n_in = math.prod(moved.shape[:-1])
    eye = jnp.eye(n_in, dtype=wc.dtype)
    return (eye @ moved.reshape(n_in, -1)).reshape(moved.shape)


def _thin_conv(eqn: Any):
    """`eqn`'s convolution as a function of `(lhs, rhs)`, computed as above."""
    to_rhs, from_out, taps = _layouts(eqn)
    im2col = _im2col_conv(eqn)

    @jax.custom_jvp
    def conv(x, w):
        wc = to_rhs(w)
        ones = (1,) * (len(wc.shape) - 2)
        wt = _contiguous_taps(wc)
        y = None
        tap_list = itertools.product(*(range(k) for k in wc.shape[2:]))
        for tap, view in zip(tap_list, taps(x, w), strict=True):
            for c in range(wc.shape[1]):
                weight = wt[(c, *tap)].reshape(1, -1, *ones)
                term = view[:, c : c + 1] * weight
                y = term if y is None else y + term
        return from_out(y)

    def conv_jvp(primals, tangents):
        (x, w), (tx, tw) = primals, tangents
        y = conv(x, w)
        out = jnp.zeros_like(y)
        if not isinstance(tx, SymbolicZero):
            out = out + im2col(tx, w)
        if not isinstance(tw, SymbolicZero):
            (dw,) = ji.bind(eqn, [x, tw])
            out = out + dw
        return y, out

    conv.defjvp(conv_jvp, symbolic_zeros=True)
    return conv


def thin_conv_handler(interp: Interpreter, eqn: Any, invals: list) -> list:
    """An [`Interpreter`][] handler for `conv_general_dilated`: thin and small
    convolutions."""
    if not replaceable(eqn):
        return ji.bind(eqn, invals)
    if _n_taps(eqn) <= MAX_TAPS:
        return [_thin_conv(eqn)(*invals)]
    return [_im2col_conv(eqn)(*invals)]


def loop_conv_handler(interp: Interpreter, eqn: Any, invals: list) -> list:
    """An [`Interpreter`][] handler for `conv_general_dilated` in loop bodies."""
    if replaceable(eqn) and _n_taps(eqn) <= MAX_TAPS:
        return [_thin_conv(eqn)(*invals)]
    if not replaceable(eqn, loop=True):
        return ji.bind(eqn, invals)
    return [_im2col_conv(eqn)(*invals)]
