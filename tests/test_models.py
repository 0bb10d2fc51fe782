"""The model zoo: sizes, call contract, `where` paths, surgery-reachable ReLUs."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import eqx_attr.models as M

from .helpers import assert_close

KEY = jax.random.key(0)

# Parameter counts published with torchvision (`weights.meta["num_params"]`) and
# timm for the standard configurations; batch-norm running statistics are buffers
# there, not parameters, so they are excluded here too.
PUBLISHED = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vit_tiny": 5_717_416,
    "vit_small": 22_050_664,
    "vit_base": 86_567_656,
}


def n_params(model) -> int:
    flat, _ = jax.tree_util.tree_flatten_with_path(
        model, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )
    total = 0
    for path, leaf in flat:
        last = path[-1]
        if isinstance(leaf, jax.ShapeDtypeStruct) and not (
            isinstance(last, jax.tree_util.GetAttrKey)
            and last.name in ("running_mean", "running_var")
        ):
            total += math.prod(leaf.shape)
    return total


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_parameter_count_matches_published(arch):
    # Shapes only: no 100M-parameter initialisation in the test suite.
    like = eqx.filter_eval_shape(M.create_model, arch, key=KEY)
    assert n_params(like) == PUBLISHED[arch]


def test_standard_shapes_and_layout():
    vgg = eqx.filter_eval_shape(M.vgg16, key=KEY)
    assert len(vgg.features) == 31  # 13 convs + 13 ReLUs + 5 pools, as torchvision
    assert isinstance(vgg.features[28], eqx.nn.Conv2d)
    assert isinstance(vgg.features[29], eqx.nn.Lambda)
    assert isinstance(vgg.features[30], eqx.nn.MaxPool2d)
    assert vgg.classifier[0].weight.shape == (4096, 512 * 7 * 7)
    bn = eqx.filter_eval_shape(M.vgg11_bn, key=KEY)
    assert isinstance(bn.features[1], M.FrozenBatchNorm2d)
    r50 = eqx.filter_eval_shape(M.resnet50, key=KEY)
    assert [len(s) for s in (r50.layer1, r50.layer2, r50.layer3, r50.layer4)] == [
        3,
        4,
        6,
        3,
    ]
    assert isinstance(r50.layer4[-1], M.Bottleneck)
    assert r50.layer2[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3
    assert r50.fc.weight.shape == (1000, 2048)
    vit = eqx.filter_eval_shape(M.vit_small, key=KEY)
    assert vit.pos_embed.shape == (197, 384)
    assert vit.blocks[0].attn.heads == 6
    assert vit.blocks[0].mlp.fc1.weight.shape == (1536, 384)


def materialise(like, seed=0):
    """Fill a shape-only model with NumPy random weights (no JAX init compiles)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if not isinstance(leaf, jax.ShapeDtypeStruct):
            return leaf
        name = path[-1].name if isinstance(path[-1], jax.tree_util.GetAttrKey) else ""
        if name == "running_var":
            return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
        fan_in = math.prod(leaf.shape[1:]) if len(leaf.shape) > 1 else 1
        scale = 1.0 / math.sqrt(fan_in) if len(leaf.shape) > 1 else 0.1
        return jnp.asarray(rng.normal(0.0, scale, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(
        fill, like, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
    )


@pytest.fixture(scope="module")
def small_models():
    # Load-bearing sizes are small; no test compiles a full-size network.
    shapes = dict(
        vgg=lambda: M.vgg11(n_classes=5, width=4, hidden=8, pool_size=2, key=KEY),
        resnet=lambda: M.resnet18(n_classes=5, width=4, key=KEY),
        vit=lambda: M.ViT(
            image_size=28,
            patch_size=7,
            in_channels=1,
            dim=16,
            depth=2,
            heads=4,
            n_classes=10,
            key=KEY,
        ),
    )
    return {k: materialise(eqx.filter_eval_shape(f)) for k, f in shapes.items()}


def test_random_init_runs():
    # The real initialiser, on a tiny configuration (ResNet and VGG initialisers
    # run under `filter_eval_shape` above; a real init compiles one random op per
    # distinct weight shape, too slow for this suite).
    m = M.ViT(
        image_size=8,
        patch_size=4,
        in_channels=1,
        dim=4,
        depth=1,
        heads=2,
        n_classes=3,
        key=KEY,
    )
    y = eqx.filter_jit(m)(jnp.ones((1, 8, 8)))
    assert y.shape == (3,) and bool(jnp.all(jnp.isfinite(y)))


def test_vgg_forward_one_example(small_models):
    y = eqx.filter_jit(small_models["vgg"])(jax.random.normal(KEY, (3, 32, 32)))
    assert y.shape == (5,) and bool(jnp.all(jnp.isfinite(y)))


def test_bad_inputs_name_the_problem(small_models):
    vgg, resnet, vit = (small_models[k] for k in ("vgg", "resnet", "vit"))
    with pytest.raises(ValueError, match="ONE image"):
        resnet(jnp.zeros((2, 3, 32, 32)))
    with pytest.raises(ValueError, match="in_channels=3"):
        resnet(jnp.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="H, W >= 32"):
        vgg(jnp.zeros((3, 16, 16)))
    with pytest.raises(ValueError, match="image_size=28"):
        vit(jnp.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="depth"):
        M.VGG(depth=12, key=KEY)
    with pytest.raises(ValueError, match="depth"):
        M.ResNet(depth=20, key=KEY)
    with pytest.raises(ValueError, match="heads"):
        M.ViT(image_size=28, patch_size=7, dim=10, heads=4, key=KEY)
    with pytest.raises(ValueError, match="patch_size"):
        M.ViT(image_size=30, patch_size=7, key=KEY)
    with pytest.raises(ValueError, match="width"):
        M.resnet18(width=0, key=KEY)
    with pytest.raises(ValueError, match="Unknown architecture 'resnet9'"):
        M.create_model("resnet9", key=KEY)


class Probe(eqx.Module):
    """Adds a zero offset to a layer's output, so grad w.r.t. it is d out / d layer."""

    layer: eqx.Module
    offset: jax.Array

    def __call__(self, x, *, key=None):
        return self.layer(x) + self.offset


def _layer_grads(model, wheres, shapes, x, target):
    """d model(x)[target] / d (output of the layer named by each `where`)."""

    @eqx.filter_jit
    def grads(model, x):
        out = []
        for where, shape in zip(wheres, shapes, strict=True):
            probed = eqx.tree_at(
                where, model, replace_fn=lambda layer: Probe(layer, jnp.zeros(shape))
            )

            def score(offset, probed=probed, where=where):
                m = eqx.tree_at(lambda m: where(m).offset, probed, offset)
                return m(x)[target]

            out.append(jax.grad(score)(jnp.zeros(shape)))
        return out

    return grads(model, x)


def test_resnet_layer4_is_pooled_straight_into_fc(small_models):
    # Readable `where` paths: `m.layer4` and `m.layer4[-1]` both name the last
    # feature map. Global average pooling then fc gives
    # d logit_c / d A[k, i, j] = W[c, k] / (h * w) exactly: the CAM identity.
    m = small_models["resnet"]
    x = jax.random.normal(jax.random.key(1), (3, 64, 64))
    shape = (32, 2, 2)
    assert eqx.filter_eval_shape(m.features, x).shape == shape
    assert isinstance(m.layer4[-1], M.BasicBlock)
    wheres = [lambda m: m.layer4, lambda m: m.layer4[-1]]
    expected = jnp.broadcast_to(m.fc.weight[3].reshape(-1, 1, 1) / 4.0, shape)
    for g in _layer_grads(m, wheres, [shape, shape], x, 3):
        assert_close(g, expected)


def test_vit_where_paths_give_token_maps(small_models):
    m = small_models["vit"]
    x = jax.random.normal(jax.random.key(2), (1, 28, 28))
    n = 1 + (28 // 7) ** 2
    wheres = [
        lambda m: m.blocks[-1],
        lambda m: m.blocks[-1].norm1,
        lambda m: m.blocks[0].attn.attn_drop,
    ]
    shapes = [(n, 16), (n, 16), (4, n, n)]
    g_block, g_norm, g_attn = _layer_grads(m, wheres, shapes, x, 2)
    # After the last block only per-token operations and the class-token readout
    # remain, so the score depends on the block's output through row 0 alone.
    assert float(jnp.abs(g_block[0]).max()) > 0
    assert float(jnp.abs(g_block[1:]).max()) == 0.0  # exact: no dependence at all
    # norm1 feeds attention, which mixes tokens: every token matters.
    assert bool(jnp.all(jnp.abs(g_norm).sum(axis=1) > 0))
    # The attention probabilities (heads, N, N) are a readable layer too.
    assert g_attn.shape == (4, n, n) and float(jnp.abs(g_attn).max()) > 0


def _count_relu_calls(jaxpr) -> int:
    # `jax.nn.relu` is a custom_jvp function: one `custom_jvp_call` per call.
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "custom_jvp_call":
            count += "relu" in str(eqn.params["call_jaxpr"])
            continue
        for p in eqn.params.values():
            for sub in p if isinstance(p, (list, tuple)) else [p]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    count += _count_relu_calls(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    count += _count_relu_calls(sub)
    return count


def _jaxpr(model, x):
    closed, _, _ = eqx.filter_make_jaxpr(lambda m, x: m(x))(model, x)
    return closed.jaxpr


def _is_relu(node) -> bool:
    return isinstance(node, eqx.nn.Lambda) and node.fn is jax.nn.relu


@pytest.mark.parametrize(
    "arch,kwargs,n_relus",
    [
        ("vgg11", dict(width=4, hidden=8, pool_size=1), 8 + 2),
        ("resnet18", dict(width=4), 1 + 8 * 2),
        ("resnet50", dict(width=2), 1 + 16 * 3),
    ],
)
def test_every_relu_is_held_in_the_pytree(arch, kwargs, n_relus):
    # Surgery can only rewrite ReLUs it can find in the PyTree: each one must be an
    # `eqx.nn.Lambda(jax.nn.relu)` called exactly once, none inline.
    like = eqx.filter_eval_shape(M.create_model, arch, key=KEY, **kwargs)
    x = jax.ShapeDtypeStruct((3, 32, 32), jnp.float32)
    nodes = [
        n for n in jax.tree_util.tree_leaves(like, is_leaf=_is_relu) if _is_relu(n)
    ]
    assert len(nodes) == n_relus
    assert _count_relu_calls(_jaxpr(like, x)) == n_relus
    identity = eqx.nn.Lambda(lambda v: v)
    swapped = jax.tree_util.tree_map(
        lambda n: identity if _is_relu(n) else n, like, is_leaf=_is_relu
    )
    assert _count_relu_calls(_jaxpr(swapped, x)) == 0


def test_frozen_batch_norm_is_the_inference_formula():
    bn = M.FrozenBatchNorm2d(2, eps=1e-3)
    x = jax.random.normal(KEY, (2, 3, 3))
    assert_close(bn(x), x / np.sqrt(1 + 1e-3))
    bn = eqx.tree_at(
        lambda b: (b.weight, b.bias, b.running_mean, b.running_var),
        bn,
        (
            jnp.array([2.0, 3.0]),
            jnp.array([1.0, -1.0]),
            jnp.array([0.5, -2.0]),
            jnp.array([4.0, 0.25]),
        ),
    )
    # channel 0: (x - 0.5) / sqrt(4.001) * 2 + 1
    # channel 1: (x + 2) / sqrt(0.251) * 3 - 1
    y = bn(x)
    assert_close(y[0], (x[0] - 0.5) / np.sqrt(4.001) * 2 + 1)
    assert_close(y[1], (x[1] + 2) / np.sqrt(0.251) * 3 - 1)


def test_adaptive_pool_bins():
    # Two inputs onto three outputs: bins [0,1), [0,2), [1,2) (they overlap).
    x = jnp.array([[[1.0, 2.0], [3.0, 4.0]]])
    y = M.AdaptiveAvgPool2d(3)(x)
    rows = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])
    assert_close(y[0], rows @ np.asarray(x[0]) @ rows.T)


@pytest.mark.parametrize(
    "size,out", [((5, 7), (3, 3)), ((1, 1), (7, 7)), ((10, 9), (7, 4))]
)
def test_adaptive_pool_matches_torch(size, out):
    x = np.random.default_rng(0).normal(size=(2, *size)).astype(np.float32)
    ours = M.AdaptiveAvgPool2d(out)(jnp.asarray(x))
    theirs = torch.nn.AdaptiveAvgPool2d(out)(torch.from_numpy(x)[None])[0]
    assert_close(ours, theirs.numpy())


def test_layer_norm_matches_torch():
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32) * 3 + 1
    ln = M.LayerNorm(8)
    affine = (jnp.linspace(0.5, 2.0, 8), jnp.linspace(-1.0, 1.0, 8))
    ln = eqx.tree_at(lambda n: (n.weight, n.bias), ln, affine)
    t = torch.nn.LayerNorm(8, eps=1e-6)
    with torch.no_grad():
        t.weight.copy_(torch.from_numpy(np.array(ln.weight)))
        t.bias.copy_(torch.from_numpy(np.array(ln.bias)))
    assert_close(ln(jnp.asarray(x)), t(torch.from_numpy(x)).detach().numpy())
