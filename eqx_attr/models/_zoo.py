"""The model registry: what each zoo architecture is, written once.

Each [`ModelSpec`][] says how to build the architecture, the shape of its input,
its default CAM layer (and that layer's layout), its CAM classifier, its
attention selector (ViT), how to read its configuration back from a model or
from a state dict, and the constants of its structure. The CLI, weight import,
the torch twins and the benchmarks read this table instead of branching on
names.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx

from . import _resnet, _segmenter, _small, _vgg, _vit
from ._paths import where_from_path

Shapes = Mapping[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One zoo architecture, as the tools around the library see it.

    **Arguments:**

    - `name`: the architecture's name, e.g. `"resnet50"` (the CLI's `--model`).
    - `factory`: `factory(*, key, **config) -> model`.
    - `cls`: the class of the models it builds.
    - `image_side`: the default side of a square input; `None` when the model
        fixes it (read by [`eqx_attr.models.ModelSpec.input_shape`][]).
    - `cam_layer`: the path of the usual CAM layer (`None`: no feature map).
    - `layer_options`: CAM layout options for that layer (`layout`,
        `n_prefix_tokens`).
    - `classifier`: the path of the linear classifier right after global average
        pooling of `cam_layer` (classic CAM), or `None`.
    - `attention`: the path of the attention-probability modules, `[*]` over
        blocks (transformer methods), or `None`.
    - `n_prefix_tokens`: class/register tokens before the patch tokens.
    - `structure`: constants of the architecture (VGG's channel plan, ResNet's
        block type and counts), for twins in other frameworks.
    - `fixed_input`: model -> the one input shape its weights allow (MLP, ViT),
        or `None` when any square `image_side` fits.
    - `read_config`: state-dict shapes (keys without Sequential's `layers`) ->
        the factory keywords they fix.
    - `config`: model -> the factory keywords that rebuild it (sizes only).

    **Returns:** a frozen description; read it with [`eqx_attr.models.model_spec`][] or
    [`eqx_attr.models.spec_of`][].
    """

    name: str
    factory: Callable[..., eqx.Module]
    cls: type
    image_side: int | None
    cam_layer: str | None
    read_config: Callable[[Shapes], dict[str, Any]]
    config: Callable[[Any], dict[str, Any]]
    layer_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    classifier: str | None = None
    attention: str | None = None
    n_prefix_tokens: int = 0
    structure: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fixed_input: Callable[[Any], tuple[int, ...]] | None = None

    def layer(self) -> Callable[[Any], Any] | None:
        """The default CAM layer as a `where` function (or `None`)."""
        return None if self.cam_layer is None else where_from_path(self.cam_layer)

    def classifier_where(self) -> Callable[[Any], Any] | None:
        """The CAM classifier as a `where` function (or `None`)."""
        return None if self.classifier is None else where_from_path(self.classifier)

    def attention_where(self) -> Callable[[Any], Any] | None:
        """The attention selector as a `where` function (or `None`)."""
        return None if self.attention is None else where_from_path(self.attention)

    def input_shape(self, model: Any, side: int | None = None) -> tuple[int, ...]:
        """The shape of one example for `model` (`side` overrides a free size).

        **Raises:** `ValueError` when `side` contradicts a size the model fixes.
        """
        if self.fixed_input is not None:
            shape = tuple(self.fixed_input(model))
            if side is not None and side != shape[-1]:
                raise ValueError(
                    f"`side={side}`: this {self.cls.__name__}'s weights fix its "
                    f"input at {shape}."
                )
            return shape
        side = side or self.image_side
        if side is None:
            raise ValueError(f"{self.name} has no default input size; pass `side`.")
        return (self.config(model)["in_channels"], side, side)


def _size(layer: Any, name: str) -> int:
    # Equinox annotates sizes loosely (e.g. `int | "scalar"`): read plain ints.
    return int(getattr(layer, name))


# ---------------------------------------------------------------------------------
# Configuration read from a model, and from a state dict


def _mlp_config(m: _small.MLP) -> dict[str, Any]:
    mlp = m.mlp
    return dict(
        in_shape=tuple(m.in_shape),
        n_classes=_size(mlp, "out_size"),
        width=_size(mlp, "width_size"),
        depth=_size(mlp, "depth"),
    )


def _cnn_config(m: _small.SmallCNN) -> dict[str, Any]:
    conv = m.conv1.layers[0]
    return dict(
        in_channels=_size(conv, "in_channels"),
        n_classes=_size(m.fc, "out_features"),
        width=_size(conv, "out_channels"),
    )


