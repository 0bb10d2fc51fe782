"""The CAM family, checked against hand-derived values and defining formulas."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, digit_like, jcall, small_cnn, tree_allclose

# ---------------------------------------------------------------------------------
# A tiny net whose Grad-CAM is derived by hand:
#   conv 3x3 (1 -> 2 channels, bias, no padding) -> ReLU -> flatten -> linear -> ReLU
# Input x[i, j] = 4 i + j on a 4x4 grid, so the conv output is 2x2.
# Channel 0 copies the centre pixel:        A0 = [[5, 6], [9, 10]]
# Channel 1 is 16 - 2 * centre pixel:       A1 = [[6, 4], [-2, -4]]  (pre-ReLU)
#                                       relu(A1) = [[6, 4], [0, 0]]
# Flattened (channel, row, col): [5, 6, 9, 10, 6, 4, 0, 0]
# Class 0: v0 = [1, 0, 0, 1, 0, 2, -1, 0], b0 = 0 -> 5 + 10 + 8 = 23 > 0 (ReLU open)
# Class 1: v1 = [-1, 0, 0, 0, 0, 0, 0, 0], b1 = 10 -> 5 > 0.


def _tiny_net():
    conv = eqx.nn.Conv2d(1, 2, 3, key=jax.random.key(0))
    w = np.zeros((2, 1, 3, 3), np.float32)
    w[0, 0, 1, 1] = 1.0
    w[1, 0, 1, 1] = -2.0
    b = np.array([0.0, 16.0], np.float32).reshape(2, 1, 1)
    conv = eqx.tree_at(lambda c: (c.weight, c.bias), conv, (jnp.asarray(w), b))
    lin = eqx.nn.Linear(8, 2, key=jax.random.key(1))
    v = np.array([[1, 0, 0, 1, 0, 2, -1, 0], [-1, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    lin = eqx.tree_at(
        lambda lin: (lin.weight, lin.bias),
        lin,
        (jnp.asarray(v), jnp.array([0.0, 10.0])),
    )
    relu = eqx.nn.Lambda(jax.nn.relu)
    return eqx.nn.Sequential([conv, relu, eqx.nn.Lambda(jnp.ravel), lin, relu])


def _tiny_x():
    return jnp.arange(16.0).reshape(1, 4, 4)


def test_gradcam_hand_derived_at_relu_output():
    # d score0 / d relu(A) = v0 reshaped: G0 = [[1,0],[0,1]] (mean 1/2),
    # G1 = [[0,2],[-1,0]] (mean 1/4). Map = A0/2 + relu(A1)/4 = [[4,4],[4.5,5]].
    net, x = _tiny_net(), _tiny_x()
    assert_close(eqx.filter_jit(net)(x), jnp.array([23.0, 5.0]))
    cam = xa.GradCAM(net, lambda m: m.layers[1], resize=None)
    assert_close(jcall(cam, x, 0), jnp.array([[4.0, 4.0], [4.5, 5.0]]))
    # Class 1: G0 = [[-1,0],[0,0]] (mean -1/4), G1 = 0: map = -A0/4, all negative.
    raw = jcall(xa.GradCAM(net, lambda m: m.layers[1], relu=False, resize=None), x, 1)
    assert_close(raw, jnp.array([[-1.25, -1.5], [-2.25, -2.5]]))
    # ReLU of that negative map: zero, to rounding of terms of the size of `raw`.
    assert_close(jcall(cam, x, 1), jnp.zeros((2, 2)), scale=np.abs(raw).max())


def test_gradcam_hand_derived_at_conv_output():
    # Before the ReLU, G1 is masked where A1 < 0: G1 = [[0,2],[0,0]] (mean 1/2),
    # G0 unchanged (mean 1/2). Map = A0/2 + A1/2 = [[5.5,5],[3.5,3]].
    net, x = _tiny_net(), _tiny_x()
    cam = jcall(xa.GradCAM(net, lambda m: m.layers[0], relu=False, resize=None), x, 0)
    assert_close(cam, jnp.array([[5.5, 5.0], [3.5, 3.0]]))
    # resized to the 4x4 input: bilinear keeps the mean of a 2x upsampled ramp
    big = jcall(xa.GradCAM(net, lambda m: m.layers[0]), x, 0)
    assert big.shape == (4, 4)
    assert_close(np.mean(np.asarray(big)), 17.0 / 4)
    near = jcall(xa.GradCAM(net, lambda m: m.layers[0], resize="nearest"), x, 0)
    assert_close(near, np.repeat(np.repeat(np.asarray(cam), 2, 0), 2, 1))


# ---------------------------------------------------------------------------------
# CAM on conv -> ReLU -> global average pooling -> linear (SmallCNN's end)


def test_cam_is_classifier_weighted_sum_and_gradcam_is_cam_over_hw():
    m, x = small_cnn(3), digit_like(3)
    layer, fc = (lambda m: m.conv2), (lambda m: m.fc)
    kw = dict(relu=False, resize=None)

    @jax.jit
    def maps(x):
        cams = [xa.CAM(m, layer, classifier=fc, **kw)(x, t) for t in (0, 6)]
        grad_cams = [xa.GradCAM(m, layer, **kw)(x, t) for t in (0, 6)]
        return cams, grad_cams, xa.CAM(m, layer, classifier=fc)(x, 6)

    @jax.jit
    def reference(x):
        a = m.features(x)  # conv -> ReLU output, (32, 7, 7)
        expected = [jnp.tensordot(m.fc.weight[t], a, axes=1) for t in (0, 6)]
        return expected, m(x)

    cams, grad_cams, default = maps(x)
    expected, scores = reference(x)
    for t, cam, grad_cam, want in zip((0, 6), cams, grad_cams, expected, strict=True):
        assert_close(cam, want)
        # CAM's defining identity: its mean plus the bias is the class score
        # (float32 rounding is relative to the terms, which nearly cancel here)
        mean, bias = float(jnp.mean(cam)), float(m.fc.bias[t])
        scale = abs(mean) + abs(bias)
        assert_close(mean + bias, float(scores[t]), dtype=np.float32, scale=scale)
        assert_close(grad_cam, cam / (7 * 7))
    assert default.shape == (28, 28) and float(jnp.min(default)) >= 0


class _Doubled(eqx.Module):
    net: eqx.Module

    def __call__(self, x):
        return 2.0 * self.net(x)


def test_cam_errors():
    m, x = small_cnn(), digit_like()
    with pytest.raises(ValueError, match="classifier's weight has shape"):
        xa.CAM(m, lambda m: m.conv1, classifier=lambda m: m.fc)(x, 0)
    with pytest.raises(ValueError, match="2-D `weight`"):
        xa.CAM(m, lambda m: m.conv2, classifier=lambda m: m.conv2)(x, 0)
    with pytest.raises(ValueError, match="`classifier`"):
        xa.CAM(m, lambda m: m.conv2, classifier=lambda m: m.head)(x, 0)
    # Something after the classifier: refused at trace time (tests/test_cam_pytree.py).
    d = _Doubled(m)
    cam = xa.CAM(d, lambda d: d.net.conv2, classifier=lambda d: d.net.fc)
    with pytest.raises(Exception, match="global average pooling"):
        jax.block_until_ready(cam(x, 0))


# ---------------------------------------------------------------------------------
# The variants against their defining formulas, on activations and gradients
# computed by splitting SmallCNN by hand (layer conv1, where gradients vary in
# space, unlike after global average pooling).


def _split(m, x, t):
    a, g = _split_jit(m, x, t)
    return np.asarray(a, np.float64), np.asarray(g, np.float64)


@eqx.filter_jit
def _split_jit(m, x, t):
    a = m.conv1(x)
    g = jax.grad(lambda a: m.fc(jnp.mean(m.conv2(a), axis=(1, 2)))[t])(a)
    return a, g


def _gradcampp(a, g):
    g2, g3 = g**2, g**3
    den = 2 * g2 + a.sum(axis=(1, 2))[:, None, None] * g3
    alpha = np.divide(g2, den, out=np.zeros_like(g2), where=den != 0)
    w = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    return np.einsum("k,kij->ij", w, a)


def _xgradcam(a, g):
    s = a.sum(axis=(1, 2))
    w = np.divide((g * a).sum(axis=(1, 2)), s, out=np.zeros_like(s), where=s != 0)
    return np.einsum("k,kij->ij", w, a)


FORMULAS = {
    "GradCAM": lambda a, g: np.einsum("k,kij->ij", g.mean(axis=(1, 2)), a),
    "GradCAMPlusPlus": _gradcampp,
    "XGradCAM": _xgradcam,
    "HiResCAM": lambda a, g: (g * a).sum(axis=0),
    "LayerCAM": lambda a, g: (np.maximum(g, 0) * a).sum(axis=0),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_gradient_variants_match_formulas(name):
    m, x = small_cnn(4), digit_like(4)
    a, g = _split(m, x, 5)
    expected = FORMULAS[name](a, g)
    method = getattr(xa, name)
    raw = jcall(method(m, lambda m: m.conv1, relu=False, resize=None), x, 5)
    scale = np.max(np.abs(expected))
    assert scale > 0
    assert_close(raw, expected)
    clipped = jcall(method(m, lambda m: m.conv1, resize=None), x, 5)
    assert_close(clipped, np.maximum(expected, 0), scale=scale)


def test_eigencam_matches_numpy_svd_with_documented_sign():
    m, x = small_cnn(4), digit_like(4)
    a = np.asarray(eqx.filter_jit(m.conv1)(x), np.float64)
    feats = a.reshape(a.shape[0], -1).T
    centred = feats - feats.mean(axis=0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    v = v if v.sum() >= 0 else -v
    expected = (centred @ v).reshape(a.shape[1:])
    raw = jcall(xa.EigenCAM(m, lambda m: m.conv1, relu=False, resize=None), x)
    # A float32 SVD's leading vector is perturbed by rounding / spectral gap, an
    # error relative to the whole map (the floor), not to each pixel.
    assert_close(raw, expected, rtol=1e-4)
    # the documented orientation: positive correlation with the total activation
    total = a.sum(axis=0)
    assert np.sum((raw - raw.mean()) * (total - total.mean())) > 0


def _bilinear_np(a, size):
    """Half-pixel bilinear upsampling with edge clamping, written out."""

    def matrix(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
            lo = int(np.floor(src))
            hi = min(lo + 1, n_in - 1)
            w[i, lo] += 1 - (src - lo)
            w[i, hi] += src - lo
        return w

    return matrix(a.shape[0], size[0]) @ a @ matrix(a.shape[1], size[1]).T


def test_scorecam_matches_python_loop():
    m, x = small_cnn(5), digit_like(5)
    a = np.asarray(eqx.filter_jit(m.features)(x), np.float64)  # (8, 14, 14) for width 4
    score = eqx.filter_jit(lambda x, mask: m(x * mask)[2])  # one program, every k
    scores = []
    for k in range(a.shape[0]):
        up = _bilinear_np(a[k], (28, 28))
        lo, hi = up.min(), up.max()
        mask = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
        scores.append(
            float(score(x, jnp.asarray(mask, jnp.float32).reshape(1, 28, 28)))
        )
    w = np.exp(np.array(scores) - max(scores))
    w /= w.sum()
    expected = np.einsum("k,kij->ij", w, a)
    for chunk in (None, 3):
        got = jcall(
            xa.ScoreCAM(
                m, lambda m: m.conv2, relu=False, resize=None, chunk_size=chunk
            ),
            x,
            2,
        )
        assert_close(got, expected)


def test_ablationcam_matches_python_loop():
    m, x = small_cnn(6), digit_like(6)
    a, y = eqx.filter_jit(lambda x: (m.features(x), m(x)[4]))(x)
    y = float(y)
    head = eqx.filter_jit(lambda a: m.fc(jnp.mean(a, axis=(1, 2)))[4])  # every k
    weights = []
    for k in range(a.shape[0]):
        ablated = np.array(a)
        ablated[k] = 0.0
        y_k = float(head(ablated))
        weights.append((y - y_k) / y)
    expected = np.einsum("k,kij->ij", np.array(weights), np.asarray(a, np.float64))
    for chunk in (None, 3):
        got = jcall(
            xa.AblationCAM(
                m, lambda m: m.conv2, relu=False, resize=None, chunk_size=chunk
            ),
            x,
            4,
        )
        assert_close(got, expected)


def test_guided_gradcam_is_the_product_of_its_parts():
    m, x = small_cnn(7), digit_like(7)
    layer = lambda m: m.conv1
    guided = np.asarray(jcall(xa.GuidedBackprop(m), x, 3))
    for kw in ({}, dict(relu=False, resize="nearest")):
        got = jcall(xa.GuidedGradCAM(m, layer, **kw), x, 3)
        h = np.asarray(jcall(xa.GradCAM(m, layer, **kw), x, 3))
        expected = h.reshape(1, 28, 28) * guided
        scale = float(np.max(np.abs(expected)))
        assert got.shape == x.shape and scale > 0
        assert_close(got, expected)
    with pytest.raises(ValueError, match="must be resized"):
        xa.GuidedGradCAM(m, layer, resize=None)


# ---------------------------------------------------------------------------------
# Every CAM method: shapes, jit, vmap over examples and over targets

BUILDERS = {
    "CAM": lambda m, **kw: xa.CAM(m, lambda m: m.conv2, lambda m: m.fc, **kw),
    "GradCAM": lambda m, **kw: xa.GradCAM(m, lambda m: m.conv2, **kw),
    "GradCAMPlusPlus": lambda m, **kw: xa.GradCAMPlusPlus(m, lambda m: m.conv1, **kw),
    "XGradCAM": lambda m, **kw: xa.XGradCAM(m, lambda m: m.conv1, **kw),
    "HiResCAM": lambda m, **kw: xa.HiResCAM(m, lambda m: m.conv1, **kw),
    "LayerCAM": lambda m, **kw: xa.LayerCAM(m, lambda m: m.conv1, **kw),
    "EigenCAM": lambda m, **kw: xa.EigenCAM(m, lambda m: m.conv2, **kw),
    "ScoreCAM": lambda m, **kw: xa.ScoreCAM(m, lambda m: m.conv2, chunk_size=4, **kw),
    "AblationCAM": lambda m, **kw: xa.AblationCAM(
        m, lambda m: m.conv2, chunk_size=4, **kw
    ),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_shapes_jit_and_vmap(name):
    m = small_cnn(8)
    xs = jnp.stack([digit_like(10), digit_like(11)])
    build = BUILDERS[name]
    method = build(m)
    first = method(xs[0], 2)  # eager

    @eqx.filter_jit
    def everything(xs):
        return (
            method(xs[0], 2),
            build(m, resize=None)(xs[0], 2),
            build(m, resize="nearest")(xs[0], 2),
            eqx.filter_vmap(method)(xs, jnp.array([2, 7])),
            jax.vmap(lambda t: method(xs[0], t))(jnp.array([7, 2])),
        )

    jitted, small, near, batch, per_target = everything(xs)
    assert first.shape == near.shape == (28, 28) and small.shape == (7, 7)
    assert float(jnp.min(first)) >= 0 and float(jnp.max(first)) > 0
    for other in (jitted, batch[0], per_target[1]):
        assert_close(other, first)
    assert batch.shape == per_target.shape == (2, 28, 28)
    assert not tree_allclose(batch[1], batch[0])


def test_option_errors():
    m, x = small_cnn(), digit_like()
    layer = lambda m: m.conv2
    with pytest.raises(ValueError, match="resize"):
        xa.GradCAM(m, layer, resize="bicubic")
    with pytest.raises(ValueError, match="layout"):
        xa.GradCAM(m, layer, layout="nchw")
    with pytest.raises(ValueError, match="layout='tokens'"):
        xa.GradCAM(m, layer, n_prefix_tokens=1)
    with pytest.raises(ValueError, match="grid"):
        xa.GradCAM(m, layer, layout="tokens", grid=(0, 4))
    with pytest.raises(ValueError, match="chunk_size"):
        xa.ScoreCAM(m, layer, chunk_size=0)
    with pytest.raises(ValueError, match="call_index"):
        xa.LayerCAM(m, layer, call_index=-1)
    with pytest.raises(ValueError, match="tokens `\\(N, D\\)`"):
        xa.GradCAM(m, layer, layout="tokens")(x, 0)
    with pytest.raises(ValueError, match="called 2 times"):
        # a where naming a shared ReLU object would be fine; a repeated call is not
        xa.GradCAM(_Reused(m), lambda r: r.net.conv2)(x, 0)
    with pytest.raises(ValueError, match="could not select"):
        xa.HiResCAM(m, lambda m: m.conv9)(x, 0)


class _Reused(eqx.Module):
    net: eqx.Module

    def __call__(self, x):
        return self.net(x) + 0.5 * self.net(x)


class _ToHWC(eqx.Module):
    def __call__(self, a):
        return jnp.transpose(a, (1, 2, 0))


class _ChannelsLast(eqx.Module):
    """SmallCNN with its last feature map moved to channels-last `(H, W, C)`."""

    net: eqx.Module
    to_hwc: _ToHWC

    def __call__(self, x):
        a = self.to_hwc(self.net.features(x))
        return self.net.fc(jnp.mean(a, axis=(0, 1)))


def test_channels_last_layout_equals_channels_first():
    m, x = small_cnn(12), digit_like(12)
    hwc = _ChannelsLast(m, _ToHWC())
    kw = dict(relu=False, resize=None)
    for name in ("GradCAM", "LayerCAM", "AblationCAM"):
        method = getattr(xa, name)
        ref = jcall(method(m, lambda m: m.conv2, **kw), x, 4)
        got = jcall(method(hwc, lambda m: m.to_hwc, layout="hwc", **kw), x, 4)
        assert_close(got, ref)
    with pytest.raises(ValueError, match="3-D feature map"):
        xa.GradCAM(m, lambda m: m.fc, layout="hwc")(x, 4)


# ---------------------------------------------------------------------------------
# Token layout on a tiny ViT-like model: 8x8 image, 2x2 patches -> 16 tokens plus a
# class token; two token-mixing blocks; the head reads the class token. The maps
# read the first block: after the last one only the class token reaches the head,
# so its patch tokens' gradient is zero (refused: tests/test_cam_pytree.py).


class _Block(eqx.Module):
    mix: jax.Array
    lin: eqx.nn.Linear

    def __call__(self, t):
        return t + jnp.tanh(self.mix @ jax.vmap(self.lin)(t))


class _TinyViT(eqx.Module):
    embed: eqx.nn.Conv2d
    cls: jax.Array
    block: _Block
    last: _Block
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 7)
        self.embed = eqx.nn.Conv2d(1, 6, 2, stride=2, key=k[0])
        self.cls = jax.random.normal(k[1], (1, 6))
        mix = jax.random.normal(k[2], (17, 17)) / 4
        self.block = _Block(mix, eqx.nn.Linear(6, 6, key=k[3]))
        self.head = eqx.nn.Linear(6, 3, key=k[4])
        mix = jax.random.normal(k[5], (17, 17)) / 4
        self.last = _Block(mix, eqx.nn.Linear(6, 6, key=k[6]))

    def readout(self, tokens):
        return self.head(self.last(tokens)[0])

    def tokens(self, x):
        y = self.embed(x)  # (6, 4, 4)
        patches = y.reshape(6, 16).T  # row-major over the 4x4 grid
        return jnp.concatenate([self.cls, patches], axis=0)

    def __call__(self, x):
        return self.readout(self.block(self.tokens(x)))


def test_tokens_layout_gradcam_and_grid():
    model = _TinyViT(jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (1, 8, 8))

    @jax.jit
    def reference(x):
        tokens = model.block(model.tokens(x))  # (17, 6)
        # Ablation-CAM's scores: feature k zeroed in the patch tokens only.
        ablated = jax.vmap(lambda k: model.readout(tokens.at[1:, k].set(0.0))[1])(
            jnp.arange(6)
        )
        y = model.readout(tokens)[1]
        g = jax.grad(lambda t: model.readout(t)[1])(tokens)
        return tokens, g, (y - ablated) / y

    tokens, g, ablation_weights = reference(x)
    # By hand: drop the class token, fold the 16 patch tokens to 4x4, weights are
    # the mean gradient over the patch tokens.
    a_grid = np.asarray(tokens[1:]).reshape(4, 4, 6)
    w = np.asarray(g[1:]).mean(axis=0)
    expected = np.einsum("ijd,d->ij", a_grid, w)
    kw = dict(layout="tokens", n_prefix_tokens=1, relu=False, resize=None)
    kw2 = dict(kw, grid=(2, 8))  # an explicit non-square grid, folded row-major
    block = lambda m: m.block

    @jax.jit
    def maps(x):
        return (
            xa.GradCAM(model, block, **kw)(x, 1),
            xa.GradCAM(model, block, layout="tokens", n_prefix_tokens=1)(x, 1),
            xa.HiResCAM(model, block, **kw2)(x, 1),
            xa.EigenCAM(model, block, **kw)(x),
            xa.AblationCAM(model, block, **kw)(x, 1),
        )

    got, resized, got2, eigen, ablation = maps(x)
    assert_close(got, expected)
    assert resized.shape == (8, 8)
    hires = np.einsum("nd,nd->n", np.asarray(tokens[1:]), np.asarray(g[1:]))
    assert_close(got2, hires.reshape(2, 8))
    # EigenCAM folds the same patch tokens (rows = locations, columns = features)
    centred = np.asarray(tokens[1:], np.float64)
    centred = centred - centred.mean(axis=0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    v = v if v.sum() >= 0 else -v
    # rtol: the float32 SVD's leading vector, perturbed by rounding / spectral gap
    assert_close(eigen, (centred @ v).reshape(4, 4), rtol=1e-4)
    # Ablation-CAM zeroes a feature in the patch tokens only (the class token is
    # kept), reruns the last block and weights it by (y - y_k) / y. Each weight
    # is a difference of scores of size |y| over y: rounding relative to 1, times
    # features a_k, so the floor is relative to sum_k |a_k| at a location.
    want = np.einsum("ijd,d->ij", a_grid, np.asarray(ablation_weights))
    assert_close(ablation, want, scale=np.abs(a_grid).sum(-1).max())
    # 17 tokens are no square: the error suggests dropping the class token
    with pytest.raises(ValueError, match="n_prefix_tokens=1"):
        xa.GradCAM(model, lambda m: m.block, layout="tokens")(x, 1)
    with pytest.raises(ValueError, match="cells"):
        xa.GradCAM(model, lambda m: m.block, layout="tokens", grid=(4, 5))(x, 1)
    with pytest.raises(ValueError, match="layout='tokens'"):
        xa.GradCAM(model, lambda m: m.block)(x, 1)


# ---------------------------------------------------------------------------------
# Captum's LayerGradCam on a PyTorch twin with identical weights


def test_gradcam_matches_captum_layergradcam():
    import captum.attr as captum_attr
    import torch

    nn = torch.nn
    m = xa.models.SmallCNN(width=4, key=jax.random.key(9))
    xs = jnp.stack([digit_like(20), digit_like(21)])

    def conv(c):
        t = nn.Conv2d(c.in_channels, c.out_channels, 3, padding=1)
        t.weight.data = torch.from_numpy(np.array(c.weight))
        t.bias.data = torch.from_numpy(np.array(c.bias).reshape(-1))
        return t

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Sequential(
                conv(m.conv1[0]),
                nn.ReLU(),
                nn.MaxPool2d(2),
                conv(m.conv1[3]),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
            self.conv2 = nn.Sequential(
                conv(m.conv2[0]), nn.ReLU(), conv(m.conv2[2]), nn.ReLU()
            )
            self.fc = nn.Linear(16, 10)
            self.fc.weight.data = torch.from_numpy(np.array(m.fc.weight))
            self.fc.bias.data = torch.from_numpy(np.array(m.fc.bias))

        def forward(self, x):
            return self.fc(self.conv2(self.conv1(x)).mean(dim=(2, 3)))

    twin = Twin().eval()
    inp = torch.from_numpy(np.array(xs))
    assert_close(twin(inp).detach().numpy(), jax.jit(jax.vmap(m))(xs))
    targets = [3, 8]
    for name in ("conv1", "conv2"):
        lgc = captum_attr.LayerGradCam(twin, getattr(twin, name))
        ref = lgc.attribute(inp, target=targets, relu_attributions=False)
        ref = ref.detach().numpy()[:, 0]
        layer = lambda m, name=name: getattr(m, name)
        ours = eqx.filter_jit(
            eqx.filter_vmap(xa.GradCAM(m, layer, relu=False, resize=None))
        )(xs, jnp.array(targets))
        assert_close(ours, ref)
        # Captum's relu + bilinear interpolation (align_corners=False) as well
        up = captum_attr.LayerAttribution.interpolate(
            lgc.attribute(inp, target=targets, relu_attributions=True),
            (28, 28),
            "bilinear",
        )
        ours_up = eqx.filter_jit(eqx.filter_vmap(xa.GradCAM(m, layer)))(
            xs, jnp.array(targets)
        )
        up = up.detach().numpy()[:, 0]
        assert_close(ours_up, up)


# ---------------------------------------------------------------------------------
# The model zoo


def _random_weights(build, seed):
    """A zoo model with random weights, without running its (slow) initialiser.

    Shapes come from `eqx.filter_eval_shape`; every array is drawn with NumPy,
    except batch-norm variances, which must be positive. (Cast by NumPy: a cast by
    `jnp.asarray` would compile a conversion for every shape.)
    """
    shapes = eqx.filter_eval_shape(build, jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        if "running_var" in jax.tree_util.keystr(path):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype))
        fan_in = max(1, int(np.prod(leaf.shape[1:])))
        w = rng.normal(size=leaf.shape) / np.sqrt(fan_in)
        return jnp.asarray(w.astype(leaf.dtype))

    return jax.tree_util.tree_map_with_path(fill, shapes)


def test_zoo_resnet_and_vit():
    r = _random_weights(
        lambda k: xa.models.resnet18(n_classes=5, in_channels=1, width=4, key=k), 0
    )
    x = jax.random.uniform(jax.random.key(1), (1, 64, 64))
    where = lambda m: m.layer4

    @jax.jit
    def resnet_maps(x):
        h = xa.GradCAM(r, where)(x, 2)
        raw = xa.GradCAM(r, where, relu=False, resize=None)(x, 2)
        cam = xa.CAM(r, where, lambda m: m.fc, relu=False, resize=None)(x, 2)
        return h, raw, cam

    h, raw, cam = resnet_maps(x)
    assert h.shape == (64, 64) and raw.shape == (2, 2)
    assert bool(jnp.all(jnp.isfinite(h)))
    assert float(jnp.max(jnp.abs(cam))) > 0
    # ResNet ends in global average pooling and `fc`: Grad-CAM = CAM / (h w)
    assert_close(raw, cam / 4)

    v = _random_weights(
        lambda k: xa.models.ViT(
            image_size=28,
            patch_size=7,
            in_channels=1,
            n_classes=10,
            dim=16,
            depth=1,
            heads=2,
            key=k,
        ),
        1,
    )

    kw = dict(layout="tokens", n_prefix_tokens=1)

    @jax.jit
    def vit_maps(x):
        where = lambda m: m.blocks[-1].norm1  # noqa: E731
        return (
            xa.GradCAM(v, where, **kw)(x, 4),
            xa.GradCAM(v, where, relu=False, resize=None, **kw)(x, 4),
        )

    h_norm, small_norm = vit_maps(digit_like(3))
    assert h_norm.shape == (28, 28) and bool(jnp.all(jnp.isfinite(h_norm)))
    assert small_norm.shape == (4, 4)
    # `blocks[-1].norm1`'s patch tokens feed the class token by attention.
    assert float(jnp.max(jnp.abs(small_norm))) > 0
    # The head reads only the class token after the last block, so the patch
    # tokens of the last block's OUTPUT have zero gradient: an all-zero map,
    # refused with the fix rather than returned.
    last = eqx.filter_jit(xa.GradCAM(v, lambda m: m.blocks[-1], **kw))
    with pytest.raises(Exception, match="class token of `layer`"):
        jax.block_until_ready(last(digit_like(3), 4))


# ---------------------------------------------------------------------------------
# pytorch-grad-cam's other methods, against its formulas (pytorch-grad-cam does not
# import here without torchvision), on the hand-derived tiny net above.
# At the ReLU output, class 0: A0 = [[5,6],[9,10]], relu(A1) = [[6,4],[0,0]],
# G0 = [[1,0],[0,1]], G1 = [[0,2],[-1,0]]; class 1: G0 = [[-1,0],[0,0]], G1 = 0.


def _tiny_maps(t):
    a = np.array([[[5, 6], [9, 10]], [[6, 4], [0, 0]]], np.float64)
    if t == 0:
        g = np.array([[[1, 0], [0, 1]], [[0, 2], [-1, 0]]], np.float64)
    else:
        g = np.array([[[-1, 0], [0, 0]], [[0, 0], [0, 0]]], np.float64)
    return a, g


def _relu_out(m):
    return m.layers[1]


def test_gradcam_elementwise_hand_derived():
    net, x = _tiny_net(), _tiny_x()
    # class 0: G*A = [[5,0],[0,10]] + [[0,8],[0,0]] (no negative products)
    cam = xa.GradCAMElementWise(net, _relu_out, relu=False, resize=None)
    assert_close(jcall(cam, x, 0), jnp.array([[5.0, 8.0], [0.0, 10.0]]))
    # class 1: G*A = [[-5,0],[0,0]]: clipped before the sum, so 0 where HiResCAM
    # (no clipping) gives -5.
    assert_close(jcall(cam, x, 1), jnp.zeros((2, 2)), scale=5.0)
    hires = xa.HiResCAM(net, _relu_out, relu=False, resize=None)
    assert_close(jcall(hires, x, 1), jnp.array([[-5.0, 0.0], [0.0, 0.0]]))
    # SmallCNN, at conv1: sum_k relu(G_k A_k) from the split network
    m, x = small_cnn(4), digit_like(4)
    a, g = _split(m, x, 5)
    got = jcall(xa.GradCAMElementWise(m, lambda m: m.conv1, resize=None), x, 5)
    assert_close(got, np.maximum(g * a, 0).sum(axis=0))


def _pca_projection(feats_chw):
    c = feats_chw.shape[0]
    feats = feats_chw.reshape(c, -1).T
    centred = feats - feats.mean(axis=0)
    v = np.linalg.svd(centred, full_matrices=False)[2][0]
    v = v if v.sum() >= 0 else -v
    return (centred @ v).reshape(feats_chw.shape[1:])


def test_eigengradcam_hand_derived():
    # get_2d_projection(G * A): rows (locations) [5,0], [0,8], [0,0], [10,0];
    # centred by the column means [3.75, 2]; projected on the first singular vector.
    net, x = _tiny_net(), _tiny_x()
    a, g = _tiny_maps(0)
    ga = g * a
    assert_close(ga, np.array([[[5, 0], [0, 10]], [[0, 8], [0, 0]]], np.float64))
    cam = xa.EigenGradCAM(net, _relu_out, relu=False, resize=None)
    assert_close(jcall(cam, x, 0), _pca_projection(ga), rtol=1e-5)
    # SmallCNN at conv1 (an SVD in float32: the floor is relative to the whole map)
    m, x = small_cnn(4), digit_like(4)
    a, g = _split(m, x, 5)
    got = jcall(xa.EigenGradCAM(m, lambda m: m.conv1, relu=False, resize=None), x, 5)
    assert_close(got, _pca_projection(g * a), rtol=1e-4)


def test_randomcam_is_random_channel_weights():
    net, x = _tiny_net(), _tiny_x()
    a, _ = _tiny_maps(0)
    cam = xa.RandomCAM(net, _relu_out, relu=False, resize=None)
    key = jax.random.key(3)
    w = np.asarray(jax.random.uniform(key, (2,), jnp.float32, -1.0, 1.0), np.float64)
    assert np.all(np.abs(w) <= 1)
    expected = w[0] * a[0] + w[1] * a[1]
    assert_close(jcall(cam, x, 0, key), expected)
    assert_close(jcall(cam, x, 1, key), expected)  # class-agnostic
    other = jcall(cam, x, 0, jax.random.key(4))
    assert not np.allclose(np.asarray(other), expected)
    with pytest.raises(ValueError, match="key"):
        cam(x, 0)


def test_sobelcam_hand_derived():
    # x[i, j] = 4 i + j: the interior horizontal Sobel response is (1+2+1) * 2 = 8,
    # the vertical (1+2+1) * 8 = 32; reflected borders (BORDER_REFLECT_101) make
    # the first and last columns' horizontal (rows' vertical) differences 0.
    net, x = _tiny_net(), _tiny_x()
    inner = np.array([0.0, 1.0, 1.0, 0.0])
    expected = 0.5 * 8 * inner[None, :] + 0.5 * 32 * inner[:, None]
    h = jcall(xa.SobelCAM(net), x, 0)
    assert h.shape == (4, 4) and h.dtype == x.dtype
    assert_close(h, expected)
    # RGB: grey = 0.299 R + 0.587 G + 0.114 B (cv2.COLOR_RGB2GRAY), linear, so
    # three copies of the ramp give the ramp's map.
    rgb = jnp.concatenate([x, 2 * x, 3 * x])
    grey_scale = 0.299 + 2 * 0.587 + 3 * 0.114
    model = lambda z: jnp.sum(z, axis=(1, 2))  # noqa: E731
    assert_close(jcall(xa.SobelCAM(model), rgb, 0), grey_scale * expected)


def _scale(p):
    # pytorch-grad-cam's scale_cam_image
    p = p - p.min()
    return p / (1e-7 + p.max())


def test_fullgrad_hand_derived():
    # Class 0. dS/dx = sum_c w_c G_c (conv-output gradients, 3x3 centre weights 1
    # and -2): dx[1,1] = 1, dx[1,2] = -2 * 2 = -4, dx[2,2] = 1, so |x dx| is 5, 24,
    # 10 there. Bias terms: channel 0's bias is 0 (an all-zero plane), channel 1's
    # is 16: |16 G1| = [[0,32],[0,0]], scaled to [[0,1],[0,0]] and upsampled
    # (half-pixel bilinear) to the outer product of [1,.75,.25,0] and [0,.25,.75,1].
    net, x = _tiny_net(), _tiny_x()
    inp = np.zeros((4, 4))
    inp[1, 1], inp[1, 2], inp[2, 2] = 5.0, 24.0, 10.0
    bias = np.outer([1, 0.75, 0.25, 0], [0, 0.25, 0.75, 1]) * 32 / (32 + 1e-7)
    expected = _scale(_scale(inp) + bias)
    got = jcall(xa.FullGrad(net), x, 0)
    assert got.shape == (4, 4) and got.dtype == x.dtype
    assert_close(got, expected)


class _Tapped(eqx.Module):
    conv: eqx.Module
    eps: jax.Array

    def __call__(self, x, *, key=None):
        return self.conv(x) + self.eps


class _Recorded(eqx.Module):
    conv: eqx.Module
    shapes: list = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        y = self.conv(x)
        self.shapes.append(y.shape)
        return y


def test_fullgrad_matches_additive_zero_at_every_conv():
    # An independent route to dS/dz: differentiate w.r.t. a zero added to every
    # Conv2d's output.
    m, x, t = small_cnn(2), digit_like(2), 4
    is_conv = lambda n: isinstance(n, eqx.nn.Conv2d)  # noqa: E731

    def where(m):
        return [n for n in jax.tree_util.tree_leaves(m, is_leaf=is_conv) if is_conv(n)]

    convs = where(m)
    assert len(convs) == 4
    shapes = []

    def record(x):
        taps = [_Recorded(c, shapes) for c in convs]
        return eqx.tree_at(where, m, taps)(x)

    jax.eval_shape(record, x)
    assert len(shapes) == len(convs)

    @jax.jit
    def grads(eps, x):
        def score(eps, x):
            taps = [_Tapped(c, e) for c, e in zip(convs, eps, strict=True)]
            return eqx.tree_at(where, m, taps)(x)[t]

        return jax.grad(score, argnums=(0, 1))(eps, x)

    eps = [jnp.zeros(s) for s in shapes]
    g_eps, g_x = grads(eps, x)
    xs = np.asarray(x, np.float64)
    total = sum(_scale(p) for p in np.abs(xs * np.asarray(g_x, np.float64)))
    for c, g in zip(convs, g_eps, strict=True):
        planes = np.abs(np.asarray(c.bias, np.float64) * np.asarray(g, np.float64))
        for p in planes:
            total = total + _bilinear_np(_scale(p), (28, 28))
    assert_close(jcall(xa.FullGrad(m), x, t), _scale(total))


def test_shapleycam_hand_derived():
    # Target S = s0^2 / 2 at the ReLU output, where s0 = <v0, A> = 23 (linear head
    # after the layer): G = s0 v0, H A = v0 <v0, A> = s0 v0, so G - HA/2 = 11.5 v0,
    # weights 11.5 * (1/2, 1/4): 11.5 times Grad-CAM's map [[4,4],[4.5,5]].
    net, x = _tiny_net(), _tiny_x()
    cam = xa.ShapleyCAM(net, _relu_out, relu=False, resize=None)
    got = jcall(cam, x, lambda s: s[0] ** 2 / 2)
    assert_close(got, 11.5 * np.array([[4.0, 4.0], [4.5, 5.0]]))
    # A score linear in A (an int target): H A = 0, Grad-CAM's map.
    assert_close(jcall(cam, x, 0), np.array([[4.0, 4.0], [4.5, 5.0]]))


def test_shapleycam_matches_reverse_over_reverse_hvp():
    m, x = small_cnn(4), digit_like(4)

    def target(s):
        return jax.nn.log_softmax(s)[5]

    @jax.jit
    def reference(x):
        a = m.conv1(x)

        def f(a):
            return target(m.fc(jnp.mean(m.conv2(a), axis=(1, 2))))

        g = jax.grad(f)(a)
        hvp = jax.grad(lambda b: jnp.vdot(jax.grad(f)(b), jax.lax.stop_gradient(a)))(a)
        w = jnp.mean(g - 0.5 * hvp, axis=(1, 2))
        return jnp.tensordot(w, a, axes=1), hvp

    expected, hvp = reference(x)
    assert float(jnp.max(jnp.abs(hvp))) > 0  # the softmax is curved
    cam = xa.ShapleyCAM(m, lambda m: m.conv1, relu=False, resize=None)
    assert_close(jcall(cam, x, target), expected)


def test_kpcacam_matches_scikit_learn():
    sklearn = pytest.importorskip("sklearn.decomposition")
    m, x = small_cnn(4), digit_like(4)
    a = np.asarray(eqx.filter_jit(lambda x: m.conv2(m.conv1(x)))(x), np.float64)
    feats = a.reshape(a.shape[0], -1).T
    feats = feats - feats.mean(axis=0)
    assert feats.shape[0] <= 200  # scikit-learn's dense eigensolver
    kernels = [("sigmoid", None), ("rbf", 0.05), ("linear", None), ("poly", None)]
    for kernel, gamma in [*kernels, ("cosine", None)]:
        kpca = sklearn.KernelPCA(n_components=1, kernel=kernel, gamma=gamma)
        expected = kpca.fit_transform(feats).reshape(a.shape[1:])
        cam = xa.KPCACAM(
            m, lambda m: m.conv2, relu=False, resize=None, kernel=kernel, gamma=gamma
        )
        assert_close(jcall(cam, x, 3), expected, rtol=1e-4)


def test_kpcacam_linear_kernel_is_pca_hand_derived():
    # Linear kernel: the kernel principal component is the PCA projection (up to
    # sign; scikit-learn makes the largest entry positive). Rows [5,6], [6,4],
    # [9,0], [10,0] at the tiny net's ReLU output.
    net, x = _tiny_net(), _tiny_x()
    a, _ = _tiny_maps(0)
    pca = _pca_projection(a)
    flat = pca.ravel()
    expected = pca if flat[np.argmax(np.abs(flat))] > 0 else -pca
    cam = xa.KPCACAM(net, _relu_out, relu=False, resize=None, kernel="linear")
    assert_close(jcall(cam, x, 0), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="kernel"):
        xa.KPCACAM(net, _relu_out, kernel="laplacian")


def test_finercam_hand_derived():
    # Two classes, comparison=(1,): S = p1 (s0 - s1) / (p1 + 1e-9) with
    # s = (23, 5), p = softmax(s); its gradient (through p too) mixes the two
    # classes' layer gradients, and Grad-CAM averages them over space.
    net, x = _tiny_net(), _tiny_x()
    s0, s1, eps = 23.0, 5.0, 1e-9
    p1 = 1 / (1 + np.exp(s0 - s1))
    p0 = 1 - p1
    r = p1 / (p1 + eps)
    dr = eps / (p1 + eps) ** 2  # d r / d p1
    c0 = r + (s0 - s1) * dr * (-p0 * p1)
    c1 = -r + (s0 - s1) * dr * (p0 * p1)
    a, g0 = _tiny_maps(0)
    _, g1 = _tiny_maps(1)
    g = c0 * g0 + c1 * g1
    expected = np.einsum("k,kij->ij", g.mean(axis=(1, 2)), a)
    cam = xa.FinerCAM(net, _relu_out, relu=False, resize=None, comparison=(1,))
    assert_close(jcall(cam, x, 0), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="comparison"):
        xa.FinerCAM(net, _relu_out)(x, 0)  # ranks 1-3 need 4 classes
    # A callable target is explained as given (pytorch-grad-cam's `targets=`).
    grad = xa.GradCAM(net, _relu_out, relu=False, resize=None)
    assert_close(jcall(cam, x, lambda s: s[1]), jcall(grad, x, 1))


def test_finercam_is_gradcam_of_the_finer_target():
    m, x, t = small_cnn(4), digit_like(4), 2
    s = np.asarray(eqx.filter_jit(m)(x), np.float64)
    order = [j for j in np.argsort(np.abs(s - s[t]), kind="stable") if j != t]
    others = np.array(order[:3])

    def finer(y):
        p = jax.nn.softmax(y)[others]
        return jnp.sum(p * (y[t] - 0.5 * y[others])) / (jnp.sum(p) + 1e-9)

    kw = dict(relu=False, resize=None)
    got = jcall(xa.FinerCAM(m, lambda m: m.conv1, alpha=0.5, **kw), x, t)
    assert_close(got, jcall(xa.GradCAM(m, lambda m: m.conv1, **kw), x, finer))
