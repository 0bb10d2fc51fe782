"""Zoo models by name: build one, or build one and fill it from a weights file."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from ._weight_files import _FORMAT, WeightsError, _read
from ._weights import from_torch_state_dict, load
from ._zoo import MODEL_SPECS, model_spec

ARCHITECTURES: dict[str, Callable[..., eqx.Module]] = {
    name: spec.factory for name, spec in MODEL_SPECS.items()
}
"""The zoo's factories by name (`"resnet50"`, `"vgg16_bn"`, `"vit_small"`, ...)."""


def create_model(arch: str, *, key: PRNGKeyArray, **kwargs: Any) -> eqx.Module:
    """Build a zoo model by name, randomly initialised.

    **Arguments:**

    - `arch`: a key of `eqx_attr.models.ARCHITECTURES`, e.g. `"resnet50"`,
        `"vgg16_bn"`, `"vit_small"`, `"small_cnn"`.
    - `key`: PRNG key for the initialisation.
    - `**kwargs`: passed to the factory (`n_classes`, `width`, `image_size`...).

    **Example:**

    **Returns:** the model (an Equinox module).

    ```python
    m = create_model("resnet18", n_classes=10, key=jax.random.key(0))
    ```
    """
    return model_spec(arch).factory(key=key, **kwargs)


def _infer_config(arch: str, sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    # Keys are compared without Sequential's "layers" so that files from `save`
    # work too.
    shapes = {k.replace(".layers.", "."): tuple(v.shape) for k, v in sd.items()}
    return model_spec(arch).read_config(shapes)


def load_pretrained(path: str | os.PathLike, arch: str, **kwargs: Any) -> eqx.Module:
    """Build the zoo model `arch` and fill it from a weights file.

    The file is either a PyTorch state dict exported to `.safetensors` (or `.npz`)
    from torchvision (`vgg*`, `resnet*`) or timm (`vit_*_patch16_224` and
    friends), or a file written by [`eqx_attr.models.save`][]. Sizes the
    checkpoint fixes (`n_classes`, `in_channels`, `width`, ViT's `image_size` and
    `patch_size`) are read from it; `**kwargs` override them.

    **Arguments:**

    - `path`: the weights file.
    - `arch`: a key of `eqx_attr.models.ARCHITECTURES`.
    - `**kwargs`: passed to the architecture's factory.

    **Returns:**

    The model, with no random initialisation spent on it.

    **Raises:**

    `ValueError` for an unknown `arch`; `FileNotFoundError`; `WeightsError`
    listing mismatched keys, or naming an unreadable file.

    **Example:**

    ```python
    # In PyTorch, once:  save_file({k: v.numpy() for k, v in
    #                      torchvision.models.resnet50(weights="DEFAULT")
    #                      .state_dict().items()}, "resnet50.safetensors")
    model = load_pretrained("resnet50.safetensors", "resnet50")
    ```
    """
    factory = model_spec(arch).factory
    tensors, metadata = _read(path)
    config = {**_infer_config(arch, tensors), **kwargs}
    like = eqx.filter_eval_shape(lambda: factory(key=jax.random.key(0), **config))
    if metadata.get("format") == _FORMAT:
        return load(path, like)
    try:
        return from_torch_state_dict(like, tensors)
    except WeightsError as e:
        raise WeightsError(
            f"weights file {os.fspath(path)!r}: {e}",
            e.missing,
            e.unexpected,
            e.misshaped,
        ) from None
