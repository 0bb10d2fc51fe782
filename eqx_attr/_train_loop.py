"""The pieces of one training run: its configuration, result, steps and data.

[`eqx_attr.training.train`][] assembles them; `eqx_attr.training` re-exports the
public ones ([`eqx_attr.training.TrainConfig`][], `TrainResult`, `random_shift`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of [`eqx_attr.training.train`][].

    **Fields:**

    - `epochs`: passes over the training set.
    - `batch_size`: examples per step (the last partial batch of an epoch is
        dropped; every epoch draws a fresh permutation).
    - `learning_rate`: the peak of the one-cycle schedule (warm-up for
        `warmup` of the steps, then cosine decay to `learning_rate / 1e3`).
    - `weight_decay`: AdamW's decoupled weight decay.
    - `shift`: random translation of each training image by up to this many
        pixels in each direction (zero padding); `0` disables augmentation.
    - `label_smoothing`: cross-entropy label smoothing.
    - `seed`: seeds the batch order and the augmentation.

    **Arguments:** the fields above, all with defaults (the demo's settings).

    **Returns:** a frozen configuration (hashed into the weights cache's key).
    """

    epochs: int = 18
    batch_size: int = 128
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    warmup: float = 0.2
    shift: int = 2
    label_smoothing: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
        if not isinstance(self.shift, int) or self.shift < 0:
            raise ValueError(f"`shift` must be an integer >= 0, got {self.shift!r}.")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"`warmup` must lie in [0, 1), got {self.warmup!r}.")
        if not self.learning_rate > 0:
            raise ValueError(
                f"`learning_rate` must be > 0, got {self.learning_rate!r}."
            )


class TrainResult(NamedTuple):
    """What [`eqx_attr.training.train`][] returns.

    **Fields:**

    - `model`: the trained model.
    - `loss`: the training loss of every step, shape `(epochs * steps_per_epoch,)`.
    - `seconds`: wall-clock time of the whole run, compilation included.

    **Arguments:** `model`, `loss`, `seconds`, as above.

    **Returns:** a named tuple.
    """

    model: Any
    loss: np.ndarray
    seconds: float


def _as_arrays(x: Any, y: Any) -> tuple[Array, Array]:
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"Training images must be floating point, got dtype {x.dtype}; divide "
            "8-bit pixels by 255 first."
        )
    if not jnp.issubdtype(y.dtype, jnp.integer) or y.ndim not in (1, 3):
        raise TypeError(
            "Labels must be a 1-D integer array (or (N, H, W) per-pixel classes for "
            f"a segmentation model), got dtype {y.dtype} and shape {y.shape}."
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{x.shape[0]} images but {y.shape[0]} labels; they must match."
        )
    return x, y.astype(jnp.int32)


def _shift_matrices(shifts: Int[Array, " b"], size: int) -> Float[Array, "b n n"]:
    """`S[b] @ v` moves a length-`size` vector by `shifts[b]` places, filling with 0.

    jax.nn.one_hot gives an all-zero row for an out-of-range index, which is exactly
    the zero fill at the border.
    """
    rows = jnp.arange(size)[None, :] - shifts[:, None]
    return jax.nn.one_hot(rows, size, dtype=jnp.float32)


def random_shift(
    xs: Float[Array, "b c h w"], key: PRNGKeyArray, shift: int
) -> Float[Array, "b c h w"]:
    """Translate each image of a batch by up to `shift` pixels (zero fill).

    Done with two small one-hot matrix products per image rather than a vmapped
    `dynamic_slice`, which XLA lowers to a gather that is several times slower on
    CPU than the whole training step.
    """
    b, _, h, w = xs.shape
    ky, kx = jax.random.split(key)
    dy = jax.random.randint(ky, (b,), -shift, shift + 1)
    dx = jax.random.randint(kx, (b,), -shift, shift + 1)
    sy = _shift_matrices(dy, h).astype(xs.dtype)
    sx = _shift_matrices(dx, w).astype(xs.dtype)
    return jnp.einsum("bij,bcjk,blk->bcil", sy, xs, sx)


def make_step(config: TrainConfig, optimizer, static, n_classes: int):
    """One jitted optimisation step on a minibatch.

    The epoch is a Python loop over this step rather than one `lax.scan`: on XLA's
    CPU backend, convolutions inside a rolled while-loop ran ~15x slower than the
    same step compiled on its own (measured with JAX 0.10 on this CNN), and the
    dispatch cost of a step is negligible next to its compute.
    """

    import optax

    def loss_fn(params, xb, yb):
        model = eqx.combine(params, static)
        logits = jax.vmap(model)(xb)  # (B, n) or, per pixel, (B, n, H, W)
        labels = optax.smooth_labels(
            jax.nn.one_hot(yb, n_classes, axis=-1), config.label_smoothing
        )
        if logits.ndim > 2:  # segmentation: classes on axis 1, labels (B, H, W)
            labels = jnp.moveaxis(labels, -1, 1)
        return jnp.mean(optax.softmax_cross_entropy(logits, labels, axis=1))

    @jax.jit
    def step(params, opt_state, xb, yb, key):
        if config.shift > 0:
            xb = random_shift(xb, key, config.shift)
        loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss

    return step


def training_data(
    model: Any, data: tuple[Any, Any], config: TrainConfig
) -> tuple[np.ndarray, np.ndarray, int]:
    """`(images, labels, n_classes)`, checked against the model and the config."""
    if not isinstance(data, tuple) or len(data) < 2:
        raise TypeError(
            "`data` must be a tuple `(images, labels)` or an `eqx_attr.datasets.MNIST`."
        )
    xs, ys = _as_arrays(data[0], data[1])
    xs, ys = np.asarray(xs), np.asarray(ys)
    n = xs.shape[0]
    if n < config.batch_size:
        raise ValueError(
            f"`batch_size={config.batch_size}` exceeds the {n} training examples; "
            "pass a smaller `TrainConfig(batch_size=...)`."
        )
    out = jax.eval_shape(model, xs[0])
    if out.ndim != 1 and out.shape[1:] != ys.shape[1:]:
        raise ValueError(
            "The model must return a 1-D vector of logits (labels (N,)), or per-pixel "
            f"logits (n, H, W) with labels (N, H, W); got shape {out.shape} with "
            f"labels {ys.shape}."
        )
    if out.ndim != 1 and config.shift > 0:
        raise ValueError(
            "Random shifts move the images but not per-pixel labels; train a "
            "segmentation model with `TrainConfig(shift=0)`."
        )
    return xs, ys, out.shape[0]


def make_optimizer(config: TrainConfig, total: int) -> Any:
    """AdamW with a one-cycle (warm-up, cosine decay) schedule over `total` steps."""
    import optax

    schedule = optax.warmup_cosine_decay_schedule(
        init_value=config.learning_rate / 25,
        peak_value=config.learning_rate,
        warmup_steps=max(1, int(config.warmup * total)),
        decay_steps=total,
        end_value=config.learning_rate / 1e3,
    )
    return optax.adamw(schedule, weight_decay=config.weight_decay)
