"""pytorch-grad-cam's options on the CAM family: `eigen_smooth`, `aug_smooth` and a
list of layers, checked against hand-derived values and their defining formulas."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, jcall

# ---------------------------------------------------------------------------------
# Tiny networks on 8x8 inputs.


class _TinyCNN(eqx.Module):
    """conv 3x3 (1 -> 3, 8x8) -> ReLU -> conv 3x3 stride 2 (3 -> 4, 4x4) -> ReLU
    -> global average pooling -> linear (4 -> 3)."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, key, symmetric=False):
        k1, k2, k3 = jax.random.split(key, 3)
        conv1 = eqx.nn.Conv2d(1, 3, 3, padding=1, use_bias=not symmetric, key=k1)
        if symmetric:  # kernels equal to their mirror image: flip-equivariant
            w = conv1.weight
            conv1 = eqx.tree_at(lambda c: c.weight, conv1, (w + w[..., ::-1]) / 2)
        self.conv1 = conv1
        self.conv2 = eqx.nn.Conv2d(3, 4, 3, stride=2, padding=1, key=k2)
        self.fc = eqx.nn.Linear(4, 3, use_bias=not symmetric, key=k3)

    def __call__(self, x):
        a = jax.nn.relu(self.conv1(x))
        b = jax.nn.relu(self.conv2(a))
        return self.fc(jnp.mean(b, axis=(1, 2)))


class _Flat(eqx.Module):
    """A bias-free, flip-equivariant net, positively homogeneous of degree 1:
    conv (symmetric kernels) -> ReLU -> global average pooling -> linear."""

    conv: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __call__(self, x):
        return self.fc(jnp.mean(jax.nn.relu(self.conv(x)), axis=(1, 2)))


def _flat_net():
    net = _TinyCNN(jax.random.key(3), symmetric=True)
    fc = eqx.nn.Linear(3, 3, use_bias=False, key=jax.random.key(4))
    return _Flat(net.conv1, fc)


class _RankOne(eqx.Module):
    """Layer output `A_k = c_k x[0]` (rank one across channels); score
    `y_t = sum_k u_tk sum_ij A_kij`, so `G_k = u_tk` everywhere."""

    feat: eqx.nn.Lambda
    u: jax.Array

    def __call__(self, x):
        a = self.feat(x)
        return self.u @ jnp.sum(a, axis=(1, 2))


_C = jnp.array([1.0, 2.0, -1.0])


def _scaled_channels(x):
    return _C.reshape(3, 1, 1) * x[0][None]


def _scale(m):
    m = m - jnp.min(m)
    return m / (1e-7 + jnp.max(m))


_CNN = _TinyCNN(jax.random.key(0))
_X = jax.random.uniform(jax.random.key(1), (1, 8, 8))
_L1, _L2 = (lambda m: m.conv1), (lambda m: m.conv2)


# ---------------------------------------------------------------------------------
# eigen_smooth


def test_eigen_smooth_rank_one_hand_derived():
    # Terms w_k A_k = u_tk c_k M (M = x[0]): rank one, so the projection on the
    # first principal component of the centred terms is
    #   sign(sum_k u_tk c_k) * ||u_t * c|| * (M - mean M),
    # the sign fixed so that it correlates positively with the plain map
    # (sum_k u_tk c_k) M. Class 0: u = (1, 1, 1), u*c = (1, 2, -1): sum 2, norm
    # sqrt(6). Class 1: u = (0, -1, 0), u*c = (0, -2, 0): sum -2, norm 2.
    u = jnp.array([[1.0, 1.0, 1.0], [0.0, -1.0, 0.0]])
    net = _RankOne(eqx.nn.Lambda(_scaled_channels), u)
    x = jnp.arange(16.0).reshape(1, 4, 4)
    m = np.arange(16.0).reshape(4, 4)
    kw = dict(relu=False, resize=None)
    plain = xa.GradCAM(net, lambda n: n.feat, **kw)
    smooth = xa.GradCAM(net, lambda n: n.feat, eigen_smooth=True, **kw)
    assert_close(jcall(plain, x, 0), 2 * m)
    assert_close(jcall(smooth, x, 0), np.sqrt(6.0) * (m - 7.5))
    assert_close(jcall(plain, x, 1), -2 * m)
    assert_close(jcall(smooth, x, 1), -2.0 * (m - 7.5))
    # HiResCAM's terms G_k A_k are the same here (G constant per channel).
    hires = xa.HiResCAM(net, lambda n: n.feat, eigen_smooth=True, **kw)
    assert_close(jcall(hires, x, 0), np.sqrt(6.0) * (m - 7.5))


def _grad_cam_projection(terms):
    """pytorch-grad-cam's `get_2d_projection` on one example, in float64: locations
    as rows, channels as columns, columns centred, projected on the first right
    singular vector (sign as LAPACK returns it). Also the singular values."""
    t = np.asarray(terms, np.float64)
    f = t.reshape(t.shape[0], -1).T
    f = f - f.mean(axis=0)
    _, s, vt = np.linalg.svd(f, full_matrices=False)
    return (f @ vt[0]).reshape(t.shape[1:]), vt[0], s


