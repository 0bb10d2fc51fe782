"""The engine under the attribution contract: it traces calls and evaluates them again.

It imports nothing from the rest of `eqx_attr` (only JAX, Equinox, NumPy and the
standard library); the contract (`_attribution.py`) and every family sit on it.

- `_jax_internals`: everything known about JAX's internals (one place,
  self-checked by `self_check`).
- `_trace`, `_interpreter`: the tracing of a call to a jaxpr and THE interpreter
  that evaluates it again with a table from primitive to handler; the ReLU swap,
  DeepLIFT and LRP are its clients (see `docs/engine.md`); `_streams` holds the
  tracked values it evaluates, `_higher_order` its handlers for `jit`, `scan`,
  `while`, `cond` and the other primitives with bodies.
- `_pytree`: PyTree surgery (find and replace nodes by path, swap modules).
- `_fast_derivatives`, `_max_pool`, `_fast_conv`, `_windows`: one pass used by
  every gradient method: max pools differentiated without XLA's
  select-and-scatter (same values and derivatives), and, on CPU, thin convolutions
  (first layers) and every convolution in the library's loop bodies in forms
  XLA:CPU runs fast (equal up to rounding).

Methods read the batch size of the enclosing `jax.vmap` (a performance hint) from
[`vmapped_size`][], re-exported here, never from `_jax_internals` directly.
"""

from ._jax_internals import vmapped_size as vmapped_size
