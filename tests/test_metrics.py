"""Metrics: hand-derived values on tiny models, axioms, errors, the call contract."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, counting, digit_like, jcall, jmetric, small_cnn

M = xa.metrics
W = jnp.array([[[1.0, 2.0], [3.0, 4.0]]])  # class 1's weights on a 1x2x2 image


def linear(x):
    """Two classes: scores (0, <W, x>)."""
    return jnp.stack([jnp.zeros((), x.dtype), jnp.sum(W * x)])


X = jnp.array([[[1.0, 1.0], [1.0, 1.0]]])
A = jnp.array([[[4.0, 3.0], [2.0, 1.0]]])  # pixel order 0, 1, 2, 3


def test_deletion_insertion_hand_values():
    # Logit curve when deleting pixels 0..3 in order: 10, 9, 7, 4, 0.
    # Values are checked compiled (`jmetric`); test_bad_input calls eagerly.
    d = M.Deletion(linear, n_steps=4, score="logit")
    assert_close(jmetric(d, X, 1, A, fn="curve"), np.array([10, 9, 7, 4, 0.0]))
    assert_close(jmetric(d, X, 1, A), (30 - 5) / 4)
    i = M.Insertion(linear, n_steps=4, score="logit")
    assert_close(jmetric(i, X, 1, A, fn="curve"), np.array([0, 1, 3, 6, 10.0]))
    assert_close(jmetric(i, X, 1, A), (20 - 5) / 4)
    # round(k P / n_steps) with P = 4, n_steps = 3: 0, 1, 3, 4 pixels.
    d3 = M.Deletion(linear, n_steps=3, score="logit")
    assert_close(jmetric(d3, X, 1, A, fn="curve"), np.array([10, 9, 4, 0.0]))
    # Softmax probability of class 1, and a constant baseline of 1 (nothing moves).
    p = jmetric(M.Deletion(linear, n_steps=4), X, 1, A, fn="curve")
    assert_close(p, jax.nn.sigmoid(jnp.array([10, 9, 7, 4, 0.0])))
    flat = M.Deletion(linear, n_steps=4, baseline=1.0, score="logit")
    assert_close(jmetric(flat, X, 1, A), 10.0)
    # Ties (all-zero attribution) keep row-major order; an (H, W) map works too.
    z = jnp.zeros((2, 2))
    assert_close(jmetric(d, X, 1, z, fn="curve"), np.array([10, 9, 7, 4, 0.0]))


def test_complexity_hand_values():
    a = jnp.array([0.0, 0.0, 0.0, 2.0])
    assert_close(jmetric(M.Sparseness(eps=0.0), a), 0.75)
    ones = jnp.ones(4)
    # Exact: integer weights (2i - n - 1) times ones, summed: exactly 0.
    assert float(jmetric(M.Sparseness(eps=0.0), ones)) == 0.0
    a2 = jnp.array([1.0, -1, 0, 0])
    assert_close(jmetric(M.Complexity(), a2), np.log(2))
    # Exact: p = (0, 0, 0, 1), and log(1) = 0 exactly.
    assert float(jmetric(M.Complexity(), a)) == 0.0
    for metric in (M.Sparseness(), M.Complexity(), M.Sparseness(normalise=True)):
        # Normalised sums of `eps`-sized terms that cancel: their size is 1.
        assert_close(jmetric(metric, jnp.zeros(5)), 0.0, scale=1.0)


def test_localisation_hand_values():
    a = jnp.array([[1.0, -1.0], [3.0, 3.0]])
    mask = jnp.array([[True, False], [False, True]])
    pg, mass = M.PointingGame(), M.RelevanceMassAccuracy()
    rank, loc = M.RelevanceRankAccuracy(), M.AttributionLocalisation()
    # Exact: the pointing game is a boolean (a hit or not).
    assert jmetric(pg, a, mask) == 1.0  # one of the tied maxima is in the mask
    assert jmetric(pg, a, ~mask) == 1.0
    assert jmetric(pg, a, jnp.array([[1, 1], [0, 0]], bool)) == 0.0
    assert_close(jmetric(M.PointingGame(weighted=True), a, mask), 0.5)
    assert_close(jmetric(mass, a, mask), 4 / 6)
    # Top-2 by signed value: pixels 2 and 3 (tie, row-major); one lies in the mask.
    assert_close(jmetric(rank, a, mask), 0.5)
    assert_close(jmetric(M.TopKIntersection(k=1), a, ~mask), 1.0)
    assert_close(jmetric(loc, a, mask), 4 / 8)
    # Channels are summed first; an empty mask gives NaN (as Quantus).
    a3 = jnp.stack([a, a])
    assert_close(jmetric(mass, a3, mask), 4 / 6)
    assert np.isnan(jmetric(mass, a, jnp.zeros((2, 2), bool)))
    # All-zero attributions have defined values. Exact: a boolean hit, sums of
    # zeros, and a count over k.
    z = jnp.zeros((2, 2))
    assert jmetric(pg, z, mask) == 1.0
    assert jmetric(mass, z, mask) == 0.0
    assert jmetric(rank, z, mask) == 0.5
    assert jmetric(loc, z, mask) == 0.0


def test_perturbation_metrics_on_a_linear_model():
    key = jax.random.key(0)
    gxi = jcall(xa.GradientsXInput(linear), X, 1)  # exact contributions: W * X
    # Sums of exact contributions equal the score drops: correlation 1.
    fc = M.FaithfulnessCorrelation(linear, n_runs=5, subset_size=2)
    assert_close(jmetric(fc, X, 1, gxi, key=key), 1.0)
    sn = M.SensitivityN(linear, ns=(1, 3), n_samples=4)
    sn_curve = jmetric(sn, X, 1, gxi, key=key, fn="curve")
    assert_close(sn_curve, np.array([1.0, 1.0]))
    # Pixel flipping removes one element per step: logits 9, 7, 4, 0.
    pf = M.PixelFlipping(linear, score="logit")
    assert_close(jmetric(pf, X, 1, A, fn="curve"), np.array([9, 7, 4, 0.0]))
    assert_close(jmetric(pf, X, 1, A), (20 - 4.5) / 3)
    # Region perturbation with 1x1 patches: drops 1, 3, 6, 10; mean 5.
    rp = M.RegionPerturbation(linear, patch_size=1, score="logit")
    assert_close(jmetric(rp, X, 1, A, fn="curve"), np.array([1, 3, 6, 10.0]))
    # Monotonicity: restoring positive contributions only ever raises the score.
    # Exact: a fraction of comparisons between integer scores (exact sums).
    assert jmetric(M.Monotonicity(linear, score="logit"), X, 1, A) == 1.0
    assert jmetric(M.Monotonicity(linear, score="logit"), -X, 1, A) == 0.0
    # Infidelity of exact contributions of a linear model is 0.
    inf = M.Infidelity(linear, n_samples=8)
    exact = jnp.broadcast_to(W, X.shape)
    # Its root is the RMS of residuals sum(a I) - (f(x) - f(x - I)): rounding
    # relative to the scores that cancelled, |f(x)| = 10.
    rms = jnp.sqrt(jmetric(inf, X, 1, exact, key=key))
    assert_close(rms, 0.0, scale=float(jnp.abs(linear(X)).max()))
    # A constant gradient has zero sensitivity and zero local Lipschitz constant.
    # Exact: the gradient of a linear map is its weight row at every point (a
    # one-hot cotangent times W), so every difference is an exact 0.
    g = xa.Gradients(linear)
    assert jmetric(M.SensitivityMax(g, n_samples=3), X, 1, key=key) == 0.0
    assert jmetric(M.LocalLipschitzEstimate(g, n_samples=3), X, 1, key=key) == 0.0


@pytest.mark.parametrize("n_features", [784, 1500])  # packed keys; the fallback
def test_random_subsets_are_distinct_and_uniform(n_features):
    from eqx_attr.metrics._correlation import random_subsets

    runs, size = 4000, n_features // 4
    draw = jax.jit(lambda k: random_subsets(k, n_features, runs, size))
    s = np.asarray(draw(jax.random.key(0)))
    assert s.shape == (runs, size) and s.dtype == np.int32
    assert s.min() >= 0 and s.max() < n_features
    assert all(len(np.unique(r)) == size for r in s)
    # Inclusion counts: a chi-square statistic near its expectation for draws
    # without replacement, (n - 1)(1 - size / n); a biased sampler (say, one
    # favouring low indices on ties) would be far above it.
    counts = np.bincount(s.ravel(), minlength=n_features)
    expected = runs * size / n_features
    chi2 = ((counts - expected) ** 2 / expected).sum()
    mean = (n_features - 1) * (1 - size / n_features)
    assert 0.85 * mean < chi2 < 1.15 * mean
    # Every feature is as likely to be drawn first.
    first = np.bincount(s[:, 0], minlength=n_features)
    chi2 = ((first - runs / n_features) ** 2 / (runs / n_features)).sum()
    assert 0.85 * (n_features - 1) < chi2 < 1.15 * (n_features - 1)


def test_linear_imputation_hand_value():
    x = jnp.arange(9.0).reshape(1, 3, 3)
    removed = jnp.zeros((3, 3), bool).at[1, 1].set(True)
    edges, corners = 1 + 3 + 5 + 7, 0 + 2 + 6 + 8
    want = edges / 6 + corners / 12
    out = jmetric(M.linear_imputation, x, removed)
    assert_close(out[0, 1, 1], want)
    assert_close(jnp.where(removed, 0, out), jnp.where(removed, 0, x))


def test_road_curves():
    road = M.ROAD(linear, percentages=(0, 50), noise=0.0, score="logit")
    # 50% of 4 pixels: the two most relevant (values 1 each) are imputed from
    # their neighbours, all ones: nothing changes.
    road_curve = jmetric(road, X, 1, A, fn="curve")
    assert_close(road_curve, np.array([10.0, 10.0]))
    acc = M.ROAD(linear, percentages=(10, 90), noise=0.1)
    # Exact: an accuracy, the mean of boolean hits.
    assert jmetric(acc, X, 1, A, key=jax.random.key(0)) == 1.0
    # Argument errors are raised when called (eagerly here).
    with pytest.raises(ValueError, match="key"):
        acc(X, 1, A)
    with pytest.raises(ValueError, match="integer class"):
        acc(X, lambda s: s[1], A, key=jax.random.key(0))


class Squares(xa.AbstractAttribution):
    """Ignores the model: the explanation is x squared."""

    model: eqx.Module

    def __call__(self, x, target=None, *, key=None):
        return x * x


def test_mprt_and_random_logit():
    model = xa.models.MLP(
        (1, 4, 4), n_classes=3, width=6, depth=2, key=jax.random.key(0)
    )
    x = jax.random.uniform(jax.random.key(1), (1, 4, 4))
    key = jax.random.key(2)
    before = jax.tree_util.tree_leaves(model)
    # A method that ignores the model fails the sanity check: similarity 1.
    curve = jmetric(M.MPRT(Squares(model)), x, 2, key=key, fn="curve")
    assert_close(curve, np.ones(3))
    # Gradients of a randomised network lose the original ranking; layers are
    # redrawn on a copy.
    mprt = eqx.filter_jit(M.MPRT(xa.Gradients(model), mode="independent"))
    assert mprt(x, 2, key=key) < 0.9
    assert all(
        a is b for a, b in zip(before, jax.tree_util.tree_leaves(model), strict=True)
    )
    # Random logit on a linear model: gradients are the weight rows.
    w = jax.random.normal(jax.random.key(3), (5, 16))
    rl = M.RandomLogit(
        xa.Gradients(lambda v: w @ v), n_classes=5, similarity="spearman"
    )
    other = rl.other_class(2, jax.random.split(key)[0])
    assert other != 2
    want = eqx.filter_jit(lambda w, other: M.spearman(w[2], w[other]))(w, other)
    assert_close(jmetric(rl, jnp.ones(16), 2, key=key), want)


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_mprt_curve_is_each_step_by_its_definition(mode):
    # The curve (one jitted call serves every step) equals the definition:
    # the layers from the top down (all those above too, when cascading) redrawn
    # with `randomise_layers`, explained, and compared with the original map.
    from eqx_attr.metrics._randomisation import randomise_layers, similarity

    model = small_cnn()
    x, key = digit_like(3), jax.random.key(4)
    method = xa.GradientsXInput(model)
    curve = jmetric(M.MPRT(method, mode=mode), x, 5, key=key, fn="curve")
    weight_key, _ = jax.random.split(key)
    n = 5  # SmallCNN: four convolutions and the linear head
    a0 = jcall(method, x, 5)

    @eqx.filter_jit
    def step(layer):
        chosen = tuple(range(layer, n)) if mode == "cascading" else (layer,)
        a = randomise_layers(method, chosen, weight_key)(x, 5)
        return similarity("spearman", a0, a, True)

    want = [step(n - 1 - s) for s in range(n)]
    assert curve.shape == (n,)
    assert_close(curve, np.asarray(want))
    # Redrawing changes the map: the first step (the head alone) already does.
    assert float(curve[0]) < 1.0


def test_mprt_traces_the_method_once_whatever_the_depth():
    # The randomised methods differ in values only: one jitted call serves every
    # step, so the model is traced as often as for one explanation, not 6 times.
    traces = []
    method = xa.Gradients(counting(small_cnn(), traces))
    jax.make_jaxpr(lambda x: method(x, 2))(digit_like())
    once = len(traces)
    traces.clear()
    mprt = M.MPRT(method)
    jax.make_jaxpr(lambda x: mprt.curve(x, 2, key=jax.random.key(0)))(digit_like())
    assert len(traces) == once


def test_bad_input():
    d = M.Deletion(linear, n_steps=4)
    with pytest.raises(ValueError, match="matches neither"):
        d(X, 1, jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="n_steps"):
        M.Insertion(linear, n_steps=0)
    with pytest.raises(ValueError, match="score"):
        M.Deletion(linear, score="prob")
    mask = jnp.ones((2, 2), bool)
    with pytest.raises(TypeError, match="boolean"):
        M.PointingGame()(A, mask.astype(jnp.float32))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        M.RelevanceMassAccuracy()(A, jnp.ones((1, 2, 2), bool))
    with pytest.raises(ValueError, match="key"):
        M.Infidelity(linear)(X, 1, A)
    with pytest.raises(ValueError, match="stdev"):
        M.Infidelity(linear, stdev=0.0)
    with pytest.raises(ValueError, match="k=9"):
        M.TopKIntersection(k=9)(A, mask)
    with pytest.raises(ValueError, match="subset size"):
        M.FaithfulnessCorrelation(linear, subset_size=5)(X, 1, A, key=jax.random.key(0))
    with pytest.raises(ValueError, match="target"):
        d(X, 2, A)


def test_zero_attribution_is_finite():
    # Curve metrics order an all-zero attribution row-major (checked by hand in
    # test_deletion_insertion_hand_values); these are the ones that divide.
    z = jnp.zeros_like(X)
    values = [
        jmetric(
            M.FaithfulnessCorrelation(linear, n_runs=3, subset_size=2),
            X, 1, z, key=jax.random.key(0),
        ),
        jmetric(M.Sparseness(), z),
        jmetric(M.Complexity(), z),
        jmetric(M.spearman, z, z),
        jmetric(M.ssim, jnp.zeros((7, 7)), jnp.zeros((7, 7))),
    ]  # fmt: skip
    assert np.all(np.isfinite(np.asarray(values)))


def test_jit_once_vmap_and_dtypes():
    model = xa.models.MLP((1, 4, 4), n_classes=3, width=6, key=jax.random.key(0))
    xs = jax.random.uniform(jax.random.key(1), (3, 1, 4, 4))
    targets = jnp.array([0, 2, 1])
    attrs = jmetric(xa.Gradients(model), xs, targets, vmap=0)
    metric = M.Deletion(model, n_steps=4, chunk_size=2)
    traces = []

    @eqx.filter_jit
    def run(m, x, t, a):
        traces.append(None)
        return eqx.filter_vmap(m)(x, t, a)

    batched = run(metric, xs, targets, attrs)
    run(metric, xs + 0.1, targets[::-1], attrs)
    assert len(traces) == 1
    one = eqx.filter_jit(metric)
    loop = [one(x, t, a) for x, t, a in zip(xs, targets, attrs, strict=True)]
    assert_close(batched, np.asarray(loop))
    # vmap over targets for one input.
    per_target = jmetric(metric, xs[0], targets, attrs[0], vmap=(None, 0, None))
    assert_close(per_target, np.asarray([loop[0], *per_target[1:]]))
    assert_close(per_target[2], one(xs[0], targets[2], attrs[0]))
    # bfloat16 inputs (with a bfloat16 model) give float32 scalars.
    low_model = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a, model
    )
    low = jmetric(
        M.Deletion(low_model, n_steps=4),
        xs[0].astype(jnp.bfloat16), 0, attrs[0].astype(jnp.bfloat16),
    )  # fmt: skip
    assert low.dtype == jnp.float32 and np.isfinite(low)
    sparse = jmetric(M.Sparseness(), attrs[0].astype(jnp.bfloat16))
    assert sparse.dtype == jnp.float32


def test_leaderboard(tmp_path):
    model = xa.models.MLP((1, 4, 4), n_classes=3, width=4, key=jax.random.key(0))
    xs = jax.random.uniform(jax.random.key(1), (2, 1, 4, 4))
    ts = jnp.array([1, 2])
    methods = {"ignores model": Squares(model), "gradients": xa.Gradients(model)}
    board = M.leaderboard(
        model, methods, xs, ts, key=jax.random.key(0), n_steps=4,
        road_percentages=(50,),
    )  # fmt: skip
    assert set(board.scores) == set(methods)
    # The board holds Python floats of float32 results.
    assert_close(board.scores["ignores model"]["mprt"], 1.0, dtype=np.float32)
    d = jmetric(M.Deletion(model, n_steps=4), xs, ts, xs * xs, vmap=0)
    assert_close(board.scores["ignores model"]["deletion"], d.mean(), dtype=np.float32)
    assert board.table().count("\n") == 3 and board.seconds > 0
    board.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_local_lipschitz_hand_value():
    model = xa.models.MLP((4,), n_classes=2, width=3, depth=1, key=jax.random.key(0))
    x = jnp.array([0.3, -0.2, 0.5, 0.1])
    ll = M.LocalLipschitzEstimate(xa.Gradients(model), n_samples=3, stdev=0.5)
    key = jax.random.key(1)
    noise = ll.perturbations(x, key)
    g = eqx.filter_jit(xa.Gradients(model))
    want = max(
        float(jnp.linalg.norm(g(x + d, 1) - g(x, 1)) / jnp.linalg.norm(d))
        for d in noise
    )
    assert_close(jmetric(ll, x, 1, key=key), want)
