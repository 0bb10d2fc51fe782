"""The PyTorch twins of the zoo models (this module imports torch).

Read through [`eqx_attr.torch_twins`][], which imports this module on first use.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import numpy as np

try:
    import torch
    from torch import nn
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "eqx_attr.torch_twins needs PyTorch; install it with "
        "`pip install 'eqx_attr[torch]'` (or `pip install torch`)."
    ) from e

from ..models import model_spec, spec_of, to_torch_state_dict


class _MLPBody(nn.Module):
    def __init__(self, sizes: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.acts = nn.ModuleList(nn.ReLU() for _ in sizes[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, act in zip(self.layers[:-1], self.acts, strict=True):
            x = act(layer(x))
        return self.layers[-1](x)


class MLP(nn.Module):
    """Twin of [`eqx_attr.models.MLP`][]: keys `mlp.layers.{i}.weight/bias`.

    **Arguments:** `in_shape`, `n_classes`, `width`, `depth`, as for the Equinox model.

    **Returns:** a `torch.nn.Module` mapping a batch `(B, C, H, W)` to logits `(B,
    n_classes)`.
    """

    def __init__(
        self,
        in_shape: tuple[int, ...] = (1, 28, 28),
        n_classes: int = 10,
        width: int = 256,
        depth: int = 2,
    ):
        super().__init__()
        size = int(np.prod(in_shape))
        self.mlp = _MLPBody([size] + [width] * depth + [n_classes])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.flatten(1))


class SmallCNN(nn.Module):
    """Twin of [`eqx_attr.models.SmallCNN`][]: `conv1.{0,3}`, `conv2.{0,2}`, `fc`.

    **Arguments:** `in_channels`, `n_classes`, `width`, as for the Equinox model.

    **Returns:** a `torch.nn.Module` mapping a batch `(B, C, H, W)` to logits `(B,
    n_classes)`.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, 2),
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.conv1(x)).mean(dim=(2, 3)))


