"""What the demos run: registry methods built for a zoo model, and the digits.

Both demo panels (the CNN's, `_demo`, and the ViT's, `_vit_demo`) and the
CNN-vs-ViT comparison (`_compare`) build their methods here, from the method
registry (what a method needs) and the zoo model's spec (what the model offers:
its layer, classifier and attention selector). Nothing here names a method or
an architecture.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._registry import BuildContext, MethodEntry, methods
from ..models import ModelSpec, spec_of
from ._explain import feature_cells

DEMO_OPTIONS = {"n_steps": 32, "n_samples": 32, "chunk_size": 32}


@dataclasses.dataclass(frozen=True)
class DemoColumn:
    """One column of the demo: a display name, its registry entry, a context."""

    name: str
    entry: MethodEntry
    context: BuildContext

    def build(self) -> Any:
        return self.entry.build(self.context)


def offered(spec: ModelSpec) -> frozenset[str]:
    """What a zoo model offers a method (registry `needs`): a key, a baseline and a
    feature mask always; a layer, a classifier and attention maps when its spec
    names them."""
    have = {"key", "baseline", "mask"}
    have |= {"layer"} if spec.cam_layer else set()
    have |= {"classifier"} if spec.classifier else set()
    have |= {"attention"} if spec.attention else set()
    return frozenset(have)


def zoo_context(
    model: Any,
    input_shape: tuple[int, ...],
    options: Mapping[str, Any] | None = None,
    baseline: Any = None,
) -> BuildContext:
    """The [`BuildContext`][] of a zoo model: its spec's layer (with its layout),
    classifier, attention selector and prefix tokens, a 7x7 grid of feature
    cells, and `options` (the methods' options by name)."""
    spec = spec_of(model)
    return BuildContext(
        model=model,
        layer=spec.layer(),
        layer_options=dict(spec.layer_options),
        classifier=spec.classifier_where(),
        attention=spec.attention_where(),
        n_prefix_tokens=spec.n_prefix_tokens,
        mask=feature_cells(input_shape, 7),
        baseline=baseline,
        options=dict(options or {}),
        input_shape=input_shape,
    )


def demo_baselines(data: Any) -> dict[str, Any]:
    """The CNN demo's baselines, by column label."""
    from ..baselines import Blur, DatasetMean, UniformNoise

    return {
        "black": 0.0,
        "blur": Blur(sigma=3.0),
        "noise": UniformNoise(n_draws=8),
        "mean": DatasetMean.from_data(data.x_train),
    }


def demo_columns(
    model: Any,
    data: Any,
    options: Mapping[str, Any] | None = None,
    *,
    families: Iterable[str] | None = None,
    baselines: Mapping[str, Any] | None = None,
    names: Iterable[str] = (),
) -> tuple[list[DemoColumn], list[str]]:
    """`(columns, skipped)`: every registered method as the demo shows it.

    `options` override the methods' demo options (`DEMO_OPTIONS`: `n_steps`,
    `n_samples`, `chunk_size`; also `n_permutations`, `n_masks`, ...).
    `families` keeps only those registry families (default: all), and also the
    methods called `names` (registry names) of other families; methods that
    take a baseline get one column per entry of `baselines` they accept
    (default: `demo_baselines(data)`). `skipped` names the entries the model
    cannot run (it does not offer what they need), with what they need.
    """
    spec = spec_of(model)
    shape = tuple(data.x_test.shape[1:])
    base = zoo_context(model, shape, {**DEMO_OPTIONS, **(options or {})})
    baselines = demo_baselines(data) if baselines is None else baselines
    families = None if families is None else set(families)
    names = set(names)
    columns: list[DemoColumn] = []
    skipped: list[str] = []
    for entry in methods():
        if not (families is None or entry.family in families or entry.name in names):
            continue
        missing = entry.needs - offered(spec)
        if entry.family == "neuron":
            # A layer's or a neuron's attribution is not the class's input map.
            skipped.append(f"{entry.name} (inside the network: use `explain`)")
        elif missing:
            skipped.append(f"{entry.name} (needs {', '.join(sorted(missing))})")
        elif "baseline" in entry.needs:
            for label, value in baselines.items():
                many = getattr(value, "n_draws", 1) > 1
                if (entry.baselines == "one" and many) or (
                    entry.baselines == "many" and not many
                ):
                    continue
                context = dataclasses.replace(base, baseline=value)
                columns.append(DemoColumn(f"{entry.name} ({label})", entry, context))
        else:
            columns.append(DemoColumn(entry.name, entry, base))
    return columns, skipped


def select_columns(columns: list[DemoColumn], names: Sequence[str]) -> list[DemoColumn]:
    """The columns of the registry methods `names` (every baseline of each)."""
    check_names(names, {c.entry.name for c in columns})
    return [c for c in columns if c.entry.name in set(names)]


def check_names(names: Sequence[str], known: set[str]) -> None:
    """`ValueError` naming the choices unless `names` is a non-empty subset."""
    unknown = sorted(set(names) - known)
    if unknown or not names:
        raise ValueError(
            f"methods: {unknown or 'none'} names no demo method; choose from "
            f"{sorted(known)} (`python -m eqx_attr methods` lists them)."
        )


def choose_digits(ys: np.ndarray, n: int = 8) -> np.ndarray:
    """Indices of `n` examples: the first example of classes 0, 1, 2, ... in turn.

    One per class while classes last; with `n > n_classes` it cycles.
    """
    ys = np.asarray(ys)
    classes = np.unique(ys)
    picked: list[int] = []
    taken: set[int] = set()
    while len(picked) < n:
        before = len(picked)
        for c in classes:
            if len(picked) == n:
                break
            for i in np.flatnonzero(ys == c):
                if int(i) not in taken:
                    picked.append(int(i))
                    taken.add(int(i))
                    break
        if len(picked) == before:
            raise ValueError(f"Only {len(picked)} examples; cannot pick {n}.")
    return np.asarray(picked)


def slug(name: str) -> str:
    """A file-name-safe version of a display name: `"IG (black)"` -> `ig_black`."""
    s = name.lower().replace("×", "x").replace("+", "p")
    return re.sub(r"[^a-z0-9]+", "_", s).strip("_")
