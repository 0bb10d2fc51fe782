"""Attacks on predictions (FGSM, PGD) and on explanations (Dombrowski et al.).

All functions take ONE example (batch with `jax.vmap` / `eqx.filter_vmap`), are
pure, and run under `eqx.filter_jit`.

- [`eqx_attr.attacks.fgsm`][] and [`eqx_attr.attacks.pgd`][] follow Captum's
  `captum.robust.FGSM` and `PGD`: signed-gradient steps on a loss (by default
  the cross-entropy of the logits), away from the target (untargeted) or
  toward it (targeted), projected on the `eps` ball and clamped to
  `[lower, upper]`.
- [`eqx_attr.attacks.manipulate_explanation`][]: Dombrowski et al. (NeurIPS
  2019), a perturbation that moves an explanation toward a chosen map while
  the output stays put.
- [`eqx_attr.attacks.smooth_relu`][]: their defence (and the surrogate of the
  attack), the model with every ReLU replaced by softplus with parameter beta.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped

from ._attribution import check_choice, check_key, check_positive_int
from ._rules import ReLUSwapped, swap_relu

__all__ = ["fgsm", "manipulate_explanation", "pgd", "smooth_relu"]

# Captum's FGSM leaves an element where |gradient| <= this threshold.
ZERO_THRESH = 1e-6


def _check_input(x: Any) -> Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"`x` must be a floating array, got dtype {x.dtype}; pass "
            "`x.astype(jnp.float32)`."
        )
    return x


def _check_nonneg(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__}.")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"`{name}` must be a finite float >= 0, got {value}.")


def _loss_fn(
    model: Callable, target: Any, loss: Callable | None
) -> Callable[[Array], Array]:
    """x -> the scalar loss whose gradient the attack follows."""
    if loss is not None:
        if not callable(loss):
            raise TypeError(
                "`loss` must be a callable `(output, target) -> scalar`, got "
                f"{type(loss).__name__}."
            )
        return lambda z: loss(model(z), target)
    if callable(target) and not isinstance(target, (jax.Array, np.ndarray)):
        # A callable target is a score to keep: its loss is its negative.
        score = target
        return lambda z: -jnp.asarray(score(model(z)))
    if isinstance(target, bool) or not (
        isinstance(target, (int, np.integer))
        or (
            isinstance(target, (jax.Array, np.ndarray))
            and target.ndim == 0
            and jnp.issubdtype(target.dtype, jnp.integer)
        )
    ):
        raise TypeError(
            "`target` must be a class index (an int or a 0-d integer array) or a "
            f"callable `output -> score`, got {type(target).__name__}"
            f"{getattr(target, 'shape', '')}."
        )

    def cross_entropy(z):
        out = model(z)
        if jnp.ndim(out) != 1:
            raise ValueError(
                "The default loss (cross-entropy) needs a model returning one "
                f"vector of logits, got shape {jnp.shape(out)}; pass `loss=`."
            )
        if isinstance(target, (int, np.integer)) and not 0 <= target < out.shape[0]:
            raise ValueError(
                f"`target={int(target)}` is out of range for a model with "
                f"{out.shape[0]} outputs."
            )
        return -jax.nn.log_softmax(out)[target]

    return cross_entropy


def _bounds(lower: float, upper: float) -> None:
    for v, name in ((lower, "lower"), (upper, "upper")):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)):
            raise TypeError(f"`{name}` must be a float, got {type(v).__name__}.")
    if not lower <= upper:
        raise ValueError(f"`lower` ({lower}) must be <= `upper` ({upper}).")


def _step(
    loss_of: Callable,
    x: Array,
    eps: float,
    targeted: bool,
    mask: Array,
    lower: float,
    upper: float,
    zero_thresh: float,
) -> Array:
    grad = jax.grad(loss_of)(x)
    sign = -1.0 if targeted else 1.0
    moved = x + sign * eps * jnp.sign(grad) * mask
    return jnp.clip(jnp.where(jnp.abs(grad) > zero_thresh, moved, x), lower, upper)


def _mask(mask: Any, x: Array) -> Array:
    if mask is None:
        return jnp.ones((), x.dtype)
    m = jnp.asarray(mask)
    try:
        fits = np.broadcast_shapes(m.shape, x.shape) == x.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"`mask` of shape {m.shape} does not broadcast to `x`'s shape "
            f"{x.shape}; pass 0/1 values shaped like `x` (1 = may be perturbed)."
        )
    return m.astype(x.dtype)


def fgsm(
    model: Callable[[Array], Array],
    x: Float[ArrayLike, " *dims"],
    target: Any,
    *,
    eps: float,
    targeted: bool = False,
    loss: Callable[[Any, Any], Array] | None = None,
    lower: float = -math.inf,
    upper: float = math.inf,
    mask: Shaped[ArrayLike, " *mdims"] | None = None,
    zero_thresh: float = ZERO_THRESH,
) -> Float[Array, " *dims"]:
    """The fast gradient sign method (Goodfellow et al.), as Captum's `FGSM`.

    `x + s * eps * sign(grad_x loss) * mask`, with `s = +1` (untargeted: the
    loss of `target`, the true class, increases) or `s = -1` (targeted: the
    loss of `target`, the wanted class, decreases), elements whose
    `|gradient| <= zero_thresh` left unchanged, then clamped to
    `[lower, upper]`.

    **Arguments:**

    - `model`: a callable mapping one example to its output (logits).
    - `x`: one example.
    - `target`: a class index (the loss is the cross-entropy of the logits,
        `-log_softmax(model(x))[target]`), or a callable `output -> score`
        (the loss is `-score`), or whatever `loss` takes.
    - `eps`: the step size (the L-infinity size of the perturbation).
    - `targeted`: `False` (default) to move away from `target`, `True` toward it.
    - `loss`: a callable `(output, target) -> scalar` replacing the default.
    - `lower`, `upper`: bounds of the input values (e.g. 0 and 1 for images).
    - `mask`: 0/1 values broadcastable to `x`: which elements may change.
    - `zero_thresh`: Captum's threshold below which a gradient counts as zero.

    **Returns:** the perturbed example, shaped like `x`.

    ```python
    x_adv = xa.attacks.fgsm(model, x, 3, eps=0.1, lower=0.0, upper=1.0)
    ```
    """
    x = _check_input(x)
    _check_nonneg(eps, "eps")
    _bounds(lower, upper)
    loss_of = _loss_fn(model, target, loss)
    return _step(loss_of, x, eps, targeted, _mask(mask, x), lower, upper, zero_thresh)


def _project(x0: Array, x: Array, eps: float, norm: str) -> Array:
    d = x - x0
    if norm == "linf":
        return x0 + jnp.clip(d, -eps, eps)
    # torch.renorm's rule (Captum's L2 projection): scale by eps / (norm + 1e-7)
    # where the norm exceeds eps.
    n = jnp.sqrt(jnp.sum(d * d))
    return x0 + jnp.where(n > eps, d * (eps / (n + 1e-7)), d)


def _random_point(x: Array, eps: float, norm: str, mask: Array, key) -> Array:
    if norm == "linf":
        u = jax.random.uniform(key, x.shape, x.dtype) * eps * 2 - eps
        return x + u * mask
    k1, k2 = jax.random.split(key)
    u = jax.random.normal(k1, x.shape, x.dtype)
    u = u / jnp.maximum(jnp.sqrt(jnp.sum(u * u)), 1e-12)
    r = jax.random.uniform(k2, (), x.dtype) ** (1.0 / x.size) * eps
    return x + r * u * mask


def pgd(
    model: Callable[[Array], Array],
    x: Float[ArrayLike, " *dims"],
    target: Any,
    *,
    eps: float,
    step_size: float,
    n_steps: int,
    key: PRNGKeyArray | None = None,
    random_start: bool = False,
    norm: str = "linf",
    targeted: bool = False,
    loss: Callable[[Any, Any], Array] | None = None,
    lower: float = -math.inf,
    upper: float = math.inf,
    mask: Shaped[ArrayLike, " *mdims"] | None = None,
    zero_thresh: float = ZERO_THRESH,
) -> Float[Array, " *dims"]:
    """Projected gradient descent (Madry et al.), as Captum's `PGD`.

    Optionally start from a uniform random point of the ball (`random_start`,
    then clamped), then `n_steps` times: an unclamped [`eqx_attr.attacks.fgsm`][]
    step of size `step_size`, a projection onto the `eps` ball around `x` (`"linf"`:
    clip the difference; `"l2"`: rescale it as `torch.renorm` does, by
    `eps / (norm + 1e-7)`), and a clamp to `[lower, upper]`. As in Captum the
    step is a signed-gradient step for both norms. The steps run in a
    `jax.lax.fori_loop` (one compiled step whatever `n_steps`).

    **Arguments:**

    - `model`, `x`, `target`, `targeted`, `loss`, `lower`, `upper`, `mask`,
        `zero_thresh`: as for [`eqx_attr.attacks.fgsm`][].
    - `eps`: the radius of the ball around `x`.
    - `step_size`: the size of each signed step.
    - `n_steps`: the number of steps (>= 1).
    - `key`: a PRNG key, needed with `random_start=True`.
    - `random_start`: start from a uniform random point of the ball.
    - `norm`: `"linf"` (default) or `"l2"`.

    **Returns:** the perturbed example, shaped like `x`, within `eps` of `x`
    in `norm` (before the clamp to the bounds, which only moves it closer).

    ```python
    x_adv = xa.attacks.pgd(model, x, 3, eps=0.1, step_size=0.02, n_steps=10,
                           lower=0.0, upper=1.0)
    ```
    """
    x = _check_input(x)
    _check_nonneg(eps, "eps")
    _check_nonneg(step_size, "step_size")
    check_positive_int(n_steps, "n_steps")
    check_choice(norm, "norm", ("linf", "l2"))
    _bounds(lower, upper)
    m = _mask(mask, x)
    loss_of = _loss_fn(model, target, loss)
    start = x
    if random_start:
        key = check_key(key, "pgd with random_start=True")
        start = jnp.clip(_random_point(x, eps, norm, m, key), lower, upper)

    def body(_, z):
        # As Captum: the step is not clamped; the projection, then the clamp.
        z = _step(loss_of, z, step_size, targeted, m, -math.inf, math.inf, zero_thresh)
        return jnp.clip(_project(x, z, eps, norm), lower, upper)

    return jax.lax.fori_loop(0, n_steps, body, start)


def smooth_relu(model: Any, beta: float) -> ReLUSwapped:
    """The model with every ReLU replaced by `softplus(beta * z) / beta`.

    Dombrowski et al.'s defence against explanation manipulation: the smoothed
    model's explanations vary smoothly with the input, and as `beta` grows it
    approaches the ReLU model (each unit differs by at most `log(2) / beta`).
    It is also the surrogate that makes the manipulation attack possible on a
    ReLU network, whose gradient map is piecewise constant.

    Built on [`eqx_attr.swap_relu`][] with a softplus rule, so it reaches the
    same ReLUs: held in the PyTree or written inline. Limits: the forward pass
    changes (unlike guided backprop's swap); `relu6` keeps its cap; other
    piecewise-linear operations (max pooling, `jnp.abs`, leaky ReLU) stay as
    they are; calling it on a model without a ReLU raises.

    **Arguments:**

    - `model`: an Equinox module (or any PyTree callable) with ReLUs.
    - `beta`: the softplus parameter, > 0 (larger is closer to the ReLU).

    **Returns:** a callable module with the same call signature as `model`.

    ```python
    smoothed = xa.attacks.smooth_relu(model, beta=10.0)
    h = xa.Gradients(smoothed)(x, 3)
    ```
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.floating)):
        raise TypeError(f"`beta` must be a float > 0, got {type(beta).__name__}.")
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"`beta` must be a finite float > 0, got {beta}.")
    beta = float(beta)

    def softplus(z):
        return jax.nn.softplus(beta * z) / beta

    return swap_relu(model, softplus, other_activations="ignore")