class VGG(nn.Module):
    """Twin of [`eqx_attr.models.VGG`][]; torchvision's `vgg*` keys and layout.

    **Arguments:** `depth`, `batch_norm`, `n_classes`, `in_channels`, `width`, `hidden`,
    `pool_size`, as for the Equinox model.

    **Returns:** a `torch.nn.Module` mapping a batch `(B, C, H, W)` to logits `(B,
    n_classes)`.
    """

    def __init__(
        self,
        depth: int = 16,
        batch_norm: bool = False,
        n_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
        hidden: int = 4096,
        pool_size: int = 7,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        plan = model_spec(f"vgg{depth}").structure["plan"]
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            c_out = max(1, int(v) * width // 64)
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            nn.Linear(c_in * pool_size * pool_size, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
    )


class BasicBlock(nn.Module):
    """Twin of [`eqx_attr.models.BasicBlock`][] (torchvision's keys).

    **Arguments:** `c_in`, `planes`, `stride`, as for the Equinox block.

    **Returns:** a `torch.nn.Module` mapping a batch `(B, C, H, W)` to `(B, C', H',
    W')`.
    """

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs = stride != 1 or c_in != planes
        self.downsample = _downsample(c_in, planes, stride) if needs else None
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class Bottleneck(nn.Module):
    """Twin of [`eqx_attr.models.Bottleneck`][] (torchvision's keys, v1.5).

    **Arguments:** `c_in`, `planes`, `stride`, as for the Equinox block.

    **Returns:** a `torch.nn.Module` mapping a batch `(B, C, H, W)` to `(B, C', H',
    W')`.
    """

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        c_out = planes * 4
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        needs = stride != 1 or c_in != c_out
        self.downsample = _downsample(c_in, c_out, stride) if needs else None
        self.relu3 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu3(out + shortcut)


class ResNet(nn.Module):
    """Twin of [`eqx_attr.models.ResNet`][]; torchvision's `resnet*` keys.

    **Arguments:** `depth`, `n_classes`, `in_channels`, `width`, as for the Equinox
    model.

    **Returns:** a `torch.nn.Module` mapping a batch `(B, C, H, W)` to logits `(B,
    n_classes)`.
    """

    def __init__(
        self,
        depth: int = 50,
        n_classes: int = 1000,
        in_channels: int = 3,
        width: int = 64,
    ):
        super().__init__()
        structure = model_spec(f"resnet{depth}").structure
        counts = structure["counts"]
        block = Bottleneck if structure["bottleneck"] else BasicBlock
        expansion = 4 if block is Bottleneck else 1
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = width
        stages = []
        for i, count in enumerate(counts):
            planes = width * 2**i
            blocks = []
            for j in range(count):
                blocks.append(
                    block(c_in, planes, (1 if i == 0 else 2) if j == 0 else 1)
                )
                c_in = planes * expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        hd = d // self.heads
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (b, heads, n, hd)
        attn = self.attn_drop(torch.softmax(q @ k.transpose(-2, -1) * hd**-0.5, -1))
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Twin of [`eqx_attr.models.ViT`][]; timm's `VisionTransformer` keys.

    **Arguments:** `image_size`, `patch_size`, `in_channels`, `n_classes`, `dim`,
    `depth`, `heads`, `mlp_ratio`, as for the Equinox model.

    **Returns:** a `torch.nn.Module` mapping a batch `(B, C, H, W)` to logits `(B,
    n_classes)`.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        n_classes: int = 1000,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        n_tokens = (image_size // patch_size) ** 2 + 1
        self.patch_embed = _PatchEmbed(in_channels, dim, patch_size)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, n_tokens, dim))
        hidden = int(dim * mlp_ratio)
        self.blocks = nn.Sequential(*[_Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.norm(self.blocks(t + self.pos_embed))
        return self.head(t[:, 0])


def _twin_of(model: Any) -> nn.Module:
    # The twin class has the zoo class's name and takes its factory keywords.
    try:
        spec = spec_of(model)
    except TypeError as e:
        raise TypeError(
            f"to_torch has no PyTorch twin for {type(model).__name__}; supported: "
            "MLP, SmallCNN, VGG, ResNet, ViT from eqx_attr.models."
        ) from e
    if spec.name == "mlp" and model.mlp.activation is not jax.nn.relu:
        raise TypeError("to_torch supports an MLP with ReLU activations only.")
    return globals()[spec.cls.__name__](**spec.config(model))


def to_torch(model: eqx.Module) -> nn.Module:
    """A PyTorch module computing the same function as a zoo model.

    **Arguments:**

    - `model`: an `eqx_attr.models` `MLP`, `SmallCNN`, `VGG`, `ResNet` or `ViT`
        (with real float32 arrays).

    **Returns:**

    The twin (a `torch.nn.Module`: [`eqx_attr.torch_twins.MLP`][] etc.) in eval
    mode, float32 on CPU, holding the model's weights. It maps a batch
    `(B, C, H, W)` to `(B, n_classes)`; `twin(x[None])[0]` equals `model(x)` up to
    float rounding.

    **Raises:**

    `TypeError` for a model without a twin.

    **Example:**

    ```python
    twin = to_torch(xa.models.resnet18(n_classes=10, key=jax.random.key(0)))
    out = twin(torch.zeros(4, 3, 64, 64))            # (4, 10)
    ```
    """
    twin = _twin_of(model)
    arrays = to_torch_state_dict(model)
    state = {
        k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in arrays.items()
    }
    result = twin.load_state_dict(state, strict=False)
    # Only batch-norm step counters may be absent: they have no Equinox counterpart.
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"The PyTorch twin of {type(model).__name__} does not match it: missing "
            f"{missing}, unexpected {list(result.unexpected_keys)}."
        )
    return twin.eval()


def numpy_state_dict(module: nn.Module) -> dict[str, np.ndarray]:
    """A torch module's `state_dict()` as NumPy arrays (e.g. for safetensors).

    **Arguments:**

    - `module`: any `torch.nn.Module`.

    **Returns:**

    `{key: array}`, ready for `safetensors.numpy.save_file` and
    [`eqx_attr.models.from_torch_state_dict`][].
    """
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}
