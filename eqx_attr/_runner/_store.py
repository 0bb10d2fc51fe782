"""The Zarr store of a data-set run: creation, refusal of foreign stores, metadata.

Layout of a store (a Zarr group):

- one array per output (`attributions`, `targets`, `scores`; or `values` for a
    metric), each `(N, *row shape)` and chunked along N by `chunk_rows` rows, a
    multiple of `batch_size`: every batch lies in one chunk, and each chunk is
    computed and written by one process, so processes never write the same file;
- `done`: `(N,)` booleans, chunked alike, set for rows only after their outputs
    are written;
- the group attribute `eqx_attr`: what produced the store (the *identity*: kind,
    method configuration, data and target fingerprints, batch size, key), plus a
    record (library version, throughput, wall time, completeness).

Zarr's local store writes every chunk to a temporary file and renames it, so a
process killed at any moment leaves each chunk either old or new, never torn.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Any

import numpy as np

from .._attribution import check_positive_int

ATTR = "eqx_attr"
# Probe files of other processes may appear while a folder is inspected.
_PROBE = ".eqx_attr_probe_"
DONE = "done"
# Every chunk is a file per array, and each costs ~1-5 ms to write on a local
# disk whatever its size (benchmarks/bench_runner.py): chunks of ~2 MiB keep that
# a few percent of Grad-CAM's time. The row cap bounds what a killed run loses
# when rows are tiny (metric values).
_CHUNK_BYTES = 2 << 20
_CHUNK_MAX_ROWS = 2048


def zarr_module() -> Any:
    """`zarr`, imported on first use, with the install command if it is missing."""
    try:
        import zarr
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "Data-set runs write Zarr stores and need the `zarr` package (>= 3): "
            "`pip install 'eqx_attr[scale]'` or `pip install zarr`."
        ) from e
    return zarr


class StoreMismatchError(ValueError):
    """An existing store at `out` was written by another method, data or options."""


def check_out(out: Any) -> str:
    """Validate `out` and make sure its folder can be written; return it as `str`."""
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(
            f"`out` must be a path to a Zarr store (str or os.PathLike), got "
            f"{type(out).__name__}."
        )
    path = os.fspath(out)
    if os.path.isfile(path):
        raise ValueError(
            f"`out={path!r}` is an existing file, not a Zarr store; choose a new "
            "path such as 'attributions.zarr'."
        )
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f"{_PROBE}{uuid.uuid4().hex}")
        open(probe, "wb").close()  # can a file be created here?
        os.remove(probe)
    except OSError as e:
        raise ValueError(
            f"`out={path!r}` cannot be written ({e.strerror or e}); choose a folder "
            "you can write to."
        ) from e
    return path


def _is_store(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "zarr.json"))


def _differences(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(found) | set(wanted))
    return [
        f"{k}: store has {_short(found.get(k))}, this run has {_short(wanted.get(k))}"
        for k in keys
        if found.get(k) != wanted.get(k)
    ]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def inspect_store(path: str, identity: dict[str, Any], *, overwrite: bool) -> str:
    """`"absent"`, `"match"` (same identity) or `"replace"` (foreign, `overwrite`).

    Raises [`StoreMismatchError`][] for a foreign store without `overwrite`, and
    `ValueError` for a non-empty folder that is not a Zarr store (never deleted).
    """
    if not _is_store(path):
        if [f for f in os.listdir(path) if not f.startswith(_PROBE)]:
            raise ValueError(
                f"`out={path!r}` is a non-empty folder that is not a Zarr store; it "
                "is left untouched. Choose a new path."
            )
        return "absent"
    zarr = zarr_module()
    found = dict(
        zarr.open_group(path, mode="r").attrs.get(ATTR, {}).get("identity", {})
    )
    if found == identity:
        return "match"
    if overwrite:
        return "replace"
    diffs = (
        _differences(found, identity) if found else ["it was not written by eqx_attr"]
    )
    raise StoreMismatchError(
        f"`out={path!r}` holds a store from another run and is left intact:\n  "
        + "\n  ".join(diffs)
        + "\nPass `overwrite=True` to replace it, or choose another `out`."
    )


def create_store(
    path: str,
    n: int,
    chunk_rows: int,
    outputs: dict[str, tuple[tuple[int, ...], Any]],
    identity: dict[str, Any],
    record: dict[str, Any],
) -> Any:
    """A fresh store (replacing an old one at `path`) with zero-filled outputs,
    chunked by `chunk_rows` along N.

    The store is built in a hidden folder beside `path` and renamed into place,
    so a process killed while creating it never leaves a store with some arrays
    missing (which a restart would take for its own and fail to resume): `path`
    holds either no store or a whole one.
    """
    zarr = zarr_module()

    path = os.path.normpath(path)
    parent, name = os.path.split(path)
    building = os.path.join(parent, f".{name}.creating-{uuid.uuid4().hex}")
    meta = {ATTR: {"identity": identity, **record, "complete": n == 0}}
    group = zarr.open_group(building, mode="w", attributes=meta)
    chunk = max(1, min(chunk_rows, n))
    for name, (shape, dtype) in outputs.items():
        group.create_array(
            name,
            shape=(n, *shape),
            chunks=(chunk, *shape),
            dtype=np.dtype(dtype),
            fill_value=0,
            # Attributions are float noise to a compressor: zstd saved little and
            # cost more per batch than a cheap method's computation.
            compressors=None,
        )
    group.create_array(DONE, shape=(n,), chunks=(chunk,), dtype=bool, fill_value=False)
    if _is_store(path):
        shutil.rmtree(path)
    elif os.path.isdir(path):
        # The folder `check_out` made; `inspect_store` refused it unless it held
        # nothing but probe files.
        if [f for f in os.listdir(path) if not f.startswith(_PROBE)]:
            shutil.rmtree(building)
            raise ValueError(f"`out={path!r}` is no longer empty; choose a new path.")
        shutil.rmtree(path)
    os.rename(building, path)
    return zarr.open_group(path, mode="r+")


def resolve_chunk_rows(
    chunk_rows: int | None,
    n: int,
    batch_size: int,
    outputs: dict[str, tuple[tuple[int, ...], Any]],
) -> int:
    """Rows per chunk along N: `chunk_rows` checked, or chosen from the row size.

    The default is the smallest multiple of `batch_size` that makes a chunk of
    all outputs reach ~2 MiB, at most ~2048 rows (or one batch, if larger) and no
    more than the batches of the data set hold.
    """
    whole = -(-max(n, 1) // batch_size) * batch_size
    if chunk_rows is not None:
        check_positive_int(chunk_rows, "chunk_rows")
        chunk_rows = int(chunk_rows)
        if chunk_rows % batch_size:
            lower = max(batch_size, chunk_rows // batch_size * batch_size)
            raise ValueError(
                f"`chunk_rows={chunk_rows}` must be a positive multiple of "
                f"`batch_size={batch_size}` (e.g. {lower}), so that every batch lies "
                "in one chunk; or None to choose it from the row size."
            )
        return min(chunk_rows, whole)
    row_bytes = 1 + sum(  # 1: the row's `done` flag
        int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        for shape, dtype in outputs.values()
    )
    rows = min(-(-_CHUNK_BYTES // row_bytes), _CHUNK_MAX_ROWS)
    return min(max(1, -(-rows // batch_size)) * batch_size, whole)


def open_store(path: str, mode: str = "r+") -> Any:
    """The store at `path` (Zarr group)."""
    return zarr_module().open_group(path, mode=mode)  # pyright: ignore[reportArgumentType]


def for_writing(array: Any) -> Any:
    """`array`, set to write every chunk as given.

    By default Zarr first compares each chunk with the fill value, to skip
    writing it: a pass over the data that costs more than the write itself.
    """
    with_config = getattr(array, "with_config", None)  # zarr >= 3.1
    return array if with_config is None else with_config({"write_empty_chunks": True})


def is_complete(group: Any) -> bool:
    """Whether every row of the store is done."""
    return bool(group.attrs.get(ATTR, {}).get("complete", False))


def update_record(group: Any, **record: Any) -> None:
    """Merge `record` into the store's metadata (one atomic write of zarr.json)."""
    meta = dict(group.attrs.get(ATTR, {}))
    meta.update(record)
    group.attrs[ATTR] = meta
