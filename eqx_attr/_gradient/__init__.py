"""The gradient family: saliency, gradients x input, IG and its path variants (Blur
IG, Guided IG), SmoothGrad, GradientShap.

Each module lists its public classes in `__all__` and its registry rows in `ROWS`;
the lines below export both, in the order of the method table.
"""

# isort: skip_file
from ._gradients import *  # noqa: F403
from ._integrated import *  # noqa: F403
from ._smooth import *  # noqa: F403
from ._gradient_shap import *  # noqa: F403
from ._blur_ig import *  # noqa: F403
from ._guided_ig import *  # noqa: F403
