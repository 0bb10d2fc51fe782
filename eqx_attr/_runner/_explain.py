"""`explain_dataset`: one method over a whole data set, into a Zarr store."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from .._attribution import AbstractAttribution, check_positive_int, forward_shape
from .._checks import deferred_checks
from .._compile_cache import enable_compile_cache
from .._version import __version__
from . import _dispatch, _fingerprint, _loop, _store
from ._inputs import check_rows_like, check_targets, num_rows, storage_dtype
from ._targets import TargetRows, is_target_stack, target_rows


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _explain_batch(
    static, scores: bool, deferred: bool, arrays, xs, targets, rows, key
):
    """Attributions (and scores) of a batch; `targets=None`: the arg-max, returned.

    `deferred`: the method's run-time checks turn failures into NaN instead of
    raising through a host callback (`eqx_attr._checks`), so JAX's persistent
    cache keeps the program; the writer reruns a non-finite row with them raising.

    The method is `static.rebuild(arrays)` (see `_dispatch`). Given targets are not
    returned: the runner writes its own copy, and every output of the program
    costs time per call (~50 us on CPU, a Grad-CAM batch of 16 digits computes in
    ~2 ms).
    """
    with deferred_checks(deferred):
        return _explain_traced(static.rebuild(arrays), scores, xs, targets, rows, key)


def _explain_traced(method, scores: bool, xs, targets, rows, key) -> dict[str, Any]:
    """`_explain_batch`'s body, with the method rebuilt."""
    out = {}
    if targets is None:  # the arg-max: one forward pass before the method's
        logits = jax.vmap(method.model)(xs)
        targets = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        out["targets"] = targets
    else:
        logits = None
    keys = None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(rows)
    attributions, own = jax.vmap(functools.partial(_one, method))(xs, targets, keys)
    dtype = jnp.promote_types(attributions.dtype, jnp.float32)
    out["attributions"] = attributions.astype(dtype)
    if scores:
        if logits is None:
            # The method's own forward pass when it gives the model's output (the
            # CAMs that read a gradient); else one more forward pass: cheap next
            # to IG's many, but as much as Grad-CAM's whole cost.
            logits = own if own is not None else jax.vmap(method.model)(xs)
        if is_target_stack(targets):  # each row's own target of the output
            score = jax.vmap(lambda o, t: t(o))(logits, targets)
        else:
            score = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
        out["scores"] = score.astype(jnp.float32)
    return out


def _one(method, x, target, key):
    """`(attribution, the model's output or None)` for one example.

    A library method answers through its protected protocol method
    `_attribution_and_scores` (see [`eqx_attr.AbstractAttribution`][]); any other
    callable is called as `method(x, target[, key=key])`.
    """
    if isinstance(method, AbstractAttribution):
        return method._attribution_and_scores(x, target, key)
    return (method(x, target) if key is None else method(x, target, key=key)), None


