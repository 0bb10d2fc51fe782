"""pytorch-grad-cam's ARCC (`metrics/arcc.py`) on hand-derived values: Coherency,
Complexity (mean |cam|), ROADCombined and their harmonic mean."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, jmetric

M = xa.metrics

# A 1 x 3 image and a linear two-class model, score = w . z: each imputed image of
# ROAD is known by hand (below), and the gradient of the score is w everywhere.
X = np.array([[[0.2, 0.7, 0.4]]], np.float32)
W = np.array([[[1.0, -0.5, 2.0]]], np.float32)
CAM = np.array([[0.1, 0.5, 0.9]], np.float32)


class _Linear(eqx.Module):
    w: jax.Array

    def __call__(self, z):
        s = jnp.sum(self.w * z)
        return jnp.stack([s, -s])


def _pearson(a, b):
    """grad-cam's `batch_pearson_coherency` for one pair (ddof 1, eps 1e-8)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    da, db = a - a.mean(), b - b.mean()
    n1 = a.size - 1
    cov = (da * db).sum() / n1
    return cov / (np.sqrt((da**2).sum() / n1) * np.sqrt((db**2).sum() / n1) + 1e-8)


def test_arcc_hand_derived_on_a_linear_model():
    model = _Linear(jnp.asarray(W))
    method = xa.Gradients(model)  # its map of any image is w
    x0, x1, x2 = X.ravel().astype(np.float64)
    f = lambda z: float(np.dot(W.ravel(), z))  # noqa: E731
    # grad-cam removes the pixels with m >= np.percentile(m, p) (1 - m for LeRF).
    # CAM = (0.1, 0.5, 0.9): p = 20, 40 remove the last two pixels, p = 60, 80 the
    # last one (LeRF: the first two, the first). Rong et al.'s imputation of a
    # 1 x 3 row: a removed pixel takes the value of its kept neighbour.
    morf = [[x0, x0, x0]] * 2 + [[x0, x1, x1]] * 2
    lerf = [[x2, x2, x2]] * 2 + [[x1, x1, x2]] * 2
    fx = f(X.ravel())
    road = np.mean(
        [((f(lz) - fx) - (f(mz) - fx)) / 2 for lz, mz in zip(lerf, morf, strict=True)]
    )
    coherency = (_pearson(W, CAM) + 1) / 2
    complexity = np.abs(CAM).mean()
    eps = 1e-8
    r = np.clip(2 * road, 0, 1)
    want = 3 / (1 / (coherency + eps) + 1 / (1 - complexity + eps) + 1 / (r + eps))

    arcc = M.ARCC(model, method, noise=0.0, score="logit")
    x, cam = jnp.asarray(X), jnp.asarray(CAM)
    got = jmetric(arcc, x, 0, cam, fn="components")
    assert_close(got["road"], road, dtype=np.float32, scale=abs(fx))
    assert_close(got["coherency"], coherency, dtype=np.float32)
    assert_close(got["complexity"], complexity, dtype=np.float32)
    assert_close(jmetric(arcc, x, 0, cam), want, dtype=np.float32)
    # the same map shaped like x; Coherency on its own
    assert_close(jmetric(arcc, x, 0, cam[None]), want, dtype=np.float32)
    c = jmetric(M.Coherency(method), x, 0, cam)
    assert_close(c, coherency, dtype=np.float32)


def test_arcc_scale_constant_maps_and_road_floor():
    model = _Linear(jnp.asarray(W))
    method = xa.Gradients(model)
    x = jnp.asarray(X)
    # grad-cam's scale_cam_image: (m - min) / (1e-7 + max(m - min)).
    m = np.array([[2.0, -1.0, 5.0]], np.float32)
    scaled = (m - m.min()) / (1e-7 + (m - m.min()).max())
    assert_close(M.scale_cam(jnp.asarray(m)), scaled, dtype=np.float32)
    plain = M.ARCC(model, method, noise=0.0, score="logit")
    scaling = M.ARCC(model, method, noise=0.0, score="logit", scale=True)
    assert_close(
        jmetric(scaling, x, 0, jnp.asarray(m)),
        jmetric(plain, x, 0, jnp.asarray(scaled)),
        dtype=np.float32,
    )
    # A constant method map has no correlation: coherency 1/2. A model whose
    # score ignores the image leaves ROAD at 0, and ARCC at 3 / (1/eps + ...).
    flat = _Linear(jnp.zeros((1, 1, 3)))
    parts = jmetric(M.ARCC(flat, xa.Gradients(flat), noise=0.0), x, 0,
                    jnp.asarray(CAM), fn="components")  # fmt: skip
    assert_close(parts["coherency"], 0.5, dtype=np.float32)
    assert_close(parts["road"], 0.0, dtype=np.float32, atol=1e-7)
    eps = 1e-8
    want = 3 / (1 / (0.5 + eps) + 1 / (1 - 0.5 + eps) + 1 / eps)
    got = jmetric(M.ARCC(flat, xa.Gradients(flat), noise=0.0), x, 0, jnp.asarray(CAM))
    assert_close(got, want, dtype=np.float32)


