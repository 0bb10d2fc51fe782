"""Pictures of attributions with matplotlib: heat maps, overlays and grids.

Every function returns a `matplotlib.figure.Figure` built without `pyplot` (so it
works headless and leaks no global figure state) and saves it as a PNG when given
`path=`. In a notebook, `display(fig)` (or leaving it as the cell's value after
`%matplotlib inline`) shows it.

```python
import eqx_attr as xa

a = xa.IntegratedGradients(model)(x, target=3)          # (1, 28, 28), signed
xa.viz.heatmap(a, path="ig.png")                        # red +, blue -, centred at 0
h = xa.GradCAM(model, lambda m: m.conv2)(x, target=3)   # (28, 28), >= 0
xa.viz.overlay(x, h, cmap="jet", alpha=0.5, path="gradcam.png")
xa.viz.grid(xs, {"IG": A_ig, "Grad-CAM": H_gc}, path="grid.png")
```

Normalisation: maps are divided by the `percentile`-th percentile (99.5 by default)
of `|a|` and clipped, so a few outlier pixels do not wash out the rest. An all-zero
map stays all zero (never NaN).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "grid",
    "heatmap",
    "image_for_display",
    "normalize",
    "overlay",
    "to_2d",
]

DIVERGING_CMAP = "bwr"
HEAT_CMAP = "jet"


def _np(a: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(a)
    except Exception as e:  # e.g. a tracer: say what to pass instead
        raise TypeError(
            f"`{name}` must be an array (NumPy or a concrete JAX array), got "
            f"{type(a).__name__}: {e}"
        ) from e
    if arr.dtype == object or not (
        np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
    ):
        raise TypeError(f"`{name}` must be a numeric array, got dtype {arr.dtype}.")
    return arr.astype(np.float64)


def to_2d(attr: Any, reduce: str = "sum") -> np.ndarray:
    """Collapse an attribution to one `(H, W)` map.

    **Arguments:**

    - `attr`: `(H, W)`, or `(C, H, W)` channels-first (as the models take images).
    - `reduce`: how to combine channels: `"sum"` (signed; the attribution of a
        pixel is the sum over its channels, which keeps completeness), `"abs"`
        (sum of absolute values) or `"max_abs"` (largest absolute value).

    **Returns:** a float64 `(H, W)` NumPy array.
    """
    a = _np(attr, "attr")
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ValueError(
            f"`attr` must be (H, W) or channels-first (C, H, W), got shape {a.shape}."
        )
    if reduce == "sum":
        return a.sum(axis=0)
    if reduce == "abs":
        return np.abs(a).sum(axis=0)
    if reduce == "max_abs":
        return np.abs(a).max(axis=0)
    raise ValueError(
        f"Unknown `reduce={reduce!r}`; choose one of 'sum', 'abs', 'max_abs'."
    )


def normalize(
    attr: Any,
    *,
    signed: bool = True,
    percentile: float | int = 99.5,
) -> np.ndarray:
    """Scale a map by an outlier-robust maximum and clip it.

    The scale is the `percentile`-th percentile of `|attr|` (the maximum when that
    percentile is 0, e.g. for a map with a handful of non-zero pixels); values are
    divided by it and clipped, to `[-1, 1]` when `signed`, else `|attr|` to
    `[0, 1]`. An all-zero (or constant-zero) map returns zeros, never NaN.

    **Arguments:**

    - `attr`: any array (a map, or an attribution shaped like the input).
    - `signed`: keep the sign (`[-1, 1]`, for a diverging colormap centred at 0)
        or take the absolute value (`[0, 1]`).
    - `percentile`: in `(0, 100]`; `100` is plain max-normalisation.

    **Returns:** a float64 NumPy array shaped like `attr`.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"`percentile` must lie in (0, 100], got {percentile!r}.")
    a = _np(attr, "attr")
    if not np.all(np.isfinite(a)):
        raise ValueError(
            "`attr` contains NaN or infinite values; cannot choose a colour scale."
        )
    mag = np.abs(a)
    scale = np.percentile(mag, percentile) if mag.size else 0.0
    if scale <= 0:
        scale = mag.max() if mag.size else 0.0
    if scale <= 0:
        return np.zeros_like(a)
    if signed:
        return np.clip(a / scale, -1.0, 1.0)
    return np.clip(mag / scale, 0.0, 1.0)


