"""Whole data sets: explain and evaluate on every local device and every host,
streamed to a resumable Zarr store. Zarr and tqdm are imported only when used.

- `_explain`, `_evaluate`: the public `explain_dataset` / `evaluate_dataset`.
- `_loop`: the engine (pending chunks, background writes, metadata).
- `_dispatch`: the method split once per run, one plain `jax.jit` call per batch.
- `_devices`, `_store`, `_fingerprint`, `_inputs`, `_progress`: the mesh and
  barriers, the Zarr store, data fingerprints, input checks, the progress bar.

Its command line (`explain-dataset`) is a tool on top, in `eqx_attr._cli`; the
runner never imports the command line.
"""
