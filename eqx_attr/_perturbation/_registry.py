"""The perturbation family's rows of the method table (`eqx_attr._registry`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def default_mask(c: Any) -> Any:
    """The context's mask, else square cells of about 1/4 of the short side."""
    if c.mask is not None:
        return c.mask
    from ..masks import grid

    if c.input_shape is None or len(c.input_shape) < 2:
        raise ValueError(
            "This method needs a feature `mask` (or an `input_shape` to build a "
            "grid mask); pass e.g. `mask=xa.masks.grid((28, 28), 7)`."
        )
    h, w = c.input_shape[-2:]
    return grid((h, w), max(1, int(np.ceil(min(h, w) / 4))))


def default_window(c: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """An occlusion window of 1/7 of each spatial side, half-overlapping."""
    if c.input_shape is None:
        raise ValueError("Occlusion needs the `input_shape` to size its window.")
    *lead, h, w = c.input_shape
    wh, ww = max(1, h // 7), max(1, w // 7)
    window = (*lead, wh, ww)
    strides = (*(1 for _ in lead), max(1, wh // 2), max(1, ww // 2))
    return c.option("window", window), c.option("strides", strides)


def entries(xa: Any, entry: type) -> tuple[Any, ...]:
    """One `MethodEntry` per perturbation method, with test-friendly defaults."""
    mask, key = frozenset({"mask"}), frozenset({"mask", "key"})
    base = lambda c: c.baseline if c.baseline is not None else 0.0  # noqa: E731
    chunk = lambda c: c.options.get("chunk_size")  # noqa: E731

    def occlusion(c):
        window, strides = default_window(c)
        return xa.Occlusion(c.model, window, strides, base(c), chunk(c))

    return (
        entry(
            "occlusion",
            xa.Occlusion,
            "perturbation",
            "Occlusion: score drop under a sliding baseline window",
            occlusion,
        ),
        entry(
            "feature_ablation",
            xa.FeatureAblation,
            "perturbation",
            "Feature ablation: score drop per masked feature",
            lambda c: xa.FeatureAblation(c.model, default_mask(c), base(c), chunk(c)),
            aliases=("ablation",),
            needs=mask,
        ),
        entry(
            "shapley_values",
            xa.ShapleyValues,
            "perturbation",
            "exact Shapley values over all coalitions (the given mask when it has "
            "<= 14 features, else a 2 x 2 grid)",
            lambda c: xa.ShapleyValues(
                c.model,
                _exact_mask(c),
                base(c),
                chunk(c),
            ),
            needs=mask,
        ),
        entry(
            "shapley_value_sampling",
            xa.ShapleyValueSampling,
            "perturbation",
            "Shapley values from random permutations (n_permutations)",
            lambda c: xa.ShapleyValueSampling(
                c.model,
                default_mask(c),
                c.option("n_permutations", 8),
                base(c),
                chunk(c),
            ),
            aliases=("svs",),
            needs=key,
        ),
        entry(
            "kernel_shap",
            xa.KernelShap,
            "perturbation",
            "KernelSHAP: Shapley-kernel weighted regression (n_samples)",
            lambda c: xa.KernelShap(
                c.model, default_mask(c), c.option("n_samples", 128), base(c), chunk(c)
            ),
            aliases=("kernelshap",),
            needs=key,
        ),
        entry(
            "lime",
            xa.Lime,
            "perturbation",
            "LIME: lasso surrogate on random coalitions (n_samples)",
            lambda c: xa.Lime(
                c.model,
                default_mask(c),
                n_samples=c.option("n_samples", 128),
                baseline=base(c),
                chunk_size=chunk(c),
            ),
            needs=key,
        ),
        entry(
            "rise",
            xa.RISE,
            "perturbation",
            "RISE: score-weighted random smooth masks (n_masks, cell_size)",
            lambda c: xa.RISE(
                c.model,
                n_masks=c.option("n_masks", 500),
                cell_size=c.option("cell_size", 4),
                p=c.option("p", 0.5),
                chunk_size=chunk(c),
            ),
            needs=frozenset({"key"}),
            output="map",
        ),
        entry(
            "blur_ig",
            xa.BlurIG,
            "gradient",
            "Blur IG: integrated gradients along a blur path (PAIR)",
            lambda c: xa.BlurIG(
                c.model,
                max_sigma=c.option("max_sigma", 50.0),
                steps=c.option("n_steps", 32),
                chunk_size=chunk(c),
            ),
        ),
        entry(
            "guided_ig",
            xa.GuidedIG,
            "gradient",
            "Guided IG: adaptive-path integrated gradients (PAIR)",
            lambda c: xa.GuidedIG(c.model, steps=c.option("n_steps", 32)),
        ),
        entry(
            "xrai",
            xa.XRAI,
            "gradient",
            "XRAI: IG ranked over multi-scale Felzenszwalb regions (PAIR; "
            "n_steps, algorithm)",
            lambda c: xa.XRAI(
                c.model,
                n_steps=c.option("n_steps", 32),
                baseline=c.baseline,
                algorithm=c.option("algorithm", "full"),
                chunk_size=chunk(c),
            ),
            output="map",
        ),
    )


def _exact_mask(c: Any) -> Any:
    """The context's mask if exact Shapley values can afford it, else a 2 x 2 grid."""
    if c.mask is not None and np.unique(np.asarray(c.mask)).size <= 14:
        return c.mask
    return _coarse_mask(c)


def _coarse_mask(c: Any) -> Any:
    """A 2 x 2 grid (4 features: 16 coalitions) for exact Shapley values."""
    from ..masks import grid

    if c.input_shape is None:
        raise ValueError("ShapleyValues needs a `mask` or the `input_shape`.")
    h, w = c.input_shape[-2:]
    return grid((h, w), (-(-h // 2), -(-w // 2)))
