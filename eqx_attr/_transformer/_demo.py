"""The demo's ViT panel: the transformer methods on held-out digits.

`run_vit_demo` is what `eqx-attr demo` calls for the ViT (one line in
`_demo.run_demo`): it loads the cached MNIST ViT (training it once), explains
the same digits as the CNN panel with every ViT method and writes one picture.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax.numpy as jnp


def run_vit_demo(
    out_dir: str = "demo_out",
    n_digits: int = 8,
    *,
    vit: Any = None,
    progress: bool = False,
) -> dict[str, float]:
    """Explain `n_digits` held-out digits with the ViT methods; save a picture.

    **Arguments:**

    - `out_dir`: where `vit_attributions.png` is written.
    - `n_digits`: how many held-out digits (one per class first).
    - `vit`: the model; `None` loads `xa.training.pretrained_mnist_vit()`.
    - `progress`: show the training progress bar if the ViT must be trained.

    **Returns:** `{"accuracy": held-out accuracy, "<method> s": seconds per batch
    (compiled)}`.

    ```python
    timings = run_vit_demo("demo_out", 8)
    ```
    """
    import eqx_attr as xa

    from .._cli._demo import choose_digits
    from ._compare import explain_all, vit_methods

    data = xa.datasets.mnist()
    if vit is None:
        vit = xa.training.pretrained_mnist_vit(progress=progress, verbose=False)
    idx = choose_digits(data.y_test, n_digits)
    xs = jnp.asarray(data.x_test[idx])
    ts = jnp.asarray(xa.training.predict(vit, xs), jnp.int32)
    out: dict[str, float] = {
        "accuracy": xa.training.accuracy(vit, data.x_test, data.y_test)
    }
    maps = {}
    for name, method in vit_methods(vit, n_steps=32).items():
        maps.update(explain_all({name: method}, xs, ts))  # compiles
        start = time.perf_counter()
        explain_all({name: method}, xs, ts)
        out[f"{name} s"] = time.perf_counter() - start
    labels = [f"label {y}, pred {t}" for y, t in zip(data.y_test[idx], ts, strict=True)]
    os.makedirs(out_dir, exist_ok=True)
    xa.viz.grid(
        xs,
        maps,
        row_labels=labels,
        title="ViT (7x7 patches)",
        path=os.path.join(out_dir, "vit_attributions.png"),
    )
    return out
