"""LRP equals Zennit on identical weights: every composite, every rule, zoo twins."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import eqx_attr as xa
from eqx_attr.torch_twins import to_torch

from ._torchvision_stub import install
from .helpers import assert_close, jcall

install()

import zennit.canonizers as zcanon  # noqa: E402
import zennit.composites as zcomp  # noqa: E402
import zennit.rules as zrules  # noqa: E402
import zennit.types as ztypes  # noqa: E402
from zennit.torchvision import ResNetCanonizer  # noqa: E402

torch.set_num_threads(1)


def zennit_relevance(twin, composite, x, target):
    """Zennit's attribution, starting from output * one_hot(target)."""
    xt = torch.tensor(np.asarray(x, np.float32)[None], requires_grad=True)
    with composite.context(twin) as modified:
        out = modified(xt)
        onehot = torch.zeros_like(out)
        onehot[0, target] = 1.0
        (grad,) = torch.autograd.grad(out, xt, grad_outputs=out * onehot)
    return grad[0].detach().numpy()


def random_batch_norms(model, key):
    """Give every frozen batch norm random statistics (fresh ones are identities)."""
    is_bn = lambda n: isinstance(n, xa.models.FrozenBatchNorm2d)
    bns = [n for n in jax.tree_util.tree_leaves(model, is_leaf=is_bn) if is_bn(n)]
    keys = jax.random.split(key, len(bns))

    def randomised(bn, k):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        c = bn.weight.shape
        return eqx.tree_at(
            lambda b: (b.weight, b.bias, b.running_mean, b.running_var),
            bn,
            (
                jax.random.uniform(k1, c, minval=0.5, maxval=1.5),
                0.1 * jax.random.normal(k2, c),
                0.1 * jax.random.normal(k3, c),
                jax.random.uniform(k4, c, minval=0.5, maxval=1.5),
            ),
        )

    return eqx.tree_at(
        lambda m: [n for n in jax.tree_util.tree_leaves(m, is_leaf=is_bn) if is_bn(n)],
        model,
        [randomised(bn, k) for bn, k in zip(bns, keys, strict=True)],
    )


def with_relu_alias(twin):
    """Zennit's ResNet canonizer calls `block.relu`, torchvision's one shared ReLU."""
    for module in twin.modules():
        if isinstance(module, xa.torch_twins.BasicBlock | xa.torch_twins.Bottleneck):
            module.relu = module.relu1
    return twin


COMPOSITES = {
    "EpsilonPlus": (xa.lrp.EpsilonPlus(), zcomp.EpsilonPlus),
    "EpsilonPlusFlat": (xa.lrp.EpsilonPlusFlat(), zcomp.EpsilonPlusFlat),
    "EpsilonAlpha2Beta1": (xa.lrp.EpsilonAlpha2Beta1(), zcomp.EpsilonAlpha2Beta1),
    "EpsilonGammaBox": (
        xa.lrp.EpsilonGammaBox(low=-1.0, high=1.0),
        lambda canonizers: zcomp.EpsilonGammaBox(
            low=-1.0, high=1.0, canonizers=canonizers
        ),
    ),
}


def build(arch):
    key = jax.random.key(3)
    if arch == "vgg11":
        model = xa.models.vgg11(n_classes=5, width=8, hidden=16, pool_size=2, key=key)
        return model, lambda: [zcanon.SequentialMergeBatchNorm()]
    if arch == "vgg11_bn":
        model = xa.models.vgg11_bn(
            n_classes=5, width=8, hidden=16, pool_size=1, key=key
        )
        model = random_batch_norms(model, jax.random.key(4))
        return model, lambda: [zcanon.SequentialMergeBatchNorm()]
    model = xa.models.resnet18(n_classes=5, width=4, key=key)
    model = random_batch_norms(model, jax.random.key(4))
    return model, lambda: [ResNetCanonizer()]


@pytest.mark.parametrize("arch", ["vgg11", "vgg11_bn", "resnet18"])
def test_composites_equal_zennit_on_zoo_twins(arch):
    model, canonizers = build(arch)
    twin = with_relu_alias(to_torch(model))
    x = jax.random.uniform(jax.random.key(5), (3, 32, 32), minval=-1.0, maxval=1.0)
    target = 2
    for name, (ours, theirs) in COMPOSITES.items():
        expected = zennit_relevance(twin, theirs(canonizers=canonizers()), x, target)
        got = np.asarray(jcall(xa.LRP(model, composite=ours), x, target))
        # rtol 10x the policy's: 8 to 20 layers of float32 torch convolutions
        # (another summation order), batch norms folded by Zennit's canonizers,
        # and every layer's rule divides by a stabilised denominator, which
        # amplifies the rounding that accumulates over the depth.
        assert_close(got, expected, rtol=1e-4, err_msg=f"{arch} {name}")


