"""eqx_attr: feature attribution for vision models in JAX + Equinox."""

from . import baselines as baselines, models as models
from ._attribution import AbstractAttribution as AbstractAttribution
from ._gradient import Gradients as Gradients, GradientsXInput as GradientsXInput
from ._integrated import IntegratedGradients as IntegratedGradients
from ._smooth import SmoothGrad as SmoothGrad

__version__ = "0.1.0"
