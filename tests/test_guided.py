"""Guided Backprop and Deconvolution: hand values, the deconvnet, Captum, transforms."""

import captum.attr
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import eqx_attr as xa

from .helpers import assert_close, tree_allclose

# ---------------------------------------------------------------------------------
# A tiny net with hand-derived attributions:
#   x (1, 4, 4) -> 3x3 conv with bias, no padding -> (1, 2, 2) -> ReLU -> flatten
#   -> linear (4 -> 2) -> ReLU.
#
# K = [[1, 0, -1], [0, 2, 0], [-1, 0, 1]], bias -1, and the x below give the conv
# pre-activations z = [[1, 7], [-5, 3]] (flattened: 1, 7, -5, 3), so h = (1, 7, 0, 3).
# W = [[1, -1, 2, 1], [-1, 1, 1, -2]], c = (4, -1): output pre-activations
# (1 - 7 + 0 + 3 + 4, -1 + 7 + 0 - 6 - 1) = (1, -1): output 0 is on, output 1 off.
#
# The backward signal reaching the conv units, then dx = sum_p g_p K placed at p:
#   target 0 (signal 1 > 0 through an active output ReLU), W[0] = (1, -1, 2, 1):
#     plain:  masked by z > 0           -> ( 1, -1, 0, 1)
#     guided: masked by z > 0 and g > 0 -> ( 1,  0, 0, 1)
#     deconv: relu(g), no mask          -> ( 1,  0, 2, 1)
#   target 1 (output ReLU off): plain and guided are 0; deconv ignores the mask, so
#     relu(1) = 1 passes and relu(W[1]) = (0, 1, 1, 0).

K = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [-1.0, 0.0, 1.0]]
X = [[1.0, 2.0, 0.0, 1.0], [0.0, 1.0, 3.0, 0.0], [2.0, 0.0, 1.0, 1.0], [1, 1, 0, 2]]
W = [[1.0, -1.0, 2.0, 1.0], [-1.0, 1.0, 1.0, -2.0]]
C = [4.0, -1.0]

HAND = {
    ("guided", 0): [[1, 0, -1, 0], [0, 3, 0, -1], [-1, 0, 3, 0], [0, -1, 0, 1]],
    ("deconv", 0): [[1, 0, -1, 0], [2, 3, -2, -1], [-1, 4, 3, 0], [-2, -1, 2, 1]],
    ("plain", 0): [[1, -1, -1, 1], [0, 3, -2, -1], [-1, 1, 3, -1], [0, -1, 0, 1]],
    ("guided", 1): [[0] * 4] * 4,
    ("deconv", 1): [[0, 1, 0, -1], [1, 0, 1, 0], [0, 1, 0, 1], [-1, 0, 1, 0]],
    ("plain", 1): [[0] * 4] * 4,
}


class TinyInline(eqx.Module):
    conv: eqx.nn.Conv2d
    fc: eqx.nn.Linear
    spelling: str = eqx.field(static=True)

    def __call__(self, x):
        relu = jax.nn.relu if self.spelling == "relu" else lambda v: jnp.maximum(v, 0)
        return relu(self.fc(relu(self.conv(x)).reshape(-1)))


def tiny(spelling: str) -> eqx.Module:
    k1, k2 = jax.random.split(jax.random.key(0))
    conv = eqx.nn.Conv2d(1, 1, 3, key=k1)
    conv = eqx.tree_at(
        lambda c: (c.weight, c.bias),
        conv,
        (jnp.array(K).reshape(1, 1, 3, 3), jnp.full((1, 1, 1), -1.0)),
    )
    fc = eqx.nn.Linear(4, 2, key=k2)
    fc = eqx.tree_at(lambda f: (f.weight, f.bias), fc, (jnp.array(W), jnp.array(C)))
    if spelling == "pytree":
        relu = eqx.nn.Lambda(jax.nn.relu)
        flatten = eqx.nn.Lambda(lambda v: v.reshape(-1))
        return eqx.nn.Sequential([conv, relu, flatten, fc, relu])
    return TinyInline(conv, fc, spelling)


