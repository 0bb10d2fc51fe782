"""PyTorch twins of the zoo models, with identical weights (interop; needs torch).

Every zoo model has a hand-written PyTorch counterpart whose `state_dict()` keys
are exactly torchvision's (`VGG`, `ResNet`) or timm's (`ViT`), so a real
torchvision/timm checkpoint and a twin's weights go through the same conversion,
[`eqx_attr.models.from_torch_state_dict`][]. The main entry point is
[`eqx_attr.torch_twins.to_torch`][], used to compare eqx_attr with PyTorch
libraries (Captum, Zennit) on identical networks.

Twins take a batch `(B, C, H, W)` and return `(B, n_classes)`, as PyTorch models
do. Each ReLU is its own non-in-place `nn.ReLU` module, used once, which is what
hook-based libraries need. The architecture of a twin is read from the model
registry ([`eqx_attr.models.spec_of`][]).

`import eqx_attr` never loads this package, and this package imports `torch` only
when one of its names is first used (`pip install 'eqx_attr[torch]'`).

```python
from eqx_attr.torch_twins import to_torch
twin = to_torch(model)                           # eval mode, float32
logits = twin(torch.from_numpy(np.asarray(xs)))  # xs: (B, C, H, W)
```
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers only: torch is imported on first use
    from ._modules import (
        MLP as MLP,
        VGG as VGG,
        BasicBlock as BasicBlock,
        Bottleneck as Bottleneck,
        ResNet as ResNet,
        SmallCNN as SmallCNN,
        ViT as ViT,
        numpy_state_dict as numpy_state_dict,
        to_torch as to_torch,
    )

__all__ = [
    "MLP",
    "SmallCNN",
    "VGG",
    "ResNet",
    "BasicBlock",
    "Bottleneck",
    "ViT",
    "to_torch",
    "numpy_state_dict",
]
_NAMES = frozenset(__all__)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module("._modules", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eqx_attr.torch_twins' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES})
