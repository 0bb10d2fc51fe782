"""Smooth MPRT: MPRT on explanations denoised by averaging over noisy inputs.

Hedström et al., *Sanity Checks Revisited: An Exploration to Repair the Model
Parameter Randomisation Test*, XAI in Action workshop, NeurIPS 2023; as Quantus
0.6's `SmoothMPRT` (`randomisation/smooth_mprt.py`).
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Target,
    batched_map,
    check_choice,
    check_chunk_size,
    check_input,
    check_key,
    check_positive_int,
)
from ._base import AbstractMetric, check_positive_float
from ._randomisation import SIMILARITIES, _layer_count, randomise_layers, similarity


class SmoothMPRT(AbstractMetric):
    """Similarity of the denoised explanation before and after the model's layers are
    re-initialised, layer by layer.

    As Quantus's `SmoothMPRT`: an explanation is the mean of the method's
    explanations of `n_samples - 1` noisy copies `x + ε`, ε ~ N(0, σ²) with
    `σ = noise_magnitude (max x - min x)`, and of `x` itself
    (`explain_smooth_batch_numpy`). The layers are redrawn cumulatively as in
    [`MPRT`][eqx_attr.metrics.MPRT] (N(0, σ²) with each array's own σ; Quantus calls
    torch's `reset_parameters`): `order="bottom_up"` (Quantus's default) from the
    input layer up, `"top_down"` from the output layer down. `curve[l]` compares
    the denoised explanation of the original model with the one after step `l`.

    **Arguments:**

    - `method`: the attribution method (it holds the model).
    - `n_samples`: explanations averaged, the last on `x` itself (Quantus: 50).
    - `noise_magnitude`: σ relative to the input's range (Quantus: 0.1).
    - `order`: `"bottom_up"` or `"top_down"`.
    - `similarity`: `"spearman"` (Quantus's default) or `"ssim"`.
    - `abs`: compare |e| (default `True`, as Quantus).
    - `average`: return the mean over the layers (Quantus's
        `return_average_correlation`, which also counts the original's
        similarity with itself: `(1 + n mean) / (n + 1)` for n layers) instead
        of the last step (`return_last_correlation`).
    - `chunk_size`: noisy explanations computed at a time (`None`: all at once;
        `"auto"`, the default: as many as fit the memory budget,
        [`eqx_attr.set_memory_budget`][]).

    **Call:** `metric(x, target, *, key)`; `key` draws the weights, the noise (the
    same draws for every model) and keys a random method. Share one key across a
    batch for one randomised model.

    **Returns:** a 0-d float32 array; near 1 for a method that ignores the model.
    `metric.curve(...)` gives the similarity per step.

    ```python
    s = xa.metrics.SmoothMPRT(xa.Gradients(model), n_samples=20)(x, 3, key=key)
    ```
    """

    method: AbstractAttribution
    n_samples: int = eqx.field(static=True, default=50)
    noise_magnitude: float = eqx.field(static=True, default=0.1)
    order: str = eqx.field(static=True, default="bottom_up")
    similarity: str = eqx.field(static=True, default="spearman")
    abs: bool = eqx.field(static=True, default=True)
    average: bool = eqx.field(static=True, default=False)
    chunk_size: int | Literal["auto"] | None = eqx.field(static=True, default="auto")

    def __check_init__(self):
        check_positive_int(self.n_samples, "n_samples")
        check_positive_float(self.noise_magnitude, "noise_magnitude", allow_zero=True)
        check_choice(self.order, "order", ("bottom_up", "top_down"))
        check_choice(self.similarity, "similarity", SIMILARITIES)
        check_chunk_size(self.chunk_size)
        if _layer_count(self.method) == 0:
            raise ValueError(
                "SmoothMPRT found no eqx.nn.Linear or eqx.nn.Conv layer in the "
                "method's model; it randomises those layers."
            )

    def noise(self, x: Array, key: PRNGKeyArray) -> Array:
        """The standard-normal draws `(n_samples - 1, *x.shape)` for `key`'s noise."""
        return jax.random.normal(key, (self.n_samples - 1, *x.shape), jnp.float32)

    def _smoothed(self, method, x, target, z, key):
        std = self.noise_magnitude * (jnp.max(x) - jnp.min(x))
        noisy = jnp.concatenate([x[None] + z * std, x[None]]).astype(x.dtype)
        a = batched_map(lambda xi: method(xi, target, key=key), noisy, self.chunk_size)
        return jnp.mean(a.astype(jnp.float32), axis=0)

    def curve(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " n_layers"]:
        """The similarity after each randomisation step."""
        key = check_key(key, "SmoothMPRT")
        x = check_input(x)
        weight_key, noise_key, method_key = jax.random.split(key, 3)
        z = self.noise(x, noise_key)
        n = _layer_count(self.method)
        explain = eqx.filter_jit(self._smoothed)
        a0 = explain(self.method, x, target, z, method_key)
        out = []
        for step in range(n):
            if self.order == "bottom_up":
                chosen = tuple(range(step + 1))
            else:
                chosen = tuple(range(n - 1 - step, n))
            randomised = randomise_layers(self.method, chosen, weight_key)
            a = explain(randomised, x, target, z, method_key)
            out.append(similarity(self.similarity, a0, a, self.abs))
        return jnp.stack(out)

    def __call__(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        curve = self.curve(x, target, key=key)
        return jnp.mean(curve) if self.average else curve[-1]
