"""Import Quantus without torchvision.

Quantus imports Zennit, whose `zennit.torchvision` module imports two ResNet
block classes from torchvision at import time. torchvision is not a dependency
of eqx_attr; the metrics tests never use Zennit's torchvision canonizers, so two
placeholder classes stand in for them (only when torchvision is missing).
"""

import importlib.util
import sys
import types

if importlib.util.find_spec("torchvision") is None:
    import torch

    resnet = types.ModuleType("torchvision.models.resnet")

    class Bottleneck(torch.nn.Module):
        """Placeholder: never instantiated in these tests."""

    class BasicBlock(torch.nn.Module):
        """Placeholder: never instantiated in these tests."""

    resnet.Bottleneck = Bottleneck
    resnet.BasicBlock = BasicBlock
    models = types.ModuleType("torchvision.models")
    models.resnet = resnet
    tv = types.ModuleType("torchvision")
    tv.models = models
    sys.modules.update(
        {"torchvision": tv, "torchvision.models": models,
         "torchvision.models.resnet": resnet}
    )  # fmt: skip

import quantus  # noqa: E402

__all__ = ["quantus"]
