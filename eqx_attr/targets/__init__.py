"""Targets for any task: what score of the model's output to explain.

Every method's `target=` accepts, besides an int class index, any callable
`output -> scalar`; the classes here are such callables for the common tasks,
each an Equinox module (a PyTree: its array fields are traced, so one compiled
call serves every value, and a stack of targets can be vmapped over).

```python
import eqx_attr as xa

a = xa.Gradients(model)(x, target=xa.targets.LogSoftmax(3))
# Ten classes at once: vmap over a stack of targets.
maps = jax.vmap(lambda t: xa.Gradients(model)(x, t))(
    xa.targets.ClassIndex(jnp.arange(10))
)
```

A callable target sees the model's WHOLE output, so a model returning a PyTree
(a dict of boxes and scores, a tuple of heads) is explained through a callable
target: one of these classes ([`eqx_attr.targets.BoxScore`][] reads a detector's
dict), or a lambda such as `lambda out: out["logits"][3]`.
"""

from ._boxes import BoxScore as BoxScore, box_iou as box_iou
from ._scores import (
    AbstractTarget as AbstractTarget,
    ClassIndex as ClassIndex,
    EmbeddingSimilarity as EmbeddingSimilarity,
    LabelSet as LabelSet,
    LogSoftmax as LogSoftmax,
    Margin as Margin,
    SegmentationRegion as SegmentationRegion,
)

__all__ = [
    "AbstractTarget",
    "BoxScore",
    "ClassIndex",
    "EmbeddingSimilarity",
    "LabelSet",
    "LogSoftmax",
    "Margin",
    "SegmentationRegion",
    "box_iou",
]
