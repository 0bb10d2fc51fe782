"""The engine shared by `explain_dataset` and `evaluate_dataset`.

A [`Job`][] says what to read (row sources), what to write (outputs per row) and
how to compute a padded, sharded batch. [`run_job`][] sets up the store (refusing
foreign ones), computes the batches not yet done of the chunks that belong to
this process, writes each chunk's outputs at once and only then marks its rows
done, and records the throughput. Writes run on a background thread, so that
reading and computing the next chunk overlap writing the previous one; a store
file costs about the same to write whatever its size, so one write per chunk
of several batches, not per batch, is what keeps cheap methods fast.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .._checks import finite_rows
from . import _devices, _store
from ._progress import progress_bar

Outputs = dict[str, tuple[tuple[int, ...], Any]]


@dataclasses.dataclass(frozen=True)
class Job:
    """One data-set run.

    - `out`: the store's path (already checked by `_store.check_out`).
    - `n`, `batch_size`: rows and rows per batch.
    - `chunk_rows`: rows per chunk of a new store (a multiple of `batch_size`;
        `_store.resolve_chunk_rows`); the unit of work of processes and writes.
    - `sources`: name -> array-like indexed by row slices (`xs`, `targets`...).
    - `nan_checked`: the sources whose rows must not contain NaN.
    - `check_rows`: optional `(name, rows, start) -> None` raising on bad rows.
    - `outputs`: name -> (shape of one row, dtype) of the stored arrays.
    - `compute`: `(batch: dict of sharded arrays, rows) -> dict of outputs`
        (device or NumPy arrays, padded rows included: trimmed when written).
    - `identity`: compared with an existing store; `record`: stored as is.
    - `recheck`: optional `(one-row batch, row) -> outputs`, computing a row whose
        floating outputs are not finite again with its run-time checks raising
        (`eqx_attr._checks`): `compute` defers them, so its program is cached.
    """

    out: str
    n: int
    batch_size: int
    chunk_rows: int
    sources: dict[str, Any]
    nan_checked: tuple[str, ...]
    outputs: Outputs
    compute: Callable[[dict[str, Any], Any], dict[str, Any]]
    identity: dict[str, Any]
    record: dict[str, Any]
    check_rows: Callable[[str, np.ndarray, int], None] | None = None
    recheck: Callable[[dict[str, np.ndarray], int], Any] | None = None
    desc: str = "explain"


def _prepare(job: Job, *, overwrite: bool, resume: bool) -> tuple[Any, str]:
    """The store, set up identically on every process, and its state:
    `"fresh"` (just created), `"partial"` or `"finished"`."""
    status = _store.inspect_store(job.out, job.identity, overwrite=overwrite)
    _devices.barrier("eqx_attr_inspected")
    fresh = status != "match" or not resume
    group = None
    if fresh and _devices.process_index() == 0:
        group = _store.create_store(
            job.out, job.n, job.chunk_rows, job.outputs, job.identity, job.record
        )
    _devices.barrier("eqx_attr_created")
    if group is None:
        group = _store.open_store(job.out)
    if fresh:
        return group, "fresh"
    return group, "finished" if _store.is_complete(group) else "partial"


def _pending_chunks(
    done: np.ndarray, n: int, batch_size: int, chunk_rows: int
) -> list[list[int]]:
    """For every chunk with rows not done, its batches with rows not done."""
    per_chunk = chunk_rows // batch_size
    n_batches = -(-n // batch_size)
    chunks = []
    for first in range(0, n_batches, per_chunk):
        batches = [
            b
            for b in range(first, min(n_batches, first + per_chunk))
            if not done[b * batch_size : min(n, (b + 1) * batch_size)].all()
        ]
        if batches:
            chunks.append(batches)
    return chunks


def _read(job: Job, start: int, stop: int) -> dict[str, np.ndarray]:
    batch = {}
    for name, source in job.sources.items():
        rows = np.asarray(source[start:stop])
        if name in job.nan_checked and np.issubdtype(rows.dtype, np.inexact):
            bad = ~np.isfinite(rows.reshape(rows.shape[0], -1)).all(axis=1)
            if bad.any():
                raise ValueError(
                    f"`{name}` row {start + int(np.argmax(bad))} contains NaN or "
                    "inf; clean or drop it and run again (rows already written "
                    "are kept, and the run resumes after them)."
                )
        if job.check_rows is not None:
            job.check_rows(name, rows, start)
        batch[name] = rows
    return batch


Piece = tuple[int, int, dict[str, Any]]  # rows [start, stop) and their outputs


def _runs(pieces: list[Piece]) -> list[list[Piece]]:
    """Consecutive pieces grouped into runs of contiguous rows."""
    runs: list[list[Piece]] = []
    for piece in pieces:
        if runs and runs[-1][-1][1] == piece[0]:
            runs[-1].append(piece)
        else:
            runs.append([piece])
    return runs


def _write(
    arrays: dict[str, Any],
    done: Any,
    pieces: list[Piece],
    recheck: Callable[[int], Any] | None = None,
) -> int:
    """Write the batches of one chunk: one Zarr write per array and run of rows.

    Converting to NumPy here, not where the batch was dispatched, lets the main
    thread go on to the next batches while the devices finish this one. A row
    with non-finite outputs is first computed again by `recheck`, which raises
    if one of the method's checks failed there (nothing of its run is written).
    """
    written = 0
    for run in _runs(pieces):
        start, stop = run[0][0], run[-1][1]
        host = {}
        for name in arrays:
            parts = [np.asarray(out[name])[: b - a] for a, b, out in run]
            host[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        if recheck is not None:
            for row in np.flatnonzero(~finite_rows(host)):
                jax.block_until_ready(recheck(start + int(row)))
        for name, array in arrays.items():
            array[start:stop] = host[name].astype(array.dtype, copy=False)
        # Only after the outputs: a row marked done always has its data.
        done[start:stop] = True
        written += stop - start
    return written


class _Writer:
    """Writes finished chunks on one background thread, in order, while the
    devices compute the next ones; at most `depth` chunks wait to be written."""

    def __init__(self, arrays: dict[str, Any], done: Any, recheck=None, depth=2):
        self.arrays, self.done, self.depth = arrays, done, depth
        self.recheck = recheck
        self.pool = concurrent.futures.ThreadPoolExecutor(1, "eqx_attr_writer")
        self.queue: collections.deque = collections.deque()
        self.written = 0

    def _collect(self, keep: int) -> None:
        while len(self.queue) > keep:
            self.written += self.queue.popleft().result()  # re-raises a failed write

    def submit(self, pieces: list[Piece]) -> None:
        self._collect(self.depth - 1)
        self.queue.append(
            self.pool.submit(_write, self.arrays, self.done, pieces, self.recheck)
        )

    def finish(self) -> int:
        try:
            self._collect(0)
        finally:
            self.pool.shutdown(wait=True)
        return self.written


def _recheck(recheck: Callable[..., Any], job: Job, row: int) -> Any:
    return recheck(_read(job, row, row + 1), row)


def _compute_chunks(job: Job, group: Any, mine: list[list[int]], progress: bool) -> int:
    """Compute and write this process's chunks (each a list of pending batches)."""
    mesh = _devices.local_mesh()
    size = _devices.padded_size(job.batch_size, mesh.size)

    def bounds(b: int) -> tuple[int, int]:
        return b * job.batch_size, min(job.n, (b + 1) * job.batch_size)

    bar = progress_bar(
        sum(stop - start for c in mine for start, stop in map(bounds, c)),
        f"{job.desc} [{_devices.process_index()}]"
        if _devices.process_count() > 1
        else job.desc,
        progress,
    )
    writer = _Writer(
        {k: _store.for_writing(group[k]) for k in job.outputs},
        _store.for_writing(group[_store.DONE]),
        None if job.recheck is None else functools.partial(_recheck, job.recheck, job),
    )
    try:
        for batches in mine:
            pieces: list[Piece] = []
            try:
                for start, stop in map(bounds, batches):
                    batch = _read(job, start, stop)  # a bad row raises after the writes
                    batch = {k: _devices.pad_rows(v, size) for k, v in batch.items()}
                    rows = np.arange(start, stop, dtype=np.int32)
                    batch, rows = _devices.shard(
                        (batch, _devices.pad_rows(rows, size)), mesh
                    )
                    pieces.append((start, stop, job.compute(batch, rows)))  # async
                    # Rows computed (dispatched, on an accelerator): a chunk can
                    # hold minutes of a slow method, too long between updates.
                    bar.update(stop - start)
            finally:
                # A whole chunk in one write; after an error, the batches before it.
                if pieces:
                    writer.submit(pieces)
    finally:
        computed = writer.finish()
        bar.close()
    return computed


def run_job(job: Job, *, overwrite: bool, resume: bool, progress: bool) -> Any:
    """Run `job` on this process's share of the pending batches; return the store."""
    group, state = _prepare(job, overwrite=overwrite, resume=resume)
    if state == "finished":
        return group
    if state == "fresh":  # nothing to read back
        done = np.zeros(job.n, bool)
    else:
        done = np.asarray(group[_store.DONE][:])
    pending = _pending_chunks(done, job.n, job.batch_size, job.chunk_rows)
    n_pending = int(job.n - done.sum())
    # Every process plans from the same `done`: none writes before all have read.
    _devices.barrier("eqx_attr_planned")
    start = time.perf_counter()
    _compute_chunks(job, group, _devices.my_share(pending), progress)
    _devices.barrier("eqx_attr_computed")
    wall = time.perf_counter() - start
    if _devices.process_index() == 0:
        # One process that got here wrote every pending row; with several,
        # the store says whether the others did.
        complete = _devices.process_count() == 1 or bool(
            np.asarray(group[_store.DONE][:]).all()
        )
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
    # With several processes, the others re-read what process 0 recorded.
    return group if _devices.process_count() == 1 else _store.open_store(job.out)
