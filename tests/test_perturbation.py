"""Perturbation family: equality with Captum on identical weights, and the axioms."""

import captum.attr as ca
import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import eqx_attr as xa
from eqx_attr.torch_twins import to_torch

from .helpers import assert_close, digit_like, small_cnn

KEY = jax.random.key(0)
# Methods run jitted: eager dispatch of a batch of perturbations is slow.
J = eqx.filter_jit


def _twins(seed=0):
    m = small_cnn(seed)
    return m, to_torch(m).eval()


def _t(a):
    return torch.from_numpy(np.array(a, np.float32))[None]


def _captum(attr):
    return attr.detach().numpy()[0]


def _scores(f, target, *inputs) -> float:
    """The size of the model's scores that a perturbation attribution subtracts.

    Its rounding is relative to them (an attribution of 1e-3 between scores of 5
    carries their rounding), so they are `assert_close`'s `scale`. `target`: an
    index or a tuple of indices (a callable target that combines those scores).
    """
    idx = np.atleast_1d(target)
    return sum(float(np.abs(np.asarray(f(jnp.asarray(z)))[idx]).sum()) for z in inputs)


def tiny_mlp(seed=0, n_out=3, scale=1.0):
    """A (1, 8, 8) -> (n_out,) tanh MLP, in JAX and torch with the same weights."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(16, 64)) * scale / 8).astype(np.float32)
    b1 = rng.normal(size=16).astype(np.float32) * 0.1
    w2 = (rng.normal(size=(n_out, 16)) * scale).astype(np.float32)
    b2 = rng.normal(size=n_out).astype(np.float32)

    def f(x):
        return jnp.asarray(w2) @ jnp.tanh(jnp.asarray(w1) @ x.ravel() + b1) + b2

    net = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.Tanh()
    )
    net.append(torch.nn.Linear(16, n_out))
    with torch.no_grad():
        for layer, (w, b) in zip((net[1], net[3]), ((w1, b1), (w2, b2)), strict=True):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    return f, net


def linear_model(n_out=3, seed=0):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=(n_out, 1, 8, 8)), jnp.float32)
    c = jnp.asarray(rng.normal(size=n_out), jnp.float32)

    def f(x):
        return jnp.tensordot(w, x, axes=3) + c

    return f, w


def _feature_sums(a, mask, n):
    # The attribution of each feature (every element of a feature carries it).
    return np.array([np.asarray(a)[0][np.asarray(mask) == i][0] for i in range(n)])


# ---------------------------------------------------------------------------------
# Equality with Captum


def test_occlusion_equals_captum_clipped_last_window():
    m, tm = _twins()
    x = digit_like(1)
    # 28 - 5 = 23 is not a multiple of 3: the last window (start 24) is clipped.
    occ = xa.Occlusion(m, window=(1, 5, 5), strides=(1, 3, 3), baseline=0.3)
    ours = J(occ)(x, 7)
    theirs = ca.Occlusion(tm).attribute(
        _t(x),
        sliding_window_shapes=(1, 5, 5),
        strides=(1, 3, 3),
        baselines=0.3,
        target=7,
        perturbations_per_eval=64,
    )
    assert_close(ours, _captum(theirs), scale=_scores(m, 7, x, jnp.full_like(x, 0.3)))
    # An array baseline, a callable target, and chunking (on a tiny MLP).
    f, net = tiny_mlp(4)
    x8 = digit_like(5, (1, 8, 8))
    b = digit_like(2, (1, 8, 8)) * 0.5
    occ = xa.Occlusion(f, window=(1, 3, 2), strides=(1, 2, 2), baseline=b, chunk_size=7)
    ours = J(occ)(x8, lambda s: s[2] - s[0])
    theirs = ca.Occlusion(lambda z: net(z)[:, 2] - net(z)[:, 0]).attribute(
        _t(x8), sliding_window_shapes=(1, 3, 2), strides=(1, 2, 2), baselines=_t(b)
    )
    assert_close(ours, _captum(theirs), scale=_scores(f, (2, 0), x8, b))


def test_feature_ablation_equals_captum():
    m, tm = _twins(1)
    x = digit_like(3)
    mask = xa.masks.grid((28, 28), 7)
    # Ids are names: gaps and order do not matter.
    ours = J(xa.FeatureAblation(m, mask=mask * 3 + 5, baseline=0.2))(x, 4)
    theirs = ca.FeatureAblation(tm).attribute(
        _t(x), baselines=0.2, target=4, feature_mask=torch.from_numpy(mask)[None, None]
    )
    assert_close(ours, _captum(theirs), scale=_scores(m, 4, x, jnp.full_like(x, 0.2)))


def test_shapley_values_equal_captum_and_efficiency():
    m, tm = tiny_mlp(5)
    x = digit_like(4, (1, 8, 8))
    mask = xa.masks.grid((8, 8), 4)
    ours = J(xa.ShapleyValues(m, mask=mask, chunk_size=5))(x, 1)
    theirs = ca.ShapleyValues(tm).attribute(
        _t(x), target=1, feature_mask=torch.from_numpy(mask)[None, None]
    )
    scale = _scores(m, 1, x, jnp.zeros_like(x))
    assert_close(ours, _captum(theirs), scale=scale)
    phi = _feature_sums(ours, mask, 4)
    assert_close(phi.sum(), m(x)[1] - m(jnp.zeros_like(x))[1], scale=scale)


def test_shapley_value_sampling_equals_captum_on_the_same_orders():
    m, tm = tiny_mlp(6)
    x = digit_like(5, (1, 8, 8))
    mask = xa.masks.grid((8, 8), 2)
    svs = xa.ShapleyValueSampling(m, mask=mask, n_permutations=3, baseline=0.1)
    ours = J(svs)(x, 2, key=KEY)
    keys = jax.random.split(KEY, 3)
    orders = [np.asarray(jax.random.permutation(k, 16)).tolist() for k in keys]
    cap = ca.ShapleyValueSampling(tm)
    cap.permutation_generator = lambda n, s: iter(orders)
    theirs = cap.attribute(
        _t(x),
        baselines=0.1,
        target=2,
        n_samples=3,
        feature_mask=torch.from_numpy(mask)[None, None],
    )
    scale = _scores(m, 2, x, jnp.full_like(x, 0.1))
    assert_close(ours, _captum(theirs), scale=scale)
    # Efficiency holds exactly for every sample of orders.
    phi = _feature_sums(ours, mask, 16)
    full = m(x)[2] - m(jnp.full_like(x, 0.1))[2]
    assert_close(phi.sum(), full, scale=scale)


def _inject(samples):
    def gen(original_inp, **kwargs):
        for z in np.asarray(samples):
            yield torch.from_numpy(z[None].astype(np.int64))

    return gen


def test_kernel_shap_equals_captum_on_the_same_samples():
    f, net = tiny_mlp(0)
    x = digit_like(6, (1, 8, 8))
    mask = xa.masks.grid((8, 8), 2)
    ks = xa.KernelShap(f, mask=mask, n_samples=40)
    ours = J(ks)(x, 2, key=KEY)
    cap = ca.KernelShap(net)
    cap.perturb_func = _inject(ks.coalitions(KEY))
    theirs = cap.attribute(
        _t(x), target=2, n_samples=40, feature_mask=torch.from_numpy(mask)[None, None]
    )
    scale = _scores(f, 2, x, 0 * x)
    assert_close(ours, _captum(theirs), scale=scale)
    phi = _feature_sums(ours, mask, 16)
    assert_close(phi.sum(), f(x)[2] - f(0 * x)[2], scale=scale)


def test_lime_equals_captum_on_the_same_samples():
    f, net = tiny_mlp(1, scale=4.0)
    x = digit_like(7, (1, 8, 8))
    mask = xa.masks.grid((8, 8), 4)
    lime = xa.Lime(f, mask=mask, n_samples=48)
    ours = J(lime)(x, 0, key=KEY)
    cap = ca.Lime(net)
    cap.perturb_func = _inject(lime.coalitions(KEY))
    theirs = cap.attribute(
        _t(x), target=0, n_samples=48, feature_mask=torch.from_numpy(mask)[None, None]
    )
    ref = _captum(theirs)
    assert np.abs(ref).max() > 0.05  # the lasso keeps some features
    # Not rounding: two iterative lasso solvers (Captum's scikit-learn coordinate
    # descent, ours), each stopped by its own convergence tolerance; the bound
    # kept from before is 1e-3 of the largest coefficient (seen: ~1e-5).
    assert_close(ours, ref, atol=1e-3 * np.abs(ref).max())


@pytest.mark.parametrize("kind", ["shapley", "sampling", "kernel_shap", "lime"])
def test_surrogates_and_shapley_exact_on_linear_models(kind):
    f, w = linear_model()
    x = digit_like(8, (1, 8, 8))
    mask = xa.masks.grid((8, 8), 4)
    b = 0.25
    exact = np.array([float(jnp.sum((w[1] * (x - b))[0][mask == i])) for i in range(4)])
    method = {
        "shapley": lambda: xa.ShapleyValues(f, mask=mask, baseline=b),
        "sampling": lambda: xa.ShapleyValueSampling(f, mask, 2, baseline=b),
        "kernel_shap": lambda: xa.KernelShap(f, mask=mask, n_samples=16, baseline=b),
        "lime": lambda: xa.Lime(f, mask=mask, n_samples=32, alpha=0.0, baseline=b),
    }[kind]()
    a = J(method)(x, 1, key=KEY)
    scale = _scores(f, 1, x, jnp.full_like(x, b))
    assert_close(_feature_sums(a, mask, 4), exact, scale=scale)


# ---------------------------------------------------------------------------------
# RISE


def test_rise_masks_and_formula():
    x = digit_like(9, (1, 12, 12))
    key = jax.random.key(4)
    m0 = xa.RISE.mask(key, (12, 12), 4, 0.5)
    assert m0.shape == (12, 12)
    assert float(m0.min()) >= 0.0 and float(m0.max()) <= 1.0
    # Upsampling as the original RISE code: scikit-image's bilinear resize.
    from skimage.transform import resize

    from eqx_attr._perturbation._rise import upsample_matrix

    g = np.asarray(digit_like(3, (3, 4)))
    up = upsample_matrix(3, 16) @ g @ upsample_matrix(4, 20).T
    ref = resize(g, (16, 20), order=1, mode="reflect", anti_aliasing=False)
    assert_close(up, ref)
    # A constant cell grid (p = 1) upsamples to an all-one mask.
    assert_close(xa.RISE.mask(key, (12, 12), 4, 1.0), 1.0)
    # The map is sum_i f(x * M_i) M_i / (N p), rebuilt here from the documented keys.
    f, _ = linear_model()
    f12 = lambda z: f(jax.image.resize(z, (1, 8, 8), "linear"))  # noqa: E731
    rise = xa.RISE(f12, n_masks=20, cell_size=4, p=0.3, chunk_size=6)
    h = J(rise)(x, 2, key=key)

    @jax.jit
    def reference(x):
        keys = jax.random.split(key, 20)
        masks = jax.vmap(lambda k: xa.RISE.mask(k, (12, 12), 4, 0.3))(keys)
        scores = jax.vmap(lambda mk: f12(x * mk[None])[2])(masks)
        # The map, and the size of its terms (the scale its rounding is relative to).
        sums = jnp.tensordot(jnp.stack([scores, jnp.abs(scores)]), masks, (1, 0))
        return sums / (20 * 0.3)

    ref, terms = reference(x)
    assert_close(h, ref, scale=float(jnp.max(terms)))
    # Exact: the same compiled program on the same inputs.
    np.testing.assert_array_equal(h, J(rise)(x, 2, key=key))


# ---------------------------------------------------------------------------------
# Sharing forward passes across targets


def _conv_batch_sizes(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args)
    sizes = []

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                sizes.append(eqn.invars[0].aval.shape[0])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return sizes


@pytest.mark.parametrize(
    "build",
    [
        lambda m: xa.Occlusion(m, window=(1, 7, 7), strides=(1, 7, 7)),
        lambda m: xa.KernelShap(m, mask=xa.masks.grid((28, 28), 7), n_samples=20),
        lambda m: xa.RISE(m, n_masks=12, cell_size=7),
    ],
    ids=["Occlusion", "KernelShap", "RISE"],
)
def test_targets_share_forward_passes(build):
    method = build(small_cnn())
    x = digit_like()
    one = _conv_batch_sizes(lambda t: method(x, t, key=KEY), jnp.array(3))
    many = _conv_batch_sizes(
        lambda ts: jax.vmap(lambda t: method(x, t, key=KEY))(ts), jnp.arange(10)
    )
    assert one and sorted(one) == sorted(many)


# ---------------------------------------------------------------------------------
# Errors


def test_errors_name_the_argument():
    m = small_cnn()
    x = digit_like()
    grid = xa.masks.grid((28, 28), 7)
    with pytest.raises(TypeError, match="mask.*integer"):
        xa.FeatureAblation(m, mask=grid.astype(np.float32))
    with pytest.raises(ValueError, match="mask.*broadcast"):
        xa.FeatureAblation(m, mask=xa.masks.grid((27, 28), 7))(x, 0)
    with pytest.raises(ValueError, match="negative"):
        xa.KernelShap(m, mask=grid - 1)
    with pytest.raises(ValueError, match="window.*larger"):
        xa.Occlusion(m, window=(1, 29, 4))(x, 0)
    with pytest.raises(ValueError, match="strides"):
        xa.Occlusion(m, window=(1, 4, 4), strides=(1, 0, 2))
    with pytest.raises(ValueError, match="strides.*exceed"):
        xa.Occlusion(m, window=(1, 4, 4), strides=(1, 5, 5))(x, 0)
    with pytest.raises(ValueError, match="one size per input axis"):
        xa.Occlusion(m, window=(4, 4))(x, 0)
    with pytest.raises(ValueError, match="baseline.*broadcast"):
        xa.Occlusion(m, window=(1, 4, 4), baseline=jnp.zeros((3, 3)))(x, 0)
    for cls in (xa.KernelShap, xa.Lime):
        with pytest.raises(ValueError, match="n_samples"):
            cls(m, mask=grid, n_samples=0)
    with pytest.raises(ValueError, match="n_permutations"):
        xa.ShapleyValueSampling(m, mask=grid, n_permutations=0)
    with pytest.raises(ValueError, match="n_masks"):
        xa.RISE(m, n_masks=0)
    with pytest.raises(ValueError, match="ShapleyValueSampling.*KernelShap"):
        xa.ShapleyValues(m, mask=xa.masks.grid((28, 28), 4))
    with pytest.raises(ValueError, match="key"):
        xa.Lime(m, mask=grid)(x, 0)


# ---------------------------------------------------------------------------------
# Masks


def test_masks_grid_and_superpixels_match_skimage():
    from skimage import segmentation

    # Exact throughout: integer feature ids, from the same scikit-image calls.
    g = xa.masks.grid((5, 7), (2, 3))
    assert g.dtype == np.int32 and g.shape == (5, 7)
    np.testing.assert_array_equal(g[0], [0, 0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(g[:, 0], [0, 0, 3, 3, 6])
    img = np.asarray(digit_like(2, (3, 16, 16)))
    hwc = np.moveaxis(img, 0, -1).astype(np.float64)
    fz = xa.masks.felzenszwalb(img, scale=10.0)
    np.testing.assert_array_equal(
        fz, segmentation.felzenszwalb(hwc, scale=10.0, sigma=0.8, min_size=20)
    )
    sl = xa.masks.slic(img, n_segments=6)
    ref = segmentation.slic(hwc, n_segments=6, compactness=10.0, start_label=0)
    np.testing.assert_array_equal(sl, ref)
    # Shaped for the `mask` argument of a (C, H, W) image.
    a = xa.FeatureAblation(lambda z: jnp.sum(z, axis=(1, 2)), mask=sl)(
        jnp.asarray(img), 0
    )
    assert a.shape == img.shape


# ---------------------------------------------------------------------------------
# PAIR's Blur IG and Guided IG, driven through PAIR's call-model function


def _pair_call(model, target):
    import saliency.core as sc

    grads = jax.jit(jax.vmap(jax.grad(lambda z: model(z)[target])))

    def call(x_batch, call_model_args=None, expected_keys=None):
        g = grads(jnp.asarray(np.moveaxis(x_batch, -1, 1), jnp.float32))
        return {sc.base.INPUT_OUTPUT_GRADIENTS: np.moveaxis(np.asarray(g), 1, -1)}

    return call


def test_blur_ig_equals_pair_and_scipy_blur():
    import saliency.core as sc
    from scipy import ndimage

    from eqx_attr._gradient._blur_ig import gaussian_blur

    img = np.asarray(digit_like(1, (2, 9, 11)))
    for s in (0.01, 0.7, 3.0, 20.0):
        ref = ndimage.gaussian_filter(img, sigma=[0, s, s], mode="constant")
        ours = gaussian_blur(jnp.asarray(img), jnp.float32(s), 82)
        assert_close(ours, ref)
    f, _ = tiny_mlp(2)
    x = np.asarray(digit_like(1, (1, 8, 8)))
    # PAIR's batches reuse one sigma spacing, so it is exact with batch_size=1.
    ref = sc.BlurIG().GetMask(
        np.moveaxis(x, 0, -1), _pair_call(f, 1), max_sigma=3, steps=6, sqrt=True
    )
    ours = J(xa.BlurIG(f, max_sigma=3, steps=6, sqrt=True, chunk_size=4))(x, 1)
    # The path's derivative is PAIR's finite difference of two blurred images over
    # grad_step = 0.01: it multiplies the blurs' rounding (ours by XLA, PAIR's by
    # SciPy) by up to 1 / 0.01, ~1e-5 of the largest value here.
    assert_close(ours, np.moveaxis(ref, -1, 0), rtol=1e-4)


def test_guided_ig_equals_pair(monkeypatch):
    import saliency.core as sc

    # saliency 0.2.1 calls np.quantile(..., interpolation=), removed in NumPy 2.
    quantile = np.quantile
    monkeypatch.setattr(
        np,
        "quantile",
        lambda a, q, interpolation="linear", **kw: quantile(a, q, method=interpolation),
    )
    f, _ = tiny_mlp(3)
    x = np.asarray(digit_like(2, (1, 8, 8)))
    ref = sc.GuidedIG().GetMask(np.moveaxis(x, 0, -1), _pair_call(f, 0), x_steps=8)
    ours = J(xa.GuidedIG(f, steps=8))(x, 0)
    assert_close(ours, np.moveaxis(ref, -1, 0))
    # max_dist = 0 is IG on the straight line with a left Riemann sum.
    ig = xa.IntegratedGradients(f, n_steps=8, method="riemann_left")(x, 0)
    gig = J(xa.GuidedIG(f, steps=8, max_dist=0.0))(x, 0)
    assert_close(gig, ig)
