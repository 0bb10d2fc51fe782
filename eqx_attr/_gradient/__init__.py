"""The gradient family: saliency, gradients x input, IG, SmoothGrad."""

from ._gradients import Gradients as Gradients, GradientsXInput as GradientsXInput
from ._integrated import IntegratedGradients as IntegratedGradients
from ._smooth import SmoothGrad as SmoothGrad
