"""The CAM family: class activation maps read from one layer of the model.

Each method module lists its classes in `__all__` and its registry rows in `ROWS`;
the star imports below export them, in the order of the method table.
"""

# isort: skip_file
from ._base import (
    AbstractCAM as AbstractCAM,
    AbstractChannelScoreCAM as AbstractChannelScoreCAM,
    AbstractGradientCAM as AbstractGradientCAM,
)
from ._spec import LayerSpec as LayerSpec
from ._cam import *  # noqa: F403
from ._variants import *  # noqa: F403
from ._gradcam_lib import *  # noqa: F403
from ._sanity import *  # noqa: F403
from ._fullgrad import *  # noqa: F403
from ._kpca import *  # noqa: F403
