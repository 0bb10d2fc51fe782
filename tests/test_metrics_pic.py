"""SIC and AIC equal PAIR's `saliency.metrics.pic.compute_pic_metric` on identical
images, saliency maps, random masks and model outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, jmetric

pic = pytest.importorskip("saliency.metrics.pic")
M = xa.metrics
H = 16


@pytest.fixture(autouse=True)
def _numpy2_trapz(monkeypatch):
    # saliency 0.2.1 calls `np.trapz`, which NumPy 2 renamed `np.trapezoid`.
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def _case(channels: int, seed: int):
    rng = np.random.default_rng(seed)
    img = (rng.random((H, H, channels)) * 255).astype(np.uint8)
    img[4:12, 4:12] = 255  # a bright object: the blurred image compresses better
    img = img[..., 0] if channels == 1 else img
    x = jnp.asarray(np.moveaxis(np.atleast_3d(img), -1, 0).astype(np.float32) / 255)
    sal = rng.normal(size=(H, H)).astype(np.float32)
    mask = np.zeros((H, H), bool)
    mask.flat[rng.choice(H * H, int(H * H * 0.05), replace=False)] = True
    return img, x, sal, mask


@pytest.fixture(scope="module")
def models():
    cnn = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    rgb = xa.models.SmallCNN(in_channels=3, width=4, key=jax.random.key(1))
    return {1: cnn, 3: rgb}


def _tv(z):
    return jnp.sum(jnp.abs(jnp.diff(z, axis=-1)))


def _detail_model(x):
    """Class 0 while the image keeps over half of `x`'s total variation, else 1: a
    prediction that the blurred images change (random CNNs rarely do)."""
    half = float(_tv(x)) / 2
    return lambda z: jnp.stack([_tv(z) - half, jnp.zeros(())])


def _pair(model, img, sal, mask, target, accuracy, **kw):
    def pred_func(batch):
        z = jnp.asarray(batch.astype(np.float32) / 255)
        z = z[:, None] if z.ndim == 3 else jnp.moveaxis(z, -1, 1)
        logits = jax.vmap(model)(z)
        if accuracy:
            return list(np.asarray(jnp.argmax(logits, -1) == target, np.float64))
        return list(np.asarray(jax.nn.softmax(logits)[:, target], np.float64))

    return pic.compute_pic_metric(
        img, sal, mask, pred_func, list(M._pic.PAIR_THRESHOLDS), **kw
    )


@pytest.mark.parametrize(
    "channels, cls, keep",
    [(1, M.SIC, True), (3, M.SIC, False), (1, M.AIC, True), (3, M.AIC, True)],
)
def test_pic_equals_pair(models, channels, cls, keep):
    model = models[channels]
    compared = 0
    for seed in range(5):
        img, x, sal, mask = _case(channels, seed)
        if cls is M.AIC:
            model = _detail_model(x)
        target = int(jnp.argmax(model(x)))
        metric = cls(model, min_pred_value=0.0, keep_monotonous=keep, n_points=200)
        args = (x, target, jnp.asarray(sal))
        curve = jmetric(metric, *args, fn="curve", random_mask=jnp.asarray(mask))
        auc = jmetric(metric, *args, random_mask=jnp.asarray(mask))
        kw = dict(min_pred_value=0.0, keep_monotonous=keep, num_data_points=200)
        try:
            want = _pair(model, img, sal, mask, target, cls is M.AIC, **kw)
        except pic.ComputePicMetricError:
            # PAIR skips the image; ours says so with NaN.
            assert np.all(np.isnan(curve)) and np.isnan(auc)
            continue
        compared += 1
        # float32 against PAIR's float64 normalisations.
        assert_close(curve, want.curve_y, dtype=np.float32)
        assert_close(auc, want.auc, dtype=np.float32)
    assert compared >= 2


def test_pic_nan_where_pair_skips(models):
    model = models[1]
    img, x, sal, mask = _case(1, 0)
    target = int(jnp.argmax(model(x)))
    with pytest.raises(pic.ComputePicMetricError):
        _pair(model, img, sal, mask, target, False, min_pred_value=0.99)
    metric = M.SIC(model, min_pred_value=0.99)
    got = jmetric(metric, x, target, jnp.asarray(sal), random_mask=jnp.asarray(mask))
    assert np.isnan(got)


def test_pic_batched_with_jax_blur_and_information(models):
    model = models[1]
    xs = jnp.stack([_case(1, s)[1] for s in range(3)])
    sals = jnp.stack([jnp.asarray(_case(1, s)[2]) for s in range(3)])
    ts = jnp.argmax(jax.vmap(model)(xs), -1)
    blur = lambda x, kept: M.linear_imputation(x, ~kept)
    info = lambda z: jnp.sum(jnp.abs(jnp.diff(z, axis=-1)))  # total variation
    metric = M.SIC(model, min_pred_value=0.0, blur=blur, information=info)
    keys = jax.random.split(jax.random.key(2), 3)
    got = jmetric(metric, xs, ts, sals, vmap=0, key=keys)
    one = [jmetric(metric, xs[i], ts[i], sals[i], key=keys[i]) for i in range(3)]
    assert got.shape == (3,)
    # The same program, vmapped or not, up to rounding.
    assert_close(got, jnp.stack(one))
    # The random mask has int(H W fraction) pixels.
    mask = metric.random_mask((H, H), keys[0])
    assert int(mask.sum()) == int(H * H * 0.01)


def test_pic_errors(models):
    model = models[1]
    with pytest.raises(ValueError, match="thresholds"):
        M.SIC(model, thresholds=(0.5, 2.0))
    with pytest.raises(ValueError, match="fraction"):
        M.AIC(model, fraction=1.5)
    with pytest.raises(ValueError, match="blur"):
        M.SIC(model, blur="cubic")
    _, x, sal, _ = _case(1, 0)
    with pytest.raises(ValueError, match="key"):
        M.SIC(model)(x, 0, jnp.asarray(sal))
    with pytest.raises(ValueError, match="mask"):
        M.SIC(model)(x, 0, jnp.asarray(sal), random_mask=jnp.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="target"):
        M.AIC(model)(x, None, jnp.asarray(sal), key=jax.random.key(0))
