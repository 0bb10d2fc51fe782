"""eqx_attr: feature attribution for vision models in JAX + Equinox.

`import eqx_attr` loads only jax, equinox, jaxtyping and numpy. The optional parts
(`viz`, `training`, `datasets`, `metrics`, `torch_twins`, the dataset runner) are
imported on first use, through the module `__getattr__` below.
"""

import importlib as _importlib
from typing import Any as _Any

from . import (
    baselines as baselines,
    lrp as lrp,
    masks as masks,
    models as models,
    targets as targets,
)
from ._attribution import AbstractAttribution as AbstractAttribution
from ._compile_cache import enable_compile_cache as enable_compile_cache
from ._layers import (
    LayerOutputReplaced as LayerOutputReplaced,
    layer_activation as layer_activation,
    layer_activation_and_gradient as layer_activation_and_gradient,
    layers_activation as layers_activation,
    layers_activation_and_gradient as layers_activation_and_gradient,
    replace_layer_output as replace_layer_output,
)
from ._memory import (
    memory_budget as memory_budget,
    set_memory_budget as set_memory_budget,
)
from ._runner._evaluate import evaluate_dataset as evaluate_dataset
from ._runner._explain import explain_dataset as explain_dataset
from ._version import __version__ as __version__

# isort: split
# The method families: each exports its classes (each module's `__all__`), so a
# new method needs no line here.
from ._cam import *  # noqa: F403
from ._gradient import *  # noqa: F403
from ._neuron import *  # noqa: F403
from ._perturbation import *  # noqa: F403
from ._region import *  # noqa: F403
from ._rules import *  # noqa: F403
from ._transformer import *  # noqa: F403

# Public names whose modules pull optional dependencies (matplotlib, optax, tqdm,
# torch, zarr, ...): name -> (module, attribute or None for the module itself).
_LAZY: dict[str, tuple[str, str | None]] = {
    "attacks": (".attacks", None),
    "datasets": (".datasets", None),
    "images": (".images", None),
    "losses": (".losses", None),
    "metrics": (".metrics", None),
    "torch_twins": (".torch_twins", None),
    "training": (".training", None),
    "viz": (".viz", None),
}


def __getattr__(name: str) -> _Any:
    if name in _LAZY:
        module_name, attribute = _LAZY[name]
        module = _importlib.import_module(module_name, __name__)
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'eqx_attr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
