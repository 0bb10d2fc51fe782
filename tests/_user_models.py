"""Six tiny models written the way users write them (issue 31's gallery).

Plain Equinox with inline activations, not the zoo: (a) BatchNorm + GELU +
average pooling with `eqx.nn.State`; (b) a residual MLP with LayerNorm and SiLU;
(c) a CNN with inline `jax.nn.relu` / `jnp.maximum(x, 0)`; (d) a tiny ViT on
`eqx.nn.MultiheadAttention`; (e) a channels-last `(H, W, C)` CNN; (f) a CNN with
`eqx.nn.Dropout`. Every one maps an 8x8 image to 3 scores. `GALLERY` lists them
with the `where` the layer methods use and how they are made explainable.
"""

from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_attr as xa
from eqx_attr._registry import BuildContext

C, HW, K = 4, 8, 5  # channels, image side, classes (Finer-CAM compares 3 more)


class BNGeluCNN(eqx.Module):
    """(a) conv, BatchNorm, GELU, conv, GELU, 2x2 average pool, mean, fc."""

    conv1: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    pool: eqx.nn.AvgPool2d
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, C, 3, padding=1, key=k1)
        self.bn = eqx.nn.BatchNorm(C, axis_name="batch", mode="batch")
        self.conv2 = eqx.nn.Conv2d(C, C, 3, padding=1, key=k2)
        self.pool = eqx.nn.AvgPool2d(2, stride=2)
        self.fc = eqx.nn.Linear(C, K, key=k3)

    def __call__(self, x, state):
        h, state = self.bn(self.conv1(x), state)
        h = jax.nn.gelu(self.conv2(jax.nn.gelu(h)))
        return self.fc(self.pool(h).mean(axis=(1, 2))), state


class ResBlock(eqx.Module):
    norm: eqx.nn.LayerNorm
    fc: eqx.nn.Linear

    def __call__(self, h):
        return h + self.fc(jax.nn.silu(self.norm(h)))


class ResMLP(eqx.Module):
    """(b) flatten -> linear -> two residual blocks (LayerNorm, SiLU) -> head."""

    embed: eqx.nn.Linear
    blocks: list
    head: eqx.nn.Linear

    def __init__(self, key, width: int = 8):
        ks = jax.random.split(key, 4)
        self.embed = eqx.nn.Linear(HW * HW, width, key=ks[0])
        self.blocks = [
            ResBlock(eqx.nn.LayerNorm(width), eqx.nn.Linear(width, width, key=k))
            for k in ks[1:3]
        ]
        self.head = eqx.nn.Linear(width, K, key=ks[3])

    def __call__(self, x):
        h = self.embed(x.reshape(-1))
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class InlineCNN(eqx.Module):
    """(c) conv, inline `jax.nn.relu`, conv, inline `jnp.maximum(x, 0)`, mean, fc."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, C, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(C, C, 3, padding=1, key=k2)
        self.fc = eqx.nn.Linear(C, K, key=k3)

    def __call__(self, x):
        h = jnp.maximum(self.conv2(jax.nn.relu(self.conv1(x))), 0)
        return self.fc(h.mean(axis=(1, 2)))


class Block(eqx.Module):
    norm: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    mlp: eqx.nn.MLP

    def __init__(self, key, d: int):
        k1, k2 = jax.random.split(key)
        self.norm = eqx.nn.LayerNorm(d)
        self.attn = eqx.nn.MultiheadAttention(2, d, key=k1)
        self.mlp = eqx.nn.MLP(d, d, 2 * d, 1, activation=jax.nn.gelu, key=k2)

    def __call__(self, t):
        n = jax.vmap(self.norm)(t)
        t = t + self.attn(n, n, n)
        return t + jax.vmap(self.mlp)(t)


class TinyViT(eqx.Module):
    """(d) 4x4 patches -> class token + positions -> an attention block -> head."""

    embed: eqx.nn.Conv2d
    cls: jax.Array
    pos: jax.Array
    blocks: list
    head: eqx.nn.Linear

    def __init__(self, key, d: int = 8):
        ks = jax.random.split(key, 6)
        n = (HW // 4) ** 2 + 1
        self.embed = eqx.nn.Conv2d(1, d, 4, stride=4, key=ks[0])
        self.cls = jax.random.normal(ks[1], (1, d))
        self.pos = 0.1 * jax.random.normal(ks[2], (n, d))
        self.blocks = [Block(ks[3], d)]
        self.head = eqx.nn.Linear(d, K, key=ks[5])

    def __call__(self, x):
        t = self.embed(x)
        t = jnp.concatenate([self.cls, t.reshape(t.shape[0], -1).T]) + self.pos
        for block in self.blocks:
            t = block(t)
        return self.head(t[0])


class ChannelsLastCNN(eqx.Module):
    """(e) takes `(H, W, C)`: transposes inline, then conv, relu, conv, relu, fc."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, C, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(C, C, 3, padding=1, key=k2)
        self.fc = eqx.nn.Linear(C, K, key=k3)

    def __call__(self, x):
        h = jax.nn.relu(self.conv1(jnp.transpose(x, (2, 0, 1))))
        return self.fc(jax.nn.relu(self.conv2(h)).mean(axis=(1, 2)))


