"""Weights files on disk: the two pickle-free formats, their checksum, atomic writes.

`.safetensors` and `.npz` (read with `allow_pickle=False`), a SHA-256 of the
tensors stored with them, and writes that replace a file whole or not at all.
What the keys mean (Equinox paths, PyTorch keys) is `_weights.py`'s business.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Mapping

import numpy as np

# Marks files written by `save`, so that `load_pretrained` can tell them from
# PyTorch state dicts (both can hold the same key names, e.g. for a ViT).
_FORMAT = "eqx_attr"
_NPZ_MARKER = "__eqx_attr__"
_SUFFIXES = (".safetensors", ".npz")


class WeightsError(ValueError):
    """A weights file or state dict that does not fit the model.

    The message lists every offending key; the same lists are available as the
    attributes `missing`, `unexpected` and `misshaped` (each a list of strings).

    **Arguments:** `message`, and the lists `missing`, `unexpected` and
    `misshaped` of offending keys.

    **Returns:** the exception, raised by [`eqx_attr.models.load`][],
    [`eqx_attr.models.load_pretrained`][] and
    [`eqx_attr.models.from_torch_state_dict`][].
    """

    def __init__(
        self,
        message: str,
        missing: list[str] | None = None,
        unexpected: list[str] | None = None,
        misshaped: list[str] | None = None,
    ):
        super().__init__(message)
        self.missing = list(missing or [])
        self.unexpected = list(unexpected or [])
        self.misshaped = list(misshaped or [])


def _check_suffix(path: str | os.PathLike, argument: str = "path") -> str:
    p = os.fspath(path)
    if not p.endswith(_SUFFIXES):
        raise ValueError(
            f"`{argument}`={p!r} must end in '.safetensors' or '.npz' (the two "
            "pickle-free formats supported)."
        )
    return p


def _digest(tensors: Mapping[str, np.ndarray]) -> str:
    """SHA-256 of every tensor's name, dtype, shape and bytes, in key order."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _write_atomically(p: str, write: Callable[[str], None]) -> None:
    """`write(tmp)` to a temporary file in the same folder, then rename it to `p`.

    The rename is atomic on POSIX and Windows, so a reader (another process, a
    second pytest worker) sees the old file or the whole new one, never half a
    file; of two concurrent writers the last rename wins, with a whole file. The
    temporary name keeps `p`'s suffix (`np.savez` would append `.npz` otherwise).
    """
    folder, base = os.path.split(os.path.abspath(p))
    suffix = os.path.splitext(base)[1]
    tmp = os.path.join(folder, f".{base}.{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:  # on disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    p = _check_suffix(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"weights file {p!r} does not exist.")
    try:
        if p.endswith(".safetensors"):
            from safetensors import safe_open

            tensors, metadata = {}, {}
            with safe_open(p, framework="numpy") as f:
                metadata = dict(f.metadata() or {})
                for k in f.keys():
                    tensors[k] = f.get_tensor(k)
        else:
            with np.load(p, allow_pickle=False) as f:
                tensors = {k: f[k] for k in f.files}
            metadata = {}
            if _NPZ_MARKER in tensors:
                marker = tensors.pop(_NPZ_MARKER)
                metadata = {"format": _FORMAT, "model": str(marker)}
    except Exception as e:  # any reader failure means an unreadable file
        raise WeightsError(
            f"could not read weights file {p!r} ({type(e).__name__}: {e}); the "
            "file is corrupt or not in the format its suffix says."
        ) from e
    expected = metadata.get("sha256")
    if expected is not None and _digest(tensors) != expected:
        raise WeightsError(
            f"weights file {p!r} is corrupt: its contents do not match the "
            "checksum written with them. Delete it and save or download it again."
        )
    return tensors, metadata


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a `.safetensors` or `.npz` file into a dict of NumPy arrays, no pickle.

    **Arguments:**

    - `path`: the file; its suffix picks the format.

    **Returns:**

    `{key: array}` as stored in the file.

    **Example:**

    ```python
    sd = read_state_dict("resnet50.safetensors")   # exported from torchvision
    model = from_torch_state_dict(resnet50_like, sd)
    ```
    """
    return _read(path)[0]
