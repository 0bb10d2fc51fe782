"""The demo's ViT panel: the registry's transformer methods on held-out digits.

`run_vit_demo` is what `eqx-attr demo` runs after the CNN panel: it loads the
cached MNIST ViT (training it once) and explains the same digits with every
registered method of the families in `VIT_FAMILIES` that the ViT can run, and
with the registry methods `VIT_METHODS` of the other families (the input
gradients and Grad-CAM on the last token map, to compare with the CNN panel).
The methods come from the method registry, and the attention selector, the
token layer and the prefix tokens from the ViT's zoo spec, as for any other
model.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._batch import batched, time_call
from ._columns import DemoColumn, choose_digits, demo_columns

# The registry families the panel shows (the CNN panel shows every other one),
# and the registry methods of other families it shows beside them.
VIT_FAMILIES = ("transformer",)
VIT_METHODS = ("gradients", "gradients_x_input", "integrated_gradients", "gradcam")


def vit_columns(
    vit: Any, data: Any, options: Mapping[str, Any] | None = None
) -> tuple[list[DemoColumn], list[str]]:
    """`(columns, skipped)` of the ViT panel (see `_columns.demo_columns`).

    Methods that take a baseline get one column, with the black image; those
    that average over many baseline draws are left out.
    """
    return demo_columns(
        vit,
        data,
        options,
        families=VIT_FAMILIES,
        baselines={"black": 0.0},
        names=VIT_METHODS,
    )


def run_vit_demo(
    out_dir: str | os.PathLike = "demo_out",
    n_digits: int = 8,
    *,
    vit: Any = None,
    progress: bool = False,
    options: Mapping[str, Any] | None = None,
    print_fn: Callable[[str], None] = print,
) -> dict[str, float]:
    """Explain `n_digits` held-out digits with the ViT methods; save a picture.

    **Arguments:**

    - `out_dir`: where `vit_attributions.png` is written.
    - `n_digits`: how many held-out digits (one per class first).
    - `vit`: the model; `None` loads `eqx_attr.training.pretrained_mnist_vit()`.
    - `progress`: show the training progress bar if the ViT must be trained.
    - `options`: override the methods' demo options (see `demo_columns`).
    - `print_fn`: where the report lines go.

    **Returns:** `{"accuracy": held-out accuracy, "<column> s": seconds per batch
    (compiled)}`.

    ```python
    timings = run_vit_demo("demo_out", 8)
    ```
    """
    from ..datasets import mnist
    from ..training import accuracy, predict, pretrained_mnist_vit
    from ..viz import grid

    data = mnist()
    if vit is None:
        vit = pretrained_mnist_vit(progress=progress, verbose=False)
    idx = choose_digits(data.y_test, n_digits)
    xs = jnp.asarray(data.x_test[idx])
    ts = jnp.asarray(predict(vit, xs), jnp.int32)
    keys = jax.random.split(jax.random.key(0), xs.shape[0])
    report: dict[str, float] = {"accuracy": accuracy(vit, data.x_test, data.y_test)}
    print_fn(f"ViT held-out accuracy: {report['accuracy']:.3f}")
    columns, skipped = vit_columns(vit, data, options)
    if skipped:
        print_fn("methods the ViT cannot run: " + ", ".join(skipped))
    maps: dict[str, np.ndarray] = {}
    for column in columns:
        out, _, steady_s = time_call(batched(column.build()), xs, ts, keys)
        maps[column.name] = np.asarray(out)
        report[f"{column.name} s"] = steady_s
        print_fn(f"ViT {column.name}: {1e3 * steady_s:.1f} ms / {n_digits} digits")
    labels = [f"label {y}, pred {t}" for y, t in zip(data.y_test[idx], ts, strict=True)]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "vit_attributions.png")
    side = vit.patch_embed.patch_size
    title = f"ViT ({side}x{side} patches)"
    grid(xs, maps, row_labels=labels, title=title, path=path)
    print_fn(f"wrote {path}")
    return report
