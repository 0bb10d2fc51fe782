"""pytorch-grad-cam's metrics equal their formulas (pytorch-grad-cam does not import
without torchvision): `metrics/cam_mult_image.py`, `perturbation_confidence.py`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, jmetric, small_cnn

M = xa.metrics


def test_cam_mult_image_confidence_change_formula():
    model = small_cnn()
    xs = jax.random.uniform(jax.random.key(0), (3, 1, 28, 28))
    cams = jax.random.uniform(jax.random.key(1), (3, 28, 28))
    ts = jnp.array([1, 4, 7])
    for score in ("probability", "logit"):
        metric = M.CamMultImageConfidenceChange(model, score=score)
        got = jmetric(metric, xs, ts, cams, vmap=0)
        logits0 = jax.vmap(model)(xs)
        logits1 = jax.vmap(model)(xs * cams[:, None])
        if score == "probability":
            logits0, logits1 = jax.nn.softmax(logits0), jax.nn.softmax(logits1)
        rows = jnp.arange(3)
        # grad-cam: scores_after_imputation - scores (return_diff=True).
        want = np.asarray(logits1[rows, ts] - logits0[rows, ts], np.float64)
        scale = float(jnp.max(jnp.abs(logits0[rows, ts])))  # terms that cancel
        assert_close(got, want, dtype=np.float32, scale=scale)
        after = M.CamMultImageConfidenceChange(model, score=score, diff=False)
        got = jmetric(after, xs, ts, cams, vmap=0)
        assert_close(got, np.asarray(logits1[rows, ts]), dtype=np.float32)
    with pytest.raises(ValueError, match="score"):
        M.CamMultImageConfidenceChange(model, score="accuracy")
    with pytest.raises(ValueError, match="attribution"):
        M.CamMultImageConfidenceChange(model)(xs[0], 1, cams[0, :5])


def _gradcam_road(model, x, target, cam, percentiles, order, score):
    """pytorch-grad-cam's road.py in NumPy (noise 0): `RemoveMostRelevantFirst`
    thresholds with `np.percentile`, keeps `m < threshold` (m = 1 - cam for LeRF),
    and imputes the rest by Rong et al.'s system (Quantus's NumPy solver of the
    same equations as `NoisyLinearImputer.setup_sparse_system`)."""
    from ._quantus_import import quantus

    impute = quantus.functions.perturb_func.noisy_linear_imputation

    def f(z):
        out = model(jnp.asarray(z, jnp.float32))
        out = jax.nn.softmax(out) if score == "probability" else out
        return float(out[target])

    def averaged(kind):
        scores = []
        for p in percentiles:
            m = 1 - cam if kind == "lerf" else cam
            keep = m < np.percentile(m, p)
            idx = np.flatnonzero(~keep)
            z = impute(np.asarray(x, np.float64).copy(), idx, noise=0.0)
            scores.append(f(z) - f(x))
        return np.mean(scores)

    if order == "combined":
        return (averaged("lerf") - averaged("morf")) / 2
    return averaged(order)


@pytest.mark.parametrize(
    "order, score",
    [("morf", "probability"), ("lerf", "logit"), ("combined", "probability")],
)
def test_road_confidence_change_formula(order, score):
    model = small_cnn()
    x = jax.random.uniform(jax.random.key(2), (1, 28, 28))
    cam = np.asarray(jax.random.uniform(jax.random.key(3), (28, 28)), np.float64)
    pct = (10, 50, 80)
    metric = M.ROADConfidenceChange(
        model, percentiles=pct, order=order, noise=0.0, score=score
    )
    got = jmetric(metric, x, 3, jnp.asarray(cam, jnp.float32))
    want = _gradcam_road(model, np.asarray(x), 3, cam, pct, order, score)
    # A difference of scores: the rounding is relative to the scores themselves;
    # the imputation is solved by CG to 1e-7 here, by a direct solver there.
    scale = float(jnp.max(jnp.abs(model(x)))) if score == "logit" else 1.0
    assert_close(got, want, dtype=np.float32, scale=scale)


def test_road_confidence_change_noise_and_errors():
    model = small_cnn()
    x = jax.random.uniform(jax.random.key(2), (1, 28, 28))
    cam = jax.random.uniform(jax.random.key(3), (28, 28))
    metric = M.ROADConfidenceChange(model, percentiles=(50,), order="morf")
    a = jmetric(metric, x, 3, cam, key=jax.random.key(0))
    b = jmetric(metric, x, 3, cam, key=jax.random.key(1))
    assert np.isfinite(a) and a != b  # the noise is drawn from `key`
    with pytest.raises(ValueError, match="key"):
        metric(x, 3, cam)
    with pytest.raises(ValueError, match="percentiles"):
        M.ROADConfidenceChange(model, percentiles=(150,))
    with pytest.raises(ValueError, match="order"):
        M.ROADConfidenceChange(model, order="both")
