"""IROF: iterative removal of features (Rieger & Hansen, 2020), as Quantus 0.6."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._attribution import Target, batched_map, check_choice, check_positive_int
from ._base import (
    SCORES,
    AbstractCurveMetric,
    check_chunk_size,
    checked_pair,
    scorer,
)


class IROF(AbstractCurveMetric):
    """Area over the curve of the score as superpixels go, most relevant first.

    Rieger & Hansen, *IROF: a low resource evaluation metric for explanation
    methods*, ICLR workshop 2020; as Quantus's `IROF`
    (`faithfulness/irof.py`, `evaluate_batch`): each segment's relevance is the
    mean attribution over its pixels and channels; segments are removed in
    decreasing relevance, cumulatively, each replaced by the mean of the image
    as it stands before that step (Quantus's `"mean"` baseline on a batch of one).
    `curve[k]` is the score after k + 1 removals divided by the score on `x`.

    **Arguments:**

    - `model`: maps one example to class scores.
    - `n_segments`: the segments' count; `segments` holds labels
        `0 .. n_segments - 1`, each present (Quantus counts the unique labels).
    - `score`: `"probability"` (softmax, Quantus's default) or `"logit"`.
    - `chunk_size`: score at most this many images at once.

    **Call:** `metric(x, target, a, segments)`; `segments` an integer `(H, W)`
    label map (Quantus draws it with SLIC from `x`:
    `quantus.utils.get_superpixel_segments`, or `skimage.segmentation.slic`).

    **Returns:** `n_segments - Σ trapezoid(curve)` (unit steps), the area over
    the curve; higher is better. Ties in relevance keep the label order.

    ```python
    segs = skimage.segmentation.slic(np.moveaxis(np.asarray(x), 0, -1), start_label=0)
    irof = xa.metrics.IROF(model, n_segments=int(segs.max()) + 1)(x, 3, a, segs)
    ```
    """

    model: Callable[..., Any]
    n_segments: int = eqx.field(static=True)
    score: str = eqx.field(static=True, default="probability")
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")

    def __check_init__(self):
        check_positive_int(self.n_segments, "n_segments")
        check_choice(self.score, "score", SCORES)
        check_chunk_size(self.chunk_size)

    def curve(  # type: ignore[override]
        self,
        x: Float[Array, "c h w"],
        target: Target,
        a: Float[Array, "..."],
        segments: Int[Array, "..."] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " n_segments"]:
        """The normalised score after each removal."""
        x, a = checked_pair(x, a)
        # A missing `segments` reports shape `()`, as `jnp.shape(None)` does.
        shape = () if segments is None else jnp.shape(segments)
        if segments is None or shape != x.shape[-2:]:
            raise ValueError(
                f"`segments` must be an integer label map of shape {x.shape[-2:]} "
                f"(the input's (H, W)), got {shape}."
            )
        segments = jnp.asarray(segments)
        if not jnp.issubdtype(segments.dtype, jnp.integer):
            raise TypeError(f"`segments` must be integer, got {segments.dtype}.")
        f = scorer(self.model, x, target, self.score)
        a = jnp.broadcast_to(a, x.shape)
        labels = jnp.arange(self.n_segments)
        member = segments[None] == labels[:, None, None]  # (S, H, W)
        per_pixel = jnp.sum(a, axis=tuple(range(a.ndim - 2)))
        n_channels = a.size // per_pixel.size
        sums = jnp.sum(jnp.where(member, per_pixel[None], 0.0), axis=(1, 2))
        relevance = sums / (n_channels * jnp.sum(member, axis=(1, 2)))
        order = jnp.argsort(-relevance, stable=True)

        def remove(z, s):
            z = jnp.where(member[s], jnp.mean(z), z)
            return z, z

        _, images = jax.lax.scan(remove, x.astype(jnp.float32), order)
        preds = batched_map(lambda z: f(z.astype(x.dtype)), images, self.chunk_size)
        return preds / f(x)

    def _summarise(self, curve: Array) -> Array:
        return curve.shape[0] - (jnp.sum(curve) - (curve[0] + curve[-1]) / 2)

    def __call__(  # type: ignore[override]
        self,
        x: Float[Array, "c h w"],
        target: Target,
        a: Float[Array, "..."],
        segments: Int[Array, "..."] | None = None,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        return self._summarise(self.curve(x, target, a, segments))
