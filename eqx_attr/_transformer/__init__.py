"""Transformer explanations: attention rollout, Chefer relevance, CP-LRP.

Each method module lists its public names in `__all__` and its registry rows in
`ROWS`; the star imports below export them, in the order of the method table.
"""

# isort: skip_file
from ._rollout import *  # noqa: F403
from ._chefer import *  # noqa: F403
from ._cplrp import *  # noqa: F403
