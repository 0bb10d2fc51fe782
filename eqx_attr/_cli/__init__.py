"""The command line (`python -m eqx_attr`, `eqx-attr`) and the MNIST demo."""

from ._main import main as main
from ._parser import build_parser as build_parser
