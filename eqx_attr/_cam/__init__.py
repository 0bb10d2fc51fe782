"""The CAM family: class activation maps read from one layer of the model."""

from ._cam import (
    CAM as CAM,
    AbstractCAM as AbstractCAM,
    AbstractGradientCAM as AbstractGradientCAM,
    GradCAM as GradCAM,
    GuidedGradCAM as GuidedGradCAM,
)
from ._variants import (
    AblationCAM as AblationCAM,
    AbstractChannelScoreCAM as AbstractChannelScoreCAM,
    EigenCAM as EigenCAM,
    GradCAMPlusPlus as GradCAMPlusPlus,
    HiResCAM as HiResCAM,
    LayerCAM as LayerCAM,
    ScoreCAM as ScoreCAM,
    XGradCAM as XGradCAM,
)
