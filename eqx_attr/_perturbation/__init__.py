"""The perturbation family: methods that only evaluate the model.

Each method module lists its classes in `__all__` and its registry rows in `ROWS`;
the star imports below export them, in the order of the method table.
"""

# isort: skip_file
from ._occlusion import *  # noqa: F403
from ._ablation import *  # noqa: F403
from ._shapley import *  # noqa: F403
from ._kernel_shap import *  # noqa: F403
from ._lime import *  # noqa: F403
from ._rise import *  # noqa: F403