def test_arcc_batched_with_noise_equals_its_components():
    """Batched, with ROAD's noise: the road term is grad-cam's `ROADCombined`
    (`ROADConfidenceChange`) and coherency `Coherency`, each with its half of the
    key; ARCC is their harmonic mean."""
    model = _Linear(jax.random.normal(jax.random.key(3), (1, 4, 4)))
    method = xa.SmoothGrad(xa.Gradients(model), n_samples=2)  # a random method
    xs = jax.random.uniform(jax.random.key(0), (2, 1, 4, 4))
    ts = jnp.array([0, 1])
    cams = jax.random.uniform(jax.random.key(1), (2, 4, 4))
    keys = jax.random.split(jax.random.key(2), 2)
    arcc = M.ARCC(model, method)
    parts = jmetric(arcc, xs, ts, cams, key=keys, fn="components", vmap=0)
    got = jmetric(arcc, xs, ts, cams, key=keys, vmap=0)
    road_keys, method_keys = jax.vmap(jax.random.split)(keys).transpose(1, 0)
    road = M.ROADConfidenceChange(model, (20, 40, 60, 80), order="combined")
    assert_close(parts["road"], jmetric(road, xs, ts, cams, key=road_keys, vmap=0),
                 dtype=np.float32, scale=1.0)  # fmt: skip
    coh = jmetric(M.Coherency(method), xs, ts, cams, key=method_keys, vmap=0)
    assert_close(parts["coherency"], coh, dtype=np.float32)
    p = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), parts)
    r = np.clip(2 * p["road"], 0, 1)
    want = 3 / (
        1 / (p["coherency"] + 1e-8) + 1 / (1 - p["complexity"] + 1e-8) + 1 / (r + 1e-8)
    )
    assert_close(got, want, dtype=np.float32)


def test_arcc_errors():
    model = _Linear(jnp.asarray(W))
    x, cam = jnp.asarray(X), jnp.asarray(CAM)
    with pytest.raises(TypeError, match="method"):
        M.ARCC(model, "gradcam")
    with pytest.raises(TypeError, match="method"):
        M.Coherency(3)
    with pytest.raises(ValueError, match="percentiles"):
        M.ARCC(model, xa.Gradients(model), percentiles=(120,))
    with pytest.raises(ValueError, match="score"):
        M.ARCC(model, xa.Gradients(model), score="accuracy")
    with pytest.raises(TypeError, match="scale"):
        M.ARCC(model, xa.Gradients(model), scale=1)
    with pytest.raises(ValueError, match="key"):  # ROAD's noise needs a key
        M.ARCC(model, xa.Gradients(model))(x, 0, cam)
    with pytest.raises(ValueError, match="cam|attribution"):
        M.ARCC(model, xa.Gradients(model), noise=0.0)(x, 0, cam[:, :2])
    # A method whose maps are coarser than the input (a CAM with resize=None).
    with pytest.raises(ValueError, match="resize"):
        M.Coherency(_Coarse(model))(x, 0, cam)


class _Coarse(xa.AbstractAttribution):
    """A map at a coarser resolution than the input, as `resize=None` gives."""

    model: eqx.Module

    def __call__(self, x, target=None, *, key=None):
        return jnp.ones((1, 1))


class _Squares(xa.AbstractAttribution):
    """Ignores the model: the explanation is x squared."""

    model: eqx.Module

    def __call__(self, x, target=None, *, key=None):
        return x * x


def test_leaderboard_arcc_and_efficient_mprt_columns():
    model = xa.models.MLP((1, 4, 4), n_classes=3, width=4, key=jax.random.key(0))
    xs = jax.random.uniform(jax.random.key(1), (2, 1, 4, 4))
    ts = jnp.array([1, 2])
    # tests/test_metrics.py::test_leaderboard's settings: the same programs, which
    # the suite's compilation cache then holds.
    methods = {"ignores model": _Squares(model), "gradients": xa.Gradients(model)}
    key = jax.random.key(0)
    board = M.leaderboard(model, methods, xs, ts, key=key, n_steps=4,
                          road_percentages=(50,))  # fmt: skip
    # A method that ignores the model explains the randomised one identically.
    assert_close(board.scores["ignores model"]["efficient_mprt"], 0.0, atol=1e-7)
    # ARCC of each example's map (summed over channels, scaled to [0, 1]) with
    # the leaderboard's keys for it: the method's ROAD key, folded with 1.
    k_road = jax.random.split(jax.random.fold_in(key, 1), 3)[1]
    keys = jax.random.split(jax.random.fold_in(k_road, 1), 2)
    method = methods["gradients"]
    attrs = jax.vmap(method)(xs, ts)
    arcc = M.ARCC(model, method, scale=True)
    want = jmetric(arcc, xs, ts, attrs, key=keys, vmap=0)
    assert_close(board.scores["gradients"]["arcc"], np.mean(want), dtype=np.float32)
    assert set(board.scores["gradients"]) == set(M._leaderboard.COLUMNS)
