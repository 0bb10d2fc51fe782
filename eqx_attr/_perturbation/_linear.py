"""Weighted linear surrogates in JAX: least squares (optionally constrained), lasso."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def weighted_lstsq(
    z: Float[Array, "n f"], y: Float[Array, " n"], w: Float[Array, " n"]
) -> tuple[Float[Array, " f"], Float[Array, ""]]:
    """Coefficients and intercept minimising `sum_i w_i (y_i - b - z_i . c)^2`.

    Unregularised; solved by `lstsq` on the weighted design (minimum-norm when the
    samples do not determine every coefficient).
    """
    sw = jnp.sqrt(w)
    design = jnp.concatenate([jnp.ones_like(y)[:, None], z], axis=1) * sw[:, None]
    sol = jnp.linalg.lstsq(design, y * sw)[0]
    return sol[1:], sol[0]


def lstsq_sum_constrained(
    z: Float[Array, "n f"], y: Float[Array, " n"], total: Float[Array, ""]
) -> Float[Array, " f"]:
    """Least squares `y ~ z . c` (no intercept) subject to `sum(c) = total`.

    The last coefficient is eliminated, `c_F = total - sum_{j<F} c_j`.
    """
    last = z[:, -1:]
    design = z[:, :-1] - last
    rest = jnp.linalg.lstsq(design, y - last[:, 0] * total)[0]
    return jnp.concatenate([rest, (total - jnp.sum(rest))[None]])


def weighted_lasso(
    z: Float[Array, "n f"],
    y: Float[Array, " n"],
    w: Float[Array, " n"],
    alpha: float | Float[Array, ""],
    n_sweeps: int,
) -> tuple[Float[Array, " f"], Float[Array, ""]]:
    """Lasso with intercept and sample weights, as scikit-learn's `Lasso` defines it.

    Minimises `sum_i w_i (y_i - b - z_i . c)^2 / (2 sum_i w_i) + alpha |c|_1` by
    cyclic coordinate descent (`n_sweeps` passes over the coefficients) on the
    weighted Gram matrix of the centred data.
    """
    wn = w / jnp.sum(w)
    z_mean = wn @ z
    y_mean = wn @ y
    zc = z - z_mean[None]
    yc = y - y_mean
    gram = zc.T @ (wn[:, None] * zc)
    corr = zc.T @ (wn * yc)
    diag = jnp.diag(gram)
    n = z.shape[1]

    def coordinate(j, c):
        rho = corr[j] - gram[j] @ c + diag[j] * c[j]
        new = jnp.sign(rho) * jnp.maximum(jnp.abs(rho) - alpha, 0.0)
        new = jnp.where(diag[j] > 0, new / jnp.where(diag[j] > 0, diag[j], 1.0), 0.0)
        return c.at[j].set(new)

    def sweep(_, c):
        return jax.lax.fori_loop(0, n, coordinate, c)

    coef = jax.lax.fori_loop(0, n_sweeps, sweep, jnp.zeros(n, z.dtype))
    return coef, y_mean - z_mean @ coef
