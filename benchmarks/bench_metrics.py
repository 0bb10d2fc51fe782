"""Metrics speed: eqx_attr (jitted, vmapped) against Quantus 0.6, same process.

256 held-out MNIST digits, the demo's SmallCNN (randomly initialised: timing only)
and its PyTorch twin with identical weights, identical Gradients attributions on
both sides. Ours is timed after compilation (best of `--repeats`), Quantus once;
the compile time is reported separately. Writes
`benchmarks/results/metrics-cpu.md`.

    python benchmarks/bench_metrics.py [--n 256] [--repeats 2]
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from _quantus_import import quantus  # noqa: E402

import eqx_attr as xa  # noqa: E402
from eqx_attr.torch_twins import to_torch  # noqa: E402

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

    rows = []
    for name, ours, theirs, kwargs in cases(model, twin):
        run = eqx.filter_jit(ours)
        t0 = time.perf_counter()
        jax.block_until_ready(run(xs, ys, attrs, keys))
        first = time.perf_counter() - t0
        steady = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(run(xs, ys, attrs, keys))
            steady.append(time.perf_counter() - t0)
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
        best = min(steady)
        rows.append((name, first - best, best, peer, peer / best))
        print(f"{name}: ours {best:.3f} s (compile {first - best:.1f} s), "
              f"Quantus {peer:.2f} s, {peer / best:.1f}x", flush=True)  # fmt: skip

    lines = [
        f"# Metrics vs Quantus 0.6 on CPU ({args.n} MNIST digits, SmallCNN width 16)",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, quantus {quantus.__version__}. The machine was shared "
        "with other jobs while this ran (load average well above the core count): "
        "absolute times are inflated, ratios are the meaningful numbers.",
        "",
        "| metric | ours compile [s] | ours [s] | Quantus [s] | speed-up |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {n} | {c:.1f} | {o:.3f} | {q:.2f} | {r:.0f}x |"
            for n, c, o, q, r in rows
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
