"""Randomisation sanity checks: model parameter randomisation and random logit."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Target,
    check_choice,
    check_input,
    check_key,
    check_positive_int,
)
from ._base import AbstractMetric
from ._similarity import spearman, ssim

SIMILARITIES = ("spearman", "ssim")
_LAYERS = (eqx.nn.Linear, eqx.nn.Conv)


def _is_layer(node: Any) -> bool:
    return isinstance(node, _LAYERS)


def _layer_count(tree: Any) -> int:
    return sum(map(_is_layer, jax.tree_util.tree_leaves(tree, is_leaf=_is_layer)))


def _reinitialise(layer: eqx.Module, key: PRNGKeyArray) -> eqx.Module:
    """Redraw every floating array of `layer` from N(0, σ²), σ its original std."""
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, max(len(leaves), 1))
    new = [
        (jnp.std(p) * jax.random.normal(k, p.shape, jnp.float32)).astype(p.dtype)
        for p, k in zip(leaves, keys, strict=False)
    ]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, new), static)


def randomise_layers(tree: Any, indices: tuple[int, ...], key: PRNGKeyArray) -> Any:
    """`tree` with the linear/conv layers at `indices` (in leaf order) redrawn."""
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=_is_layer)
    layer_pos = [i for i, leaf in enumerate(leaves) if _is_layer(leaf)]
    keys = jax.random.split(key, len(layer_pos))
    for j in indices:
        leaves[layer_pos[j]] = _reinitialise(leaves[layer_pos[j]], keys[j])
    return jax.tree_util.tree_unflatten(treedef, leaves)


def similarity(name: str, a: Array, b: Array, absolute: bool) -> Array:
    """`spearman` or `ssim` of two attributions, after |.| when `absolute`."""
    if absolute:
        a, b = jnp.abs(a), jnp.abs(b)
    return spearman(a, b) if name == "spearman" else ssim(a, b)


class MPRT(AbstractMetric):
    """Model parameter randomisation test: similarity of the explanation before and
    after the model's layers are re-initialised.

    Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018. The linear and
    convolutional layers of the method's model (found by type, in the PyTree's
    order, which is the forward order for the zoo models) are redrawn from
    N(0, σ²) with each array's own σ, through a PyTree rewrite (the original is
    untouched). `mode="cascading"` randomises from the top (output) layer down,
    cumulatively; `"independent"` one layer at a time. `curve[l]` compares the
    explanation of the original model with the one after step `l`.

    **Arguments:**

    - `method`: the attribution method (it holds the model).
    - `mode`: `"cascading"` (default) or `"independent"`.
    - `similarity`: `"spearman"` (rank correlation, Quantus's default) or `"ssim"`.
    - `abs`: compare |a| (default `True`, as Quantus).

    **Call:** `metric(x, target, *, key)`; `key` draws the new weights (and keys a
    random method). For a batch, share one key (`jax.vmap(metric, in_axes=(0, 0,
    None))`) so every example sees the same randomised model, as in Quantus;
    per-example keys redraw the weights per example (batched weights, slower).

    **Returns:** the similarity at full randomisation (the last cascading step, or
    the mean over layers for `"independent"`); a method that ignores the model
    stays near 1. Constant explanations give Spearman 0 (undefined correlation).

    ```python
    s = xa.metrics.MPRT(xa.Gradients(model))(x, 3, key=key)
    ```
    """

    method: AbstractAttribution
    mode: str = eqx.field(static=True, default="cascading")
    similarity: str = eqx.field(static=True, default="spearman")
    abs: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        check_choice(self.mode, "mode", ("cascading", "independent"))
        check_choice(self.similarity, "similarity", SIMILARITIES)
        if _layer_count(self.method) == 0:
            raise ValueError(
                "MPRT found no eqx.nn.Linear or eqx.nn.Conv layer in the method's "
                "model; it randomises those layers."
            )

    def curve(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, " n_layers"]:
        """The similarity after each randomisation step (top layer first)."""
        key = check_key(key, "MPRT")
        x = check_input(x)
        weight_key, method_key = jax.random.split(key)
        n = _layer_count(self.method)
        # The randomised methods differ from the original in array values only, so
        # one jitted call serves them all: the method is traced once, not once per
        # step (compile time no longer grows with the depth), and XLA still sees
        # every step in one program (no loop body, whose convolutions run slowly
        # on CPU).
        explain = eqx.filter_jit(lambda m, x, t, k: m(x, t, key=k))
        a0 = explain(self.method, x, target, method_key)
        out = []
        for step in range(n):
            layer = n - 1 - step
            chosen = tuple(range(layer, n)) if self.mode == "cascading" else (layer,)
            randomised = randomise_layers(self.method, chosen, weight_key)
            a = explain(randomised, x, target, method_key)
            out.append(similarity(self.similarity, a0, a, self.abs))
        return jnp.stack(out)

    def __call__(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        curve = self.curve(x, target, key=key)
        return curve[-1] if self.mode == "cascading" else jnp.mean(curve)


class RandomLogit(AbstractMetric):
    """Similarity of the explanations of the target and of a random other class.

    Sixt, Granz & Landgraf, *When Explanations Lie: Why Many Modified BP
    Attributions Fail*, ICML 2020; as Quantus's `RandomLogit` (SSIM by default):
    the other class is drawn uniformly from the `n_classes - 1` classes that are
    not `target`. A class-sensitive method scores low.

    **Arguments:** `method`, `n_classes`, `similarity` (`"ssim"` or
    `"spearman"`), `abs` (default `False`, as Quantus).

    **Call:** `metric(x, target, *, key)` with an integer `target`.

    **Returns:** a 0-d float32 array.

    ```python
    s = xa.metrics.RandomLogit(xa.Gradients(model), n_classes=10)(x, 3, key=key)
    ```
    """

    method: AbstractAttribution
    n_classes: int = eqx.field(static=True)
    similarity: str = eqx.field(static=True, default="ssim")
    abs: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_positive_int(self.n_classes, "n_classes", minimum=2)
        check_choice(self.similarity, "similarity", SIMILARITIES)

    def other_class(self, target: Any, key: PRNGKeyArray) -> Array:
        """The random class other than `target` drawn for `key`."""
        off = jax.random.randint(key, (), 0, self.n_classes - 1)
        return jnp.where(off >= target, off + 1, off).astype(jnp.int32)

    def __call__(
        self,
        x: Float[Array, "*dims"],
        target: Target,
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, ""]:
        key = check_key(key, "RandomLogit")
        if callable(target) or target is None:
            raise ValueError("RandomLogit needs an integer class `target`.")
        x = check_input(x)
        class_key, method_key = jax.random.split(key)
        a = self.method(x, target, key=method_key)
        b = self.method(x, self.other_class(target, class_key), key=method_key)
        return similarity(self.similarity, a, b, self.abs)
