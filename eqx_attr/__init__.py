"""eqx_attr: feature attribution for vision models in JAX + Equinox."""

from . import (
    baselines as baselines,
    datasets as datasets,
    masks as masks,
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
from ._guided import Deconvolution as Deconvolution, GuidedBackprop as GuidedBackprop
from ._integrated import IntegratedGradients as IntegratedGradients
from ._layers import (
    LayerOutputReplaced as LayerOutputReplaced,
    layer_activation as layer_activation,
    layer_activation_and_gradient as layer_activation_and_gradient,
    replace_layer_output as replace_layer_output,
)
from ._pair._blur_ig import BlurIG as BlurIG
from ._pair._guided_ig import GuidedIG as GuidedIG
from ._perturbation._ablation import FeatureAblation as FeatureAblation
from ._perturbation._kernel_shap import KernelShap as KernelShap
from ._perturbation._lime import Lime as Lime
from ._perturbation._occlusion import Occlusion as Occlusion
from ._perturbation._rise import RISE as RISE
from ._perturbation._shapley import (
    ShapleyValues as ShapleyValues,
    ShapleyValueSampling as ShapleyValueSampling,
)
from ._smooth import SmoothGrad as SmoothGrad
from ._surgery import (
    ReLUSwapped as ReLUSwapped,
    deconvnet_relu as deconvnet_relu,
    guided_relu as guided_relu,
    swap_relu as swap_relu,
)

__version__ = "0.1.0"
