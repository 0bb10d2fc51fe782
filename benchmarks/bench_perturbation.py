"""Perturbation family vs Captum: same weights, same process, times as ratios.

Run: `python benchmarks/bench_perturbation.py [--batch 64] [--repeats 3]
[--resnet]`. Writes `benchmarks/results/perturbation-cpu.md`. Captum gets
`perturbations_per_eval` equal to our `chunk_size`; both explain the whole batch
(ours: `eqx.filter_vmap` over the examples, compiled once before timing).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import captum.attr as ca
import equinox as eqx
import jax
import numpy as np
import torch

import eqx_attr as xa
from eqx_attr.torch_twins import to_torch


def _time(fn, repeats):
    fn()  # warm-up (compilation for ours)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cases(model, x, chunk, side):
    """(name, ours, captum) triples; each callable explains the whole batch.

    `chunk=None`: ours evaluates every perturbation at once, and Captum gets a
    `perturbations_per_eval` larger than any count here (the same: all at once).
    """
    ppe = chunk or 4096
    tm = to_torch(model).eval()
    xt = torch.from_numpy(np.array(x))
    targets = np.arange(x.shape[0]) % 10
    tt = torch.from_numpy(targets)
    jt = jax.numpy.asarray(targets)
    cell = side // 4
    grid = xa.masks.grid((side, side), cell)
    fm = torch.from_numpy(grid)[None, None].repeat(x.shape[0], 1, 1, 1)
    win, stride = (x.shape[1], cell, cell), (x.shape[1], cell // 2, cell // 2)
    key = jax.random.key(0)

    def ours(method, keyed=False):
        if keyed:
            keys = jax.random.split(key, x.shape[0])
            f = eqx.filter_jit(eqx.filter_vmap(lambda a, t, k: method(a, t, key=k)))
            return lambda: jax.block_until_ready(f(x, jt, keys))
        f = eqx.filter_jit(eqx.filter_vmap(method))
        return lambda: jax.block_until_ready(f(x, jt))

    def peer(fn):
        def run():
            with torch.no_grad():
                return fn()

        return run

    yield (
        f"Occlusion window {win} strides {stride}",
        ours(xa.Occlusion(model, win, stride, chunk_size=chunk)),
        peer(
            lambda: ca.Occlusion(tm).attribute(
                xt, win, stride, target=tt, perturbations_per_eval=ppe
            )
        ),
    )
    yield (
        f"FeatureAblation {int(grid.max()) + 1} features",
        ours(xa.FeatureAblation(model, grid, chunk_size=chunk)),
        peer(
            lambda: ca.FeatureAblation(tm).attribute(
                xt, target=tt, feature_mask=fm, perturbations_per_eval=ppe
            )
        ),
    )
    yield (
        "ShapleyValueSampling 16 features, 4 permutations",
        ours(xa.ShapleyValueSampling(model, grid, 4, chunk_size=chunk), keyed=True),
        peer(
            lambda: ca.ShapleyValueSampling(tm).attribute(
                xt,
                target=tt,
                feature_mask=fm,
                n_samples=4,
                perturbations_per_eval=ppe,
            )
        ),
    )
    # Captum's Lime-based KernelShap explains one example per call.
    yield (
        "KernelShap 16 features, 64 samples",
        ours(xa.KernelShap(model, grid, 64, chunk_size=chunk), keyed=True),
        peer(
            lambda: [
                ca.KernelShap(tm).attribute(
                    xt[i : i + 1],
                    target=int(tt[i]),
                    feature_mask=fm[i : i + 1],
                    n_samples=64,
                    perturbations_per_eval=ppe,
                )
                for i in range(x.shape[0])
            ]
        ),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    # On CPU, XLA runs convolutions inside a loop body (our chunking) several
    # times slower; chunk only when memory is the limit.
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--resnet", action="store_true", help="ResNet-18, batch 4")
    parser.add_argument("--out", default="benchmarks/results/perturbation-cpu.md")
    args = parser.parse_args()
    rows = []
    setups = [("SmallCNN", xa.models.SmallCNN(key=jax.random.key(0)), 28, 1)]
    if args.resnet:
        r18 = xa.models.resnet18(n_classes=10, key=jax.random.key(0))
        setups.append(("ResNet-18", r18, 224, 3))
    for name, model, side, channels in setups:
        batch = args.batch if name == "SmallCNN" else 4
        x = jax.random.uniform(jax.random.key(1), (batch, channels, side, side))
        for label, ours, peer in cases(model, x, args.chunk, side):
            t_ours, t_peer = _time(ours, args.repeats), _time(peer, args.repeats)
            rows.append((name, batch, label, t_ours, t_peer))
            print(
                f"{name} {label}: ours {t_ours:.3f}s captum {t_peer:.3f}s "
                f"ratio {t_ours / t_peer:.2f}",
                flush=True,
            )
    lines = [
        "# Perturbation family vs Captum (CPU)",
        "",
        f"Median of {args.repeats} runs after a warm-up, same process, same weights; "
        f"chunk_size = perturbations_per_eval = {args.chunk or 'all'}. "
        "The machine was shared with other jobs (load average far above its "
        "2 cores) while this ran: "
        "absolute times are inflated, the ratios are the result.",
        "",
        "| model | batch | method | ours (s) | Captum (s) | ours / Captum |",
        "|---|---|---|---|---|---|",
    ]
    for name, batch, label, a, b in rows:
        lines.append(
            f"| {name} | {batch} | {label} | {a:.3f} | {b:.3f} | {a / b:.2f} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
