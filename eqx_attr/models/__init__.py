"""The model zoo: Equinox modules mapping ONE example to a vector of logits."""

from ._small import MLP as MLP, SmallCNN as SmallCNN
