"""Concept activation vectors: a linear classifier in a layer's activation space.

Kim et al., *Interpretability Beyond Feature Attribution: Quantitative Testing
with Concept Activation Vectors (TCAV)*, ICML 2018. A CAV is the normal of the
hyperplane that separates a layer's activations of concept examples from those
of random (or other-concept) examples. Captum fits it with scikit-learn's
`SGDClassifier`; here it is an L2-regularised logistic regression fitted by
Nesterov's accelerated gradient descent, a pure JAX function (deterministic for
a given key), so it jits and vmaps over many random sets.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import check_key, check_positive_int

__all__ = ["CAV", "fit_cav"]

# Rows read at a time from an array-like that is not in memory (a Zarr array of
# the data-set runner): one read per store chunk or so, not one per row.
_READ_ROWS = 1024


class CAV(eqx.Module):
    """A concept activation vector: a unit normal of the concept's hyperplane.

    The hyperplane `vector . a + bias = 0` separates the (flattened) layer
    activations `a` of the concept's examples (positive side) from those of the
    random examples. Built by [`eqx_attr.fit_cav`][], or by hand for a known
    direction. A CAV fitted under `jax.vmap` holds a leading axis of several CAVs.

    **Arguments:**

    - `vector`: `(d,)` (or `(k, d)` for `k` CAVs), the unit normal, pointing
        towards the concept, over the `d` entries of one flattened activation.
    - `bias`: the offset, in the units of `vector` (the signed distance of the
        hyperplane from the origin is `-bias`).
    - `accuracy`: the classifier's accuracy on the held-out examples (NaN for a
        CAV set by hand).
    - `shape`: the shape of one layer activation, `prod(shape) == d`.

    **Returns:** the CAV, to pass to [`eqx_attr.TCAV.scores`][].

    ```python
    cav = xa.CAV(vector=v / jnp.linalg.norm(v), bias=jnp.array(0.0),
                 accuracy=jnp.array(jnp.nan), shape=(64, 7, 7))
    ```
    """

    vector: Float[Array, "*k d"]
    bias: Float[Array, "*k"]
    accuracy: Float[Array, "*k"]
    shape: tuple[int, ...] = eqx.field(static=True)

    def __check_init__(self):
        d = jnp.shape(self.vector)[-1] if jnp.ndim(self.vector) else None
        if d is None or d != math.prod(self.shape):
            raise ValueError(
                f"CAV: `vector` has shape {jnp.shape(self.vector)}, but `shape="
                f"{self.shape}` has {math.prod(self.shape)} entries; the vector's "
                "last axis must be one flattened activation of that shape."
            )


def as_rows(acts: Any, name: str) -> Float[Array, "n d"]:
    """`acts` `(n, *shape)` as a floating JAX matrix `(n, d)` of flattened rows."""
    a = as_activations(acts, name)
    return a.reshape(a.shape[0], -1)


def as_activations(acts: Any, name: str) -> Float[Array, "n ..."]:
    """`acts` `(n, *shape)` as a floating JAX array, checked.

    JAX and NumPy arrays are taken as they are; another array-like with a
    `shape` and row slicing (a Zarr array, an HDF5 data set, a memmap) is read
    `_READ_ROWS` rows at a time into memory.
    """
    if isinstance(acts, (jax.Array, np.ndarray)):
        a = jnp.asarray(acts)
    elif hasattr(acts, "shape") and hasattr(acts, "__getitem__"):
        n = int(acts.shape[0])
        a = jnp.asarray(
            np.concatenate(
                [np.asarray(acts[i : i + _READ_ROWS]) for i in range(0, n, _READ_ROWS)]
            )
            if n
            else np.zeros(tuple(acts.shape), np.float32)
        )
    else:
        raise TypeError(
            f"`{name}` must be an array of layer activations `(n, *layer shape)` "
            f"(JAX, NumPy, or a Zarr array such as `store['attributions']`); got "
            f"{type(acts).__name__}."
        )
    if a.ndim < 2:
        raise ValueError(
            f"`{name}` has shape {a.shape}; pass one activation per row, "
            "`(n_examples, *layer shape)`."
        )
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(
            f"`{name}` has dtype {a.dtype}; layer activations must be floating "
            f"point (pass `{name}.astype(jnp.float32)`)."
        )
    # Fitting in half precision would lose the classifier; float64 stays float64.
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _n_test(n: int, test_fraction: float, name: str) -> int:
    """Held-out rows of a set of `n`; raises unless both parts are non-empty."""
    n_test = int(test_fraction * n)
    if n_test < 1 or n - n_test < 1:
        need = math.ceil(1 / test_fraction) if test_fraction > 0 else "more"
        raise ValueError(
            f"`{name}` has {n} examples: too few to hold out {test_fraction:.0%} "
            f"of them for the accuracy and train on the rest. Pass at least {need} "
            "examples, or change `test_fraction`."
        )
    return n_test


def _split(a: Array, n_test: int, key: PRNGKeyArray) -> tuple[Array, Array]:
    a = a[jax.random.permutation(key, a.shape[0])]
    return a[n_test:], a[:n_test]


def _logistic_fit(
    x: Array, y: Array, l2: float, n_steps: int, tol: float, key: PRNGKeyArray
) -> tuple[Array, Array]:
    """`(w, b)` minimising `mean log-loss(y, x w + b) + l2 / 2 |w|^2`.

    The features are centred first, which decouples the (unregularised) bias
    from `w` in the curvature bound below: the Hessian is at most
    `diag(lambda_max(Xc' Xc) / 4n + l2, 1/4)`, so each block gets its own step
    and the momentum follows from the condition number `L / l2`.
    """
    n = x.shape[0]
    mu = jnp.mean(x, axis=0, keepdims=True)
    xc = x - mu
    v = jax.random.normal(key, (x.shape[1],), x.dtype)

    def power(_, v):
        u = xc.T @ (xc @ v)
        return u / jnp.maximum(jnp.linalg.norm(u), jnp.finfo(x.dtype).tiny)

    v = jax.lax.fori_loop(0, 30, power, v / jnp.linalg.norm(v))
    # The power iteration's Rayleigh quotient approaches lambda_max from below;
    # the margin keeps the step inside the stable range.
    lam = 1.5 * jnp.sum((xc @ v) ** 2)
    lip = lam / (4 * n) + l2
    kappa = lip / l2
    beta = (jnp.sqrt(kappa) - 1) / (jnp.sqrt(kappa) + 1)

    def grad(w, b):
        r = jax.nn.sigmoid(xc @ w + b) - y
        return xc.T @ r / n + l2 * w, jnp.mean(r)

    def cond(state):
        i, _, _, _, _, g = state
        return (i < n_steps) & (g > tol)

    def step(state):
        i, w, b, w_prev, b_prev, _ = state
        zw, zb = w + beta * (w - w_prev), b + beta * (b - b_prev)
        gw, gb = grad(zw, zb)
        w_new, b_new = zw - gw / lip, zb - 4 * gb
        g = jnp.maximum(jnp.max(jnp.abs(gw)), jnp.abs(gb))
        return i + 1, w_new, b_new, w, b, g

    w0 = jnp.zeros(x.shape[1], x.dtype)
    b0 = jnp.log(jnp.mean(y) / (1 - jnp.mean(y))).astype(x.dtype)
    inf = jnp.asarray(jnp.inf, x.dtype)
    _, w, b, _, _, _ = jax.lax.while_loop(cond, step, (0, w0, b0, w0, b0, inf))
    return w, b - w @ mu[0]


def fit_cav(
    concept_acts: Any,
    random_acts: Any,
    *,
    key: PRNGKeyArray | None = None,
    test_fraction: float = 0.33,
    l2: float = 0.01,
    n_steps: int = 1000,
    tol: float = 1e-6,
) -> CAV:
    """Fit a concept activation vector to a layer's activations.

    An L2-regularised logistic regression separates the concept's activations
    (label 1) from the random ones (label 0), each flattened to a row. Each set
    is shuffled by `key` and its last `1 - test_fraction` trains the classifier
    (stratified: both sets keep their share); the accuracy is measured on the
    held-out rest, as Captum's default classifier does (it fits scikit-learn's
    `SGDClassifier(alpha=0.01)`, a stochastic fit of a similar objective). The
    fit is full-batch Nesterov gradient descent, stopped after `n_steps` or
    when every gradient entry is below `tol`: deterministic for a given key,
    pure, and vmappable over stacked random sets (`jax.vmap` over `random_acts`
    and `key`). The activations are read into memory.

    **Arguments:**

    - `concept_acts`: `(n_concept, *layer shape)`, a JAX or NumPy array or an
        array-like with row slicing (a Zarr array written by
        `xa.explain_dataset(xa.LayerActivation(model, where), ...)`).
    - `random_acts`: `(n_random, *layer shape)`, the counter-examples, likewise.
    - `key`: PRNG key of the train/test split.
    - `test_fraction`: the share of each set held out for the accuracy.
    - `l2`: the weight of the `l2 / 2 |w|^2` penalty (> 0).
    - `n_steps`: the most gradient steps.
    - `tol`: stop once every entry of the gradient is below it.

    **Returns:**

    A [`eqx_attr.CAV`][]: the unit normal (towards the concept), the bias in
    its units, and the held-out accuracy.

    ```python
    cav = xa.fit_cav(concept_acts, random_acts, key=jax.random.key(0))
    cav.accuracy          # held-out accuracy of the linear classifier
    ```
    """
    key = check_key(key, "fit_cav (its train/test split)")
    pos = as_activations(concept_acts, "concept_acts")
    neg = as_activations(random_acts, "random_acts")
    shape = tuple(pos.shape[1:])
    if tuple(neg.shape[1:]) != shape:
        raise ValueError(
            f"`concept_acts` holds activations of shape {shape} but `random_acts` "
            f"of shape {tuple(neg.shape[1:])}; both must come from the same layer "
            "(`(n_examples, *layer shape)` each)."
        )
    pos, neg = pos.reshape(pos.shape[0], -1), neg.reshape(neg.shape[0], -1)
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ValueError(
            f"`test_fraction` must lie strictly between 0 and 1, got {test_fraction!r}."
        )
    if not (isinstance(l2, (int, float)) and l2 > 0):
        raise ValueError(f"`l2` must be a number > 0, got {l2!r}.")
    check_positive_int(n_steps, "n_steps")
    t_pos = _n_test(pos.shape[0], test_fraction, "concept_acts")
    t_neg = _n_test(neg.shape[0], test_fraction, "random_acts")
    dtype = jnp.promote_types(pos.dtype, neg.dtype)
    return _fit(pos.astype(dtype), neg.astype(dtype), key, t_pos, t_neg, shape,
                float(l2), int(n_steps), float(tol))  # fmt: skip


@eqx.filter_jit
def _fit(pos, neg, key, t_pos, t_neg, shape, l2, n_steps, tol) -> CAV:
    k_pos, k_neg, k_power = jax.random.split(key, 3)
    train_pos, test_pos = _split(pos, t_pos, k_pos)
    train_neg, test_neg = _split(neg, t_neg, k_neg)
    x = jnp.concatenate([train_pos, train_neg])
    y = jnp.concatenate(
        [jnp.ones(train_pos.shape[0], x.dtype), jnp.zeros(train_neg.shape[0], x.dtype)]
    )
    w, b = _logistic_fit(x, y, l2, n_steps, tol, k_power)
    norm = jnp.linalg.norm(w)
    correct = jnp.concatenate([test_pos @ w + b > 0, test_neg @ w + b <= 0])
    return CAV(
        vector=w / norm,
        bias=b / norm,
        accuracy=jnp.mean(correct.astype(x.dtype)),
        shape=shape,
    )
