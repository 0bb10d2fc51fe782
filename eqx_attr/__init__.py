"""eqx_attr: feature attribution for vision models in JAX + Equinox.

`import eqx_attr` loads only jax, equinox, jaxtyping and numpy. The optional parts
(`viz`, `training`, `datasets`, `metrics`, `torch_twins`, the dataset runner) are
imported on first use, through the module `__getattr__` below.
"""

import importlib as _importlib
from typing import Any as _Any

from . import baselines as baselines, lrp as lrp, masks as masks, models as models
from ._attribution import AbstractAttribution as AbstractAttribution
from ._cam import (
    CAM as CAM,
    AblationCAM as AblationCAM,
    AbstractCAM as AbstractCAM,
    AbstractChannelScoreCAM as AbstractChannelScoreCAM,
    AbstractGradientCAM as AbstractGradientCAM,
    EigenCAM as EigenCAM,
    GradCAM as GradCAM,
    GradCAMPlusPlus as GradCAMPlusPlus,
    GuidedGradCAM as GuidedGradCAM,
    HiResCAM as HiResCAM,
    LayerCAM as LayerCAM,
    LayerSpec as LayerSpec,
    ScoreCAM as ScoreCAM,
    XGradCAM as XGradCAM,
)
from ._gradient import (
    Gradients as Gradients,
    GradientsXInput as GradientsXInput,
    IntegratedGradients as IntegratedGradients,
    SmoothGrad as SmoothGrad,
)
from ._layers import (
    LayerOutputReplaced as LayerOutputReplaced,
    layer_activation as layer_activation,
    layer_activation_and_gradient as layer_activation_and_gradient,
    layers_activation as layers_activation,
    layers_activation_and_gradient as layers_activation_and_gradient,
    replace_layer_output as replace_layer_output,
)
from ._pair._blur_ig import BlurIG as BlurIG
from ._pair._guided_ig import GuidedIG as GuidedIG
from ._pair._xrai import XRAI as XRAI
from ._perturbation._ablation import FeatureAblation as FeatureAblation
from ._perturbation._kernel_shap import KernelShap as KernelShap
from ._perturbation._lime import Lime as Lime
from ._perturbation._occlusion import Occlusion as Occlusion
from ._perturbation._rise import RISE as RISE
from ._perturbation._shapley import (
    ShapleyValues as ShapleyValues,
    ShapleyValueSampling as ShapleyValueSampling,
)
from ._rules._deeplift import (
    AbstractDeepLift as AbstractDeepLift,
    DeepLift as DeepLift,
    DeepLiftShap as DeepLiftShap,
)
from ._rules._gradient_shap import GradientShap as GradientShap
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
from ._runner._evaluate import evaluate_dataset as evaluate_dataset
from ._runner._explain import explain_dataset as explain_dataset
from ._transformer._chefer import CheferRelevance as CheferRelevance
from ._transformer._cplrp import (
    ConservativeLRP as ConservativeLRP,
    conservative_model as conservative_model,
)
from ._transformer._rollout import AttentionRollout as AttentionRollout

# Public names whose modules pull optional dependencies (matplotlib, optax, tqdm,
# torch, zarr, ...): name -> (module, attribute or None for the module itself).
_LAZY: dict[str, tuple[str, str | None]] = {
    "datasets": (".datasets", None),
    "images": (".images", None),
    "metrics": (".metrics", None),
    "torch_twins": (".torch_twins", None),
    "training": (".training", None),
    "viz": (".viz", None),
}


def __getattr__(name: str) -> _Any:
    if name == "__version__":
        from importlib.metadata import version

        # Reading the installed metadata costs ~5 ms; every data-set run asks.
        globals()["__version__"] = value = version("eqx_attr")
        return value
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = _importlib.import_module(module_name, __name__)
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eqx_attr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})
