"""Training small classifiers with optax, and the cached pretrained MNIST CNN.

```python
import eqx_attr as xa

model = xa.training.pretrained_small_cnn()          # trains once, then cached
data = xa.datasets.mnist()
xa.training.accuracy(model, data.x_test, data.y_test)   # >= 0.97
```

The cache lives in `$EQX_ATTR_CACHE`, else `$XDG_CACHE_HOME/eqx_attr`, else
`~/.cache/eqx_attr`. Weights are saved without pickle and keyed by a hash of the
architecture and the training configuration, so changing either retrains.

The cache is safe to share between processes (two pytest workers, a demo and a
notebook): every save writes a temporary file in the cache folder and renames it
into place, so a reader sees a whole file or none, and of two processes training
the same model at once the last rename wins (both wrote the same model). A
truncated or corrupt file (unreadable, or failing the checksum stored with it)
is logged as a warning on the `eqx_attr.training` logger and retrained. A cache
folder that cannot be written (read-only, no permission) is not an error: the
trained model is returned without being cached, with a warning naming the folder
and `$EQX_ATTR_CACHE`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._train_loop import (
    TrainConfig as TrainConfig,
    TrainResult as TrainResult,
    make_optimizer,
    make_step,
    random_shift as random_shift,
    training_data,
)

# Library code never prints: messages go to this logger (shown once the
# application configures logging, e.g. `logging.basicConfig(level="INFO")`).
_log = logging.getLogger(__name__)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "accuracy",
    "cache_dir",
    "cached_train",
    "pretrained_mnist_segmenter",
    "pretrained_mnist_vit",
    "pretrained_small_cnn",
    "predict",
    "train",
]

# Bump when the training code changes in a way that changes the weights it produces.
_TRAINING_VERSION = 1


def train(
    model: Any,
    data: tuple[Any, Any],
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    desc: str = "training",
) -> TrainResult:
    """Train a classifier with AdamW, a one-cycle schedule and random shifts.

    Every floating-point array of `model` is trained; the model must be a plain
    function of its input (no state, no dropout key). The step (augmentation,
    loss, gradient, AdamW update) is compiled once and reused for every batch.

    **Arguments:**

    - `model`: an Equinox module mapping ONE example to a vector of logits.
    - `data`: `(images, labels)`, or any tuple whose first two entries are those
        (e.g. an [`eqx_attr.datasets.MNIST`][]). Images `(N, C, H, W)` float,
        labels `(N,)` int.
    - `config`: a [`eqx_attr.training.TrainConfig`][]; defaults reach >= 97% on
        the held-out MNIST digits with [`eqx_attr.models.SmallCNN`][].
    - `progress`: show a tqdm progress bar (one tick per epoch, with the loss).
    - `desc`: the progress bar's label.

    **Returns:** a [`eqx_attr.training.TrainResult`][] `(model, loss, seconds)`.

    ```python
    data = xa.datasets.mnist()
    result = xa.training.train(xa.models.SmallCNN(key=jax.random.key(0)), data)
    acc = xa.training.accuracy(result.model, data.x_test, data.y_test)
    ```
    """
    config = TrainConfig() if config is None else config
    xs, ys, n_classes = training_data(model, data, config)
    n = xs.shape[0]
    steps_per_epoch = n // config.batch_size
    total = steps_per_epoch * config.epochs
    optimizer = make_optimizer(config, total)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    step = make_step(config, optimizer, static, n_classes)

    from tqdm.auto import tqdm

    start = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    keys = jax.random.split(jax.random.key(config.seed), total)
    losses = np.zeros(total, np.float32)
    i = 0
    with tqdm(
        total=total, desc=desc, disable=not progress, leave=False, mininterval=0.5
    ) as bar:
        for _ in range(config.epochs):
            perm = rng.permutation(n)
            for j in range(steps_per_epoch):
                idx = perm[j * config.batch_size : (j + 1) * config.batch_size]
                params, opt_state, loss = step(
                    params, opt_state, xs[idx], ys[idx], keys[i]
                )
                losses[i] = loss
                i += 1
                bar.update()
                if j == steps_per_epoch - 1:
                    recent = losses[i - steps_per_epoch : i].mean()
                    bar.set_postfix(loss=f"{recent:.4f}")
    seconds = time.perf_counter() - start
    return TrainResult(eqx.combine(params, static), losses, seconds)


def predict(
    model: Callable, xs: Float[Array, "n ..."] | np.ndarray, batch_size: int = 500
) -> Int[np.ndarray, " n"]:
    """The predicted class (argmax of the logits) of each example in `xs`.

    **Arguments:** `model`, the examples `xs` `(N, *dims)`, and `batch_size` (how
    many go through one jitted call).

    **Returns:** an int NumPy array `(N,)`.
    """
    xs = jnp.asarray(xs)
    fn = eqx.filter_jit(lambda m, b: jnp.argmax(jax.vmap(m)(b), axis=-1))
    preds = [
        np.asarray(fn(model, xs[i : i + batch_size]))
        for i in range(0, xs.shape[0], batch_size)
    ]
    return np.concatenate(preds) if preds else np.zeros((0,), np.int32)


def accuracy(
    model: Callable,
    xs: Float[Array, "n ..."] | np.ndarray,
    ys: Int[Array, " n"] | np.ndarray,
) -> float:
    """The fraction of examples whose argmax logit equals the label.

    **Arguments:** `model`, the examples `xs` `(N, *dims)` and labels `ys` `(N,)`.

    **Returns:** a float in `[0, 1]`.

    ```python
    xa.training.accuracy(model, data.x_test, data.y_test)
    ```
    """
    ys = np.asarray(ys)
    if ys.shape != (np.shape(xs)[0],):
        raise ValueError(
            f"`ys` has shape {ys.shape}; expected one label per image, "
            f"({np.shape(xs)[0]},)."
        )
    return float(np.mean(predict(model, xs) == ys))


# ---------------------------------------------------------------------------------
# Cache


def cache_dir() -> pathlib.Path:
    """Where trained weights are cached.

    `$EQX_ATTR_CACHE` if set, else `$XDG_CACHE_HOME/eqx_attr`, else
    `~/.cache/eqx_attr`.

    **Arguments:** none.

    **Returns:** the folder, a `pathlib.Path` (not created here).
    """
    if os.environ.get("EQX_ATTR_CACHE"):
        return pathlib.Path(os.environ["EQX_ATTR_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return pathlib.Path(base).expanduser() / "eqx_attr"


def _describe(leaf: Any) -> str:
    """A process-independent description of a non-array leaf (e.g. `jax.nn.relu`).

    `repr` of functions contains memory addresses, which would change the cache
    key in every process.
    """
    name = getattr(leaf, "__qualname__", None) or getattr(leaf, "__name__", None)
    if name is None and hasattr(leaf, "__wrapped__"):
        name = getattr(leaf.__wrapped__, "__qualname__", None)
    if name is None:
        name = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(leaf))
    return f"{type(leaf).__module__}.{type(leaf).__qualname__}:{name}"


def _fingerprint(model: Any, config: TrainConfig, extra: dict) -> str:
    """A hash of the architecture (tree structure, shapes, dtypes) and the config.

    Arrays and their shape placeholders (`eqx.filter_eval_shape`) hash alike.
    """
    from .models._weights import is_param

    leaves, treedef = jax.tree_util.tree_flatten(model)
    shapes = [
        (tuple(leaf.shape), str(leaf.dtype)) if is_param(leaf) else _describe(leaf)
        for leaf in leaves
    ]
    blob = json.dumps(
        {
            "version": _TRAINING_VERSION,
            "treedef": str(treedef),
            "leaves": repr(shapes),
            "config": dataclasses.asdict(config),
            "extra": extra,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save(path: pathlib.Path, model: Any) -> bool:
    """Cache `model` at `path` (atomically: `models.save` writes, then renames).

    **Returns:** whether it was cached; `False`, with a warning, when the folder
    cannot be written.
    """
    from .models import save

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(path, model)
    except OSError as e:
        _log.warning(
            "cannot write the weights cache %s (%s: %s); the trained model is used "
            "without being cached. Point $EQX_ATTR_CACHE at a writable folder to "
            "keep it.",
            path,
            type(e).__name__,
            e,
        )
        return False
    return True


def _load(path: pathlib.Path, like: Any) -> Any | None:
    """The cached model, or `None` (with a warning) when the file is corrupt."""
    from .models import WeightsError, load

    try:
        return load(path, like)
    except (WeightsError, OSError) as e:
        _log.warning("ignoring unreadable cache file %s (%s); retraining", path, e)
        return None


def cached_train(
    model: Any,
    data: tuple[Any, Any],
    config: TrainConfig | None = None,
    *,
    name: str = "model",
    progress: bool = True,
    verbose: bool = True,
) -> Any:
    """[`eqx_attr.training.train`][] with a cache: load the weights if this exact
    architecture + config was trained before, else train and save.

    The key also covers the training data's shape and a checksum of its values,
    so different data never reuses weights. A corrupt cache file is retrained
    (with a warning); a folder that cannot be written returns the trained model
    uncached (with a warning); see the module's notes on concurrency.

    **Arguments:** as [`eqx_attr.training.train`][], plus `name` (the cache
    file's prefix) and `verbose` (log where the weights were cached, at INFO
    level on the `eqx_attr.training` logger).

    **Returns:** the trained model.

    ```python
    model = xa.training.cached_train(model, (xs, ys), config, name="my_cnn")
    ```
    """
    return _cached(lambda: model, model, data, config, name, progress, verbose)


def _cached(
    build: Callable[[], Any],
    like: Any,
    data: tuple[Any, Any],
    config: TrainConfig | None,
    name: str,
    progress: bool,
    verbose: bool,
) -> Any:
    """`cached_train` of the model `build()` returns, whose shapes are `like`'s.

    `like` may hold shape placeholders: a cache hit then never builds the model.
    """
    config = TrainConfig() if config is None else config
    xs, ys = np.asarray(data[0]), np.asarray(data[1])
    digest = hashlib.sha256(xs.tobytes() + ys.tobytes()).hexdigest()[:16]
    key = _fingerprint(like, config, {"data": digest, "shape": list(xs.shape)})
    path = cache_dir() / f"{name}-{key}.safetensors"
    if path.is_file():
        cached = _load(path, like)
        if cached is not None:
            return cached
    result = train(build(), (xs, ys), config, progress=progress, desc=name)
    if _save(path, result.model):
        level = logging.INFO if verbose else logging.DEBUG
        _log.log(
            level, "trained %s in %.1f s; cached at %s", name, result.seconds, path
        )
    return result.model


def _cached_zoo(
    factory: Callable[..., Any],
    config: TrainConfig | None,
    name: str,
    progress: bool,
    verbose: bool,
) -> Any:
    """`cached_train` of `factory(key=jax.random.key(0))` on `datasets.mnist()`.

    A cache hit reads the weights into the model's shapes alone and never runs its
    initialisers: built eagerly, each initialiser op compiles on its own (5-10 s
    for SmallCNN on two cores, before a 10 ms read). A miss builds the model as a
    user would, eagerly, and trains it.
    """
    from . import datasets

    data = datasets.mnist()
    like = eqx.filter_eval_shape(factory, key=jax.random.key(0))
    build = lambda: factory(key=jax.random.key(0))
    return _cached(
        build, like, (data.x_train, data.y_train), config, name, progress, verbose
    )


def pretrained_small_cnn(
    *,
    width: int = 16,
    config: TrainConfig | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> Any:
    """The demo's [`eqx_attr.models.SmallCNN`][], trained on `datasets.mnist()`.

    The default `SmallCNN(width=16)`, trained on the 4,000 training digits with
    [`eqx_attr.training.TrainConfig`][]'s defaults the first time (about a minute
    on two idle CPU cores), then loaded from the cache. Reaches >= 97% on
    the 1,000 held-out digits.

    **Arguments:** `width` of the CNN, `config` of the training run,
    `progress` bar on or off, `verbose` (log where the weights were cached at
    INFO level rather than DEBUG).

    **Returns:** the trained [`eqx_attr.models.SmallCNN`][].

    ```python
    model = xa.training.pretrained_small_cnn()
    ```
    """
    from . import models

    factory = functools.partial(models.SmallCNN, width=width)
    return _cached_zoo(factory, config, f"small_cnn_w{width}", progress, verbose)


# The segmenter: no random shifts (they would move the images, not the masks).
SEGMENTER_CONFIG = TrainConfig(
    epochs=5, batch_size=32, learning_rate=1e-2, shift=0, label_smoothing=0.0
)


def pretrained_mnist_segmenter(
    *,
    width: int = 8,
    config: TrainConfig | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> Any:
    """A [`eqx_attr.models.SmallSegmenter`][] trained on MNIST digit masks, cached.

    Trained on the 4,000 training digits of `datasets.mnist()` with the per-pixel
    labels of [`eqx_attr.models.digit_masks`][] (background, or `1 + digit` where
    the pixel exceeds 0.5), per-pixel cross-entropy, 5 epochs of batches of 32
    (`SEGMENTER_CONFIG`), the first time (about 20 s on two CPU cores), then
    loaded from the cache. A sketch, not a good segmenter: it finds the digit's
    pixels, and gives about three in four of them the right digit.

    **Arguments:** `width` of the segmenter, `config` of the training run
    (`shift` must be 0), `progress` bar on or off, `verbose` (log where the
    weights were cached at INFO level rather than DEBUG).

    **Returns:** the trained [`eqx_attr.models.SmallSegmenter`][]: `(1, 28, 28)`
    digit to `(11, 28, 28)` logits.

    ```python
    seg = xa.training.pretrained_mnist_segmenter()
    region = xa.targets.SegmentationRegion(1 + 7, seg(x).argmax(0) == 1 + 7)
    ```
    """
    from . import datasets, models

    data = datasets.mnist()
    ys = models.digit_masks(data.x_train, data.y_train)
    factory = functools.partial(models.SmallSegmenter, width=width)
    like = eqx.filter_eval_shape(factory, key=jax.random.key(0))
    build = lambda: factory(key=jax.random.key(0))  # noqa: E731
    config = SEGMENTER_CONFIG if config is None else config
    name = f"small_segmenter_w{width}"
    return _cached(build, like, (data.x_train, ys), config, name, progress, verbose)


# A transformer trains best with a gentler peak learning rate than the CNN and
# stronger weight decay; the rest (schedule, shifts, label smoothing) is shared.
VIT_CONFIG = TrainConfig(epochs=30, learning_rate=2e-3, weight_decay=5e-2)


def pretrained_mnist_vit(
    *,
    patch_size: int = 7,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    config: TrainConfig | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> Any:
    """A small [`eqx_attr.models.ViT`][] trained on `datasets.mnist()`, cached.

    The CNN's counterpart for the CNN-vs-ViT comparison: `7x7` patches (a `4x4`
    grid plus the class token), `dim=64`, `depth=4`, `heads=4`, MLP ratio 2,
    trained on the same 4,000 digits with `VIT_CONFIG` (AdamW, peak learning
    rate `2e-3`, 30 epochs) the first time, then loaded from the cache like
    [`eqx_attr.training.pretrained_small_cnn`][]. Its held-out accuracy is on the
    docs' Transformers page (`docs/methods/transformers.md`).

    **Arguments:** the ViT's `patch_size`, `dim`, `depth`, `heads`; `config` of
    the training run (default `VIT_CONFIG`), `progress` bar, `verbose`.

    **Returns:** the trained [`eqx_attr.models.ViT`][].

    ```python
    vit = xa.training.pretrained_mnist_vit()
    attn = lambda m: [b.attn.attn_drop for b in m.blocks]
    h = xa.CheferRelevance(vit, attn)(x, target=3)
    ```
    """
    from . import models

    factory = functools.partial(
        models.ViT,
        image_size=28,
        patch_size=patch_size,
        in_channels=1,
        n_classes=10,
        dim=dim,
        depth=depth,
        heads=heads,
        mlp_ratio=2.0,
    )
    config = VIT_CONFIG if config is None else config
    name = f"mnist_vit_p{patch_size}_d{dim}x{depth}"
    return _cached_zoo(factory, config, name, progress, verbose)