@pytest.mark.parametrize("target", [0, 1])
def test_tiny_net_hand_values_three_spellings(target):
    x = jnp.array(X).reshape(1, 4, 4)
    results = {}
    for spelling in ("pytree", "relu", "maximum"):
        model = tiny(spelling)
        # Exact: small integers, every partial sum exact in float32.
        np.testing.assert_array_equal(model(x), [1.0, 0.0])
        results[spelling] = {
            "guided": xa.GuidedBackprop(model)(x, target),
            "deconv": xa.Deconvolution(model)(x, target),
            "plain": xa.Gradients(model)(x, target),
        }
    for kind in ("guided", "deconv", "plain"):
        want = np.array(HAND[(kind, target)], np.float32).reshape(1, 4, 4)
        for spelling in ("pytree", "relu", "maximum"):
            # Small integers: every spelling must give exactly the hand values.
            np.testing.assert_array_equal(results[spelling][kind], want)


# ---------------------------------------------------------------------------------
# conv -> ReLU -> max-pool -> conv -> ReLU -> flatten -> linear, with random weights.


class ConvNet(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc: eqx.nn.Linear
    pool: eqx.nn.MaxPool2d

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 3, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(3, 4, 3, padding=1, key=k2)
        self.fc = eqx.nn.Linear(4 * 4 * 4, 5, key=k3)
        self.pool = eqx.nn.MaxPool2d(2, 2)

    def __call__(self, x):
        h = self.pool(jax.nn.relu(self.conv1(x)))
        return self.fc(jax.nn.relu(self.conv2(h)).reshape(-1))


NET = ConvNet(jax.random.key(1))
XS = jax.random.normal(jax.random.key(2), (3, 1, 8, 8))


def _transposed_conv(conv: eqx.nn.Conv2d) -> eqx.nn.Conv2d:
    # The deconvnet's filter: the forward filter flipped in space with its input
    # and output channels swapped, applied as an ordinary convolution.
    out_c, in_c = conv.weight.shape[:2]
    back = eqx.nn.Conv2d(
        out_c, in_c, 3, padding=1, use_bias=False, key=jax.random.key(0)
    )
    flipped = jnp.flip(conv.weight, axis=(2, 3)).transpose(1, 0, 2, 3)
    return eqx.tree_at(lambda c: c.weight, back, flipped)


def _switches(h):
    # For each 2x2 pooling window, a one-hot mask of where its maximum was.
    c, hh, ww = h.shape
    windows = h.reshape(c, hh // 2, 2, ww // 2, 2).transpose(0, 1, 3, 2, 4)
    windows = windows.reshape(c, hh // 2, ww // 2, 4)
    return jax.nn.one_hot(jnp.argmax(windows, axis=-1), 4)


def _unpool(r, switches):
    c, hh, ww = r.shape
    placed = switches * r.reshape(c, hh, ww, 1)
    placed = placed.reshape(c, hh, ww, 2, 2).transpose(0, 1, 3, 2, 4)
    return placed.reshape(c, 2 * hh, 2 * ww)


def deconvnet(net: ConvNet, x, target: int):
    """Zeiler & Fergus's deconvolutional network, built by hand for ConvNet."""
    switches = _switches(jax.nn.relu(net.conv1(x)))
    deconv1, deconv2 = _transposed_conv(net.conv1), _transposed_conv(net.conv2)
    r = net.fc.weight[target].reshape(4, 4, 4)  # the class score's projection
    r = deconv2(jax.nn.relu(r))  # rectify, then filter
    r = _unpool(r, switches)  # unpool with the forward pass's switches
    return deconv1(jax.nn.relu(r))


def test_deconvolution_equals_explicit_deconvnet():
    targets = jnp.array([0, 3, 4])
    want = eqx.filter_jit(jax.vmap(deconvnet, in_axes=(None, 0, 0)))(NET, XS, targets)
    got = eqx.filter_vmap(eqx.filter_jit(xa.Deconvolution(NET)))(XS, targets)
    assert_close(got, want)
    # ... and it is not the gradient.
    plain = eqx.filter_vmap(eqx.filter_jit(xa.Gradients(NET)))(XS, targets)
    assert not tree_allclose(got, plain, atol=1e-3)


def _torch_twin(net: ConvNet) -> torch.nn.Module:
    def conv(c):
        t = torch.nn.Conv2d(c.in_channels, c.out_channels, 3, padding=1)
        t.weight.data = torch.tensor(np.asarray(c.weight))
        t.bias.data = torch.tensor(np.asarray(c.bias).reshape(-1))
        return t

    fc = torch.nn.Linear(64, 5)
    fc.weight.data = torch.tensor(np.asarray(net.fc.weight))
    fc.bias.data = torch.tensor(np.asarray(net.fc.bias))
    # nn.ReLU modules (two instances): the case in which Captum's hooks are right.
    return torch.nn.Sequential(
        conv(net.conv1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2, 2),
        conv(net.conv2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        fc,
    ).eval()


def test_matches_captum_on_a_torch_twin():
    twin = _torch_twin(NET)
    xt = torch.tensor(np.asarray(XS))
    assert_close(twin(xt).detach().numpy(), jax.vmap(NET)(XS))
    targets = jnp.array([0, 2, 4])
    tt = torch.tensor(np.asarray(targets))
    for ours, theirs in (
        (xa.GuidedBackprop(NET), captum.attr.GuidedBackprop(twin)),
        (xa.Deconvolution(NET), captum.attr.Deconvolution(twin)),
    ):
        want = theirs.attribute(xt.clone().requires_grad_(), target=tt)
        got = eqx.filter_vmap(eqx.filter_jit(ours))(XS, targets)
        assert_close(got, want.detach().numpy())


# ---------------------------------------------------------------------------------
# Transformations


def test_jit_does_not_retrace_and_vmaps():
    traces = []

    class Counted(eqx.Module):
        net: ConvNet

        def __call__(self, x):
            traces.append(None)
            return self.net(x)

    model = Counted(NET)
    for cls in (xa.GuidedBackprop, xa.Deconvolution):
        method = eqx.filter_jit(cls(model))
        # Array targets (a Python int is static for filter_jit, one trace each).
        first = method(XS[0], jnp.arange(5)[1])
        n = len(traces)
        refs = [method(x, t) for x in XS for t in jnp.arange(5)]
        assert len(traces) == n  # same shapes, new values: no new trace
        assert_close(first, cls(model)(XS[0], 1))
        # A batch, and every class of one example.
        targets = jnp.array([0, 3, 4])
        batch = eqx.filter_vmap(method)(XS, targets)
        per_class = jax.vmap(lambda t, m=method: m(XS[0], t))(jnp.arange(5))
        for i in range(3):
            want = refs[5 * i + int(targets[i])]
            assert_close(batch[i], want)
        for t in range(5):
            assert_close(per_class[t], refs[t])


@eqx.filter_jit
def _three(model, x):
    return (
        xa.Gradients(model)(x, 2),
        xa.GuidedBackprop(model)(x, 2),
        xa.Deconvolution(model)(x, 2),
    )


def test_guided_differs_from_gradient_unless_every_signal_is_positive():
    cnn = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8))
    plain, guided, deconv = _three(cnn, x)
    # (`tree_allclose` allows rounding relative to max |plain|: the maps must
    # differ by more)
    assert not tree_allclose(guided, plain)
    assert not tree_allclose(deconv, plain)
    # Positive weights and biases on a positive input: every ReLU is on and every
    # backward signal positive, so all three rules coincide with the gradient.
    positive = jax.tree_util.tree_map(
        lambda a: jnp.abs(a) if eqx.is_array(a) else a, cnn
    )
    plain, guided, deconv = _three(positive, x)
    assert float(jnp.min(plain)) > 0
    assert_close(guided, plain)
    assert_close(deconv, plain)


def test_callable_target_and_input_checks():
    x = XS[0]
    # A callable target is applied outside the swap: log-softmax is not rewritten.
    target = lambda s: jax.nn.log_softmax(s)[1]
    got = eqx.filter_jit(xa.GuidedBackprop(NET))(x, target)
    swapped = xa.swap_relu(NET, "guided")
    want = eqx.filter_jit(jax.grad(lambda v: target(swapped(v))))(x)
    assert_close(got, want)
    with pytest.raises(ValueError, match="out of range"):
        xa.GuidedBackprop(NET)(x, 7)
    with pytest.raises(TypeError, match="floating"):
        xa.Deconvolution(NET)(jnp.zeros((1, 8, 8), jnp.int32), 0)
