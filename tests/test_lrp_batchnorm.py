"""LRP merges `eqx.nn.BatchNorm` in inference mode into the layer before it.

Against the same network with each batch norm folded by hand, and against Zennit's
`SequentialMergeBatchNorm` on a torch twin with `nn.BatchNorm2d` in eval mode.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import eqx_attr as xa

from ._torchvision_stub import install
from .helpers import assert_close, jcall

install()

import zennit.canonizers as zcanon  # noqa: E402
import zennit.composites as zcomp  # noqa: E402

torch.set_num_threads(1)

COMPOSITES = {
    "EpsilonPlusFlat": (xa.lrp.EpsilonPlusFlat(), zcomp.EpsilonPlusFlat),
    "EpsilonPlus": (xa.lrp.EpsilonPlus(), zcomp.EpsilonPlus),
    "EpsilonAlpha2Beta1": (xa.lrp.EpsilonAlpha2Beta1(), zcomp.EpsilonAlpha2Beta1),
    "EpsilonGammaBox": (
        xa.lrp.EpsilonGammaBox(low=-1.0, high=1.0),
        lambda canonizers: zcomp.EpsilonGammaBox(
            low=-1.0, high=1.0, canonizers=canonizers
        ),
    ),
}


def _stats_index(bn):
    return bn.ema_state_index if bn.mode == "ema" else bn.batch_state_index


def randomise(model, state, key):
    """Random affine parameters and running statistics for every batch norm."""
    is_bn = lambda n: isinstance(n, eqx.nn.BatchNorm)
    bns = [n for n in jax.tree_util.tree_leaves(model, is_leaf=is_bn) if is_bn(n)]
    new = []
    for bn, k in zip(bns, jax.random.split(key, len(bns)), strict=True):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        c = (bn.input_size,)
        mean = 0.2 * jax.random.normal(k3, c)
        var = jax.random.uniform(k4, c, minval=0.5, maxval=1.5)
        state = state.set(_stats_index(bn), (mean, var))
        # Negative scales too: the fold must flip those channels' weights.
        weight = jax.random.uniform(k1, c, minval=-1.5, maxval=1.5)
        new.append(
            eqx.tree_at(
                lambda b: (b.weight, b.bias),
                bn,
                (weight, 0.1 * jax.random.normal(k2, c)),
            )
        )
    model = eqx.tree_at(
        lambda m: [n for n in jax.tree_util.tree_leaves(m, is_leaf=is_bn) if is_bn(n)],
        model,
        new,
    )
    return model, state


class Net(eqx.Module):
    """conv -> BN -> relu -> conv (no bias) -> BN -> relu -> mean -> dense -> BN ->
    relu -> dense, written with `state` threaded by hand."""

    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    fc1: eqx.nn.Linear
    bn3: eqx.nn.BatchNorm
    fc2: eqx.nn.Linear

    def __init__(self, key, inference=True):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.conv1 = eqx.nn.Conv2d(1, 6, 3, padding=1, key=k1)
        self.bn1 = eqx.nn.BatchNorm(6, "batch", mode="batch", inference=inference)
        self.conv2 = eqx.nn.Conv2d(6, 6, 3, use_bias=False, key=k2)
        self.bn2 = eqx.nn.BatchNorm(6, "batch", mode="ema", inference=inference)
        self.fc1 = eqx.nn.Linear(6, 8, key=k3)
        self.bn3 = eqx.nn.BatchNorm(8, "batch", mode="ema", inference=inference)
        self.fc2 = eqx.nn.Linear(8, 5, key=k4)

    def __call__(self, x, state):
        x, state = self.bn1(self.conv1(x), state)
        x, state = self.bn2(self.conv2(jax.nn.relu(x)), state)
        x = jnp.mean(jax.nn.relu(x), axis=(1, 2))
        x, state = self.bn3(self.fc1(x), state)
        return self.fc2(jax.nn.relu(x)), state


def folded(model, state):
    """The same network with each batch norm folded into its layer by hand."""

    def fold(layer, bn):
        mean, var = state.get(_stats_index(bn))
        scale = bn.weight / jnp.sqrt(var + bn.eps)
        weight = layer.weight * scale.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
        bias = 0.0 if layer.bias is None else layer.bias.reshape(-1)
        bias = (bias - mean) * scale + bn.bias
        if isinstance(layer, eqx.nn.Conv2d):
            bias = bias[:, None, None]
            if layer.bias is None:  # a fresh convolution that has a bias
                layer = eqx.nn.Conv2d(
                    layer.in_channels, layer.out_channels, layer.kernel_size,
                    padding=layer.padding, key=jax.random.key(0),
                )  # fmt: skip
        return eqx.tree_at(lambda c: (c.weight, c.bias), layer, (weight, bias))

    c1, c2 = fold(model.conv1, model.bn1), fold(model.conv2, model.bn2)
    l1 = fold(model.fc1, model.bn3)

    def forward(x):
        x = jax.nn.relu(c2(jax.nn.relu(c1(x))))
        return model.fc2(jax.nn.relu(l1(jnp.mean(x, axis=(1, 2)))))

    return forward


@pytest.fixture(scope="module")
def net():
    model, state = eqx.nn.make_with_state(Net)(jax.random.key(0))
    return randomise(model, state, jax.random.key(1))


def test_batch_norm_merged_equals_hand_folded(net):
    model, state = net
    hand = folded(model, state)
    x = jax.random.uniform(jax.random.key(2), (1, 10, 10), minval=-1.0, maxval=1.0)
    assert_close(model(x, state)[0], hand(x))
    scores = hand(x)
    target = int(jnp.argmax(scores))
    for name, (ours, _) in COMPOSITES.items():
        want = np.asarray(jcall(xa.LRP(hand, composite=ours), x, target))
        merged = xa.LRP(lambda z: model(z, state)[0], composite=ours)
        got = np.asarray(jcall(merged, x, target))
        assert np.abs(want).max() > 1e-7, name  # a relevance that could differ
        assert_close(got, want, err_msg=name)


def test_batch_norm_module_holding_its_state(net):
    # A module that holds the model and its state (a PyTree, not a closure).
    model, state = net

    class WithState(eqx.Module):
        model: Net
        state: eqx.nn.State

        def __call__(self, x):
            return self.model(x, self.state)[0]

    x = jax.random.uniform(jax.random.key(3), (1, 9, 9))
    wrapped = WithState(model, state)
    got = xa.LRP(wrapped)(x, 1)
    want = xa.LRP(folded(model, state))(x, 1)
    assert_close(got, want)
    # jit / vmap over a batch, as every method.
    xs = jax.random.uniform(jax.random.key(4), (3, 1, 9, 9))
    batched = eqx.filter_jit(eqx.filter_vmap(lambda a: xa.LRP(wrapped)(a, 1)))(xs)
    assert_close(batched[1], xa.LRP(wrapped)(xs[1], 1))


def twins(key):
    """An `eqx.nn.Sequential` with BatchNorms and its torch twin (eval mode)."""
    ks = jax.random.split(key, 3)
    layers = [
        eqx.nn.Conv2d(1, 4, 3, padding=1, key=ks[0]),
        eqx.nn.BatchNorm(4, "batch", mode="ema", inference=True),
        eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.Conv2d(4, 6, 3, key=ks[1]),
        eqx.nn.BatchNorm(6, "batch", mode="batch", inference=True),
        eqx.nn.Lambda(jax.nn.relu),
        eqx.nn.Lambda(lambda h: jnp.mean(h, axis=(1, 2))),
        eqx.nn.Linear(6, 5, key=ks[2]),
    ]
    model, state = eqx.nn.make_with_state(eqx.nn.Sequential)(layers)
    model, state = randomise(model, state, jax.random.key(7))
    torch_layers = []
    for layer in model.layers:
        if isinstance(layer, eqx.nn.Conv2d):
            conv = nn.Conv2d(
                layer.in_channels,
                layer.out_channels,
                layer.kernel_size,
                padding=layer.padding[0][0],
            )
            conv.weight.data = torch.tensor(np.asarray(layer.weight))
            conv.bias.data = torch.tensor(np.asarray(layer.bias).reshape(-1))
            torch_layers.append(conv)
        elif isinstance(layer, eqx.nn.BatchNorm):
            bn = nn.BatchNorm2d(layer.input_size, eps=layer.eps)
            mean, var = state.get(_stats_index(layer))
            bn.weight.data = torch.tensor(np.asarray(layer.weight))
            bn.bias.data = torch.tensor(np.asarray(layer.bias))
            bn.running_mean.data = torch.tensor(np.asarray(mean))
            bn.running_var.data = torch.tensor(np.asarray(var))
            torch_layers.append(bn)
        elif isinstance(layer, eqx.nn.Linear):
            torch_layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            fc = nn.Linear(layer.in_features, layer.out_features)
            fc.weight.data = torch.tensor(np.asarray(layer.weight))
            fc.bias.data = torch.tensor(np.asarray(layer.bias))
            torch_layers.append(fc)
        elif layer.fn is jax.nn.relu:
            torch_layers.append(nn.ReLU())
    return model, state, nn.Sequential(*torch_layers).eval()


def zennit_relevance(twin, composite, x, target):
    xt = torch.tensor(np.asarray(x, np.float32)[None], requires_grad=True)
    with composite.context(twin) as modified:
        out = modified(xt)
        onehot = torch.zeros_like(out)
        onehot[0, target] = 1.0
        (grad,) = torch.autograd.grad(out, xt, grad_outputs=out * onehot)
    return grad[0].detach().numpy(), out[0].detach().numpy()


def test_batch_norm_merged_equals_zennit():
    model, state, twin = twins(jax.random.key(5))
    x = jax.random.uniform(jax.random.key(6), (1, 12, 12), minval=-1.0, maxval=1.0)
    f = lambda z: model(z, state)[0]
    with torch.no_grad():
        torch_out = twin(torch.tensor(np.asarray(x)[None]))[0].numpy()
    assert_close(f(x), torch_out)
    target = int(np.argmax(torch_out))
    for name, (ours, theirs) in COMPOSITES.items():
        canon = [zcanon.SequentialMergeBatchNorm()]
        want, _ = zennit_relevance(twin, theirs(canonizers=canon), x, target)
        got = np.asarray(jcall(xa.LRP(f, composite=ours), x, target))
        assert np.abs(want).max() > 1e-4, name
        # rtol 10x the policy's: Zennit runs float32 torch convolutions (another
        # summation order) on weights it folds itself, and the rules' divisions
        # by small stabilised denominators amplify that rounding.
        assert_close(got, want, rtol=1e-4, err_msg=name)


def test_training_mode_batch_norm_raises_naming_it():
    # A model of its own: a training-mode call marks its state as used.
    training, state = eqx.nn.make_with_state(Net)(jax.random.key(0), inference=False)
    x = jnp.ones((1, 8, 8))
    with pytest.raises(
        ValueError,
        match=r"`training.bn1`.*set inference=True \(eqx.nn.inference_mode\)",
    ):
        xa.LRP(lambda z: training(z, state)[0])(x, 0)
    # A batch norm LRP cannot find in the model's PyTree or closure is caught when
    # traced: an unbound batch axis, or (under a vmap binding it) the batch
    # statistics in the program.
    training, state = eqx.nn.make_with_state(Net)(jax.random.key(0), inference=False)

    class Box:  # not a PyTree: hides the module from LRP's search
        model = training

    def hidden(z):
        leaves, treedef = jax.tree_util.tree_flatten(state)  # a fresh state per trace
        return Box.model(z, jax.tree_util.tree_unflatten(treedef, leaves))[0]

    with pytest.raises(ValueError, match=r"training mode \(inference=False\)"):
        xa.LRP(hidden)(x, 0)
    with pytest.raises(ValueError, match=r"training mode.*batch statistics are taken"):
        jax.vmap(lambda z: xa.LRP(hidden)(z, 0), axis_name="batch")(
            jnp.ones((2, 1, 8, 8))
        )


def test_batch_norm_after_an_activation_raises(net):
    model, state = net

    def f(x):
        h = jax.nn.relu(model.conv1(x))
        h, _ = model.bn1(h, state)  # not directly after its convolution
        return model.fc2(jnp.zeros(8)) + jnp.mean(h)

    with pytest.raises(
        ValueError, match="cannot merge the eqx.nn.BatchNorm.*directly follow"
    ):
        xa.LRP(f)(jnp.ones((1, 8, 8)), 0)
