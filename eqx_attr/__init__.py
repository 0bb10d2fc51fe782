"""eqx_attr: feature attribution for vision models in JAX + Equinox."""

from . import (
    baselines as baselines,
    datasets as datasets,
    lrp as lrp,
    models as models,
    training as training,
    viz as viz,
)
from ._attribution import AbstractAttribution as AbstractAttribution
from ._cam import (
    CAM as CAM,
    GradCAM as GradCAM,
    GuidedGradCAM as GuidedGradCAM,
)
from ._cam_variants import (
    AblationCAM as AblationCAM,
    EigenCAM as EigenCAM,
    GradCAMPlusPlus as GradCAMPlusPlus,
    HiResCAM as HiResCAM,
    LayerCAM as LayerCAM,
    ScoreCAM as ScoreCAM,
    XGradCAM as XGradCAM,
)
from ._gradient import Gradients as Gradients, GradientsXInput as GradientsXInput
from ._integrated import IntegratedGradients as IntegratedGradients
from ._layers import (
    LayerOutputReplaced as LayerOutputReplaced,
    layer_activation as layer_activation,
    layer_activation_and_gradient as layer_activation_and_gradient,
    replace_layer_output as replace_layer_output,
)
from ._rules._guided import (
    Deconvolution as Deconvolution,
    GuidedBackprop as GuidedBackprop,
)
from ._rules._lrp import LRP as LRP
from ._rules._relu import (
    deconvnet_relu as deconvnet_relu,
    guided_relu as guided_relu,
)
from ._rules._swap import ReLUSwapped as ReLUSwapped, swap_relu as swap_relu
from ._smooth import SmoothGrad as SmoothGrad

__version__ = "0.1.0"
