"""A detector's box score, as pytorch-grad-cam's `FasterRCNNBoxScoreTarget`."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, Shaped

from ._scores import AbstractTarget, _checked_index


def _default_detections(output: Any) -> tuple[Any, Any, Any]:
    if not isinstance(output, dict) or not {"boxes", "scores"} <= set(output):
        raise ValueError(
            "BoxScore reads a detection output given as a dict with 'boxes' (N, 4) "
            f"and 'scores' (N,) or (N, n_classes) (and optional 'labels' (N,)); got "
            f"{type(output).__name__}"
            + (f" with keys {sorted(output)}" if isinstance(output, dict) else "")
            + ". Pass `where=lambda out: (boxes, scores, labels_or_None)` to read "
            "another structure."
        )
    return output["boxes"], output["scores"], output.get("labels")


def box_iou(a: Float[Array, "k 4"], b: Float[Array, "n 4"]) -> Float[Array, "k n"]:
    """Intersection over union of two sets of `(x1, y1, x2, y2)` boxes.

    As `torchvision.ops.box_iou`; a pair of empty boxes has IoU 0.

    **Arguments:**

    - `a`, `b`: boxes `(k, 4)` and `(n, 4)`, corners `x1 <= x2`, `y1 <= y2`.

    **Returns:** the `(k, n)` matrix of IoUs.

    ```python
    xa.targets.box_iou(jnp.array([[0.0, 0, 2, 2]]), jnp.array([[1.0, 0, 3, 2]]))
    # [[1/3]]
    ```
    """
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lo = jnp.maximum(a[:, None, :2], b[None, :, :2])
    hi = jnp.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = jnp.clip(hi - lo, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    safe = jnp.where(union > 0, union, 1)
    return jnp.where(union > 0, inter / safe, 0)


class BoxScore(AbstractTarget):
    """The score of the predicted box that best matches a reference box.

    As pytorch-grad-cam's `FasterRCNNBoxScoreTarget`: for each reference box,
    the predicted box with the largest IoU is found; if that IoU exceeds
    `iou_threshold` (and, when `label` is given, the predicted label equals it),
    `IoU + score` of that box is added. The total over the reference boxes is the
    target (0 when nothing matches). Fixed shapes throughout (an `argmax`, no
    data-dependent indexing), so it runs under `jit` and `vmap`.

    **Expected output:** a dict with `"boxes"` `(N, 4)` as `(x1, y1, x2, y2)`,
    `"scores"` `(N,)` (or per-class `(N, n_classes)`, then the score of `label`
    is read) and, to check labels with 1-D scores, `"labels"` `(N,)` (torchvision's
    detection output per image). Another structure is read with `where`.

    **Arguments:**

    - `box`: the reference box `(4,)`, or several `(k, 4)`, as `(x1, y1, x2, y2)`.
    - `label`: `None` (any label), or the class of each reference box (an int,
        or `(k,)` ints).
    - `iou_threshold`: the smallest IoU (exclusive) that counts as a match
        (static). Default 0.5.
    - `where`: `None` for the dict above, or a function
        `output -> (boxes, scores, labels or None)` (static).

    **Returns:** `BoxScore(box)(detections)` is the scalar
    `sum_k [iou_k > t and label ok] (iou_k + score_k)`.

    ```python
    target = xa.targets.BoxScore(jnp.array([10.0, 10, 50, 60]), label=3)
    a = xa.Gradients(detector)(x, target=target)
    ```
    """

    box: Float[Array, "*stack k 4"]
    label: Int[Array, "*stack k"] | None
    iou_threshold: float = eqx.field(static=True)
    where: Callable[[Any], tuple[Any, Any, Any]] | None = eqx.field(static=True)

    def __init__(
        self,
        box: Shaped[ArrayLike, "..."],
        label: int | Int[ArrayLike, "*stack"] | None = None,
        iou_threshold: float = 0.5,
        where: Callable[[Any], tuple[Any, Any, Any]] | None = None,
    ):
        box = jnp.asarray(box)
        if box.ndim == 0 or box.shape[-1] != 4:
            raise ValueError(
                f"`box` must be (4,) or (k, 4) corners (x1, y1, x2, y2), got shape "
                f"{box.shape}."
            )
        if not jnp.issubdtype(box.dtype, jnp.floating):
            box = box.astype(jnp.float32)
        if box.ndim == 1:
            box = box[None]
        if label is not None:
            label = jnp.asarray(label)
            if not jnp.issubdtype(label.dtype, jnp.integer):
                raise TypeError(
                    f"`label` must be integer class indices, got dtype {label.dtype}."
                )
            label = jnp.broadcast_to(label, box.shape[:-1])
        if not isinstance(iou_threshold, numbers.Real) or not (0 <= iou_threshold < 1):
            raise ValueError(
                f"`iou_threshold` must be a number in [0, 1), got {iou_threshold!r}."
            )
        if where is not None and not callable(where):
            raise TypeError(
                "`where` must be None or a function `output -> (boxes, scores, "
                f"labels or None)`, got {type(where).__name__}."
            )
        self.box = box
        self.label = label
        self.iou_threshold = float(iou_threshold)
        self.where = where

    def __call__(self, output: Any) -> Float[Array, ""]:
        read = _default_detections if self.where is None else self.where
        boxes, scores, labels = read(output)
        boxes, scores = jnp.asarray(boxes), jnp.asarray(scores)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(
                f"BoxScore: the predicted boxes must be (N, 4), got {boxes.shape}; "
                "fix `where` (or the output's 'boxes')."
            )
        n = boxes.shape[0]
        if scores.shape[:1] != (n,) or scores.ndim not in (1, 2):
            raise ValueError(
                f"BoxScore: the scores must be (N,) or (N, n_classes) for N={n} "
                f"boxes, got {scores.shape}; fix `where` (or the output's 'scores')."
            )
        if self.box.ndim != 2:
            raise ValueError(
                f"`box` of BoxScore has shape {self.box.shape}: one call takes (k, 4) "
                "boxes; vmap over a stack of targets."
            )
        if n == 0:
            return jnp.zeros((), jnp.result_type(scores.dtype, jnp.float32))
        iou = box_iou(self.box.astype(boxes.dtype), boxes)  # (k, N)
        best = jnp.argmax(iou, axis=1)
        best_iou = jnp.take_along_axis(iou, best[:, None], axis=1)[:, 0]
        ok = best_iou > self.iou_threshold
        if scores.ndim == 2:
            if self.label is None:
                raise ValueError(
                    "BoxScore: the scores are per class (N, n_classes), so pass the "
                    "reference box's class as `label=`."
                )
            lab = _checked_index(self.label, scores.shape[1], "label")
            score = scores[best, lab]
        else:
            score = scores[best]
            if self.label is not None:
                if labels is None:
                    raise ValueError(
                        "BoxScore got `label=` but the output has no predicted "
                        "labels: add 'labels' (N,) to the output (or return them "
                        "from `where`), or pass `label=None`."
                    )
                ok = ok & (jnp.asarray(labels)[best] == self.label)
        return jnp.sum(jnp.where(ok, best_iou + score, 0))