def _vgg_config(m: _vgg.VGG) -> dict[str, Any]:
    return dict(
        depth=m.depth,
        batch_norm=m.batch_norm,
        n_classes=_size(m.classifier.layers[-1], "out_features"),
        in_channels=m.in_channels,
        width=_size(m.features.layers[0], "out_channels"),
        hidden=_size(m.classifier.layers[0], "out_features"),
        pool_size=int(m.avgpool.output_size[0]),
    )


def _resnet_config(m: _resnet.ResNet) -> dict[str, Any]:
    return dict(
        depth=m.depth,
        n_classes=_size(m.fc, "out_features"),
        in_channels=m.in_channels,
        width=_size(m.conv1, "out_channels"),
    )


def _vit_config(m: _vit.ViT) -> dict[str, Any]:
    dim = int(m.cls_token.shape[-1])
    block = m.blocks[0]
    return dict(
        image_size=m.image_size,
        patch_size=m.patch_size,
        in_channels=m.in_channels,
        n_classes=_size(m.head, "out_features"),
        dim=dim,
        depth=len(m.blocks),
        heads=block.attn.heads,
        mlp_ratio=_size(block.mlp.fc1, "out_features") / dim,
    )


# Read the sizes a torchvision/timm checkpoint fixes, so that e.g. a ResNet-50
# fine-tuned on 37 classes loads without repeating `n_classes=37`.


def _read_mlp(shapes: Shapes) -> dict[str, Any]:
    # The input shape is not in the weights (only its size): it stays an argument.
    # Keys are `mlp.layers.{i}.weight` (PyTorch) or `mlp.{i}.weight` (after the
    # caller drops `layers`).
    weights = {}
    for k, v in shapes.items():
        parts = k.split(".")
        if parts[0] == "mlp" and parts[-1] == "weight" and parts[-2].isdigit():
            weights[int(parts[-2])] = v
    n = len(weights)
    if n < 2 or sorted(weights) != list(range(n)):
        return {}
    return dict(width=weights[0][0], depth=n - 1, n_classes=weights[n - 1][0])


def _segmenter_config(m: _segmenter.SmallSegmenter) -> dict[str, Any]:
    conv = m.local.layers[0]
    return dict(
        in_channels=_size(conv, "in_channels"),
        n_classes=_size(m.head, "out_channels"),
        width=_size(conv, "out_channels"),
    )


def _read_segmenter(shapes: Shapes) -> dict[str, Any]:
    conv, head = shapes.get("local.0.weight"), shapes.get("head.weight")
    if conv and head and len(conv) == 4:
        return dict(n_classes=head[0], in_channels=conv[1], width=conv[0])
    return {}


def _read_cnn(shapes: Shapes) -> dict[str, Any]:
    conv, fc = shapes.get("conv1.0.weight"), shapes.get("fc.weight")
    if conv and fc and len(conv) == 4:
        return dict(n_classes=fc[0], in_channels=conv[1], width=conv[0])
    return {}