class DropoutCNN(eqx.Module):
    """(f) conv -> relu -> Dropout -> conv -> relu -> mean -> fc."""

    conv1: eqx.nn.Conv2d
    drop: eqx.nn.Dropout
    conv2: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, C, 3, padding=1, key=k1)
        self.drop = eqx.nn.Dropout(0.5)
        self.conv2 = eqx.nn.Conv2d(C, C, 3, padding=1, key=k2)
        self.fc = eqx.nn.Linear(C, K, key=k3)

    def __call__(self, x, *, key=None):
        h = self.drop(jax.nn.relu(self.conv1(x)), key=key)
        return self.fc(jax.nn.relu(self.conv2(h)).mean(axis=(1, 2)))


@dataclass(frozen=True)
class UserModel:
    """A gallery model as a method sees it, with what the methods need."""

    name: str
    make: Callable[[], Callable]  # key-free: the explainable model
    where: Callable  # the layer for the CAM family
    shape: tuple[int, ...]  # one example
    classifier: Callable = lambda m: m.fc  # classic CAM's linear layer
    attention: Callable | None = None  # transformers only
    transformer: bool = False


def _bn_gelu():
    model, state = eqx.nn.make_with_state(BNGeluCNN)(jax.random.key(1))
    import eqx_attr as xa

    return xa.models.with_state(model, state)


GALLERY: list[UserModel] = [
    UserModel("a_bn_gelu", _bn_gelu, lambda m: m.conv2, (1, HW, HW)),
    UserModel(
        "b_res_mlp",
        lambda: ResMLP(jax.random.key(2)),
        lambda m: m.embed,
        (1, HW, HW),
        classifier=lambda m: m.head,
    ),
    UserModel(
        "c_inline", lambda: InlineCNN(jax.random.key(3)), lambda m: m.conv2, (1, HW, HW)
    ),
    UserModel(
        "d_vit",
        lambda: TinyViT(jax.random.key(4)),
        lambda m: m.embed,
        (1, HW, HW),
        classifier=lambda m: m.head,
        attention=lambda m: [b.attn for b in m.blocks],
        transformer=True,
    ),
    UserModel(
        "e_channels_last",
        lambda: ChannelsLastCNN(jax.random.key(5)),
        lambda m: m.conv2,
        (HW, HW, 1),
    ),
    UserModel(
        "f_dropout",
        lambda: eqx.nn.inference_mode(DropoutCNN(jax.random.key(6))),
        lambda m: m.conv2,
        (1, HW, HW),
    ),
]


def without_biases(model):
    """`model` with every bias zero: its scores then come from the input alone
    (f(0) = 0 for a ReLU net), so score differences are as large as the scores and
    a half-precision run is compared on attributions it can resolve."""
    return eqx.tree_at(
        lambda m: [
            layer.bias
            for layer in jax.tree_util.tree_leaves(
                m, is_leaf=lambda n: isinstance(n, (eqx.nn.Conv2d, eqx.nn.Linear))
            )
            if isinstance(layer, (eqx.nn.Conv2d, eqx.nn.Linear))
            and layer.bias is not None
        ],
        model,
        replace_fn=jnp.zeros_like,
    )


def all_active(model):
    """`model` without biases and with non-negative convolution kernels: on a
    non-negative image every ReLU is active, so the network is one linear piece
    and a half-precision run flips no ReLU against the float32 run."""
    model = without_biases(model)
    return eqx.tree_at(
        lambda m: [m.conv1.weight, m.conv2.weight, m.fc.weight],
        model,
        replace_fn=jnp.abs,
    )


def build_context(um, model):
    """The registry's `BuildContext` for gallery model `um` (its layer, classifier,
    attention and masks; few steps and samples, to keep the suite cheap)."""
    return BuildContext(
        model=model,
        layer=um.where,
        classifier=um.classifier,
        attention=um.attention,
        n_prefix_tokens=1 if um.transformer else 0,
        mask=xa.masks.grid((HW, HW), (4, 4)),
        options={"n_steps": 4, "n_samples": 4},
        input_shape=um.shape,
    )
