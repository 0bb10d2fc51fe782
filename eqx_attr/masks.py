"""Feature masks for the perturbation family: grids and superpixels.

A mask holds one integer feature id per pixel, shaped `(H, W)`, which broadcasts
to a `(C, H, W)` image: all channels of a pixel form one feature. The superpixel
functions need scikit-image (the `masks` extra) and import it only when called.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from jaxtyping import Int, Shaped

from ._attribution import check_positive_int


def grid(shape: tuple[int, int], cell: int | tuple[int, int]) -> Int[np.ndarray, "h w"]:
    """A grid of square (or rectangular) cells, numbered row by row.

    **Arguments:**

    - `shape`: `(H, W)` of the image.
    - `cell`: the cell's side in pixels, or `(cell_h, cell_w)`; cells at the
        bottom and right border are cut to fit.

    **Returns:** an `int32` `(H, W)` array of ids `0..n_cells - 1`.

    ```python
    mask = xa.masks.grid((28, 28), 7)     # 16 features
    a = xa.FeatureAblation(model, mask=mask)(x, target=3)
    ```
    """
    if len(shape) != 2:
        raise ValueError(f"`shape` must be (H, W), got {shape!r}.")
    for v in shape:
        check_positive_int(v, "shape")
    ch, cw = (cell, cell) if isinstance(cell, (int, np.integer)) else tuple(cell)
    check_positive_int(ch, "cell")
    check_positive_int(cw, "cell")
    h, w = int(shape[0]), int(shape[1])
    rows = np.arange(h)[:, None] // ch
    cols = np.arange(w)[None, :] // cw
    return (rows * math.ceil(w / cw) + cols).astype(np.int32)


def _image_hwc(image: Any, name: str) -> np.ndarray:
    img = np.asarray(image, np.float64)
    if img.ndim == 3:
        img = np.moveaxis(img, 0, -1)  # (C, H, W) -> (H, W, C)
        if img.shape[-1] == 1:
            img = img[..., 0]
    elif img.ndim != 2:
        raise ValueError(
            f"`{name}` needs an image shaped (C, H, W) or (H, W), got {img.shape}."
        )
    return img


def _skimage_segmentation():
    try:
        from skimage import segmentation
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Superpixel masks need scikit-image: `pip install eqx_attr[masks]`."
        ) from e
    return segmentation


def felzenszwalb(
    image: Shaped[Any, "..."],
    scale: float = 100.0,
    sigma: float = 0.8,
    min_size: int = 20,
) -> Int[np.ndarray, "h w"]:
    """Felzenszwalb-Huttenlocher superpixels of a `(C, H, W)` or `(H, W)` image.

    **Arguments:**

    - `image`: the image, channels first (as the models take it).
    - `scale`, `sigma`, `min_size`: as `skimage.segmentation.felzenszwalb`.

    **Returns:** an `int32` `(H, W)` array of segment ids.

    ```python
    mask = xa.masks.felzenszwalb(x, scale=50)
    a = xa.KernelShap(model, mask=mask)(x, 3, key=key)
    ```
    """
    seg = _skimage_segmentation()
    img = _image_hwc(image, "image")
    out = seg.felzenszwalb(
        img,
        scale=scale,
        sigma=sigma,
        min_size=min_size,
        channel_axis=None if img.ndim == 2 else -1,
    )
    return out.astype(np.int32)


def slic(
    image: Shaped[Any, "..."],
    n_segments: int = 50,
    compactness: float = 10.0,
    sigma: float = 0.0,
) -> Int[np.ndarray, "h w"]:
    """SLIC superpixels of a `(C, H, W)` or `(H, W)` image.

    **Arguments:**

    - `image`: the image, channels first.
    - `n_segments`, `compactness`, `sigma`: as `skimage.segmentation.slic`.

    **Returns:** an `int32` `(H, W)` array of segment ids `0..n - 1`.

    ```python
    mask = xa.masks.slic(x, n_segments=16)
    ```
    """
    check_positive_int(n_segments, "n_segments")
    seg = _skimage_segmentation()
    img = _image_hwc(image, "image")
    out = seg.slic(
        img,
        n_segments=n_segments,
        compactness=compactness,
        sigma=sigma,
        start_label=0,
        channel_axis=None if img.ndim == 2 else -1,
    )
    return out.astype(np.int32)