def _replace_model(method: Any, model: Any, new: Any) -> Any:
    """`method` with every occurrence of `model` in its PyTree replaced by `new`."""
    is_model = lambda n: n is model
    leaves, treedef = jax.tree_util.tree_flatten(method, is_leaf=is_model)
    if not any(leaf is model for leaf in leaves):
        raise ValueError(
            "`beta` needs `method` to hold `model` (e.g. `xa.Gradients(model)`), so "
            "that its model can be smoothed; this method does not. Pass the model "
            "the method was built on, or `beta=None`."
        )
    return jax.tree_util.tree_unflatten(
        treedef, [new if leaf is model else leaf for leaf in leaves]
    )


def manipulate_explanation(
    method: Callable[..., Array],
    model: Callable[[Array], Array],
    x: Float[ArrayLike, " *dims"],
    target_map: Float[ArrayLike, " *mdims"],
    *,
    target: Any,
    eps: float,
    step_size: float,
    n_steps: int,
    gamma: float = 1.0,
    beta: float | None = None,
    normalize: bool = True,
    lower: float = -math.inf,
    upper: float = math.inf,
    key: PRNGKeyArray | None = None,
) -> Float[Array, " *dims"]:
    r"""Dombrowski et al.'s explanation manipulation for one example.

    Minimises

    $$L(x') = \lVert h(x') - h_t \rVert^2 + \gamma \lVert g(x') - g(x) \rVert^2$$

    over `x'` in the L-infinity ball of radius `eps` around `x` (clamped to
    `[lower, upper]`), where `h = method(x', target)` and `g = model`. With
    `normalize` (default), `h` and `h_t` are each divided by their sum of
    absolute values (as in the paper, which compares maps normalised to sum 1).
    Each of the `n_steps` steps is a projected signed-gradient step
    `x' <- clip(x' - step_size * sign(grad L))`; the iterate of lowest loss
    (`x` itself included) is returned, so `L(result) <= L(x)` as computed.

    A ReLU network's gradient map is piecewise constant, so its loss has no
    useful derivative: pass `beta` to follow the gradient of the softplus
    surrogate ([`eqx_attr.attacks.smooth_relu`][]) while the loss that selects
    the returned iterate is still the original model's (as the paper does).

    **Arguments:**

    - `method`: a differentiable attribution method built on `model`, e.g.
        `xa.Gradients(model)`.
    - `model`: the model whose output `g` must stay put.
    - `x`: one example.
    - `target_map`: the explanation to reach, shaped like `method`'s output.
    - `target`: the target of the explanation.
    - `eps`: the L-infinity radius of the perturbation.
    - `step_size`: the size of each signed step.
    - `n_steps`: the number of steps (>= 1).
    - `gamma`: the weight of the output term.
    - `beta`: softplus parameter of the surrogate, or `None` (follow the
        original model's gradient).
    - `normalize`: compare maps normalised to unit L1 norm.
    - `lower`, `upper`: bounds of the input values.
    - `key`: the PRNG key of a random method.

    **Returns:** the manipulated example, shaped like `x`, with
    `|x_adv - x| <= eps` elementwise.

    ```python
    x_adv = xa.attacks.manipulate_explanation(
        xa.Gradients(model), model, x, h_target, target=3,
        eps=0.1, step_size=0.01, n_steps=50, beta=10.0, lower=0.0, upper=1.0)
    ```
    """
    x = _check_input(x)
    _check_nonneg(eps, "eps")
    _check_nonneg(step_size, "step_size")
    _check_nonneg(gamma, "gamma")
    check_positive_int(n_steps, "n_steps")
    _bounds(lower, upper)
    h_t = jnp.asarray(target_map)

    def explain(meth, z):
        return meth(z, target) if key is None else meth(z, target, key=key)

    shape = jax.eval_shape(lambda z: explain(method, z), x).shape
    if h_t.shape != shape:
        raise ValueError(
            f"`target_map` of shape {h_t.shape} must have the shape of the "
            f"explanation, {shape}."
        )

    def unit(h):
        if not normalize:
            return h
        s = jnp.sum(jnp.abs(h))
        return h / jnp.where(s > 0, s, 1.0)

    h_t = unit(h_t.astype(x.dtype))
    g0 = model(x)

    def make_loss(meth, mod):
        def loss(z):
            h = unit(explain(meth, z))
            return jnp.sum((h - h_t) ** 2) + gamma * jnp.sum((mod(z) - g0) ** 2)

        return loss

    loss = make_loss(method, model)
    if beta is None:
        follow = loss
    else:
        smoothed = smooth_relu(model, beta)
        follow = make_loss(_replace_model(method, model, smoothed), smoothed)

    def body(_, carry):
        z, best, best_loss = carry
        grad = jax.grad(follow)(z)
        z = jnp.clip(x + jnp.clip(z - step_size * jnp.sign(grad) - x, -eps, eps),
                     lower, upper)  # fmt: skip
        value = loss(z)
        better = value < best_loss
        return z, jnp.where(better, z, best), jnp.where(better, value, best_loss)

    start = (x, x, loss(x))
    _, best, _ = jax.lax.fori_loop(0, n_steps, body, start)
    return best
