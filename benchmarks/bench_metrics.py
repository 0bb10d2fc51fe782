"""Metrics speed: eqx_attr (jitted, vmapped) against Quantus 0.6, same process.

256 held-out MNIST digits, the demo's SmallCNN (randomly initialised: timing only)
and its PyTorch twin with identical weights, identical Gradients attributions on
both sides. Ours is timed after compilation (best of `--repeats`), Quantus once;
the compile time is reported separately. Writes
`benchmarks/results/metrics-cpu.md`.

The *floor* column is the work the metric's definition requires, timed alone in
one program of ours (model calls in slices of 512 images): the model calls on
every perturbed copy (PixelFlipping 28 per digit, ROAD 5, FaithfulnessCorrelation
100), the Gradients of the original and of every randomised model (MPRT), or the
sort (Sparseness). Quantus batches those same model calls through PyTorch, so
`Quantus / floor` bounds the speed-up of any implementation that runs them as fast
as we do.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import eqx_attr as xa  # noqa: E402
from eqx_attr.torch_twins import to_torch  # noqa: E402
from tests._quantus_import import quantus  # noqa: E402

M = xa.metrics
ROAD_PCT = (10, 30, 50, 70, 90)


def cases(model, twin):
    """(name, our metric call, quantus metric, quantus call kwargs)."""
    q = dict(disable_warnings=True)
    explain = dict(
        explain_func=quantus.explain, explain_func_kwargs={"method": "Saliency"}
    )
    return [
        ("Sparseness", lambda xs, ys, a, k: jax.vmap(M.Sparseness())(a),
         quantus.Sparseness(normalise=False, **q), {}),
        ("PixelFlipping (28 features/step)",
         lambda xs, ys, a, k: jax.vmap(
             M.PixelFlipping(model, features_in_step=28).curve)(xs, ys, a),
         quantus.PixelFlipping(features_in_step=28, normalise=False, **q), {}),
        ("ROAD (5 percentages)",
         lambda xs, ys, a, k: jax.vmap(
             M.ROAD(model, percentages=ROAD_PCT).curve)(xs, ys, a, key=k),
         quantus.ROAD(percentages=list(ROAD_PCT), normalise=False, **q), {}),
        ("FaithfulnessCorrelation (100 runs of 224)",
         lambda xs, ys, a, k: jax.vmap(M.FaithfulnessCorrelation(model))(
             xs, ys, a, key=k),
         quantus.FaithfulnessCorrelation(normalise=False, return_aggregate=False, **q),
         {}),
        # One key for the whole batch: one randomised model, as Quantus.
        ("MPRT (cascading, Spearman, Gradients)",
         lambda xs, ys, a, k: jax.vmap(
             lambda x, y: M.MPRT(xa.Gradients(model)).curve(x, y, key=k[0]))(
             xs, ys),
         quantus.MPRT(normalise=False, **q), explain),
    ]  # fmt: skip


def _forward_floor(model, xs, copies: int, slice_rows: int = 512):
    """Our time for the model on `copies` copies of every digit (no metric logic):
    one program, in independent slices of `slice_rows` images (XLA:CPU runs a
    convolution over one huge batch slower than over slices)."""
    batch = jnp.repeat(xs, copies, axis=0)
    parts = max(1, batch.shape[0] // slice_rows)

    @jax.jit
    def run(b):
        return [jax.vmap(model)(p) for p in jnp.array_split(b, parts)]

    return lambda: run(batch)


def floors(model, xs, ys, attrs, curve_len):
    """name -> a function doing only the work the metric must do."""
    grads = eqx.filter_jit(eqx.filter_vmap(xa.Gradients(model)))
    sort = jax.jit(lambda a: jnp.sort(a.reshape(a.shape[0], -1), axis=-1))
    return {
        "Sparseness": lambda: sort(attrs),
        "PixelFlipping (28 features/step)": _forward_floor(model, xs, 28),
        "ROAD (5 percentages)": _forward_floor(model, xs, 5),
        "FaithfulnessCorrelation (100 runs of 224)": _forward_floor(model, xs, 100),
        # The unperturbed Gradients and one per randomisation step.
        "MPRT (cascading, Spearman, Gradients)": lambda: [
            grads(xs, ys) for _ in range(curve_len + 1)
        ],
    }


def _timed(fn, repeats: int) -> tuple[float, float]:
    """`(first call, fastest of `repeats` later calls)`, in seconds."""

    def once():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - t0

    first = once()
    return first, min(once() for _ in range(repeats))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--out", default=os.path.join("benchmarks", "results", "metrics-cpu.md")
    )
    args = p.parse_args()

    data = xa.datasets.mnist()
    xs = jnp.asarray(data.x_test[: args.n])
    ys = jnp.asarray(data.y_test[: args.n], jnp.int32)
    model = xa.models.SmallCNN(key=jax.random.key(0))
    twin = to_torch(model)
    attrs = eqx.filter_jit(eqx.filter_vmap(xa.Gradients(model)))(xs, ys)
    keys = jax.random.split(jax.random.key(1), args.n)
    x_np, y_np, a_np = np.asarray(xs), np.asarray(ys), np.asarray(attrs)

    curve_len = len(M.MPRT(xa.Gradients(model)).curve(xs[0], ys[0], key=keys[0]))
    floor_fns = floors(model, xs, ys, attrs, curve_len)
    rows = []
    for name, ours, theirs, kwargs in cases(model, twin):
        run = eqx.filter_jit(ours)
        first, best = _timed(lambda: run(xs, ys, attrs, keys), args.repeats)
        t0 = time.perf_counter()
        theirs(
            model=twin,
            x_batch=x_np,
            y_batch=y_np,
            a_batch=a_np,  # fmt: skip
            channel_first=True,
            device="cpu",
            batch_size=args.n,
            **kwargs,
        )
        peer = time.perf_counter() - t0
        _, floor = _timed(floor_fns[name], args.repeats)
        rows.append((name, first - best, best, peer, peer / best, floor, peer / floor))
        print(f"{name}: ours {best:.3f} s (compile {first - best:.1f} s), "
              f"Quantus {peer:.2f} s, {peer / best:.1f}x; floor {floor:.3f} s, "
              f"Quantus / floor {peer / floor:.1f}x", flush=True)  # fmt: skip

    lines = [
        f"# Metrics vs Quantus 0.6 on CPU ({args.n} MNIST digits, SmallCNN width 16)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, quantus {quantus.__version__}, load average at the "
        f"start {' '.join(f'{v:.2f}' for v in os.getloadavg())}. Floor: the model "
        "calls (or sort) the metric requires, alone, in one program of ours; "
        "Quantus / floor bounds the speed-up of any implementation that runs them "
        "as fast as we do.",
        "",
        "| metric | ours compile [s] | ours [s] | Quantus [s] | speed-up "
        "| floor [s] | Quantus / floor |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {n} | {c:.1f} | {o:.3f} | {q:.2f} | {r:.1f}x | {fl:.3f} | {b:.1f}x |"
            for n, c, o, q, r, fl, b in rows
        ),
        "",
        f"Command: `python benchmarks/bench_metrics.py --n {args.n} "
        f"--repeats {args.repeats}`",
    ]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