def image_for_display(image: Any) -> np.ndarray:
    """Turn a model input into something `imshow` shows faithfully.

    `(H, W)` and `(1, H, W)` become a grey `(H, W)` image; `(3, H, W)` (channels
    first) or `(H, W, 3)` become `(H, W, 3)`. Values are min-max scaled to `[0, 1]`
    (so normalised ImageNet inputs display as images); a constant image becomes 0.

    **Arguments:** `image`, a model input (NumPy or JAX array) in one of the
    layouts above.

    **Returns:** a float NumPy array `(H, W)` or `(H, W, 3)` in `[0, 1]`.
    """
    x = _np(image, "image")
    # Channels first is the library's convention, so (3, H, W) wins over (H, W, 3)
    # when a shape could be either (e.g. 3x3x3).
    if x.ndim == 3 and x.shape[0] in (1, 3):
        x = np.moveaxis(x, 0, -1)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] != 3):
        raise ValueError(
            "`image` must be (H, W), (1, H, W), (3, H, W) or (H, W, 3); got shape "
            f"{np.shape(image)}."
        )
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else image @ np.array([0.299, 0.587, 0.114])


def _resolve_signed(a2d: np.ndarray, signed: bool | None) -> bool:
    return bool(np.any(a2d < 0)) if signed is None else bool(signed)


