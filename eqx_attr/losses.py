"""Explanation losses: penalties on what a model's explanation looks like.

Each loss is a pure function of one example (batch it with `jax.vmap` /
`eqx.filter_vmap`, then average), differentiable with respect to the model's
parameters, and usable inside `eqx.filter_jit` and an optax step:

```python
def loss_fn(model, x, y, irrelevant):
    per_example = jax.vmap(
        lambda x, y, m: xa.losses.right_for_the_right_reasons(
            model, x, y, m, lambda_=10.0
        )
    )
    return jnp.mean(per_example(x, y, irrelevant))
```

- [`eqx_attr.losses.right_for_the_right_reasons`][]: Ross et al. (IJCAI 2017),
  the cross-entropy plus the squared input gradient of the summed
  log-probabilities over the features marked irrelevant.
- [`eqx_attr.losses.outside_mask`][]: the share of any differentiable
  method's attribution mass that lies outside an annotation mask.
- [`eqx_attr.losses.cam_alignment`][]: one minus the cosine similarity between
  a (ReLU'd, resized) CAM map and an annotation mask.

The derivative of each loss is the exact derivative of the computed value (JAX
differentiates through the explanation: double backpropagation for gradient
methods). A method must be differentiable for that to mean anything: see each
method's documentation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped

__all__ = ["cam_alignment", "outside_mask", "right_for_the_right_reasons"]


def _as_float_mask(mask: Any, shape: tuple[int, ...], name: str, like: str) -> Array:
    """`mask` as a float array broadcast to `shape`, or a ValueError naming it."""
    try:
        m = jnp.asarray(mask)
    except TypeError as e:
        raise TypeError(
            f"`{name}` must be an array (boolean, or floats in [0, 1]); got "
            f"{type(mask).__name__}."
        ) from e
    if not (jnp.issubdtype(m.dtype, jnp.bool_) or jnp.issubdtype(m.dtype, jnp.number)):
        raise TypeError(f"`{name}` must be boolean or numeric, got dtype {m.dtype}.")
    try:
        fits = np.broadcast_shapes(m.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"`{name}` of shape {m.shape} does not broadcast to the shape of "
            f"{like}, {tuple(shape)}; pass a mask of that shape, or of its trailing "
            "(H, W) axes to apply the same mask to every channel."
        )
    return jnp.broadcast_to(m, shape)


def _safe_ratio(num: Array, den: Array) -> Array:
    """num / den, and 0 where den == 0 (with a finite derivative there too)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _safe_norm(v: Array) -> Array:
    """||v||_2, with a zero (not NaN) derivative at v = 0."""
    sq = jnp.sum(v * v)
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def _call(method: Callable, x: Array, target: Any, key: PRNGKeyArray | None):
    return method(x, target) if key is None else method(x, target, key=key)


def right_for_the_right_reasons(
    model: Callable[[Array], Array],
    x: Float[ArrayLike, " *dims"],
    y: int | Shaped[ArrayLike, ""] | None,
    mask: Shaped[ArrayLike, " *mdims"],
    *,
    lambda_: float = 1.0,
) -> Float[Array, ""]:
    r"""Ross et al.'s "right for the right reasons" loss for one example.

    With `p = log_softmax(model(x))` and the annotation `A` (1 where the input
    must NOT matter: Ross et al.'s matrix of irrelevant features),

    $$L = -p_y + \lambda \sum_d \Big(A_d \, \frac{\partial}{\partial x_d}
    \sum_k p_k\Big)^2 .$$

    The first term is the usual cross-entropy ("right answers"); pass `y=None`
    for the penalty alone ("right reasons"). The penalty is computed by double
    backpropagation with `jax.grad` on the model itself (not through an
    attribution method), so its gradient with respect to the parameters is the
    exact derivative. Ross et al.'s weight decay is left to the optimiser. A
    model with ReLUs has a piecewise constant input gradient: the penalty's
    parameter gradient is then still exact, but only first-order (its own
    derivative with respect to the input is zero almost everywhere).

    **Arguments:**

    - `model`: a callable mapping one example `x` to logits `(n_classes,)`.
    - `x`: one example.
    - `y`: the true class index (an int or a 0-d integer array), or `None` to
        return the penalty alone.
    - `mask`: the irrelevant features `A`, boolean or in `[0, 1]`, broadcastable
        to `x` (an `(H, W)` mask applies to every channel).
    - `lambda_`: the weight of the penalty.

    **Returns:** a 0-d float: the cross-entropy plus `lambda_` times the
    penalty (or the penalty times `lambda_` for `y=None`).

    ```python
    loss = xa.losses.right_for_the_right_reasons(model, x, 3, corner, lambda_=10.0)
    ```
    """
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`x` must be a floating array, got dtype {x.dtype}; pass "
            "`x.astype(jnp.float32)`."
        )
    a = _as_float_mask(mask, x.shape, "mask", "`x`").astype(x.dtype)

    def summed_log_probs(z):
        out = model(z)
        if jnp.ndim(out) != 1:
            raise ValueError(
                "`model` must return one vector of logits for one example, got "
                f"shape {jnp.shape(out)}."
            )
        return jnp.sum(jax.nn.log_softmax(out)), out

    grad, out = jax.grad(summed_log_probs, has_aux=True)(x)
    penalty = lambda_ * jnp.sum((a * grad) ** 2)
    if y is None:
        return penalty
    if isinstance(y, bool) or not (
        isinstance(y, (int, np.integer))
        or (hasattr(y, "dtype") and jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer))
    ):
        raise TypeError(
            f"`y` must be a class index (an int or a 0-d integer array) or None, "
            f"got {type(y).__name__}."
        )
    if jnp.ndim(y) != 0:
        raise ValueError(
            f"`y` must be one class index for one example, got shape {jnp.shape(y)}; "
            "for a batch, vmap over the call."
        )
    if isinstance(y, (int, np.integer)) and not 0 <= int(y) < out.shape[0]:
        raise ValueError(
            f"`y={int(y)}` is out of range for a model with {out.shape[0]} outputs."
        )
    return -jax.nn.log_softmax(out)[y] + penalty


