"""Do CNNs and vision transformers attribute differently? Metrics per method.

The same held-out digits are explained by every method applicable to each model
(input-gradient methods for both; Guided Backprop for the ReLU CNN only; Grad-CAM
on the CNN's last feature map and on the ViT's last token map; attention rollout,
Chefer relevance and CP-LRP for the ViT), and every explanation is scored with
the deletion and insertion AUCs and the sparseness of
[`eqx_attr.metrics`][]. A uniformly random attribution is the floor of each model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._registry import get
from ..models import spec_of
from ._columns import zoo_context

# Display name -> registry name: the methods compared on each model (the CNN's
# Guided Backprop needs its ReLUs; the ViT's own methods need its attention).
CNN_METHODS = {
    "Gradients": "gradients",
    "Gradients x Input": "gradients_x_input",
    "Integrated Gradients": "integrated_gradients",
    "Guided Backprop": "guided_backprop",
    "Grad-CAM": "gradcam",
}
VIT_METHODS = {
    "Gradients": "gradients",
    "Gradients x Input": "gradients_x_input",
    "Integrated Gradients": "integrated_gradients",
    "Grad-CAM": "gradcam",
    "Attention rollout": "attention_rollout",
    "Chefer relevance": "chefer_relevance",
    "CP-LRP": "conservative_lrp",
}


def build_methods(
    model: Any, names: Mapping[str, str], *, n_steps: int = 32
) -> dict[str, Any]:
    """`{display name: method}` for the registry `names`, built for a zoo model.

    The layer (Grad-CAM: the CNN's last feature map, the ViT's last token map)
    and the attention selector come from the model's zoo spec; IG integrates
    from the black image in `n_steps` steps.
    """
    shape = spec_of(model).input_shape(model)
    context = zoo_context(model, shape, {"n_steps": n_steps}, baseline=0.0)
    return {display: get(name).build(context) for display, name in names.items()}


def cnn_methods(cnn: Any, *, n_steps: int = 32) -> dict[str, Any]:
    """The methods compared on the CNN (`SmallCNN`), by display name."""
    return build_methods(cnn, CNN_METHODS, n_steps=n_steps)


def vit_methods(vit: Any, *, n_steps: int = 32) -> dict[str, Any]:
    """The methods compared on the zoo ViT, by display name."""
    return build_methods(vit, VIT_METHODS, n_steps=n_steps)


def explain_all(
    methods: Mapping[str, Any], xs: jax.Array, targets: jax.Array
) -> dict[str, np.ndarray]:
    """Every method on every example, shaped like `xs` (maps get a channel axis)."""
    out = {}
    for name, method in methods.items():
        a = eqx.filter_jit(eqx.filter_vmap(method))(xs, targets)
        if a.ndim == xs.ndim - 1:  # (N, H, W) maps -> (N, 1, H, W)
            a = jnp.broadcast_to(a[:, None], xs.shape)
        out[name] = np.asarray(a, np.float32)
    return out


def score_all(
    model: Callable,
    attributions: Mapping[str, np.ndarray],
    xs: jax.Array,
    targets: jax.Array,
    *,
    n_steps: int = 20,
    baseline: float = 0.0,
) -> dict[str, dict[str, tuple[float, float]]]:
    """Deletion AUC, insertion AUC and sparseness: `(mean, standard error)` each."""
    from ..metrics import Deletion, Insertion, Sparseness

    # Compiled once per metric: every method's attributions share one shape.
    # (pyright reads the metrics' fields, not their base class's `__init__`.)
    curves = (("deletion", Deletion), ("insertion", Insertion))
    metrics = {
        k: eqx.filter_jit(eqx.filter_vmap(m(model, n_steps, baseline)))  # pyright: ignore[reportCallIssue, reportArgumentType]
        for k, m in curves
    }
    sparseness = eqx.filter_jit(eqx.filter_vmap(Sparseness()))
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for name, a in attributions.items():
        values = {k: m(xs, targets, jnp.asarray(a)) for k, m in metrics.items()}
        values["sparseness"] = sparseness(jnp.asarray(a))
        table[name] = {
            k: (float(np.mean(v)), float(np.std(v) / np.sqrt(max(len(v) - 1, 1))))
            for k, v in values.items()
        }
    return table


def compare_cnn_vit(
    cnn: Any,
    vit: Any,
    xs: Any,
    ys: Any,
    *,
    n_steps: int = 20,
    ig_steps: int = 32,
    seed: int = 0,
) -> tuple[dict[str, dict], dict[str, dict[str, np.ndarray]]]:
    """Explain `xs` with both models and score every explanation.

    Each model explains its own prediction; `ys` are the labels (only the digits
    both models classify correctly are used, so that the targets agree).

    **Returns:** `(scores, attributions)`: `scores[model][method][metric]` is a
    `(mean, standard error)` pair, `attributions[model][method]` the arrays.

    ```python
    scores, maps = compare_cnn_vit(cnn, vit, data.x_test[:200], data.y_test[:200])
    print(comparison_markdown(scores))
    ```
    """
    from ..training import predict

    xs, ys = jnp.asarray(xs, jnp.float32), np.asarray(ys)
    keep = (predict(cnn, xs) == ys) & (predict(vit, xs) == ys)
    if not keep.any():
        raise ValueError(
            "No digit of `xs` is classified correctly by both models; pass "
            "trained models (e.g. `xa.training.pretrained_mnist_vit()`) or more digits."
        )
    xs, ts = xs[keep], jnp.asarray(ys[keep], jnp.int32)
    models = {"CNN": cnn, "ViT": vit}
    methods = {
        "CNN": cnn_methods(cnn, n_steps=ig_steps),
        "ViT": vit_methods(vit, n_steps=ig_steps),
    }
    noise = np.asarray(jax.random.uniform(jax.random.key(seed), xs.shape))
    scores, attributions = {}, {}
    for mname, model in models.items():
        attributions[mname] = explain_all(methods[mname], xs, ts)
        attributions[mname]["Random"] = noise
        scores[mname] = score_all(model, attributions[mname], xs, ts, n_steps=n_steps)
    return scores, attributions


def comparison_markdown(scores: Mapping[str, Mapping[str, Mapping]]) -> str:
    """A Markdown table: one row per method, CNN and ViT side by side."""
    names = list(dict.fromkeys(n for m in scores.values() for n in m))
    names = [n for n in names if n != "Random"] + ["Random"] * ("Random" in names)
    head = "| method | " + " | ".join(
        f"{metric} {model}"
        for metric in ("deletion ↓", "insertion ↑", "sparseness")
        for model in scores
    )
    lines = [head + " |", "| --- |" + " ---: |" * (3 * len(scores))]
    for name in names:
        cells = []
        for metric in ("deletion", "insertion", "sparseness"):
            for model in scores:
                v = scores[model].get(name, {}).get(metric)
                cells.append("n/a" if v is None else f"{v[0]:.3f} ± {v[1]:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
