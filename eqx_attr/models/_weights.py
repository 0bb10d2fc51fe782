"""Saving, loading and converting model weights, without pickle.

Two naming schemes are used:

- *Equinox paths* (`save`/`load`): every array leaf of the model keyed by its
    readable PyTree path, e.g. `features.layers.0.weight` or
    `blocks.0.attn.qkv.weight`, in a `.safetensors` or `.npz` file.
- *PyTorch keys* (`from_torch_state_dict`/`to_torch_state_dict`): the same paths
    with the `layers` of every `eqx.nn.Sequential` dropped, which gives exactly
    torchvision's and timm's state-dict keys for the zoo models (`features.0.weight`,
    `layer4.1.bn2.running_var`, `blocks.0.attn.qkv.weight`), and the PyTorch
    layouts (convolution biases `(C,)`, ViT's `cls_token` `(1, 1, D)` and
    `pos_embed` `(1, N, D)`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ._vit import ViT
from ._weight_files import (
    _FORMAT,
    _NPZ_MARKER,
    WeightsError,
    _check_suffix,
    _digest,
    _read,
    _write_atomically,
)

_MAX_LISTED = 50


# ---------------------------------------------------------------------------------
# Walking the model's array leaves


def is_param(x: Any) -> bool:
    """Whether a leaf is an array or its shape placeholder (`eqx.filter_eval_shape`)."""
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


@dataclass(frozen=True)
class _Entry:
    index: int  # position among all leaves of the flattened model
    path: str  # Equinox path, e.g. "features.layers.0.bias"
    torch_key: str  # PyTorch key, e.g. "features.0.bias"
    shape: tuple[int, ...]  # Equinox shape
    torch_shape: tuple[int, ...]  # PyTorch shape
    dtype: np.dtype


def _torch_shape(parent: Any, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(parent, eqx.nn.ConvTranspose):
        raise TypeError(
            "Transposed convolutions store their kernel differently from PyTorch; "
            "converting them is not supported."
        )
    if isinstance(parent, eqx.nn.Conv) and name == "bias":
        return (shape[0],)  # Equinox keeps (C, 1, ..., 1) to broadcast
    if isinstance(parent, ViT) and name in ("cls_token", "pos_embed"):
        return (1, *shape)  # timm keeps a leading batch axis
    return shape


def _entries(model: PyTree) -> tuple[list[_Entry], list[Any], Any]:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(
        model, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )
    entries = []
    for index, (path, leaf) in enumerate(leaves_with_path):
        if not is_param(leaf):
            continue
        obj, parent, name = model, None, ""
        own, torch = [], []
        for k in path:
            parent = obj
            if isinstance(k, jax.tree_util.GetAttrKey):
                name = k.name
                obj = getattr(obj, name)
                # A Sequential's children are `layers[i]` in Equinox, `[i]` in torch.
                if not (name == "layers" and isinstance(parent, eqx.nn.Sequential)):
                    torch.append(name)
            elif isinstance(k, jax.tree_util.SequenceKey):
                name = str(k.idx)
                obj = obj[k.idx]
                torch.append(name)
            elif isinstance(k, jax.tree_util.DictKey):
                name = str(k.key)
                obj = obj[k.key]
                torch.append(name)
            else:
                raise TypeError(
                    f"Cannot name the leaf at {jax.tree_util.keystr(path)}: only "
                    "attributes, sequences and dicts have readable paths."
                )
            own.append(name)
        shape = tuple(leaf.shape)
        entries.append(
            _Entry(
                index=index,
                path=".".join(own),
                torch_key=".".join(torch),
                shape=shape,
                torch_shape=_torch_shape(parent, name, shape),
                dtype=np.dtype(leaf.dtype),
            )
        )
    return entries, [leaf for _, leaf in leaves_with_path], treedef


def _rebuild(leaves: list[Any], treedef: Any, new: dict[int, Any]) -> PyTree:
    leaves = [new.get(i, leaf) for i, leaf in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _listing(label: str, items: list[str]) -> str:
    shown = items[:_MAX_LISTED]
    more = ""
    if len(items) > len(shown):
        more = f", ... and {len(items) - len(shown)} more (see the error's `.{label}`)"
    noun = "key" if len(items) == 1 else "keys"
    return f"{len(items)} {label} {noun}: " + ", ".join(shown) + more


def _mismatch(
    what: str,
    missing: list[str],
    unexpected: list[str],
    misshaped: list[str],
    hint: str = "",
) -> WeightsError:
    parts = []
    if missing:
        parts.append(_listing("missing", missing))
    if unexpected:
        parts.append(_listing("unexpected", unexpected))
    if misshaped:
        parts.append(_listing("misshaped", misshaped))
    message = f"{what} does not match the model: " + "; ".join(parts) + "." + hint
    return WeightsError(message, missing, unexpected, misshaped)


# ---------------------------------------------------------------------------------
# Files


def save(path: str | os.PathLike, model: PyTree) -> None:
    """Save every array leaf of `model` to `.safetensors` or `.npz`, without pickle.

    Keys are the leaves' readable PyTree paths (`features.layers.0.weight`);
    the model's structure and static fields are not stored: `load` takes a model
    of the same architecture to fill.

    The write is atomic: the file is written under a temporary name in the same
    folder and then renamed, so a concurrent reader or writer never sees a
    partial file. A `.safetensors` file also stores a SHA-256 checksum of its
    tensors in its metadata, which `load` verifies (a truncated or altered file
    raises `WeightsError`).

    **Arguments:**

    - `path`: the file to write; must end in `.safetensors` or `.npz`.
    - `model`: any PyTree of arrays, e.g. a zoo model.

    **Example:**

    **Returns:** `None`; the file is written.

    ```python
    save("cnn.safetensors", model)
    model = load("cnn.safetensors", SmallCNN(key=jax.random.key(0)))
    ```
    """
    p = _check_suffix(path)
    entries, leaves, _ = _entries(model)
    tensors = {}
    for e in entries:
        leaf = leaves[e.index]
        if isinstance(leaf, jax.ShapeDtypeStruct):
            raise TypeError(
                f"`model` has no value at {e.path!r} (it is a shape placeholder, "
                "e.g. from `eqx.filter_eval_shape`); save a model with real arrays."
            )
        tensors[e.path] = np.ascontiguousarray(np.asarray(leaf))
    name = type(model).__name__
    if p.endswith(".safetensors"):
        from safetensors.numpy import save_file

        metadata = {"format": _FORMAT, "model": name, "sha256": _digest(tensors)}
        _write_atomically(p, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    else:
        if _NPZ_MARKER in tensors:
            raise ValueError(f"A model path may not be named {_NPZ_MARKER!r}.")
        # `np.savez` appends ".npz" to names without it; `p` always has it. Zip
        # members carry a CRC, which `np.load` checks.
        arrays: dict[str, Any] = {**tensors, _NPZ_MARKER: np.array(name)}
        _write_atomically(p, lambda tmp: np.savez(tmp, **arrays))


def load(path: str | os.PathLike, like: PyTree) -> PyTree:
    """Load weights written by [`eqx_attr.models.save`][] into a model like `like`.

    **Arguments:**

    - `path`: a `.safetensors` or `.npz` file written by `save`.
    - `like`: a model of the same architecture; its arrays are replaced. It may
        hold shape placeholders, e.g. `eqx.filter_eval_shape(ResNet, key=key)`,
        which avoids a random initialisation.

    **Returns:**

    A copy of `like` holding the file's arrays.

    **Raises:**

    `WeightsError` (a `ValueError`) listing every missing, unexpected or misshaped
    key (shape or dtype), or naming the file when it cannot be read;
    `FileNotFoundError` when it does not exist.

    **Example:**

    ```python
    like = eqx.filter_eval_shape(xa.models.resnet18, n_classes=10, key=key)
    model = load("resnet18.safetensors", like)
    ```
    """
    tensors, metadata = _read(path)
    entries, leaves, treedef = _entries(like)
    expected = {e.path: e for e in entries}
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    misshaped = []
    for k, e in expected.items():
        if k in tensors:
            a = tensors[k]
            if tuple(a.shape) != e.shape or a.dtype != e.dtype:
                misshaped.append(
                    f"{k} (file {a.dtype}{list(a.shape)}, "
                    f"model {e.dtype}{list(e.shape)})"
                )
    if missing or unexpected or misshaped:
        hint = ""
        if metadata.get("format") != _FORMAT:
            hint = (
                " The file was not written by `eqx_attr.models.save`; for a PyTorch "
                "state dict use `from_torch_state_dict` or `load_pretrained`."
            )
        elif metadata.get("model") not in (None, type(like).__name__):
            hint = (
                f" The file holds a {metadata['model']}, `like` is a "
                f"{type(like).__name__}."
            )
        raise _mismatch(
            f"weights file {os.fspath(path)!r}", missing, unexpected, misshaped, hint
        )
    new = {e.index: jnp.asarray(tensors[e.path]) for e in entries}
    return _rebuild(leaves, treedef, new)


# ---------------------------------------------------------------------------------
# PyTorch state dicts


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def to_torch_state_dict(model: PyTree) -> dict[str, np.ndarray]:
    """The model's arrays under PyTorch state-dict keys and layouts.

    The inverse of [`eqx_attr.models.from_torch_state_dict`][]: for the zoo models
    the keys are torchvision's / timm's (batch norms' `num_batches_tracked`
    counters are not included, having no Equinox counterpart).

    **Arguments:**

    - `model`: a model with real arrays.

    **Returns:**

    `{torch_key: numpy array}`, ready for `safetensors.numpy.save_file` or
    `torch_module.load_state_dict({k: torch.from_numpy(v) ...}, strict=False)`.
    """
    entries, leaves, _ = _entries(model)
    out = {}
    for e in entries:
        leaf = leaves[e.index]
        if isinstance(leaf, jax.ShapeDtypeStruct):
            raise TypeError(f"`model` has no value at {e.path!r}.")
        out[e.torch_key] = np.asarray(leaf).reshape(e.torch_shape)
    return out


def _state_values(
    expected: Mapping[str, Any], state_dict: Mapping[str, Any]
) -> tuple[dict, list[str]]:
    """The state dict's arrays by leaf index, cast and reshaped for the model, and
    the keys whose shape or kind (floating or not) does not fit."""
    misshaped = []
    values = {}
    for k, e in expected.items():
        if k not in state_dict:
            continue
        a = _to_numpy(state_dict[k])
        same_kind = np.issubdtype(a.dtype, np.floating) == np.issubdtype(
            e.dtype, np.floating
        )
        if tuple(a.shape) != e.torch_shape or not same_kind:
            misshaped.append(
                f"{k} (state dict {a.dtype}{list(a.shape)}, "
                f"model {e.dtype}{list(e.torch_shape)})"
            )
            continue
        values[e.index] = jnp.asarray(a.reshape(e.shape), dtype=e.dtype)
    return values, misshaped


def from_torch_state_dict(like: PyTree, state_dict: Mapping[str, Any]) -> PyTree:
    """Fill a model with the arrays of a PyTorch-style state dict.

    Keys and layouts of torchvision's VGG and ResNet and timm's ViT are mapped
    onto the zoo models: `features.0.weight` -> `features.layers[0].weight`,
    `(C,)` convolution biases -> `(C, 1, 1)`, batch-norm `weight`, `bias`,
    `running_mean`, `running_var` -> [`eqx_attr.models.FrozenBatchNorm2d`][] (the
    `num_batches_tracked` counters are ignored), the fused `attn.qkv` weights as
    they are, `cls_token (1, 1, D)` and `pos_embed (1, N, D)` without the batch
    axis. The same rule (drop the `layers` of each `eqx.nn.Sequential`) works for
    any Equinox model whose attribute names mirror its PyTorch twin's.

    Floating values are cast to the dtype of `like`'s arrays (e.g. a float16
    checkpoint into a float32 model).

    **Arguments:**

    - `like`: a model of the target architecture (real arrays or shape
        placeholders from `eqx.filter_eval_shape`).
    - `state_dict`: `{key: array}` of NumPy arrays (e.g. from
        `safetensors.numpy.load_file`) or torch tensors.

    **Returns:**

    A copy of `like` holding the state dict's values.

    **Raises:**

    `WeightsError` (a `ValueError`) listing every missing, unexpected and
    misshaped key, so that no weight is silently left random.

    **Example:**

    ```python
    from safetensors.numpy import load_file
    like = eqx.filter_eval_shape(xa.models.resnet50, key=jax.random.key(0))
    model = from_torch_state_dict(like, load_file("resnet50.safetensors"))
    ```
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(
            f"`state_dict` must be a mapping of names to arrays, got "
            f"{type(state_dict).__name__}."
        )
    entries, leaves, treedef = _entries(like)
    expected = {e.torch_key: e for e in entries}
    if len(expected) != len(entries):
        raise ValueError(
            "Two leaves of `like` map to the same PyTorch key; its attribute names "
            "cannot be matched to a state dict."
        )
    # Batch-norm step counters have no counterpart in an inference-mode model.
    counters = {
        k.rsplit(".", 1)[0] + ".num_batches_tracked"
        for k in expected
        if k.endswith(".running_mean")
    }
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in counters]
    values, misshaped = _state_values(expected, state_dict)
    if missing or unexpected or misshaped:
        raise _mismatch(
            f"state dict for {type(like).__name__}", missing, unexpected, misshaped
        )
    return _rebuild(leaves, treedef, values)