def _draw_map(
    ax,
    attr: Any,
    *,
    image: Any = None,
    signed: bool | None = None,
    abs: bool = False,
    percentile: float | int = 99.5,
    cmap: str | None = None,
    alpha: float | int = 0.5,
    reduce: str = "sum",
):
    """Draw one (optionally overlaid) normalised map on `ax`; return the artist."""
    a = to_2d(attr, reduce)
    if abs:
        a = np.abs(a)
    signed = _resolve_signed(a, signed) and not abs
    m = normalize(a, signed=signed, percentile=percentile)
    cmap = cmap or (DIVERGING_CMAP if signed else HEAT_CMAP)
    vmin = -1.0 if signed else 0.0
    if image is None:
        artist = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=1.0, interpolation="nearest")
    else:
        img = image_for_display(image)
        if img.shape[:2] != m.shape:
            raise ValueError(
                f"The map has shape {m.shape} but the image is {img.shape[:2]}; "
                "resize the map to the image (CAM methods do this with "
                "`resize='bilinear'`)."
            )
        ax.imshow(_grey(img), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        artist = ax.imshow(
            m, cmap=cmap, vmin=vmin, vmax=1.0, alpha=alpha, interpolation="nearest"
        )
    ax.set_xticks([])
    ax.set_yticks([])
    return artist


def _check_alpha(alpha: float) -> None:
    if not 0 <= alpha <= 1:
        raise ValueError(f"`alpha` must lie in [0, 1], got {alpha!r}.")


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        directory = os.path.dirname(os.fspath(path))
        if directory:
            os.makedirs(directory, exist_ok=True)
        fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    return fig


def heatmap(
    attr: Any,
    *,
    signed: bool | None = None,
    abs: bool = False,
    percentile: float | int = 99.5,
    cmap: str | None = None,
    reduce: str = "sum",
    title: str | None = None,
    colorbar: bool = True,
    size: float | int = 3.0,
    path: str | os.PathLike | None = None,
) -> Figure:
    """A heat map of one attribution.

    **Arguments:**

    - `attr`: `(H, W)` or channels-first `(C, H, W)` (channels are combined by
        `reduce`, see [`eqx_attr.viz.to_2d`][]).
    - `signed`: diverging colormap centred at 0 (`True`), magnitude only
        (`False`), or `None`: signed if the map has negative values.
    - `abs`: show `|attr|` (implies unsigned).
    - `percentile`: outlier-robust scale, see [`eqx_attr.viz.normalize`][].
    - `cmap`: a matplotlib colormap name; default `"bwr"` (signed: blue < 0 <
        red, white at 0) or `"jet"` (unsigned).
    - `title`, `colorbar`, `size` (inches): cosmetics.
    - `path`: if given, save a PNG there.

    **Returns:** the `matplotlib.figure.Figure`.

    ```python
    fig = xa.viz.heatmap(xa.Gradients(model)(x, 3), path="saliency.png")
    ```
    """
    return _single_panel(
        attr,
        size=size,
        colorbar=colorbar,
        title=title,
        path=path,
        signed=signed,
        abs=abs,
        percentile=percentile,
        cmap=cmap,
        reduce=reduce,
    )


def overlay(
    image: Any,
    attr: Any,
    *,
    cmap: str | None = None,
    alpha: float | int = 0.5,
    signed: bool | None = None,
    abs: bool = False,
    percentile: float | int = 99.5,
    reduce: str = "sum",
    title: str | None = None,
    colorbar: bool = False,
    size: float | int = 3.0,
    path: str | os.PathLike | None = None,
) -> Figure:
    """A map drawn over its (greyscale) image with transparency `alpha`.

    **Arguments:** as [`eqx_attr.viz.heatmap`][], plus `image` (the model's
    input, `(C, H, W)`, `(H, W, C)` or `(H, W)`; it must have the map's height and
    width) and `alpha` in `[0, 1]` (the map's opacity).

    **Returns:** the `matplotlib.figure.Figure`.

    ```python
    h = xa.GradCAM(model, lambda m: m.conv2)(x, target=3)
    fig = xa.viz.overlay(x, h, cmap="jet", alpha=0.5)
    ```
    """
    _check_alpha(alpha)
    return _single_panel(
        attr,
        size=size,
        colorbar=colorbar,
        title=title,
        path=path,
        image=image,
        signed=signed,
        abs=abs,
        percentile=percentile,
        cmap=cmap,
        alpha=alpha,
        reduce=reduce,
    )


def _single_panel(
    attr: Any,
    *,
    size: float | int,
    colorbar: bool,
    title: str | None,
    path: str | os.PathLike | None,
    **draw: Any,
) -> Figure:
    """One map on its own figure: what `heatmap` and `overlay` both draw."""
    fig = Figure(figsize=(size * (1.25 if colorbar else 1.0), size), dpi=100)
    ax = fig.add_subplot()
    artist = _draw_map(ax, attr, **draw)
    if colorbar:
        fig.colorbar(artist, ax=ax, fraction=0.046, pad=0.04)
    if title:
        ax.set_title(title)
    return _finish(fig, path)


def _per_method(option: Any, name: str, default: Any) -> Any:
    if isinstance(option, Mapping):
        return option.get(name, default)
    return default if option is None else option


def _grid_inputs(
    images: Any, attributions: Any, row_labels: Any
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`grid`'s inputs as NumPy arrays, checked against each other."""
    imgs = _np(images, "images")
    if imgs.ndim not in (3, 4):
        raise ValueError(
            f"`images` must be a batch (N, C, H, W) or (N, H, W), got {imgs.shape}."
        )
    n = imgs.shape[0]
    if not isinstance(attributions, Mapping) or not attributions:
        raise ValueError("`attributions` must be a non-empty dict name -> maps.")
    maps = {}
    for name, value in attributions.items():
        arr = _np(value, f"attributions[{name!r}]")
        if arr.shape[0] != n:
            raise ValueError(
                f"attributions[{name!r}] holds {arr.shape[0]} maps but there are {n} "
                "images; pass one map per image."
            )
        maps[name] = arr
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"`row_labels` has {len(row_labels)} entries; expected {n}.")
    return imgs, maps


def _draw_input(ax: Any, image: np.ndarray) -> None:
    img = image_for_display(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_cell(
    ax: Any,
    a: np.ndarray,
    image: np.ndarray,
    name: str,
    *,
    overlay: bool | Mapping[str, bool] | None,
    signed: bool | Mapping[str, bool] | None,
    abs: bool | Mapping[str, bool],
    percentile: float | int,
    alpha: float | int,
    reduce: str,
) -> None:
    """One map of `grid`, with the options given for its method `name`."""
    over = _per_method(overlay, name, None)
    # By default, overlay exactly the non-negative (H, W) heat maps.
    over = (a.ndim == 2 and bool(np.all(a >= 0))) if over is None else over
    _draw_map(
        ax,
        a,
        image=image if over else None,
        signed=_per_method(signed, name, None),
        abs=bool(_per_method(abs, name, False)),
        percentile=percentile,
        alpha=alpha,
        reduce=reduce,
    )


def _label_cell(
    ax: Any,
    i: int,
    j: int,
    name: str,
    row_labels: Sequence[str] | None,
    transpose: bool,
) -> None:
    """`grid`'s labels: method names head the columns (or label the rows when
    transposed), and the images' labels the other way."""
    if i == 0 and not transpose:
        ax.set_title(name, fontsize=9)
    if i == 0 and transpose:
        ax.set_ylabel(name, fontsize=9, rotation=0, ha="right", va="center")
    if row_labels is not None:
        if not transpose and j == 0:
            ax.set_ylabel(row_labels[i], fontsize=8)
        if transpose and j == 0:
            ax.set_title(row_labels[i], fontsize=8)


def grid(
    images: Any,
    attributions: Mapping[str, Any],
    *,
    row_labels: Sequence[str] | None = None,
    overlay: bool | Mapping[str, bool] | None = None,
    signed: bool | Mapping[str, bool] | None = None,
    abs: bool | Mapping[str, bool] = False,
    percentile: float | int = 99.5,
    alpha: float | int = 0.5,
    reduce: str = "sum",
    transpose: bool = False,
    cell: float | int = 1.1,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """A grid of images x methods: the input, then one map per method.

    By default each row is one image and each column one method (first column:
    the input); `transpose=True` swaps them. Each map is normalised on its own
    (maps of different methods have unrelated units).

    **Arguments:**

    - `images`: `(N, C, H, W)` (or `(N, H, W)`) inputs.
    - `attributions`: method name -> array of N maps, each `(C, H, W)` like the
        input or `(H, W)`. The names are the column titles, in insertion order.
    - `row_labels`: N strings, e.g. `"label 3, pred 3"`.
    - `overlay`: draw the map over the greyscale input (`True`), on its own
        (`False`), or `None`: overlay exactly the maps that are `(H, W)` and
        non-negative (CAM-style heat maps). A bool or a dict by method name.
    - `signed`, `abs`: as in [`eqx_attr.viz.heatmap`][]; a value or a dict by
        method name (`signed=None`: signed if the maps have negative values).
    - `percentile`, `alpha`, `reduce`: as in [`eqx_attr.viz.overlay`][].
    - `transpose`: rows = methods, columns = images.
    - `cell`: the size of one panel in inches; `title`: a figure title.
    - `path`: if given, save a PNG there.

    **Returns:** the `matplotlib.figure.Figure`.

    ```python
    maps = {name: eqx.filter_vmap(m)(xs, ts) for name, m in methods.items()}
    xa.viz.grid(xs, maps, row_labels=[f"{t}" for t in ts], path="grid.png")
    ```
    """
    _check_alpha(alpha)
    imgs, maps = _grid_inputs(images, attributions, row_labels)
    n = imgs.shape[0]

    columns = ["input", *maps]
    n_rows, n_cols = (len(columns), n) if transpose else (n, len(columns))
    fig = Figure(figsize=(cell * n_cols + 0.8, cell * n_rows + 0.6), dpi=100)
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for i in range(n):
        for j, name in enumerate(columns):
            ax = axes[j, i] if transpose else axes[i, j]
            if name == "input":
                _draw_input(ax, imgs[i])
            else:
                _draw_cell(
                    ax, maps[name][i], imgs[i], name, overlay=overlay, signed=signed,
                    abs=abs, percentile=percentile, alpha=alpha, reduce=reduce,
                )  # fmt: skip
            _label_cell(ax, i, j, name, row_labels, transpose)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _finish(fig, path)
