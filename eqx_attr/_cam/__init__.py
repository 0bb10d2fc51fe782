"""The CAM family: class activation maps read from one layer of the model."""

from ._base import (
    AbstractCAM as AbstractCAM,
    AbstractChannelScoreCAM as AbstractChannelScoreCAM,
    AbstractGradientCAM as AbstractGradientCAM,
)
from ._cam import CAM as CAM, GradCAM as GradCAM, GuidedGradCAM as GuidedGradCAM
from ._spec import LayerSpec as LayerSpec
from ._variants import (
    AblationCAM as AblationCAM,
    EigenCAM as EigenCAM,
    GradCAMPlusPlus as GradCAMPlusPlus,
    HiResCAM as HiResCAM,
    LayerCAM as LayerCAM,
    ScoreCAM as ScoreCAM,
    XGradCAM as XGradCAM,
)
