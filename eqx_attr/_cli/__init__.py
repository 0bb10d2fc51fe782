"""The command line (`python -m eqx_attr`, `eqx-attr`) and the MNIST demo."""

from ._main import (
    build_parser as build_parser,
    main as main,
    parse_layer_path as parse_layer_path,
)
