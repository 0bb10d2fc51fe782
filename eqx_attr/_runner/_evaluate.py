"""`evaluate_dataset`: one metric over a whole data set, into a Zarr store."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray

from .._attribution import check_positive_int
from .._version import __version__
from . import _dispatch, _fingerprint, _loop, _store
from ._inputs import check_rows_like, check_same_rows, num_rows, storage_dtype

# The positional arguments a metric may take, by name, and where each comes from.
_SOURCES = {
    "x": "xs",
    "target": "targets",
    "a": "attributions",
    "attribution": "attributions",
    "attributions": "attributions",
    "mask": "masks",
}


def metric_arguments(metric: Callable[..., Any]) -> tuple[str, ...]:
    """The data sources of `metric`'s positional arguments, in order.

    Metrics are called as `metric(x, target, a, *, key=None)`, `metric(a)`,
    `metric(a, mask)` or `metric(x, target, *, key=None)`: the names say which.
    """
    try:
        params = inspect.signature(metric).parameters.values()
    except (TypeError, ValueError) as e:
        raise TypeError(f"Cannot read the signature of `metric`: {e}") from e
    sources = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            continue
        if p.name in _SOURCES:
            sources.append(_SOURCES[p.name])
        elif p.default is p.empty:
            raise TypeError(
                f"`metric` takes a positional argument {p.name!r}; evaluate_dataset "
                f"knows {', '.join(sorted(_SOURCES))} (as in `metric(x, target, a)` "
                "or `metric(a, mask)`)."
            )
        else:
            break
    if not sources:
        raise TypeError(
            "`metric` takes none of x, target, a, mask; it must be called as "
            "`metric(x, target, a, *, key=None)`, `metric(a)` or `metric(a, mask)`."
        )
    return tuple(sources)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _evaluate_batch(static, order: tuple[str, ...], arrays, batch, rows, key):
    metric = static.rebuild(arrays)  # see `_dispatch`
    args = tuple(batch[name] for name in order)
    if key is None:
        values = jax.vmap(lambda *a: metric(*a))(*args)
    else:
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(rows)
        values = jax.vmap(lambda k, *a: metric(*a, key=k))(keys, *args)
    values = jnp.asarray(values)
    return {"values": values.astype(jnp.promote_types(values.dtype, jnp.float32))}


def _gather_sources(
    order: tuple[str, ...], given: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    sources = {}
    for name in order:
        if given.get(name) is None:
            raise ValueError(
                f"This metric needs `{name}` (it is called as "
                f"`metric({', '.join(order)})`); pass it to evaluate_dataset."
            )
        sources[name] = given[name]
    first = order[0]
    n = num_rows(sources[first], first)
    for name, source in sources.items():
        if name != first:
            m = num_rows(source, name)
            if m != n:
                raise ValueError(
                    f"`{first}` has {n} rows but `{name}` has {m}; pass one row of "
                    "each per example."
                )
    return sources, n


def evaluate_dataset(
    metric: Callable[..., Any],
    xs: Any,
    targets: Any,
    attributions: Any,
    *,
    out: Any,
    masks: Any = None,
    batch_size: int = 64,
    key: PRNGKeyArray | None = None,
    resume: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    chunk_rows: int | None = None,
) -> Any:
    """Evaluate a metric on every example of a data set; stream it to a Zarr store.

    The same machinery as [`eqx_attr.explain_dataset`][]: lazily read batches,
    sharded over local devices and processes, resumable, foreign stores refused.

    **Arguments:**

    - `metric`: an Equinox module called on ONE example as
        `metric(x, target, a, *, key=None)`, `metric(a)`, `metric(a, mask)` or
        `metric(x, target, *, key=None)` (the argument names say which).
    - `xs`: `(N, ...)` examples, or `None` when the metric does not read them.
    - `targets`: `(N,)` class indices, or `None` (then, when `attributions` is a
        store from `explain_dataset`, its `targets`).
    - `attributions`: `(N, ...)` attributions, or a store from `explain_dataset`.
    - `out`: the Zarr store's path. `masks`: `(N, H, W)` for localisation metrics.
    - `batch_size`, `key`, `resume`, `progress`, `overwrite`, `chunk_rows`: as
        for `explain_dataset`.

    **Returns:**

    The Zarr group with `values` `(N, *metric output shape)` and `done`.

    **Example:**

    ```python
    attrs = xa.explain_dataset(ig, xs, "predicted", out="ig.zarr")
    g = xa.evaluate_dataset(xa.metrics.Deletion(model), xs, None, attrs,
                            out="ig-deletion.zarr")
    g["values"][:].mean()
    ```
    """
    check_positive_int(batch_size, "batch_size")
    if not callable(metric):
        raise TypeError(f"`metric` must be callable, got {type(metric).__name__}.")
    attributions, targets = _unpack_store(attributions, targets)
    given = {"xs": xs, "targets": targets, "attributions": attributions, "masks": masks}
    job = _job(metric, given, out, int(batch_size), key, chunk_rows)
    return _loop.run_job(job, overwrite=overwrite, resume=resume, progress=progress)


def _unpack_store(attributions: Any, targets: Any) -> tuple[Any, Any]:
    """A store from `explain_dataset` as its attributions and (if not given) targets."""
    if hasattr(attributions, "group_keys") or hasattr(attributions, "members"):
        stored = attributions
        attributions = stored["attributions"]
        if targets is None:
            targets = stored["targets"]
    return attributions, targets


def _job(
    metric: Any,
    given: dict[str, Any],
    out: Any,
    batch_size: int,
    key: Any,
    chunk_rows: int | None,
) -> _loop.Job:
    """`evaluate_dataset`'s run: the store's layout and identity, and its batches."""
    order = metric_arguments(metric)
    sources, n = _gather_sources(order, given)
    if "targets" in sources:
        check_same_rows(n, sources["targets"], "targets")
    path = _store.check_out(out)
    values = _value_shape(metric, sources, order, key, n)
    chunk_rows = _store.resolve_chunk_rows(
        chunk_rows, n, batch_size, {"values": values}
    )
    identity = {
        "kind": "evaluate",
        "metric": _fingerprint.config_hash(_fingerprint.describe(metric)),
        "metric_class": type(metric).__qualname__,
        "inputs": {k: _fingerprint.data_fingerprint(v) for k, v in sources.items()},
        "batch_size": batch_size,
        "chunk_rows": chunk_rows,
        "key": None if key is None else _fingerprint.describe(key),
    }
    record = {"version": __version__, "metric_config": _fingerprint.describe(metric)}
    arrays, static = _dispatch.split(metric)
    return _loop.Job(
        out=path,
        n=n,
        batch_size=batch_size,
        chunk_rows=chunk_rows,
        sources=sources,
        nan_checked=tuple(k for k in ("xs", "attributions") if k in sources),
        outputs={"values": values},
        compute=lambda batch, rows: _evaluate_batch(
            static, order, arrays, batch, None if key is None else rows, key
        ),
        identity=identity,
        record=record,
        check_rows=check_rows_like(_n_classes(metric, sources, n)),
        desc=type(metric).__name__,
    )


def _n_classes(metric: Any, sources: dict[str, Any], n: int) -> int | None:
    """The number of classes of the metric's model, when it has one and `xs`."""
    model = getattr(metric, "model", None)
    if model is None or "xs" not in sources or not n:
        return None
    out_shape = jax.eval_shape(model, jnp.asarray(np.asarray(sources["xs"][0])))
    return out_shape.shape[0] if len(out_shape.shape) == 1 else None


def _value_shape(metric, sources, order, key, n) -> tuple[tuple[int, ...], Any]:
    if n == 0:
        return (), np.float32
    one = {k: jnp.asarray(np.asarray(v[0])) for k, v in sources.items()}
    args = [one[k] for k in order]
    kwargs = {} if key is None else {"key": key}
    value = eqx.filter_eval_shape(lambda *a: metric(*a, **kwargs), *args)
    return tuple(value.shape), storage_dtype(value.dtype)
