"""The two torchvision names Zennit imports, for a test run without torchvision.

`zennit.torchvision` does `from torchvision.models.resnet import Bottleneck,
BasicBlock` to recognise ResNet blocks. torchvision is not a dependency, so
`install()` registers a tiny `torchvision` package whose blocks are the torch
twins' blocks: Zennit's `ResNetCanonizer` then canonizes the twins of the zoo's
ResNets. Call it before importing zennit.
"""

import importlib.util
import sys
import types


def install() -> None:
    """Register the stub, unless a real torchvision is importable."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision"):
        return
    from eqx_attr import torch_twins

    root = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock = torch_twins.BasicBlock
    resnet.Bottleneck = torch_twins.Bottleneck
    root.models = models
    models.resnet = resnet
    sys.modules.update(
        {
            "torchvision": root,
            "torchvision.models": models,
            "torchvision.models.resnet": resnet,
        }
    )