_TERMS = {
    # pytorch-grad-cam's terms: `weights * activations` (BaseCAM.get_cam_image),
    # `grads * activations` (hirescam.py), `relu(grads) * activations`
    # (layer_cam.py), `relu(grads * activations)` (grad_cam_elementwise.py).
    "GradCAM": lambda a, g: g.mean(axis=(1, 2), keepdims=True) * a,
    "HiResCAM": lambda a, g: g * a,
    "LayerCAM": lambda a, g: np.maximum(g, 0) * a,
    "GradCAMElementWise": lambda a, g: np.maximum(g * a, 0),
}


@pytest.mark.parametrize("name", list(_TERMS))
def test_eigen_smooth_is_grad_cams_projection_with_fixed_sign(name):
    a, g = jcall(lambda x, t: xa.layer_activation_and_gradient(_CNN, _L2, x, t), _X, 1)
    ref, v, s = _grad_cam_projection(_TERMS[name](np.asarray(a), np.asarray(g)))
    sign = 1.0 if v.sum() >= 0 else -1.0
    cam = getattr(xa, name)(_CNN, _L2, relu=False, resize=None, eigen_smooth=True)
    # A singular vector computed in float32 carries rounding amplified by
    # s0 / (s0 - s1), the inverse relative gap of the singular values.
    rtol = 1e-5 * (1 + s[0] / (s[0] - s[1]))
    assert_close(jcall(cam, _X, 1), sign * ref, rtol=rtol)


def test_eigen_smooth_on_channel_weight_cams_projects_weighted_activations():
    # Grad-CAM's weights are mean(G): the terms above; XGrad-CAM and Shapley-CAM
    # (an int target on a ReLU net: H A = 0) go through the same `_weighted`.
    kw = dict(relu=False, resize=None, eigen_smooth=True)
    want = jcall(xa.GradCAM(_CNN, _L2, **kw), _X, 2)
    assert_close(jcall(xa.ShapleyCAM(_CNN, _L2, **kw), _X, 2), want)


def test_fullgrad_eigen_smooth_hand_derived():
    # No biases: FullGrad's one plane is |x * dS/dx| (one input channel). One
    # plane's centred projection is the plane minus its mean (sign +), so with
    # s = scale_cam_image and r = resize the map is
    #   s(r(s(c - mean c), 16 x 16)),  c = r(s(s(|x * dS/dx|)), 2 x 2).
    net = _flat_net()
    x = jax.random.uniform(jax.random.key(5), (1, 16, 16))

    def both(x, t):
        g = jax.grad(lambda z: net(z)[t])(x)
        c = jax.image.resize(_scale(_scale(jnp.abs(x * g)[0])), (2, 2), "bilinear")
        want = _scale(jax.image.resize(_scale(c - jnp.mean(c)), (16, 16), "bilinear"))
        return xa.FullGrad(net, eigen_smooth=True)(x, t), want

    got, want = jcall(both, x, 0)
    assert_close(got, want)


# ---------------------------------------------------------------------------------
# aug_smooth


def test_aug_smooth_on_flip_equivariant_homogeneous_net_is_the_plain_map():
    # Symmetric kernels, no bias, global pooling: the map of flip(x) is the flipped
    # map, and the map of f x is f times the map; flipped back and averaged over
    # the factors (0.9 + 1 + 1.1) / 3 = 1 it is the plain map.
    net, x = _flat_net(), _X
    plain = jcall(xa.GradCAM(net, lambda n: n.conv), x, 0)
    assert_close(jcall(xa.GradCAM(net, lambda n: n.conv, aug_smooth=True), x, 0), plain)
    assert not np.allclose(plain, plain[:, ::-1])  # the flip is not trivial
    # FullGrad (no biases here: |x * dS/dx|, scaled): the gradient of flip(f x) is
    # the flipped gradient, and scaling to [0, 1] removes f.
    plain = jcall(xa.FullGrad(net), x, 1)
    assert_close(jcall(xa.FullGrad(net, aug_smooth=True), x, 1), plain)


def _manual_aug(cam, x, t):
    maps = []
    for flip in (False, True):
        for f in (0.9, 1.0, 1.1):
            m = cam(jnp.flip(x, -1) * f if flip else x * f, t)
            maps.append(jnp.flip(m, -1) if flip else m)
    return jnp.mean(jnp.stack(maps), axis=0)


def test_aug_smooth_is_the_mean_over_deaugmented_maps():
    # grad-cam's forward_augmentation_smoothing, written out as a loop.
    cam = xa.GradCAM(_CNN, _L2)
    want = jcall(lambda x, t: _manual_aug(cam, x, t), _X, 0)
    assert_close(jcall(xa.GradCAM(_CNN, _L2, aug_smooth=True), _X, 0), want)


# ---------------------------------------------------------------------------------
# A list of layers


