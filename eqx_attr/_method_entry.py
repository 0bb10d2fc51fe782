"""What a row of the method table is: [`MethodEntry`][] and its [`BuildContext`][].

Each family declares its rows beside its classes (a module-level `ROWS` tuple in
the module that defines them); `eqx_attr._registry.methods()` joins them. This
module sits on the contract's floor, so that every family can build its rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._attribution import AbstractAttribution


Family = Literal["gradient", "rules", "cam", "perturbation", "region", "transformer"]


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a registry entry may use to build its method with sensible defaults.

    **Arguments:**

    - `model`: the model to explain (one example in, a vector of scores out).
    - `layer`: a `where` function naming the feature map (CAM family).
    - `layer_options`: extra keyword arguments for layer methods (`layout`,
        `n_prefix_tokens`, `grid`, `call_index`).
    - `classifier`: a `where` naming the linear classifier after global pooling
        (classic CAM).
    - `attention`: a `where` naming the attention-probability modules (transformers).
    - `n_prefix_tokens`: class/register tokens before the patch tokens.
    - `mask`: integer feature ids broadcastable to the input (perturbation family).
    - `baseline`: a baseline (number, array or `eqx_attr.baselines` object).
    - `options`: method options by name (`n_steps`, `n_samples`, `chunk_size`, ...);
        an entry reads the ones it understands and falls back to its defaults.
    - `input_shape`: the shape of one example, e.g. `(1, 28, 28)`.
    """

    model: Any
    layer: Callable[[Any], Any] | None = None
    layer_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    classifier: Callable[[Any], Any] | None = None
    attention: Callable[[Any], Any] | None = None
    n_prefix_tokens: int = 0
    mask: Any = None
    baseline: Any = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None

    def option(self, name: str, default: Any) -> Any:
        """`options[name]` when given (and not None), else `default`."""
        value = self.options.get(name)
        return default if value is None else value

    def need(self, name: str) -> Any:
        """The field `name` (e.g. `"layer"`), which the method cannot do without."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(
                f"This method needs `{name}`; pass it in the `BuildContext` (on the "
                "command line it comes from the model registry or `--layer`)."
            )
        return value


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    """One attribution method, as the tools around the library see it.

    **Arguments:**

    - `name`: the canonical CLI name (`snake_case`), unique in the table.
    - `cls`: the public class.
    - `family`: which family package it lives in.
    - `summary`: one line for `eqx-attr methods` and the docs.
    - `build`: `BuildContext -> method`, with sensible defaults.
    - `aliases`: other CLI names.
    - `needs`: what the build needs from the context (`layer`, `key`, ...).
    - `output`: `"input"` when the attribution is shaped like `x`, `"map"` for an
        `(H, W)` map.
    - `baselines`: for entries that need a baseline, whether they take exactly
        one (`"one"`, DeepLIFT), a set of draws to average over (`"many"`,
        DeepLiftShap, GradientShap) or either (`"any"`, IG).
    - `axioms`: properties the attributions satisfy that tools may check, e.g.
        `"completeness"` (they sum to `f(x) - f(baseline)`; the demo reports it).
    - `benchmark`: `(script, peer)`, the script under `benchmarks/` that times
        the method and the peer it runs beside, or `(None, why it is not timed)`
        (keyword-only, required: `benchmarks/coverage.py` is read from it).
    """

    name: str
    cls: type
    family: Family
    summary: str
    build: Callable[[BuildContext], AbstractAttribution]
    aliases: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    output: Literal["input", "map"] = "input"
    axioms: frozenset[str] = frozenset()
    baselines: Literal["one", "many", "any"] = "any"
    benchmark: tuple[str | None, str] = dataclasses.field(kw_only=True)

    @property
    def random(self) -> bool:
        """Whether `__call__` needs `key`."""
        return "key" in self.needs