def explain_dataset(
    method: Callable[..., Any],
    xs: Any,
    targets: Any | Literal["predicted"],
    *,
    out: Any,
    batch_size: int = 64,
    key: PRNGKeyArray | None = None,
    resume: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    scores: bool = True,
    chunk_rows: int | None = None,
) -> Any:
    """Explain every example of a data set; stream the results to a Zarr store.

    Batches are read lazily, sharded over every local device (a 1-D
    `jax.sharding.Mesh`), computed by the vmapped method compiled once (the last
    partial batch is padded, then trimmed) and written to `out`, a chunk of
    several batches at a time. After `jax.distributed.initialize(...)`, each
    process computes and writes its own chunks of the same store. Rows are
    marked done only after their data is written, so a run killed at any moment
    and started again computes only the rows not yet done. Rows not yet written
    read as 0.

    **Arguments:**

    - `method`: an attribution method (`method(x, target, *, key=None)`, with a
        `model` attribute), e.g. `xa.IntegratedGradients(model)`.
    - `xs`: the examples, `(N, *example shape)`: any indexable array-like (NumPy,
        a memmap, a Zarr array); read one batch at a time.
    - `targets`: `(N,)` integer class indices, `"predicted"` (the model's
        arg-max), or one target per row as a stack of `xa.targets` (a target
        whose array fields have a leading axis of `N`, e.g.
        `xa.targets.SegmentationRegion(jnp.full(N, 1), masks)` or
        `xa.targets.LogSoftmax(labels)`; row `i` is explained for the target
        holding row `i` of every field). A stack is the way to explain a model
        returning a PyTree (a dict, a tuple): its targets see the whole output.
    - `out`: the Zarr store's path.
    - `batch_size`: rows per batch, and per chunk of the store.
    - `key`: PRNG key for random methods; row `i` uses `fold_in(key, i)`, so the
        result does not depend on batching, devices or processes.
    - `resume`: continue a matching unfinished store (`False`: start it over).
    - `progress`: show a tqdm bar (examples per second).
    - `overwrite`: replace a store written by another method, data or options
        (otherwise it is refused with an error and left intact).
    - `scores`: also store the target's score. The CAMs that read a gradient
        take it from their own forward pass; other methods run one more
        forward pass per example (`False` skips it when speed matters).
    - `chunk_rows`: rows per chunk of the store along N, a multiple of
        `batch_size`. A chunk is one file, written at once after its batches are
        computed, and the unit shared among processes; a killed run recomputes
        the chunks it had not finished. `None` (default): chunks of ~2 MiB, at
        most ~2048 rows. It is part of the store's identity.

    **Returns:**

    The Zarr group: `attributions` `(N, *attribution shape)`, `targets` `(N,)`
    (for class indices; a stack of targets is not stored), `scores` `(N,)` (the
    target's score, unless `scores=False`), `done` `(N,)`;
    its attribute `eqx_attr` records the configuration, data fingerprint, batch size,
    throughput and wall time.

    **Example:**

    ```python
    group = xa.explain_dataset(xa.IntegratedGradients(model), xs, "predicted",
                               out="attrs.zarr", batch_size=64)
    group["attributions"][:10]
    ```
    """
    check_positive_int(batch_size, "batch_size")
    _check_method(method)
    # A rerun of the same job (resumed, or the next shard) compiles nothing.
    enable_compile_cache()
    job = _job(method, xs, targets, out, int(batch_size), key, scores, chunk_rows)
    return _loop.run_job(job, overwrite=overwrite, resume=resume, progress=progress)


def _job(
    method: Any,
    xs: Any,
    targets: Any,
    out: Any,
    batch_size: int,
    key: Any,
    scores: bool,
    chunk_rows: int | None,
) -> _loop.Job:
    """`explain_dataset`'s run: the store's layout and identity, and its batches."""
    n = num_rows(xs, "xs")
    stack = target_rows(targets, n)  # None unless a stack of target objects
    predicted = stack is None and _check_targets(targets, n)
    path = _store.check_out(out)
    x0 = jnp.asarray(np.asarray(xs[0])) if n else None
    t0 = 0 if stack is None or not n else stack.row(0)
    n_classes, a_shape, a_dtype = _shapes(method, x0, key, t0)
    outputs = {
        "attributions": (a_shape, a_dtype),
        **({"targets": ((), np.int32)} if stack is None else {}),
        **({"scores": ((), np.float32)} if scores else {}),
    }
    if stack is not None:
        sources = {"xs": xs, **stack.sources}
    elif predicted:
        sources = {"xs": xs}
    else:
        sources = {"xs": xs, "targets": targets}
    chunk_rows = _store.resolve_chunk_rows(chunk_rows, n, batch_size, outputs)
    config = _fingerprint.describe(method)
    identity = _identity(method, config, xs, targets, batch_size, chunk_rows, key)
    identity["scores"] = bool(scores)
    return _loop.Job(
        out=path,
        n=n,
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        sources=sources,
        nan_checked=("xs",),
        outputs=outputs,
        compute=(compute := _batch_computer(method, scores, key, stack)),
        recheck=lambda batch, row: compute(batch, np.array([row], np.int32), False),
        identity=identity,
        record={"version": __version__, "method_config": config},
        check_rows=check_rows_like(n_classes),
        desc=type(method).__name__,
    )


