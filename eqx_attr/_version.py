"""The installed version of eqx_attr, read from the package metadata.

Floor 1: imports nothing from the package, so that any module (the runner's store
metadata, the command line's `--version`) can read it without importing the
top-level package.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("eqx_attr")
except PackageNotFoundError:  # a source tree on `sys.path`, never installed
    __version__ = "0+unknown"