def _read_vgg(shapes: Shapes) -> dict[str, Any]:
    first, last = shapes.get("features.0.weight"), shapes.get("classifier.6.weight")
    hidden = shapes.get("classifier.0.weight")
    if not (first and last and hidden and len(first) == 4):
        return {}
    cfg: dict[str, Any] = dict(
        n_classes=last[0], in_channels=first[1], width=first[0], hidden=hidden[0]
    )
    c_last = max(1, 512 * first[0] // 64)
    side = math.isqrt(hidden[1] // c_last)
    if side * side * c_last == hidden[1]:
        cfg["pool_size"] = side
    return cfg


def _read_resnet(shapes: Shapes) -> dict[str, Any]:
    conv, fc = shapes.get("conv1.weight"), shapes.get("fc.weight")
    if conv and fc and len(conv) == 4:
        return dict(n_classes=fc[0], in_channels=conv[1], width=conv[0])
    return {}


def _read_vit(shapes: Shapes) -> dict[str, Any]:
    proj, head = shapes.get("patch_embed.proj.weight"), shapes.get("head.weight")
    pos = shapes.get("pos_embed")
    if not (proj and head and pos and len(proj) == 4):
        return {}
    cfg: dict[str, Any] = dict(
        n_classes=head[0], in_channels=proj[1], patch_size=proj[-1]
    )
    side = math.isqrt(pos[-2] - 1)
    if side * side == pos[-2] - 1:
        cfg["image_size"] = side * proj[-1]
    return cfg


# ---------------------------------------------------------------------------------
# The table


def _specs() -> tuple[ModelSpec, ...]:
    specs = [
        ModelSpec(
            "mlp",
            _small.MLP,
            _small.MLP,
            None,
            None,
            _read_mlp,
            _mlp_config,
            fixed_input=lambda m: m.in_shape,
        ),
        ModelSpec(
            "small_cnn",
            _small.SmallCNN,
            _small.SmallCNN,
            28,
            "conv2",
            _read_cnn,
            _cnn_config,
            classifier="fc",
        ),
        # Per-pixel logits (11, 28, 28): explained through a segmentation target.
        ModelSpec(
            "small_segmenter",
            _segmenter.SmallSegmenter,
            _segmenter.SmallSegmenter,
            28,
            "context",
            _read_segmenter,
            _segmenter_config,
        ),
    ]
    for depth, plan in _vgg._CONFIGS.items():
        for bn in (False, True):
            name = f"vgg{depth}" + ("_bn" if bn else "")
            specs.append(
                ModelSpec(
                    name,
                    getattr(_vgg, name),
                    _vgg.VGG,
                    224,
                    # The last ReLU of `features`, before the last max-pool.
                    "features[-2]",
                    _read_vgg,
                    _vgg_config,
                    structure={"depth": depth, "batch_norm": bn, "plan": tuple(plan)},
                )
            )
    for depth, (block, counts) in _resnet._CONFIGS.items():
        specs.append(
            ModelSpec(
                f"resnet{depth}",
                getattr(_resnet, f"resnet{depth}"),
                _resnet.ResNet,
                224,
                "layer4",
                _read_resnet,
                _resnet_config,
                classifier="fc",
                structure={
                    "depth": depth,
                    "bottleneck": block is _resnet.Bottleneck,
                    "counts": tuple(counts),
                },
            )
        )
    for size in ("tiny", "small", "base"):
        specs.append(
            ModelSpec(
                f"vit_{size}",
                getattr(_vit, f"vit_{size}"),
                _vit.ViT,
                None,
                # The last block's attention input: the class token reads the
                # patch tokens there, so their gradient is non-zero.
                "blocks[-1].norm1",
                _read_vit,
                _vit_config,
                layer_options={"layout": "tokens", "n_prefix_tokens": 1},
                attention="blocks[*].attn.attn_drop",
                n_prefix_tokens=1,
                fixed_input=lambda m: (m.in_channels, m.image_size, m.image_size),
            )
        )
    return tuple(specs)


MODEL_SPECS: dict[str, ModelSpec] = {s.name: s for s in _specs()}
"""Every zoo architecture's [`eqx_attr.models.ModelSpec`][], by name."""


def model_spec(name: str) -> ModelSpec:
    """The [`eqx_attr.models.ModelSpec`][] of the architecture called `name`.

    **Raises:** `ValueError` listing the known names.

    **Arguments:** `name`, an architecture's name (a key of
    [`eqx_attr.models.MODEL_SPECS`][]).

    **Returns:** its [`eqx_attr.models.ModelSpec`][].
    """
    if name not in MODEL_SPECS:
        raise ValueError(
            f"Unknown architecture {name!r}; choose one of {', '.join(MODEL_SPECS)}."
        )
    return MODEL_SPECS[name]


def spec_of(model: Any) -> ModelSpec:
    """The [`eqx_attr.models.ModelSpec`][] of a zoo model (the first architecture of its
    class).

    For VGG and ResNet the depth (and batch norm) pick the exact entry.

    **Raises:** `TypeError` for a model that is not from the zoo.

    **Arguments:** `model`, a model built by the zoo.

    **Returns:** its [`eqx_attr.models.ModelSpec`][].
    """
    for spec in MODEL_SPECS.values():
        if type(model) is not spec.cls:
            continue
        own = spec.structure
        if "depth" in own and own["depth"] != getattr(model, "depth", None):
            continue
        if "batch_norm" in own and own["batch_norm"] != model.batch_norm:
            continue
        return spec
    raise TypeError(
        f"{type(model).__name__} is not a zoo model; the zoo has "
        f"{', '.join(sorted({s.cls.__name__ for s in MODEL_SPECS.values()}))}."
    )
