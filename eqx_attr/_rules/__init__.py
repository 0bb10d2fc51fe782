"""Rewrites of the traced model: the rule engine and the rule-based methods.

- `_jax_internals`: everything known about JAX's internals (one place, self-checked).
- `_interpreter`, `_trace`: the interpreter (a table from primitive to handler)
  and the tracing of a call.
- `_pytree`: PyTree surgery (find and replace nodes by path).
- `_relu`, `_match`, `_actions`, `_swap`: the ReLU swap (guided backprop,
  deconvnet).
- `_guided`: GuidedBackprop, Deconvolution.
- `_deeplift`, `_deeplift_rules`, `_gradient_shap`: DeepLIFT, DeepLiftShap,
  GradientShap.
- `_lrp`, `_lrp_rules`, `_lrp_composites`, `_lrp_canon`, `_lrp_trace`: LRP (the
  public rules and composites are re-exported by `eqx_attr.lrp`).
- `_fast_derivatives`, `_max_pool`, `_fast_conv`, `_windows`: one pass used by
  every gradient method: max pools differentiated without XLA's select-and-scatter
  (same values and derivatives), and, on CPU, thin convolutions (first layers) and
  every convolution in the library's loop bodies in forms XLA:CPU runs fast (equal
  up to rounding).

See ENGINE_API.md at the repository root for writing rules.
"""
