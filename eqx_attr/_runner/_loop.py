"""The engine shared by `explain_dataset` and `evaluate_dataset`.

A [`Job`][] says what to read (row sources), what to write (outputs per row) and
how to compute a padded, sharded batch. [`run_job`][] sets up the store (refusing
foreign ones), computes the batches not yet done that belong to this process,
writes each batch's outputs and only then marks its rows done, and records the
throughput. Device work is dispatched one batch ahead, so that reading the next
batch and writing the previous one overlap the computation.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from . import _devices, _store
from ._progress import progress_bar

Outputs = dict[str, tuple[tuple[int, ...], Any]]


@dataclasses.dataclass(frozen=True)
class Job:
    """One data-set run.

    - `out`: the store's path (already checked by `_store.check_out`).
    - `n`, `batch_size`: rows and rows per batch (= per chunk).
    - `sources`: name -> array-like indexed by row slices (`xs`, `targets`...).
    - `nan_checked`: the sources whose rows must not contain NaN.
    - `check_rows`: optional `(name, rows, start) -> None` raising on bad rows.
    - `outputs`: name -> (shape of one row, dtype) of the stored arrays.
    - `compute`: `(batch: dict of sharded arrays, rows) -> dict of outputs`.
    - `identity`: compared with an existing store; `record`: stored as is.
    """

    out: str
    n: int
    batch_size: int
    sources: dict[str, Any]
    nan_checked: tuple[str, ...]
    outputs: Outputs
    compute: Callable[[dict[str, Any], Any], dict[str, Any]]
    identity: dict[str, Any]
    record: dict[str, Any]
    check_rows: Callable[[str, np.ndarray, int], None] | None = None
    desc: str = "explain"


def _prepare(job: Job, *, overwrite: bool, resume: bool) -> tuple[Any, bool]:
    """The store, set up identically on every process; and whether it is finished."""
    status = _store.inspect_store(job.out, job.identity, overwrite=overwrite)
    _devices.barrier("eqx_attr_inspected")
    fresh = status != "match" or not resume
    if fresh and _devices.process_index() == 0:
        _store.create_store(
            job.out, job.n, job.batch_size, job.outputs, job.identity, job.record
        )
    _devices.barrier("eqx_attr_created")
    group = _store.open_store(job.out)
    return group, (not fresh) and _store.is_complete(group)


def _pending_batches(done: np.ndarray, n: int, batch_size: int) -> list[int]:
    n_batches = -(-n // batch_size)
    return [
        b
        for b in range(n_batches)
        if not done[b * batch_size : min(n, (b + 1) * batch_size)].all()
    ]


def _read(job: Job, start: int, stop: int) -> dict[str, np.ndarray]:
    batch = {}
    for name, source in job.sources.items():
        rows = np.asarray(source[start:stop])
        if name in job.nan_checked and np.issubdtype(rows.dtype, np.inexact):
            bad = np.isnan(rows.reshape(rows.shape[0], -1)).any(axis=1)
            if bad.any():
                raise ValueError(
                    f"`{name}` row {start + int(np.argmax(bad))} contains NaN; clean "
                    "or drop it and run again (rows already written are kept, and "
                    "the run resumes after them)."
                )
        if job.check_rows is not None:
            job.check_rows(name, rows, start)
        batch[name] = rows
    return batch


def _write(arrays: dict[str, Any], done: Any, start: int, stop: int, outs) -> int:
    for name, array in arrays.items():
        array[start:stop] = np.asarray(outs[name])[: stop - start]
    # Only after the outputs: a row marked done always has its data.
    done[start:stop] = True
    return stop - start


class _Writer:
    """Writes finished batches on one background thread, in order, while the
    devices compute the next ones; at most `depth` batches wait to be written."""

    def __init__(self, arrays: dict[str, Any], done: Any, bar: Any, depth: int = 2):
        self.arrays, self.done, self.bar, self.depth = arrays, done, bar, depth
        self.pool = concurrent.futures.ThreadPoolExecutor(1, "eqx_attr_writer")
        self.queue: collections.deque = collections.deque()
        self.written = 0

    def _collect(self, keep: int) -> None:
        while len(self.queue) > keep:
            n = self.queue.popleft().result()  # re-raises a failed write
            self.bar.update(n)
            self.written += n

    def submit(self, start: int, stop: int, outs: Any) -> None:
        self._collect(self.depth - 1)
        self.queue.append(
            self.pool.submit(_write, self.arrays, self.done, start, stop, outs)
        )

    def finish(self) -> int:
        try:
            self._collect(0)
        finally:
            self.pool.shutdown(wait=True)
        return self.written


def _compute_batches(job: Job, group: Any, mine: list[int], progress: bool) -> int:
    mesh = _devices.local_mesh()
    size = _devices.padded_size(job.batch_size, mesh.size)
    bar = progress_bar(
        sum(min(job.n, (b + 1) * job.batch_size) - b * job.batch_size for b in mine),
        f"{job.desc} [{_devices.process_index()}]"
        if _devices.process_count() > 1
        else job.desc,
        progress,
    )
    writer = _Writer({k: group[k] for k in job.outputs}, group[_store.DONE], bar)
    try:
        for b in mine:
            start, stop = b * job.batch_size, min(job.n, (b + 1) * job.batch_size)
            batch = _read(job, start, stop)  # a bad row raises after the writes
            batch = {k: _devices.pad_rows(v, size) for k, v in batch.items()}
            rows = _devices.pad_rows(np.arange(start, stop, dtype=np.int32), size)
            batch, rows = _devices.shard((batch, rows), mesh)
            writer.submit(start, stop, job.compute(batch, rows))  # async dispatch
    finally:
        computed = writer.finish()
        bar.close()
    return computed


def run_job(job: Job, *, overwrite: bool, resume: bool, progress: bool) -> Any:
    """Run `job` on this process's share of the pending batches; return the store."""
    group, finished = _prepare(job, overwrite=overwrite, resume=resume)
    if finished:
        return group
    done = np.asarray(group[_store.DONE][:])
    pending = _pending_batches(done, job.n, job.batch_size)
    n_pending = int(job.n - done.sum())
    start = time.perf_counter()
    _compute_batches(job, group, _devices.my_share(pending), progress)
    _devices.barrier("eqx_attr_computed")
    wall = time.perf_counter() - start
    if _devices.process_index() == 0:
        complete = bool(np.asarray(group[_store.DONE][:]).all())
        _store.update_record(
            group,
            complete=complete,
            rows_computed=n_pending,
            wall_time_s=round(wall, 4),
            throughput_ex_per_s=round(n_pending / wall, 3) if wall > 0 else None,
            n_processes=_devices.process_count(),
            n_local_devices=len(jax.local_devices()),
            platform=jax.default_backend(),
        )
    _devices.barrier("eqx_attr_recorded")
    return _store.open_store(job.out)
