"""Import Quantus without torchvision.

Quantus imports Zennit, whose `zennit.torchvision` module imports two ResNet
block classes from torchvision at import time. torchvision is not a dependency
of eqx_attr, so the one torchvision stub of the tests stands in for it.
"""

from ._torchvision_stub import install

install()

import quantus  # noqa: E402

__all__ = ["quantus"]