class TorchSmallCNN(nn.Module):
    """SmallCNN's twin with its global mean as an `AdaptiveAvgPool2d` module, which
    is how Zennit sees an average pool (an inline `.mean` would keep its plain
    gradient there, while we give every mean the `Norm` rule)."""

    def __init__(self, twin):
        super().__init__()
        self.conv1, self.conv2, self.fc = twin.conv1, twin.conv2, twin.fc
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.fc(self.pool(self.conv2(self.conv1(x))).flatten(1))


def single_rule(rule):
    layer_map = [
        (ztypes.Activation, zrules.Pass()),
        (ztypes.AvgPool, rule),
        (ztypes.Linear, rule),
    ]
    return zcomp.LayerMapComposite(layer_map=layer_map)


RULES = {
    "Epsilon": (xa.lrp.Epsilon(0.01), lambda: zrules.Epsilon(0.01)),
    "ZPlus": (xa.lrp.ZPlus(), lambda: zrules.ZPlus()),
    "AlphaBeta": (xa.lrp.AlphaBeta(2.0, 1.0), lambda: zrules.AlphaBeta(2.0, 1.0)),
    "Gamma": (xa.lrp.Gamma(0.5), lambda: zrules.Gamma(0.5)),
    "ZBox": (xa.lrp.ZBox(-1.0, 2.0), lambda: zrules.ZBox(-1.0, 2.0)),
    "Flat": (xa.lrp.Flat(), lambda: zrules.Flat()),
    "WSquare": (xa.lrp.WSquare(), lambda: zrules.WSquare()),
    "Norm": (xa.lrp.Norm(), lambda: zrules.Norm()),
}


def small_cnn_with_bias(key):
    model = xa.models.SmallCNN(width=4, key=key)
    convs = lambda m: [m.conv1[0], m.conv1[3], m.conv2[0], m.conv2[2]]
    biases = [
        0.1 * jax.random.normal(k, c.bias.shape)
        for k, c in zip(jax.random.split(key, 4), convs(model), strict=True)
    ]
    return eqx.tree_at(lambda m: [c.bias for c in convs(m)], model, biases)


@pytest.mark.parametrize("name", list(RULES))
def test_each_rule_on_every_layer_equals_zennit(name):
    # Biases are non-zero so that each rule's bias handling is compared too.
    model = small_cnn_with_bias(jax.random.key(0))
    twin = TorchSmallCNN(to_torch(model))
    x = jax.random.uniform(jax.random.key(1), (1, 16, 16), minval=-1.0, maxval=1.0)
    ours, theirs = RULES[name]
    expected = zennit_relevance(twin, single_rule(theirs()), x, 7)
    got = np.asarray(jcall(xa.LRP(model, rule=ours), x, 7))
    assert_close(got, expected)


def test_mlp_composites_equal_zennit():
    model = xa.models.MLP((1, 8, 8), n_classes=4, width=16, key=jax.random.key(2))
    twin = to_torch(model)
    x = jax.random.uniform(jax.random.key(3), (1, 8, 8))
    for name, (ours, theirs) in COMPOSITES.items():
        expected = zennit_relevance(twin, theirs(canonizers=None), x, 1)
        got = np.asarray(xa.LRP(model, composite=ours)(x, 1))
        assert_close(got, expected, err_msg=name)


def test_inline_relu_mean_model_equals_zennit_with_modules():
    # A model written with inline operations (`x @ w`, `jnp.mean`, `jax.nn.relu`,
    # `lax.conv`) against Zennit on the same network written with modules.
    model = small_cnn_with_bias(jax.random.key(4))

    def inline(x):
        def conv(c, h):
            y = jax.lax.conv_general_dilated(
                h[None], c.weight, (1, 1), ((1, 1), (1, 1))
            )[0]
            return y + c.bias

        m = model
        h = jax.nn.relu(conv(m.conv1[0], x))
        h = m.conv1[2](h)
        h = jax.nn.relu(conv(m.conv1[3], h))
        h = m.conv1[5](h)
        h = jax.nn.relu(conv(m.conv2[0], h))
        h = jax.nn.relu(conv(m.conv2[2], h))
        return m.fc.weight @ jnp.mean(h, axis=(1, 2)) + m.fc.bias

    twin = TorchSmallCNN(to_torch(model))
    x = jax.random.uniform(jax.random.key(5), (1, 12, 12))
    for name, (ours, theirs) in COMPOSITES.items():
        expected = zennit_relevance(twin, theirs(canonizers=None), x, 3)
        got = np.asarray(xa.LRP(inline, composite=ours)(x, 3))
        assert_close(got, expected, err_msg=name)
