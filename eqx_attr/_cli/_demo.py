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

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._batch import batched, time_call
from ._columns import (
    DEMO_OPTIONS as DEMO_OPTIONS,
    DemoColumn as DemoColumn,
    check_names,
    choose_digits as choose_digits,
    demo_columns as demo_columns,
    select_columns as select_columns,
    slug as slug,
)
from ._vit_demo import run_vit_demo


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
    from ..viz import grid

    grid_path = os.path.join(out_dir, "attributions.png")
    grid(xs, maps, row_labels=labels, path=grid_path)
    for name, m in maps.items():
        grid(
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
      it once; the registry's transformer methods, see
      `_vit_demo`); an `eqx_attr.models.ViT` uses that model; `False` skips it.
    - `options`: override the methods' demo options (see `demo_columns`).
    - `methods`: registry names (`python -m eqx_attr methods`) of the methods to
      run, all of their columns (every demo baseline); `None` runs every method.

    **Returns:** `{"accuracy", "maps", "timings", "completeness", "skipped",
    "grid_path", "leaderboard", "vit"}` (the last two `None` when skipped).
    """
    from .._registry import methods as registry
    from ..datasets import mnist
    from ..training import accuracy, predict, pretrained_small_cnn

    if methods is not None:  # before training: a typo costs no minute
        check_names(methods, {e.name for e in registry()})
    data = mnist()
    if model is None:
        model = pretrained_small_cnn(progress=progress)
    acc = accuracy(model, data.x_test, data.y_test)
    print_fn(f"test accuracy: {acc:.3f}")
    idx = choose_digits(data.y_test, n_digits)
    xs = jnp.asarray(data.x_test[idx])
    preds = predict(model, xs)
    ts = jnp.asarray(preds, jnp.int32)  # explain what the model predicted
    keys = jax.random.split(jax.random.key(0), xs.shape[0])
    columns, skipped = _columns(model, data, options, methods, print_fn)
    os.makedirs(out_dir, exist_ok=True)
    maps, timings = _time_columns(columns, xs, ts, keys, print_fn)
    labels = [
        f"label {y}, pred {t}" for y, t in zip(data.y_test[idx], preds, strict=True)
    ]
    grid_path = _write_pngs(out_dir, xs, maps, labels, preds)
    deltas = _completeness_errors(columns, xs, ts, keys, maps, print_fn)
    print_fn(f"wrote {grid_path} and {len(maps)} per-method PNGs in {out_dir}/")
    board = _rank(leaderboard, columns, model, xs, ts, out_dir, print_fn)
    vit_report = None
    if vit is not False:
        vit = None if vit is True else vit
        vit_report = run_vit_demo(
            out_dir, n_digits, vit=vit, progress=progress, options=options,
            print_fn=print_fn,
        )  # fmt: skip
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


def _columns(
    model: Any,
    data: Any,
    options: Mapping[str, Any] | None,
    methods: Sequence[str] | None,
    print_fn: Callable[[str], None],
) -> tuple[list[DemoColumn], list[str]]:
    """The demo columns (of `methods` only, if given) and the skipped methods."""
    columns, skipped = demo_columns(model, data, options)
    if methods is not None:
        columns = select_columns(columns, methods)
    if skipped:
        print_fn("methods the demo CNN cannot run: " + ", ".join(skipped))
    return columns, skipped


def _time_columns(
    columns: list[DemoColumn], xs, ts, keys, print_fn: Callable[[str], None]
) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float]]]:
    """Every column's maps of `xs`, and its compile and steady-state times."""
    maps: dict[str, np.ndarray] = {}
    timings: dict[str, tuple[float, float]] = {}
    width = max(len(c.name) for c in columns)
    print_fn(f"{'method':<{width}}  compile [s]  steady [ms / {xs.shape[0]} digits]")
    for column in columns:
        out, compile_s, steady_s = time_call(batched(column.build()), xs, ts, keys)
        maps[column.name] = np.asarray(out)
        timings[column.name] = (compile_s, steady_s)
        print_fn(f"{column.name:<{width}}  {compile_s:11.2f}  {1e3 * steady_s:10.1f}")
    return maps, timings


def _completeness_errors(
    columns: list[DemoColumn], xs, ts, keys, maps, print_fn: Callable[[str], None]
) -> dict[str, float]:
    """The completeness error of every column whose method satisfies it."""
    deltas: dict[str, float] = {}
    for column in columns:
        if "completeness" in column.entry.axioms:
            err = completeness_error(column, xs, ts, keys, maps[column.name])
            deltas[column.name] = err
            print_fn(
                f"completeness, {column.name}: max |delta| / |f(x) - f(b)| = {err:.2e}"
            )
    return deltas


def _rank(
    leaderboard: bool | str | Sequence[str],
    columns: list[DemoColumn],
    model: Any,
    xs,
    ts,
    out_dir: str | os.PathLike,
    print_fn: Callable[[str], None],
) -> Any:
    """The leaderboard of `run_demo`'s `leaderboard` argument (`None`: skipped)."""
    if leaderboard is False:
        return None
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
    return demo_leaderboard(model, ranked, xs, ts, out_dir, print_fn=print_fn)
