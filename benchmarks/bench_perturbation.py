"""Perturbation family vs Captum: same weights, same process, times as ratios.

Run: `python benchmarks/bench_perturbation.py [--batch 64] [--repeats 3]
[--models smallcnn,resnet18]`. Writes `benchmarks/results/perturbation-cpu.md`
(`perturbation-cpu-resnet18.md` for `--models resnet18` alone). Captum gets
`perturbations_per_eval` equal to our `chunk_size`; both explain the whole batch
(ours: `eqx.filter_vmap` over the examples, compiled once before timing).

Settings: SmallCNN (1x28x28, batch 64): Occlusion window (1, 7, 7) strides
(1, 3, 3), 16 features (7x7 cells) for the others, ShapleyValueSampling 4
permutations, KernelShap 64 samples. ResNet-18 (3x224x224, batch 4, kept modest
so that the run takes minutes): Occlusion window (3, 32, 32) strides (3, 32, 32)
(49 windows), 16 features (56x56 cells), ShapleyValueSampling 2 permutations,
KernelShap 32 samples.
"""

from __future__ import annotations

import argparse
import os
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


SETTINGS = {
    # model: (window and stride side, ShapleyValueSampling permutations,
    # KernelShap samples); features are 4x4 grid cells in both.
    "SmallCNN": ((7, 3), 4, 64),
    "ResNet-18": ((32, 32), 2, 32),
}


def cases(model, x, chunk, side, settings):
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
    (w, s), n_perm, n_samples = settings
    win, stride = (x.shape[1], w, w), (x.shape[1], s, s)
    n_features = int(grid.max()) + 1
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
        f"FeatureAblation {n_features} features",
        ours(xa.FeatureAblation(model, grid, chunk_size=chunk)),
        peer(
            lambda: ca.FeatureAblation(tm).attribute(
                xt, target=tt, feature_mask=fm, perturbations_per_eval=ppe
            )
        ),
    )
    yield (
        f"ShapleyValueSampling {n_features} features, {n_perm} permutations",
        ours(
            xa.ShapleyValueSampling(model, grid, n_perm, chunk_size=chunk),
            keyed=True,
        ),
        peer(
            lambda: ca.ShapleyValueSampling(tm).attribute(
                xt,
                target=tt,
                feature_mask=fm,
                n_samples=n_perm,
                perturbations_per_eval=ppe,
            )
        ),
    )
    # Captum's Lime-based KernelShap explains one example per call.
    yield (
        f"KernelShap {n_features} features, {n_samples} samples",
        ours(xa.KernelShap(model, grid, n_samples, chunk_size=chunk), keyed=True),
        peer(
            lambda: [
                ca.KernelShap(tm).attribute(
                    xt[i : i + 1],
                    target=int(tt[i]),
                    feature_mask=fm[i : i + 1],
                    n_samples=n_samples,
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
    parser.add_argument("--models", default="smallcnn", help="smallcnn,resnet18")
    parser.add_argument("--resnet", action="store_true", help="add resnet18")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    if args.resnet and "resnet18" not in models:
        models.append("resnet18")
    if set(models) - {"smallcnn", "resnet18"}:
        parser.error(f"--models: unknown {models}; use smallcnn, resnet18")
    if args.out is None:
        name = "-resnet18" if models == ["resnet18"] else ""
        args.out = f"benchmarks/results/perturbation-cpu{name}.md"
    rows = []
    setups = []
    if "smallcnn" in models:
        setups.append(("SmallCNN", xa.models.SmallCNN(key=jax.random.key(0)), 28, 1))
    if "resnet18" in models:
        r18 = xa.models.resnet18(n_classes=10, key=jax.random.key(0))
        setups.append(("ResNet-18", r18, 224, 3))
    load0 = os.getloadavg()[0]
    for name, model, side, channels in setups:
        batch = args.batch if name == "SmallCNN" else 4
        x = jax.random.uniform(jax.random.key(1), (batch, channels, side, side))
        for label, ours, peer in cases(model, x, args.chunk, side, SETTINGS[name]):
            t_ours, t_peer = _time(ours, args.repeats), _time(peer, args.repeats)
            rows.append((name, batch, label, t_ours, t_peer))
            print(
                f"{name} {label}: ours {t_ours:.3f}s captum {t_peer:.3f}s "
                f"ratio {t_ours / t_peer:.2f} load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    lines = [
        "# Perturbation family vs Captum (CPU)",
        "",
        f"Median of {args.repeats} runs after a warm-up, same process, same weights; "
        f"chunk_size = perturbations_per_eval = {args.chunk or 'all'}. "
        "The machine was shared with other jobs (load average far above its "
        "2 cores) while this ran: "
        "absolute times are inflated, the ratios are the result. Load average "
        f"(1 min) at the start {load0:.1f}, at the end {os.getloadavg()[0]:.1f}.",
        "",
        "Inputs: SmallCNN 1x28x28, ResNet-18 3x224x224 (random init, 10 "
        "classes); the features are 4x4 grid cells; ResNet-18 runs batch 4.",
        "",
        f"Command: `python benchmarks/bench_perturbation.py --models "
        f"{','.join(models)} --repeats {args.repeats}"
        f"{f' --chunk {args.chunk}' if args.chunk else ''}`",
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
