"""`python -m eqx_attr demo`: every method of the library on real MNIST digits.

Trains (or loads from the cache) the demo CNN, prints its held-out accuracy,
explains 8 held-out digits with every method, writes the grid
`demo_out/attributions.png` plus one PNG per method, and prints each method's
compile and steady-state time and Integrated Gradients' completeness error.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class DemoMethod:
    """One column of the demo: a display name, the public class it needs, a builder."""

    name: str
    requires: str
    build: Callable[[Any, Any], Any]  # (model, data) -> method


def _layer(m):
    return m.conv2


def _classifier(m):
    return m.fc


def _xa():
    import eqx_attr

    return eqx_attr


def planned_methods() -> list[DemoMethod]:
    """Every method the library plans to offer, as the demo shows them.

    Entries name the public class they need; [`available_methods`][] keeps those
    that exist and reports the rest, so a missing method is never silently
    dropped.
    """
    xa = _xa()
    b = xa.baselines
    return [
        DemoMethod("Gradients", "Gradients", lambda m, d: xa.Gradients(m)),
        DemoMethod(
            "Gradients×Input", "GradientsXInput", lambda m, d: xa.GradientsXInput(m)
        ),
        DemoMethod(
            "SmoothGrad",
            "SmoothGrad",
            lambda m, d: xa.SmoothGrad(xa.Gradients(m), n_samples=32, stdev=0.15),
        ),
        DemoMethod(
            "IG (black)",
            "IntegratedGradients",
            lambda m, d: xa.IntegratedGradients(m, n_steps=32),
        ),
        DemoMethod(
            "IG (blur)",
            "IntegratedGradients",
            lambda m, d: xa.IntegratedGradients(
                m, n_steps=32, baseline=b.Blur(sigma=3.0)
            ),
        ),
        DemoMethod(
            "IG (noise)",
            "IntegratedGradients",
            lambda m, d: xa.IntegratedGradients(
                m, n_steps=16, baseline=b.UniformNoise(n_draws=8)
            ),
        ),
        DemoMethod(
            "IG (mean)",
            "IntegratedGradients",
            lambda m, d: xa.IntegratedGradients(
                m, n_steps=32, baseline=b.DatasetMean.from_data(d.x_train)
            ),
        ),
        DemoMethod("Guided BP", "GuidedBackprop", lambda m, d: xa.GuidedBackprop(m)),
        DemoMethod("Deconvnet", "Deconvolution", lambda m, d: xa.Deconvolution(m)),
        DemoMethod(
            "CAM", "CAM", lambda m, d: xa.CAM(m, _layer, classifier=_classifier)
        ),
        DemoMethod("Grad-CAM", "GradCAM", lambda m, d: xa.GradCAM(m, _layer)),
        DemoMethod(
            "Guided Grad-CAM",
            "GuidedGradCAM",
            lambda m, d: xa.GuidedGradCAM(m, _layer),
        ),
        DemoMethod(
            "Grad-CAM++", "GradCAMPlusPlus", lambda m, d: xa.GradCAMPlusPlus(m, _layer)
        ),
        DemoMethod("XGrad-CAM", "XGradCAM", lambda m, d: xa.XGradCAM(m, _layer)),
        DemoMethod("HiRes-CAM", "HiResCAM", lambda m, d: xa.HiResCAM(m, _layer)),
        DemoMethod("Layer-CAM", "LayerCAM", lambda m, d: xa.LayerCAM(m, _layer)),
        DemoMethod("Eigen-CAM", "EigenCAM", lambda m, d: xa.EigenCAM(m, _layer)),
        DemoMethod(
            "Score-CAM", "ScoreCAM", lambda m, d: xa.ScoreCAM(m, _layer, chunk_size=32)
        ),
        DemoMethod(
            "Ablation-CAM",
            "AblationCAM",
            lambda m, d: xa.AblationCAM(m, _layer, chunk_size=32),
        ),
    ]


def available_methods() -> tuple[list[DemoMethod], list[str], list[str]]:
    """`(present, missing, unplanned)`.

    `present`: planned methods whose class exists; `missing`: planned classes not
    (yet) in the library; `unplanned`: public attribution classes that no demo
    entry uses (so they would not be shown).
    """
    xa = _xa()
    planned = planned_methods()
    present = [p for p in planned if hasattr(xa, p.requires)]
    missing = sorted({p.requires for p in planned if not hasattr(xa, p.requires)})
    used = {p.requires for p in planned}
    public = {
        n
        for n in dir(xa)
        if isinstance(getattr(xa, n), type)
        and issubclass(getattr(xa, n), xa.AbstractAttribution)
        and not getattr(getattr(xa, n), "__abstractmethods__", None)
    }
    unplanned = sorted(public - used)
    return present, missing, unplanned


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


def _batched(method):
    """`(xs, ts, keys) -> maps`, jitted, one compile per input shape."""

    @eqx.filter_jit
    def run(method, xs, ts, keys):
        return jax.vmap(lambda x, t, k: method(x, t, key=k))(xs, ts, keys)

    return lambda xs, ts, keys: run(method, xs, ts, keys)


def time_method(fn: Callable, *args, repeats: int = 3) -> tuple[Any, float, float]:
    """`(output, compile_seconds, steady_seconds)`.

    The first call compiles and runs; steady state is the best of `repeats` later
    calls; compile time is the first call minus one steady call.
    """
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return out, max(first - best, 0.0), best


def completeness_error(ig, xs, ts, key) -> float:
    """max_i |delta_i| / |f(x_i) - f(b_i)| for Integrated Gradients `ig` over a batch.

    `delta = sum(attr) - (f(x) - f(b))`, so `f(x) - f(b) = sum(attr) - delta`.
    """

    @eqx.filter_jit
    def run(ig, xs, ts, keys):
        return jax.vmap(lambda x, t, k: ig.attribute_with_delta(x, t, key=k))(
            xs, ts, keys
        )

    keys = jax.random.split(key, xs.shape[0])
    attrs, deltas = run(ig, xs, ts, keys)
    sums = jnp.sum(attrs.reshape(attrs.shape[0], -1), axis=1)
    gap = np.abs(np.asarray(sums - deltas, np.float64))
    return float(
        np.max(np.abs(np.asarray(deltas, np.float64)) / np.maximum(gap, 1e-12))
    )


def run_demo(
    out_dir: str | os.PathLike = "demo_out",
    *,
    n_digits: int = 8,
    progress: bool = True,
    model: Any = None,
    print_fn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo; returns the numbers it prints (for tests and notebooks).

    **Arguments:**

    - `out_dir`: where the PNGs go (created if needed).
    - `n_digits`: how many held-out digits to explain (one per class first).
    - `progress`: show the training progress bar (only when training).
    - `model`: use this trained model instead of the cached demo CNN.
    - `print_fn`: where the report lines go.
    """
    from .. import datasets, training, viz

    data = datasets.mnist()
    if model is None:
        model = training.pretrained_small_cnn(progress=progress)
    acc = training.accuracy(model, data.x_test, data.y_test)
    print_fn(f"test accuracy: {acc:.3f}")

    idx = choose_digits(data.y_test, n_digits)
    xs = jnp.asarray(data.x_test[idx])
    labels = data.y_test[idx]
    preds = training.predict(model, xs)
    ts = jnp.asarray(preds, jnp.int32)  # explain what the model predicted
    keys = jax.random.split(jax.random.key(0), xs.shape[0])

    present, missing, unplanned = available_methods()
    if missing:
        print_fn("planned methods not in the library yet: " + ", ".join(missing))
    if unplanned:
        print_fn("library methods without a demo entry: " + ", ".join(unplanned))

    os.makedirs(out_dir, exist_ok=True)
    maps: dict[str, np.ndarray] = {}
    timings: dict[str, tuple[float, float]] = {}
    width = max(len(p.name) for p in present)
    print_fn(f"{'method':<{width}}  compile [s]  steady [ms / {xs.shape[0]} digits]")
    for p in present:
        method = p.build(model, data)
        out, compile_s, steady_s = time_method(_batched(method), xs, ts, keys)
        maps[p.name] = np.asarray(out)
        timings[p.name] = (compile_s, steady_s)
        print_fn(f"{p.name:<{width}}  {compile_s:11.2f}  {1e3 * steady_s:10.1f}")

    row_labels = [f"label {y}, pred {t}" for y, t in zip(labels, preds, strict=True)]
    grid_path = os.path.join(out_dir, "attributions.png")
    fig = viz.grid(xs, maps, row_labels=row_labels, path=grid_path)
    del fig
    for name, m in maps.items():
        viz.grid(
            xs,
            {name: m},
            row_labels=[str(t) for t in preds],
            transpose=True,
            path=os.path.join(out_dir, f"{slug(name)}.png"),
        )

    deltas: dict[str, float] = {}
    for p in present:
        if p.requires != "IntegratedGradients":
            continue
        err = completeness_error(p.build(model, data), xs, ts, jax.random.key(0))
        deltas[p.name] = err
        print_fn(f"IG completeness, {p.name}: max |delta| / |f(x) - f(b)| = {err:.2e}")
    print_fn(f"wrote {grid_path} and {len(maps)} per-method PNGs in {out_dir}/")
    return {
        "accuracy": acc,
        "maps": maps,
        "timings": timings,
        "completeness": deltas,
        "missing": missing,
        "unplanned": unplanned,
        "grid_path": grid_path,
    }
