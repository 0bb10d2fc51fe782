"""Every tool on top of the library; no library module imports this package.

The command line (`python -m eqx_attr`, `eqx-attr`: `_parser`, `_main`,
`_explain`, `_explain_dataset`), the MNIST demo and its ViT panel (`_demo`,
`_vit_demo`, both built by `_columns` from the registries) and the CNN-vs-ViT
comparison (`_compare`).
"""

from ._main import main as main
from ._parser import build_parser as build_parser
