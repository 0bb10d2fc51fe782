"""Similarity of two attributions: Spearman rank correlation and SSIM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import pearson, safe_divide, spatial_map


def average_ranks(v: Float[Array, " n"]) -> Float[Array, " n"]:
    """Ranks 1..n of a vector, tied entries sharing their average rank (as SciPy)."""
    s = jnp.sort(v)
    left = jnp.searchsorted(s, v, side="left")
    right = jnp.searchsorted(s, v, side="right")
    return (left + right + 1).astype(jnp.float32) / 2


def spearman(a: Float[Array, "..."], b: Float[Array, "..."]) -> Float[Array, ""]:
    """Spearman rank correlation of two arrays (flattened); 0 if either is constant.

    Equals `scipy.stats.spearmanr(a.ravel(), b.ravel())` (average ranks for ties).

    **Arguments:** `a`, `b`: two arrays of the same size.

    **Returns:** a 0-d float32 array in `[-1, 1]`.
    """
    ra = average_ranks(a.astype(jnp.float32).ravel())
    rb = average_ranks(b.astype(jnp.float32).ravel())
    return pearson(ra, rb)


def _box_mean(u: Array, win: int) -> Array:
    k = jnp.full((1, 1, win, win), 1.0 / (win * win), jnp.float32)
    out = jax.lax.conv_general_dilated(u[None, None], k, (1, 1), "VALID")
    return out[0, 0]


def ssim(
    a: Float[Array, "*c h w"], b: Float[Array, "*c h w"], win_size: int = 7
) -> Float[Array, ""]:
    """Structural similarity of two attribution maps (summed over channels).

    As `skimage.metrics.structural_similarity` with its defaults (a `win_size`
    uniform window, K1 = 0.01, K2 = 0.03, sample covariance, the mean over the
    windows that fit in the image) and Quantus's `data_range`, the range of both
    maps together. Two constant, equal maps have SSIM 1.

    **Arguments:** `a`, `b`: two maps `(H, W)` or `(C, H, W)` of the same shape;
    `win_size`: the side of the window (odd).

    **Returns:** a 0-d float32 array, 1 for identical maps.
    """
    a = spatial_map(a.astype(jnp.float32))
    b = spatial_map(b.astype(jnp.float32))
    if min(a.shape) < win_size:
        raise ValueError(
            f"SSIM needs maps of at least {win_size}x{win_size} pixels, got "
            f"{a.shape}; pass a smaller odd `win_size`."
        )
    both = jnp.stack([a, b])
    data_range = jnp.max(both) - jnp.min(both)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    n = win_size * win_size
    cov_norm = n / (n - 1)
    ux, uy = _box_mean(a, win_size), _box_mean(b, win_size)
    vx = cov_norm * (_box_mean(a * a, win_size) - ux * ux)
    vy = cov_norm * (_box_mean(b * b, win_size) - uy * uy)
    vxy = cov_norm * (_box_mean(a * b, win_size) - ux * uy)
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    # 0/0 only when both maps are constant and equal over a window: identical.
    return jnp.mean(jnp.where(den > 0, safe_divide(num, den), 1.0))
