"""Layer access by a `where` function: read, tap and replace a layer's output.

- `_read.py`: the public entry points (`layer_activation` and friends);
- `_tap.py`: the machinery (the tap, the hooks, the checks);
- `_replace.py`: a model whose layer returns a given value;
- `_softmax.py`: a module's internal softmax exposed as a sub-module.
"""

from ._read import (
    layer_activation as layer_activation,
    layer_activation_and_gradient as layer_activation_and_gradient,
    layers_activation as layers_activation,
    layers_activation_and_gradient as layers_activation_and_gradient,
)
from ._replace import (
    LayerOutputReplaced as LayerOutputReplaced,
    replace_layer_output as replace_layer_output,
)
from ._softmax import expose_softmax as expose_softmax
from ._tap import (
    LayerInfo as LayerInfo,
    inspect_layer as inspect_layer,
    inspect_layers as inspect_layers,
    read_layer as read_layer,
    read_layers as read_layers,
    resolve_layer as resolve_layer,
    resolve_layers as resolve_layers,
)
