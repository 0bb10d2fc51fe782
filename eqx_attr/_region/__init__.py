"""The region family: attributions over image regions (XRAI, after PAIR's).

A region method ranks segments of the image (Felzenszwalb's, or the caller's) by
an attribution over them. Each method module lists its classes in `__all__` and
its registry rows in `ROWS`; the star imports below export them.
"""

# isort: skip_file
from ._xrai import *  # noqa: F403
