"""Rule tables on the engine (`eqx_attr._engine`) and the rule-based methods.

- `_relu`, `_match`, `_actions`, `_swap`: the ReLU swap (guided backprop,
  deconvnet), its pattern matcher and the PyTree ReLUs it replaces.
- `_guided`: GuidedBackprop, Deconvolution.
- `_deeplift`, `_deeplift_rules`: DeepLIFT, DeepLiftShap.
- `_lrp`, `_lrp_rules`, `_lrp_composites`, `_lrp_canon`, `_lrp_bn`, `_lrp_trace`:
  LRP (the public rules and composites are re-exported by `eqx_attr.lrp`).

See `docs/engine.md` for writing rules.
"""

# isort: skip_file
# The public names, in the order of the method table; each method module lists its
# classes in `__all__` and its registry rows in `ROWS`.
from ._guided import *  # noqa: F403
from ._deeplift import *  # noqa: F403
from ._lrp import *  # noqa: F403
from ._relu import deconvnet_relu as deconvnet_relu, guided_relu as guided_relu
from ._swap import ReLUSwapped as ReLUSwapped, swap_relu as swap_relu