def outside_mask(
    method: Callable[..., Array],
    x: Float[ArrayLike, " *dims"],
    target: Any,
    mask: Shaped[ArrayLike, " *mdims"],
    *,
    key: PRNGKeyArray | None = None,
) -> Float[Array, ""]:
    r"""The share of an explanation's absolute mass that lies outside a mask.

    With `a = method(x, target)` and the annotation `M` (1 where the
    explanation should be: the object, the relevant features),

    $$L = \frac{\sum_d |a_d| \, (1 - M_d)}{\sum_d |a_d|} \in [0, 1],$$

    and 0 when `a` is all zeros. Absolute values count evidence against the
    class as misplaced too (a signed ratio can be gamed by negative mass
    inside the mask, and is not bounded). Soft masks in `[0, 1]` weight each
    feature. The loss is as differentiable as the method is: its derivative is
    the exact derivative of the computed ratio (|a| is not differentiable where
    an entry is exactly 0; JAX takes 0 there).

    **Arguments:**

    - `method`: any differentiable attribution method, or a callable
        `(x, target[, key=]) -> attribution`, e.g. `xa.Gradients(model)`.
    - `x`: one example.
    - `target`: the method's `target` (a class index or a callable).
    - `mask`: the relevant region `M`, boolean or in `[0, 1]`, broadcastable to
        the attribution (an `(H, W)` mask applies to every channel).
    - `key`: the PRNG key of a random method (SmoothGrad, ...).

    **Returns:** a 0-d float in `[0, 1]`.

    ```python
    loss = xa.losses.outside_mask(xa.IntegratedGradients(model), x, 3, digit_mask)
    ```
    """
    a = _call(method, jnp.asarray(x), target, key)
    m = _as_float_mask(mask, jnp.shape(a), "mask", "the attribution").astype(a.dtype)
    mass = jnp.abs(a)
    return _safe_ratio(jnp.sum(mass * (1 - m)), jnp.sum(mass))


def cam_alignment(
    cam_method: Callable[..., Array],
    x: Float[ArrayLike, " *dims"],
    target: Any,
    mask: Shaped[ArrayLike, "..."],
    *,
    key: PRNGKeyArray | None = None,
) -> Float[Array, ""]:
    r"""One minus the cosine similarity between a CAM map and a mask.

    With `h = relu(cam_method(x, target))`, bilinearly resized to the mask's
    `(H, W)` when its shape differs, and the annotation `M`,

    $$L = 1 - \frac{\langle h, M \rangle}{\lVert h \rVert_2 \lVert M \rVert_2}
    \in [0, 1],$$

    and 1 when `h` or `M` is all zeros (nothing overlaps). It is 0 exactly when
    `h` is proportional to `M`: it rewards maps that cover the mask evenly, not
    only maps that stay inside it (for that, see
    [`eqx_attr.losses.outside_mask`][]). Its derivative is exact where
    `||h|| > 0`.

    **Arguments:**

    - `cam_method`: a method returning an `(h, w)` map, e.g.
        `xa.GradCAM(model, lambda m: m.conv2)` (any resolution; a `(C, H, W)`
        attribution is summed over channels first).
    - `x`: one example.
    - `target`: the method's `target`.
    - `mask`: the relevant region `M`, an `(H, W)` array, boolean or in `[0, 1]`.
    - `key`: the PRNG key of a random method.

    **Returns:** a 0-d float in `[0, 1]`.

    ```python
    loss = xa.losses.cam_alignment(xa.GradCAM(model, lambda m: m.conv2), x, 3, box)
    ```
    """
    m = jnp.asarray(mask)
    if m.ndim != 2:
        raise ValueError(
            f"`mask` must be an (H, W) array, got shape {m.shape}; for a (1, H, W) "
            "mask pass `mask[0]`."
        )
    h = _call(cam_method, jnp.asarray(x), target, key)
    if h.ndim == 3:
        h = jnp.sum(h, axis=0)
    if h.ndim != 2:
        raise ValueError(
            f"`cam_method` must return an (h, w) map (or a (C, H, W) attribution), "
            f"got shape {h.shape}."
        )
    h = jax.nn.relu(h)
    if h.shape != m.shape:
        h = jax.image.resize(h, m.shape, method="bilinear")
    m = m.astype(h.dtype)
    norm_h = _safe_norm(h)
    norm_m = _safe_norm(m)
    return 1.0 - _safe_ratio(jnp.sum(h * m), norm_h * norm_m)
