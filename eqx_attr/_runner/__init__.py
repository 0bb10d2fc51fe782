"""Whole data sets: explain and evaluate on every local device and every host,
streamed to a resumable Zarr store. Zarr and tqdm are imported only when used."""
