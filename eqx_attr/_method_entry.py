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


Family = Literal[
    "gradient", "rules", "cam", "perturbation", "region", "transformer", "neuron"
]


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


_ORDERS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Differentiability:
    """How often a method's map may be differentiated, and what the derivative is.

    Where an order is claimed, `jax.grad` (and for 2, `jax.grad` of `jax.grad`)
    of the map with respect to the input `x` or to the model's parameters is the
    exact derivative of the map as computed (with the model's own smoothness:
    a ReLU network's map is piecewise, and its derivative is the one of the piece
    `x` lies in). `tests/test_differentiability.py` checks each claim against
    central finite differences in float64 (against forward mode for maps that
    round to float32 inside), and checks that 0 is refused.

    **Arguments:**

    - `input`: the highest order supported (and tested) with respect to `x`: 0
        (refused at trace time with a `ValueError` naming the method), 1, or 2.
    - `params`: the same, with respect to the model's parameters.
    - `note`: what a user differentiating the map should know (a piecewise
        selection whose derivative ignores it, a singularity, float32 sums).
    """

    input: Literal[0, 1, 2]
    params: Literal[0, 1, 2]
    note: str = ""

    def __post_init__(self):
        for name in ("input", "params"):
            if getattr(self, name) not in _ORDERS:
                raise ValueError(
                    f"`{name}` must be an order of derivative in {_ORDERS}, got "
                    f"{getattr(self, name)!r}."
                )

    def describe(self) -> str:
        """A short cell for tables: `x: 2, params: 2` or `refused`."""
        if self.input == self.params == 0:
            return "refused"
        return f"x: {self.input or 'refused'}, params: {self.params or 'refused'}"


# Contracts shared by several rows.
SMOOTH = Differentiability(2, 2)
CLIPPED_MAP = Differentiability(
    1, 1, "relu=True clips the map: the derivative is 0 where it is clipped"
)
PERTURBATION = Differentiability(
    1, 1, "fixed windows or masks: smooth in x for a smooth model; float32 sums"
)
PERTURBATION_KEYED = Differentiability(
    1, 1, "fixed masks for a fixed key: smooth in x for a smooth model; float32 sums"
)


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
        `(H, W)` map, `"layer"` when it is shaped like the output of the layer
        the method was built for (the layer family).
    - `takes_target`: `False` for methods that explain what they were built for
        (a neuron) rather than a class: their call takes `target=None` only.
    - `baselines`: for entries that need a baseline, whether they take exactly
        one (`"one"`, DeepLIFT), a set of draws to average over (`"many"`,
        DeepLiftShap, GradientShap) or either (`"any"`, IG).
    - `axioms`: properties the attributions satisfy that tools may check, e.g.
        `"completeness"` (they sum to `f(x) - f(baseline)`; the demo reports it).
    - `benchmark`: `(script, peer)`, the script under `benchmarks/` that times
        the method and the peer it runs beside, or `(None, why it is not timed)`
        (keyword-only, required: `benchmarks/coverage.py` is read from it).
    - `differentiable`: the [`Differentiability`][] contract of the map with
        respect to the input and the parameters (keyword-only, required: the
        docs' table and `eqx-attr methods` are read from it).
    """

    name: str
    cls: type
    family: Family
    summary: str
    build: Callable[[BuildContext], AbstractAttribution]
    aliases: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    output: Literal["input", "map", "layer"] = "input"
    takes_target: bool = True
    axioms: frozenset[str] = frozenset()
    baselines: Literal["one", "many", "any"] = "any"
    benchmark: tuple[str | None, str] = dataclasses.field(kw_only=True)
    differentiable: Differentiability = dataclasses.field(kw_only=True)

    @property
    def random(self) -> bool:
        """Whether `__call__` needs `key`."""
        return "key" in self.needs
