"""Inside the network: layer attributions, neuron attributions, concepts.

- `_layer_basic.py`: the activation, gradient x activation and feature ablation
    of a layer (Captum's `LayerActivation`, `LayerGradientXActivation`,
    `LayerFeatureAblation`);
- `_layer_path.py`: path and reference methods at a layer (integrated gradients,
    conductance, internal influence, DeepLIFT, GradientSHAP);
- `_layer_lrp.py`: LRP relevance at a layer;
- `_select.py`: how a neuron is named (an index into the layer's output, or a
    function of it);
- `_neuron_grad.py`, `_neuron_path.py`: attributions of one neuron to the input;
- `_cav.py`, `_tcav.py`: concept activation vectors and TCAV scores;
- `_crp.py`: concept-conditional relevance (CRP) and relevance maximisation.

Each method module lists its classes in `__all__` and its registry rows in `ROWS`;
the star imports below export them, in the order of the method table.
"""

# isort: skip_file
from ._layer_basic import *  # noqa: F403
from ._layer_path import *  # noqa: F403
from ._layer_lrp import *  # noqa: F403
from ._neuron_grad import *  # noqa: F403
from ._neuron_path import *  # noqa: F403
from ._tcav import *  # noqa: F403
from ._crp import *  # noqa: F403
