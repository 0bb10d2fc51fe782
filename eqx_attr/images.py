"""Reading image files into normalised model inputs (needs Pillow: the `data` extra).

```python
from eqx_attr.images import load_image, normalization
pixels = load_image("photo.jpg", channels=3, size=224, resize=256)   # (3, 224, 224)
mean, std = normalization("imagenet", channels=3)
x = (pixels - mean[:, None, None]) / std[:, None, None]
```
"""

from __future__ import annotations

import os

import numpy as np


class ImageError(ValueError):
    """An image file or a normalisation spec that cannot be used (one-line message).

    **Arguments:** `message`, the one line to show.

    **Returns:** the exception (the CLI prints its message and exits with status 2).
    """


IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""The per-channel mean (RGB) of ImageNet's training images, on `[0, 1]` pixels."""
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The per-channel standard deviation (RGB) of ImageNet's training images."""


def normalization(spec: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel `(mean, std)` from a spec.

    **Arguments:**

    - `spec`: `"imagenet"`, `"none"` (mean 0, std 1), `"MEAN,STD"` (all
        channels) or `"M1,..,Mc,S1,..,Sc"`.
    - `channels`: the model's input channels.

    **Returns:** two float arrays of shape `(channels,)`.

    **Raises:** `ImageError` for a spec that does not fit `channels`.
    """
    if spec == "imagenet":
        if channels != 3:
            raise ImageError(
                f"normalization 'imagenet' needs a 3-channel model; this one takes "
                f"{channels} channel(s); use 'none' or 'MEAN,STD'"
            )
        return np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    if spec == "none":
        return np.zeros(channels), np.ones(channels)
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if len(values) == 2:
        mean, std = np.full(channels, values[0]), np.full(channels, values[1])
    elif len(values) == 2 * channels:
        mean, std = np.array(values[:channels]), np.array(values[channels:])
    else:
        raise ImageError(
            f"normalization {spec!r}: expected 'imagenet', 'none', 'MEAN,STD' or "
            f"{channels} means then {channels} stds, comma-separated"
        )
    if np.any(std <= 0):
        raise ImageError(f"normalization {spec!r}: standard deviations must be > 0")
    return mean, std


def load_image(path: str, channels: int, size: int, resize: int | None) -> np.ndarray:
    """Read an image file into `(channels, size, size)` float32 pixels in [0, 1].

    With `resize`, the shorter side is first scaled to `resize` pixels (bicubic),
    then the centre `size x size` square is cropped (torchvision's evaluation
    transform). With `resize=None` the image must already be `size x size`.
    Greyscale images feed 1-channel models, RGB (or RGBA, whose alpha is dropped)
    images 3-channel ones; anything else is an error.

    **Arguments:**

    - `path`: the image file (any format Pillow reads).
    - `channels`: 1 (greyscale) or 3 (RGB), the model's input channels.
    - `size`: the side of the square result.
    - `resize`: the shorter side before the centre crop, or `None`.

    **Returns:** a float32 NumPy array `(channels, size, size)` in `[0, 1]`.

    **Raises:** [`eqx_attr.images.ImageError`][] for a missing, unreadable or
    ill-fitting image.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "PA"):
                img = img.convert("RGBA" if "A" in mode or "transparency" in img.info
                                  else "RGB")  # fmt: skip
                mode = img.mode
            if mode in ("RGBA", "LA"):
                img = img.convert(mode[:-1])
                mode = img.mode
            if mode in ("I;16", "I", "F"):
                img = img.convert("F")
            n_img = {"L": 1, "1": 1, "F": 1, "RGB": 3}.get(img.mode)
            if n_img is None:
                raise ImageError(
                    f"image {path} has mode {mode}; convert it to RGB or greyscale"
                )
            if n_img != channels:
                raise ImageError(
                    f"image {path} has {n_img} channel(s) but the model takes "
                    f"{channels}; convert the image (e.g. to "
                    f"{'greyscale' if channels == 1 else 'RGB'}) first"
                )
            w, h = img.size
            if resize is not None:
                scale = resize / min(w, h)
                new = (max(size, round(w * scale)), max(size, round(h * scale)))
                img = img.resize(new, Image.Resampling.BICUBIC)
                w, h = img.size
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            elif (w, h) != (size, size):
                raise ImageError(
                    f"image {path} is {w}x{h} but the model takes {size}x{size}; "
                    "pass `resize` (on the command line: drop --no-resize) to "
                    "resize and centre-crop it"
                )
            arr = np.asarray(img, dtype=np.float32)
    except UnidentifiedImageError as e:
        raise ImageError(
            f"cannot read image {path}: not an image file Pillow knows"
        ) from e
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e}") from e
    if img.mode != "F":
        arr = arr / 255.0
    elif arr.max() > 1.0:
        arr = arr / 65535.0
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return np.ascontiguousarray(arr, dtype=np.float32)
