"""pytorch-grad-cam's confidence change when the image is multiplied by the CAM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._attribution import Target, check_choice
from ._base import SCORES, AbstractMetric, checked_pair, scorer


class CamMultImageConfidenceChange(AbstractMetric):
    """The change of the target's score when the input is multiplied by the map.

    As pytorch-grad-cam's `CamMultImageConfidenceChange`
    (`pytorch_grad_cam/metrics/cam_mult_image.py`, `multiply_tensor_with_cam`,
    scored by `metrics/perturbation_confidence.py`,
    `PerturbationConfidenceMetric.__call__` with `return_diff=True`):
    `f(x · cam) - f(x)`, the `(H, W)` map broadcast over the channels (or an
    attribution shaped like `x`, multiplied elementwise). grad-cam's
    `ClassifierOutputSoftmaxTarget` is `score="probability"`,
    `ClassifierOutputTarget` is `score="logit"`. Maps are used as given: scale
    them to [0, 1] first, as grad-cam's CAMs are.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `score`: `"probability"` (default) or `"logit"`.
    - `diff`: `False` returns `f(x · cam)` itself (grad-cam's `return_diff=False`).

    **Call:** `metric(x, target, cam)`.

    **Returns:** a 0-d float32 array; positive when keeping the mapped region
    raises the score. An all-zero map scores `f(0) - f(x)`.

    ```python
    change = xa.metrics.CamMultImageConfidenceChange(model)(x, 3, cam)
    ```
    """

    model: Callable[..., Any]
    score: str = eqx.field(static=True, default="probability")
    diff: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_choice(self.score, "score", SCORES)

    def __call__(
        self, x: Float[Array, "c h w"], target: Target, cam: Float[Array, "..."]
    ) -> Float[Array, ""]:
        x, cam = checked_pair(x, cam)
        f = scorer(self.model, x, target, self.score)
        after = f((x * jnp.broadcast_to(cam, x.shape)).astype(x.dtype))
        return after - f(x) if self.diff else after