def _check_method(method: Any) -> None:
    """Refuse anything but a callable method with a `model` attribute."""
    model = getattr(method, "model", None)
    if model is None or not callable(method):
        raise TypeError(
            "`method` must be an attribution method with a `model` attribute, e.g. "
            f"`xa.IntegratedGradients(model)`; got {type(method).__name__}."
        )


def _check_targets(targets: Any, n: int) -> bool:
    """Check `targets` for `n` rows; whether they are the model's arg-max."""
    predicted = isinstance(targets, str)
    if predicted and targets != "predicted":
        raise ValueError(
            f"`targets={targets!r}`: pass an integer array of class indices, or "
            "'predicted' for the model's arg-max."
        )
    if not predicted:
        check_targets(targets, n)
    return predicted


def _identity(
    method: Any,
    config: Any,
    xs: Any,
    targets: Any,
    batch_size: int,
    chunk_rows: int,
    key: Any,
) -> dict:
    """What a store must match to be resumed (method, data, batching, key)."""
    return {
        "kind": "explain",
        "method": _fingerprint.config_hash(config),
        "method_class": type(method).__qualname__,
        "data": _fingerprint.data_fingerprint(xs),
        "targets": _fingerprint.targets_fingerprint(targets),
        "batch_size": int(batch_size),
        "chunk_rows": chunk_rows,
        "key": None if key is None else _fingerprint.describe(key),
    }


def _batch_computer(
    method: Any, scores: bool, key: Any, stack: TargetRows | None
) -> Callable:
    """`compute(batch, rows) -> outputs` for the runner's loop (see `_loop.Job`)."""
    arrays, static = _dispatch.split(method)

    def compute(batch, rows, deferred=True):
        r = None if key is None else rows
        if stack is not None:  # the batch's rows of every field of the targets
            t = stack.batch(batch)
            return _explain_batch(
                static, scores, deferred, arrays, batch["xs"], t, r, key
            )
        t = batch.get("targets")  # None: predicted
        out = _explain_batch(static, scores, deferred, arrays, batch["xs"], t, r, key)
        return out if t is None else {**out, "targets": t}

    return compute


def _shapes(
    method: Any, x0: Any, key: Any, t0: Any = 0
) -> tuple[int | None, tuple, Any]:
    """Number of classes, and shape and storage dtype of one attribution for the
    first row's target `t0`."""
    if x0 is None:
        return None, (), np.float32
    leaves, treedef = jax.tree_util.tree_flatten((method, t0))
    signature = (
        treedef,
        tuple((np.shape(v), str(getattr(v, "dtype", type(v)))) for v in leaves),
        x0.shape,
        str(x0.dtype),
        key is None,
    )
    try:
        hash(signature)
    except TypeError:  # an unhashable static field: trace without the cache
        return _shapes_uncached(method, x0, key)
    return _shapes_cached(signature, method, x0, key, t0)


_SHAPES_CACHE: dict[Any, tuple[int | None, tuple, Any]] = {}


def _shapes_cached(signature, method, x0, key, t0):
    # Tracing a method to learn its output shape costs as much as a small batch;
    # repeated runs of the same method on the same shapes reuse it.
    if signature not in _SHAPES_CACHE:
        if len(_SHAPES_CACHE) > 64:
            _SHAPES_CACHE.clear()
        _SHAPES_CACHE[signature] = _shapes_uncached(method, x0, key, t0)
    return _SHAPES_CACHE[signature]


def _shapes_uncached(
    method: Any, x0: Any, key: Any, t0: Any = 0
) -> tuple[int | None, tuple, Any]:
    if isinstance(t0, int):  # class indices: the model must return scores
        out = forward_shape(method.model, x0)
        n_classes = out.shape[0] if len(out.shape) == 1 else None
    else:  # a target object sees the whole output, PyTree included
        n_classes = None
    a = eqx.filter_eval_shape(
        lambda x: method(x, t0, key=key) if key is not None else method(x, t0), x0
    )
    return n_classes, tuple(a.shape), storage_dtype(a.dtype)
