"""Metrics equal Quantus 0.6 on identical models, attributions and masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import skimage.metrics

import eqx_attr as xa
from eqx_attr.torch_twins import to_torch

from ._quantus_import import quantus
from .helpers import assert_close, jmetric

M = xa.metrics
N, H = 2, 8  # two 1x8x8 examples through a width-2 SmallCNN


@pytest.fixture(scope="module")
def setup():
    model = xa.models.SmallCNN(width=2, key=jax.random.key(0))
    xs = jax.random.uniform(jax.random.key(1), (N, 1, H, H))
    xs = xs.at[:, 0, 0, 0].set(0.0)  # Quantus's "black" baseline is x.min() = 0
    attrs = jax.random.normal(jax.random.key(2), (N, 1, H, H))
    ys = np.array([1, 4])
    masks = np.zeros((N, H, H), bool)
    masks[0, 2:5, 2:6] = True
    masks[1, 0:3, 5:8] = True
    twin = to_torch(model)
    return model, xs, attrs, ys, masks, twin


def quantus_call(metric, setup, **kwargs):
    model, xs, attrs, ys, masks, twin = setup
    out = metric(
        model=twin,
        x_batch=np.asarray(xs),
        y_batch=ys,
        a_batch=np.asarray(attrs),
        s_batch=masks[:, None].astype(float),
        channel_first=True,
        device="cpu",
        **kwargs,
    )
    return np.asarray(out, np.float64)


def ours(metric, xs, *args, fn="__call__", **kwargs):
    """`jax.vmap(metric.fn)(xs, *args, **kwargs)`, compiled as one program."""
    out = jmetric(metric, xs, *args, fn=fn, vmap=0, **kwargs)
    return np.asarray(out, np.float64)


def test_complexity_metrics(setup):
    _, xs, attrs, *_ = setup
    q = dict(disable_warnings=True)
    # Ours is float32 (`ours` and `quantus_call` return float64 copies).
    assert_close(
        ours(M.Sparseness(), attrs),
        quantus_call(quantus.Sparseness(normalise=False, **q), setup),
        dtype=np.float32,
    )
    assert_close(
        ours(M.Complexity(), attrs),
        quantus_call(quantus.Complexity(normalise=False, **q), setup),
        dtype=np.float32,
    )
    # `normalise=True` is Quantus's normalise-by-max on a batch of one example.
    q_one = quantus.Sparseness(normalise=True, **q)
    model, xs, attrs, ys, masks, twin = setup
    expected = [
        q_one(
            model=twin,
            x_batch=np.asarray(xs[i : i + 1]),
            y_batch=ys[i : i + 1],
            a_batch=np.asarray(attrs[i : i + 1]),
            channel_first=True,
        )[0]
        for i in range(N)
    ]
    assert_close(
        ours(M.Sparseness(normalise=True), attrs),
        np.asarray(expected),
        dtype=np.float32,
    )


@pytest.mark.parametrize(
    "ours_metric, theirs",
    [
        (
            M.PointingGame(),
            quantus.PointingGame(normalise=False),
        ),
        (
            M.RelevanceMassAccuracy(),
            quantus.RelevanceMassAccuracy(normalise=False),
        ),
        (
            M.RelevanceRankAccuracy(),
            quantus.RelevanceRankAccuracy(normalise=False),
        ),
        (
            M.AttributionLocalisation(),
            quantus.AttributionLocalisation(),
        ),
        (
            M.AttributionLocalisation(abs=False, positive_attributions=True),
            quantus.AttributionLocalisation(abs=False, positive_attributions=True),
        ),
        (
            M.TopKIntersection(k=10),
            quantus.TopKIntersection(k=10, normalise=False),
        ),
        (
            M.TopKIntersection(k=10, concept_influence=True),
            quantus.TopKIntersection(k=10, concept_influence=True),
        ),
    ],
    ids=lambda m: type(m).__name__,
)
def test_localisation(setup, ours_metric, theirs):
    _, xs, attrs, ys, masks, _ = setup
    got = ours(ours_metric, attrs, jnp.asarray(masks))
    assert_close(got, quantus_call(theirs, setup), dtype=np.float32)


def test_pixel_flipping_and_region_perturbation(setup):
    model, xs, attrs, ys, *_ = setup
    q = dict(disable_warnings=True, normalise=False)
    theirs = quantus_call(quantus.PixelFlipping(features_in_step=8, **q), setup)
    pf = M.PixelFlipping(model, features_in_step=8)
    curves = ours(pf, xs, ys, attrs, fn="curve")
    assert_close(curves, theirs, dtype=np.float32)
    auc = np.trapezoid(theirs, axis=1) / (theirs.shape[1] - 1)
    assert_close(ours(pf, xs, ys, attrs), auc, dtype=np.float32)

    for patch, order in [(3, "lerf")]:
        theirs = quantus_call(
            quantus.RegionPerturbation(patch_size=patch, order=order, **q), setup
        )
        rp = M.RegionPerturbation(model, patch_size=patch, order=order)
        curves = ours(rp, xs, ys, attrs, fn="curve")
        assert_close(curves, theirs, dtype=np.float32)


def test_road_noise_free(setup):
    model, xs, attrs, ys, *_ = setup
    pct = (5, 30, 60, 95)
    road = M.ROAD(model, percentages=pct, noise=0.0)
    theirs = quantus.ROAD(
        percentages=list(pct), noise=0.0, normalise=False, disable_warnings=True
    )
    # Quantus returns the accuracy at each percentage over the batch.
    want = theirs(
        model=setup[-1],
        x_batch=np.asarray(xs),
        y_batch=ys,
        a_batch=np.asarray(attrs),
        channel_first=True,
        device="cpu",
    )
    curves = ours(road, xs, ys, attrs, fn="curve")
    assert_close(curves.mean(0), np.array([want[p] for p in pct]), dtype=np.float32)


def test_linear_imputation_equals_quantus():
    x = np.asarray(jax.random.uniform(jax.random.key(3), (2, 7, 9)))
    removed = np.zeros((7, 9), bool)
    removed[1:6, 2:7] = True
    removed[0, 0] = True
    idx = np.flatnonzero(removed)
    theirs = quantus.functions.perturb_func.noisy_linear_imputation(
        x.copy(), idx, noise=0.0
    )
    got = jmetric(M.linear_imputation, jnp.asarray(x), jnp.asarray(removed))
    assert_close(got, theirs, dtype=np.float32)


def test_faithfulness_correlation_same_subsets(setup, monkeypatch):
    model, xs, attrs, ys, *_ = setup
    fc = M.FaithfulnessCorrelation(model, n_runs=6, subset_size=10)
    keys = jax.random.split(jax.random.key(4), N)
    # Our subsets, handed to Quantus in the order it draws them (run, example).
    subsets = [
        np.asarray(jmetric(fc, xs[0], jax.random.split(k)[0], fn="subsets"))
        for k in keys
    ]
    draws = iter([subsets[i][r] for r in range(6) for i in range(N)])
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: next(draws))
    theirs = quantus_call(
        quantus.FaithfulnessCorrelation(
            nr_runs=6, subset_size=10, normalise=False, return_aggregate=False,
            disable_warnings=True,
        ),
        setup,
    )  # fmt: skip
    got = ours(fc, xs, ys, attrs, key=keys)
    assert_close(got, theirs, dtype=np.float32)


def test_similarities_equal_scipy_and_skimage():
    a = np.asarray(jax.random.normal(jax.random.key(5), (12, 10)))
    b = a + np.asarray(jax.random.normal(jax.random.key(6), (12, 10)))
    b[0, :4] = b[0, 0]  # ties get average ranks
    want = scipy.stats.spearmanr(a.ravel(), b.ravel())[0]
    got = jmetric(M.spearman, jnp.asarray(a), jnp.asarray(b))
    assert_close(got, want, dtype=np.float32)
    rng = max(a.max(), b.max()) - min(a.min(), b.min())
    want = skimage.metrics.structural_similarity(a, b, data_range=rng)
    got = jmetric(M.ssim, jnp.asarray(a), jnp.asarray(b))
    assert_close(got, want, dtype=np.float32)
