"""`python -m eqx_attr demo`: every registered method on real MNIST digits.

Trains (or loads from the cache) the demo CNN, reports its held-out accuracy,
explains 8 held-out digits with every method of the registry that runs on a CNN
(methods that baseline get one column per demo baseline), writes the grid
`demo_out/attributions.png` plus one PNG per column, and reports each column's
compile and steady-state time and the completeness error of the methods that
satisfy completeness, then ranks the methods on faithfulness and sanity metrics
(the leaderboard, `demo_out/deletion_curves.png`) and explains the same digits
with the MNIST ViT's methods (`demo_out/vit_attributions.png`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._batch import batched, time_call
from .._registry import BuildContext, MethodEntry, methods
from ..models import spec_of
from ._explain import feature_cells

# What the demo CNN offers a method; entries needing anything else (a
# transformer's attention) are listed as skipped, never silently dropped.
_OFFERED = frozenset({"layer", "classifier", "key", "baseline", "mask"})


@dataclasses.dataclass(frozen=True)
class DemoColumn:
    """One column of the demo: a display name, its registry entry, a context."""

    name: str
    entry: MethodEntry
    context: BuildContext

    def build(self) -> Any:
        return self.entry.build(self.context)


def _baselines(data: Any) -> dict[str, Any]:
    from .. import baselines as b

    return {
        "black": 0.0,
        "blur": b.Blur(sigma=3.0),
        "noise": b.UniformNoise(n_draws=8),
        "mean": b.DatasetMean.from_data(data.x_train),
    }


DEMO_OPTIONS = {"n_steps": 32, "n_samples": 32, "chunk_size": 32}


def demo_columns(
    model: Any, data: Any, options: Mapping[str, Any] | None = None
) -> tuple[list[DemoColumn], list[str]]:
    """`(columns, skipped)`: every registered method as the demo shows it.

    `options` override the methods' demo options (`DEMO_OPTIONS`: `n_steps`,
    `n_samples`, `chunk_size`; also `n_permutations`, `n_masks`, ...). `skipped`
    names the entries the demo CNN cannot run, with what they need.
    """
    spec = spec_of(model)
    base = BuildContext(
        model=model,
        layer=spec.layer(),
        classifier=spec.classifier_where(),
        mask=feature_cells(tuple(data.x_test.shape[1:]), 7),
        options={**DEMO_OPTIONS, **(options or {})},
        input_shape=tuple(data.x_test.shape[1:]),
    )
    columns: list[DemoColumn] = []
    skipped: list[str] = []
    for entry in methods():
        missing = entry.needs - _OFFERED
        if missing:
            skipped.append(f"{entry.name} (needs {', '.join(sorted(missing))})")
        elif "baseline" in entry.needs:
            for label, value in _baselines(data).items():
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
    _check_names(names, {c.entry.name for c in columns})
    return [c for c in columns if c.entry.name in set(names)]


def _check_names(names: Sequence[str], known: set[str]) -> None:
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


def completeness_error(column: DemoColumn, xs, ts, keys, attrs=None) -> float:
    """max_i |sum(a_i) - (f(x_i) - f(b_i))| / |f(x_i) - f(b_i)| over a batch.

    `attrs`: the column's attributions of `xs` if already computed (else computed).
    """
    from ..metrics import Completeness

    baseline = column.context.baseline
    metric = Completeness(column.context.model, baseline=baseline, relative=True)
    if attrs is None:
        attrs = batched(column.build())(xs, ts, keys)
    attrs = jnp.asarray(attrs)
    errors = _batched_metric(metric, xs, ts, attrs, keys)
    return float(np.max(np.asarray(errors, np.float64)))


@eqx.filter_jit
def _batched_metric(metric, xs, ts, attrs, keys):
    return jax.vmap(lambda x, t, a, k: metric(x, t, a, key=k))(xs, ts, attrs, keys)


def _write_pngs(out_dir, xs, maps, labels, preds) -> str:
    from .. import viz

    grid_path = os.path.join(out_dir, "attributions.png")
    viz.grid(xs, maps, row_labels=labels, path=grid_path)
    for name, m in maps.items():
        viz.grid(
            xs,
            {name: m},
            row_labels=[str(t) for t in preds],
            transpose=True,
            path=os.path.join(out_dir, f"{slug(name)}.png"),
        )
    return grid_path


# Ranked only on request (`leaderboard="all"`, `--leaderboard-all`): each costs
# hundreds to thousands of forward passes per digit, twice (MPRT re-explains).
SLOW_TO_RANK = frozenset(
    {
        "scorecam",
        "occlusion",
        "shapley_value_sampling",
        "kernel_shap",
        "lime",
        "rise",
        "blur_ig",
        "guided_ig",
        "xrai",
    }
)


def leaderboard_methods(
    columns: list[DemoColumn], names: Sequence[str] | str | None = None
) -> dict[str, Any]:
    """One built method per registry entry for the leaderboard.

    With `names=None`, each entry's first demo column (a baselined method with
    its first demo baseline), except the entries of `SLOW_TO_RANK`; with
    `names="all"`, every entry's first column; otherwise exactly the columns
    named.
    """
    if isinstance(names, str) and names != "all":
        raise ValueError(
            f"leaderboard: expected 'all' or a list of names, got {names!r}."
        )
    if names is not None and names != "all":
        known = {c.name: c for c in columns}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"leaderboard: no demo column named {unknown}; "
                f"choose from {sorted(known)}."
            )
        return {n: known[n].build() for n in names}
    chosen: dict[str, Any] = {}
    seen: set[str] = set()
    for c in columns:
        slow = names is None and c.entry.name in SLOW_TO_RANK
        if c.entry.name not in seen and not slow:
            seen.add(c.entry.name)
            chosen[c.name] = c.build()
    return chosen


def run_demo(
    out_dir: str | os.PathLike = "demo_out",
    *,
    n_digits: int = 8,
    progress: bool = True,
    model: Any = None,
    print_fn: Callable[[str], None] = print,
    leaderboard: bool | str | Sequence[str] = True,
    vit: Any = True,
    options: Mapping[str, Any] | None = None,
    methods: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the demo; returns the numbers it reports (for tests and notebooks).

    **Arguments:**

    - `out_dir`: where the PNGs go (created if needed).
    - `n_digits`: how many held-out digits to explain (one per class first).
    - `progress`: show the training progress bar (only when training).
    - `model`: use this trained model instead of the cached demo CNN.
    - `print_fn`: where the report lines go.
    - `leaderboard`: `True` ranks one column per method on the metrics of
      [`eqx_attr.metrics.leaderboard`][] and plots the deletion curves, leaving
      out the costly perturbation methods and Score-CAM (`SLOW_TO_RANK`);
      `"all"` ranks every method; a list of column names ranks those; `False`
      skips it.
    - `vit`: `True` explains the digits with the cached MNIST ViT too (training
      it once); an `eqx_attr.models.ViT` uses that model; `False` skips it.
    - `options`: override the methods' demo options (see `demo_columns`).
    - `methods`: registry names (`python -m eqx_attr methods`) of the methods to
      run, all of their columns (every demo baseline); `None` runs every method.

    **Returns:** `{"accuracy", "maps", "timings", "completeness", "skipped",
    "grid_path", "leaderboard", "vit"}` (the last two `None` when skipped).
    """
    from .. import datasets, training
    from .._registry import methods as registry

    if methods is not None:  # before training: a typo costs no minute
        _check_names(methods, {e.name for e in registry()})
    data = datasets.mnist()
    if model is None:
        model = training.pretrained_small_cnn(progress=progress)
    acc = training.accuracy(model, data.x_test, data.y_test)
    print_fn(f"test accuracy: {acc:.3f}")
    idx = choose_digits(data.y_test, n_digits)
    xs = jnp.asarray(data.x_test[idx])
    preds = training.predict(model, xs)
    ts = jnp.asarray(preds, jnp.int32)  # explain what the model predicted
    keys = jax.random.split(jax.random.key(0), xs.shape[0])
    columns, skipped = demo_columns(model, data, options)
    if methods is not None:
        columns = select_columns(columns, methods)
    if skipped:
        print_fn("methods the demo CNN cannot run: " + ", ".join(skipped))

    os.makedirs(out_dir, exist_ok=True)
    maps: dict[str, np.ndarray] = {}
    timings: dict[str, tuple[float, float]] = {}
    width = max(len(c.name) for c in columns)
    print_fn(f"{'method':<{width}}  compile [s]  steady [ms / {xs.shape[0]} digits]")
    for column in columns:
        out, compile_s, steady_s = time_call(batched(column.build()), xs, ts, keys)
        maps[column.name] = np.asarray(out)
        timings[column.name] = (compile_s, steady_s)
        print_fn(f"{column.name:<{width}}  {compile_s:11.2f}  {1e3 * steady_s:10.1f}")
    labels = [
        f"label {y}, pred {t}" for y, t in zip(data.y_test[idx], preds, strict=True)
    ]
    grid_path = _write_pngs(out_dir, xs, maps, labels, preds)

    deltas: dict[str, float] = {}
    for column in columns:
        if "completeness" in column.entry.axioms:
            err = completeness_error(column, xs, ts, keys, maps[column.name])
            deltas[column.name] = err
            print_fn(
                f"completeness, {column.name}: max |delta| / |f(x) - f(b)| = {err:.2e}"
            )
    print_fn(f"wrote {grid_path} and {len(maps)} per-method PNGs in {out_dir}/")

    board = None
    if leaderboard is not False:
        from ..metrics import demo_leaderboard

        if leaderboard is True:
            names = None
            print_fn(
                "leaderboard leaves out (costly; --leaderboard-all ranks them): "
                + ", ".join(sorted(SLOW_TO_RANK))
            )
        else:
            names = "all" if leaderboard == "all" else list(leaderboard)
        ranked = leaderboard_methods(columns, names)
        board = demo_leaderboard(model, ranked, xs, ts, out_dir, print_fn=print_fn)
    vit_report = None
    if vit is not False:
        from .._transformer._demo import run_vit_demo

        vit_report = run_vit_demo(
            str(out_dir), n_digits, vit=None if vit is True else vit, progress=progress
        )
        print_fn(f"ViT held-out accuracy: {vit_report['accuracy']:.3f}")
        for key, seconds in vit_report.items():
            if key.endswith(" s"):
                print_fn(f"ViT {key[:-2]}: {1e3 * seconds:.1f} ms / {n_digits} digits")
        print_fn(f"wrote {os.path.join(str(out_dir), 'vit_attributions.png')}")
    return {
        "accuracy": acc,
        "maps": maps,
        "timings": timings,
        "completeness": deltas,
        "skipped": skipped,
        "grid_path": grid_path,
        "leaderboard": board,
        "vit": vit_report,
    }