def test_multi_layer_is_grad_cams_aggregate():
    # compute_cam_per_layer: relu, scale to [0, 1], resize; aggregate_multi_layers:
    # relu, mean, scale. Written out from the single-layer maps at their resolution.
    def both(x, t):
        small = [xa.GradCAM(_CNN, w, resize=None)(x, t) for w in (_L1, _L2)]
        per_layer = [jax.image.resize(_scale(m), (8, 8), "bilinear") for m in small]
        want = _scale(jnp.mean(jnp.stack(per_layer), axis=0))
        one = jax.image.resize(_scale(small[1]), (8, 8), "bilinear")
        return (
            xa.GradCAM(_CNN, [_L1, _L2])(x, t),
            want,
            xa.GradCAM(_CNN, [_L2, _L2])(x, t),
            _scale(one),
        )

    got, want, twice, one = jcall(both, _X, 1)
    assert_close(got, want)
    # The same layer twice is that layer once (a mean of equal maps): its map,
    # clipped, scaled, resized and scaled again.
    assert_close(twice, one)
    assert float(jnp.min(got)) == 0.0 and 0.999 < float(jnp.max(got)) <= 1.0


def test_multi_layer_without_resize_needs_one_resolution():
    # Trace-time shapes only: nothing is compiled.
    same = xa.GradCAMPlusPlus(_CNN, [_L2, xa.LayerSpec(_L2)], resize=None)
    assert jax.eval_shape(lambda x: same(x, 0), _X).shape == (4, 4)
    mixed = xa.GradCAM(_CNN, [_L1, _L2], resize=None)
    with pytest.raises(ValueError, match="different shapes"):
        jax.eval_shape(lambda x: mixed(x, 0), _X)


# ---------------------------------------------------------------------------------
# Everything at once: jit, vmap over inputs and targets, gradients


def test_options_jit_vmap_and_grad():
    cam = xa.GradCAM(_CNN, [_L1, _L2], eigen_smooth=True, aug_smooth=True)
    one = xa.ScoreCAM(_CNN, _L2, chunk_size=2, eigen_smooth=True, aug_smooth=True)
    xs = jnp.stack([_X, jax.random.uniform(jax.random.key(2), (1, 8, 8))])

    @eqx.filter_jit
    def everything(xs):
        return (
            cam(xs[0], 1),
            eqx.filter_vmap(cam)(xs, jnp.array([1, 2])),
            jax.vmap(lambda t: cam(xs[0], t))(jnp.array([2, 1])),
            jax.grad(lambda x: jnp.sum(one(x, 1) * x[0]))(xs[0]),
        )

    first, batch, per_target, grad = everything(xs)
    assert first.shape == (8, 8)
    assert_close(batch[0], first)
    assert_close(per_target[1], first)
    assert not np.allclose(batch[1], first) and not np.allclose(per_target[0], first)
    assert grad.shape == (1, 8, 8) and bool(jnp.all(jnp.isfinite(grad)))


def test_guided_gradcam_passes_the_options_to_gradcam():
    def both(x, t):
        gb = xa.GuidedBackprop(_CNN)(x, t)
        h = xa.GradCAM(_CNN, [_L2], eigen_smooth=True)(x, t)
        return xa.GuidedGradCAM(_CNN, [_L2], eigen_smooth=True)(x, t), gb * h[None]

    got, want = jcall(both, _X, 0)
    assert_close(got, want)


# ---------------------------------------------------------------------------------
# Errors


def test_option_errors():
    with pytest.raises(ValueError, match="eigen_smooth.*EigenCAM"):
        xa.EigenCAM(_CNN, _L2, eigen_smooth=True)
    with pytest.raises(ValueError, match="eigen_smooth.*EigenGradCAM"):
        xa.EigenGradCAM(_CNN, _L2, eigen_smooth=True)
    with pytest.raises(ValueError, match="eigen_smooth.*KPCACAM"):
        xa.KPCACAM(_CNN, _L2, eigen_smooth=True)
    with pytest.raises(ValueError, match="CAM takes one `layer`"):
        xa.CAM(_CNN, [_L2], classifier=lambda m: m.fc)
    with pytest.raises(ValueError, match="empty list"):
        xa.GradCAM(_CNN, [])
    with pytest.raises(ValueError, match="flat list"):
        xa.GradCAM(_CNN, [[_L1], _L2])
    with pytest.raises(ValueError, match="inside the `LayerSpec`"):
        xa.GradCAM(_CNN, [_L1, xa.LayerSpec(_L2)], layout="hwc")
    with pytest.raises(TypeError, match="eigen_smooth"):
        xa.ScoreCAM(_CNN, _L2, eigen_smooth=1)
    with pytest.raises(TypeError, match="aug_smooth"):
        xa.GuidedGradCAM(_CNN, _L2, aug_smooth="yes")
    with pytest.raises(TypeError, match="aug_smooth"):
        xa.FullGrad(_CNN, aug_smooth=None)
    small = xa.FullGrad(_CNN, eigen_smooth=True)
    with pytest.raises(ValueError, match="at least 8 x 8"):
        jax.eval_shape(lambda x: small(x, 0), jnp.zeros((1, 7, 9)))
    # Defined options are accepted where the method reads one layer's channels.
    assert xa.EigenCAM(_CNN, [_L1, _L2], aug_smooth=True).layer == (_L1, _L2)
