"""The CNN-vs-ViT question, answered with numbers: accuracy, metrics, a picture.

Loads (or trains, once, into the weights cache) the demo CNN and the MNIST ViT,
reports both held-out accuracies, explains the same held-out digits with every
applicable method, and scores the explanations with deletion/insertion AUC and
sparseness (`eqx_attr._cli._compare`, the study notebook 03 runs too).

    python benchmarks/cnn_vs_vit.py                # 200 digits
    python benchmarks/cnn_vs_vit.py --n 40         # quicker
    python benchmarks/cnn_vs_vit.py --fast         # a smoke run (8 digits, 4 steps)

Writes `benchmarks/results/cnn-vs-vit.md` and `docs/cnn_vs_vit.png`.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import jax.numpy as jnp

import eqx_attr as xa
from eqx_attr._cli import _compare as C
from eqx_attr._cli._columns import choose_digits

HERE = os.path.dirname(os.path.abspath(__file__))
SHORT = {
    "Gradients": "Grad",
    "Gradients x Input": "GxI",
    "Integrated Gradients": "IG",
    "Guided Backprop": "GuidedBP",
    "Grad-CAM": "GradCAM",
    "Attention rollout": "Rollout",
    "Chefer relevance": "Chefer",
}


def picture(cnn, vit, data, path: str, n_digits: int = 6, ig_steps: int = 32) -> None:
    idx = choose_digits(data.y_test, n_digits)
    xs, ys = jnp.asarray(data.x_test[idx]), jnp.asarray(data.y_test[idx], jnp.int32)
    maps = {}
    for mname, methods in (
        ("CNN", C.cnn_methods(cnn, n_steps=ig_steps)),
        ("ViT", C.vit_methods(vit, n_steps=ig_steps)),
    ):
        for name, a in C.explain_all(methods, xs, ys).items():
            maps[f"{mname} {SHORT.get(name, name)}"] = a
    xa.viz.grid(xs, maps, row_labels=[f"digit {int(y)}" for y in ys], path=path)


def main(
    argv: list[str] | None = None,
    *,
    models: tuple[Any, Any] | None = None,
    data: Any = None,
):
    """Run the study; `models=(cnn, vit)` and `data` (an `xa.datasets.MNIST`)
    replace the cached pretrained pair and MNIST (the test's tiny run).

    **Returns:** the report's lines (also written to `--out` and printed).
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="held-out digits scored")
    p.add_argument("--out", default=os.path.join(HERE, "results", "cnn-vs-vit.md"))
    p.add_argument("--png", default=os.path.join(HERE, "..", "docs", "cnn_vs_vit.png"))
    p.add_argument(
        "--fast",
        action="store_true",
        help="a smoke run: 8 digits (unless --n), 4 IG and 4 metric steps",
    )
    args = p.parse_args(argv)
    n = args.n or (8 if args.fast else 200)
    steps = {"n_steps": 4, "ig_steps": 4} if args.fast else {}
    data = xa.datasets.mnist() if data is None else data
    t0 = time.perf_counter()
    if models is None:
        cnn = xa.training.pretrained_small_cnn(progress=False)
        vit = xa.training.pretrained_mnist_vit(progress=False)
    else:
        cnn, vit = models
    acc = {
        "CNN": xa.training.accuracy(cnn, data.x_test, data.y_test),
        "ViT": xa.training.accuracy(vit, data.x_test, data.y_test),
    }
    print(f"models ready in {time.perf_counter() - t0:.0f} s; accuracy {acc}")
    picture(cnn, vit, data, args.png, ig_steps=steps.get("ig_steps", 32))
    t0 = time.perf_counter()
    scores, _ = C.compare_cnn_vit(cnn, vit, data.x_test[:n], data.y_test[:n], **steps)
    command = "python benchmarks/cnn_vs_vit.py" + (" --fast" if args.fast else "")
    lines = [
        f"Held-out accuracy on {len(data.y_test)} MNIST digits: CNN "
        f"{acc['CNN']:.3f}, ViT {acc['ViT']:.3f} (`SmallCNN(width=16)` and "
        "`pretrained_mnist_vit()`: 7x7 patches, dim 64, depth 4, 4 heads).",
        "",
        f"Mean ± standard error over those of the first {n} held-out "
        "digits that both models classify correctly; each model explains its "
        f"own prediction. Deletion/insertion: {steps.get('n_steps', 20)} steps, "
        "baseline 0, softmax probability (lower deletion and higher insertion AUC "
        "are better); sparseness: Gini index of |a|. `Random` is uniform noise. "
        f"Computed in {time.perf_counter() - t0:.0f} s with `{command} --n {n}`.",
        "",
        C.comparison_markdown(scores),
        "",
    ]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out} and {args.png}")
    return lines


if __name__ == "__main__":
    main()
