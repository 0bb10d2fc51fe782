"""Throughput of `xa.explain_dataset` (examples/s), against the bare method and Captum.

    python benchmarks/bench_runner.py [--n 128] [--batch-sizes 16,64] [--n-steps 8]

Writes `benchmarks/results/runner-<platform>.md`. Every measurement is steady
state: the program is compiled on a first, untimed run at the same batch size.

- *runner*: `explain_dataset` into a fresh Zarr store (reading batches, sharding,
    computing, writing chunks, bookkeeping), progress bar off; with the target's
    score (one extra forward pass) and without it (`scores=False`).
- *bare*: the same method as `eqx.filter_jit(eqx.filter_vmap(method))` on the
    same NumPy batches, in the same process, every batch dispatched before one
    wait at the end (no store, no host copies): the strongest plain loop.
- *CPU time*: bare / runner seconds of CPU of this process (all threads), the
    overhead in work, less sensitive to other jobs on a shared machine than
    wall time.
- *Captum*: the same weights in PyTorch (`eqx_attr.torch_twins`), over a torch
    `DataLoader` of the same batches.
- *devices*: the runner in a subprocess with 1, 2, 4 forced CPU devices
    (`XLA_FLAGS=--xla_force_host_platform_device_count=N`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import equinox as eqx
import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import eqx_attr as xa  # noqa: E402


def _setup(n: int, n_steps: int):
    model = xa.models.SmallCNN(key=jax.random.key(0))  # (1, 28, 28), width 16
    digits = xa.datasets.mnist().x_test
    xs = np.tile(digits, (-(-n // len(digits)), 1, 1, 1))[:n].copy()
    ts = (
        np.asarray(eqx.filter_jit(eqx.filter_vmap(model))(xs))
        .argmax(-1)
        .astype(np.int32)
    )
    methods = {
        f"ig-gl-{n_steps}": xa.IntegratedGradients(model, n_steps=n_steps),
        "gradcam": xa.GradCAM(model, lambda m: m.conv2),
    }
    return model, xs, ts, methods


def _runner_rate(method, xs, ts, batch_size: int, folder: str, scores=True) -> float:
    out = os.path.join(folder, "bench.zarr")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    xa.explain_dataset(
        method, xs, ts, out=out, batch_size=batch_size, progress=False, scores=scores
    )
    return len(xs) / (time.perf_counter() - start)


def _bare_rate(method, xs, ts, batch_size: int) -> float:
    """The strongest plain loop: NumPy batches straight into the jitted, vmapped
    method, every batch dispatched before waiting once at the end."""
    f = eqx.filter_jit(eqx.filter_vmap(method))
    pad = -len(xs) % batch_size
    start = time.perf_counter()
    outs = []
    for i in range(0, len(xs), batch_size):
        xb, tb = xs[i : i + batch_size], ts[i : i + batch_size]
        if len(xb) < batch_size:  # the same padding the runner does
            xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
            tb = np.concatenate([tb, np.repeat(tb[-1:], pad, 0)])
        outs.append(f(xb, tb))
    jax.block_until_ready(outs)
    return len(xs) / (time.perf_counter() - start)


def _captum_rate(model, name, xs, ts, batch_size: int, n_steps: int) -> float:
    import torch
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    from eqx_attr.torch_twins import to_torch

    twin = to_torch(model).eval()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(xs), torch.from_numpy(ts)),
        batch_size=batch_size,
    )
    if name.startswith("ig"):
        ig = IntegratedGradients(twin)

        def explain(xb, tb):
            return ig.attribute(xb, target=tb, n_steps=n_steps, method="gausslegendre")
    else:
        lgc = LayerGradCam(twin, twin.conv2)

        def explain(xb, tb):
            h = lgc.attribute(xb, target=tb, relu_attributions=True)
            return LayerAttribution.interpolate(h, (28, 28), "bilinear")

    start = time.perf_counter()
    for xb, tb in loader:
        explain(xb, tb.long()).detach().numpy()
    return len(xs) / (time.perf_counter() - start)


def _best(fn, repeats: int) -> float:
    fn()  # compile / warm up
    return max(fn() for _ in range(repeats))


def _interleaved(fns: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """name -> (best rate, least CPU seconds of this process), over `repeats`
    rounds that run every function in turn, so that a change of the machine's
    load hits them alike."""
    for fn in fns.values():
        fn()  # compile / warm up
    rates: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            cpu = time.process_time()
            rates[name].append(fn())
            cpus[name].append(time.process_time() - cpu)
    return {k: (max(rates[k]), min(cpus[k])) for k in fns}


def _devices_child(args) -> None:
    model, xs, ts, methods = _setup(args.n, args.n_steps)
    method = methods[f"ig-gl-{args.n_steps}"]
    with tempfile.TemporaryDirectory() as folder:
        rate = _best(lambda: _runner_rate(method, xs, ts, args.child_batch, folder), 1)
    print(json.dumps({"devices": len(jax.local_devices()), "rate": rate}))


def _devices_rows(args) -> list[str]:
    rows = []
    for n_dev in (1, 2, 4):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
        cmd = [sys.executable, __file__, "--devices-child", "--n", str(args.n),
               "--n-steps", str(args.n_steps), "--child-batch", "64"]  # fmt: skip
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        info = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(f"| {info['devices']} | 64 | {info['rate']:.1f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=256, help="rows for IG")
    p.add_argument("--n-cam", type=int, default=4096, help="rows for Grad-CAM")
    p.add_argument("--n-steps", type=int, default=8)
    p.add_argument("--batch-sizes", default="16,64")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--captum-repeats", type=int, default=2)
    p.add_argument("--devices-child", action="store_true")
    p.add_argument("--child-batch", type=int, default=64)
    p.add_argument("--skip-devices", action="store_true")
    p.add_argument("--methods", default="ig,gradcam", help="which rows to run")
    args = p.parse_args()
    if args.devices_child:
        return _devices_child(args)
    model, xs_all, ts_all, methods = _setup(max(args.n, args.n_cam), args.n_steps)
    load = os.getloadavg()
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{jax.default_backend()} ({os.cpu_count()} cores), jax {jax.__version__}; "
        f"load average at start {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (the "
        "machine was shared with other jobs: numbers are noisy, ratios in the same "
        "process are the meaningful part). SmallCNN (width 16) on "
        f"MNIST digits 28x28 ({args.n} rows for IG, {args.n_cam} for Grad-CAM: "
        "Grad-CAM is so cheap that fewer rows would time only the fixed cost of "
        f"setting up a store), predicted targets; best of {args.repeats} rounds "
        "after a warm-up, each round running bare, runner and runner with "
        f"scores=False in turn (Captum: best of {args.captum_repeats}); CPU time: "
        "the least user+system seconds of this process over the rounds, all "
        "threads counted. Command: `python benchmarks/bench_runner.py "
        + " ".join(sys.argv[1:])
        + "`.",
        "",
        "| method | batch | runner ex/s | runner, scores=False | bare jit+vmap ex/s "
        "| runner / bare (scores=False) | CPU time bare / runner (scores=False) "
        "| Captum (DataLoader) ex/s | runner / Captum |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name, method in methods.items():
            if not any(name.startswith(m) for m in args.methods.split(",")):
                continue
            n = args.n if name.startswith("ig") else args.n_cam
            xs, ts = xs_all[:n], ts_all[:n]
            for bs in map(int, args.batch_sizes.split(",")):
                r = _interleaved(
                    {
                        "bare": lambda: _bare_rate(method, xs, ts, bs),
                        "run": lambda: _runner_rate(method, xs, ts, bs, folder),
                        "lean": lambda: _runner_rate(method, xs, ts, bs, folder, False),
                    },
                    args.repeats,
                )
                (bare, bare_cpu), (run, run_cpu), (lean, lean_cpu) = (
                    r["bare"], r["run"], r["lean"]
                )  # fmt: skip
                cap = _best(
                    lambda: _captum_rate(model, name, xs, ts, bs, args.n_steps),
                    args.captum_repeats,
                )
                lines.append(
                    f"| {name} | {bs} | {run:.1f} | {lean:.1f} | {bare:.1f} | "
                    f"{run / bare:.2f} ({lean / bare:.2f}) | "
                    f"{bare_cpu / run_cpu:.2f} ({bare_cpu / lean_cpu:.2f}) | "
                    f"{cap:.1f} | {run / cap:.2f} |"
                )
                print(lines[-1], flush=True)
        fixed = _best(lambda: _runner_rate(method, xs[:1], ts[:1], 1, folder), 3)
        lines += [
            "",
            f"Fixed cost of one call (a 1-row store: fingerprints, creating the "
            f"store, metadata): {1e3 / fixed:.0f} ms.",
        ]
    if not args.skip_devices:
        lines += [
            "",
            f"Forced CPU devices (`ig-gl-{args.n_steps}`, runner, one subprocess "
            "each; the virtual devices share the same cores, so more of them add "
            "no compute):",
            "",
            "| devices | batch | runner ex/s |",
            "| ---: | ---: | ---: |",
            *_devices_rows(args),
        ]
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    suffix = (
        "" if args.methods == "ig,gradcam" else "-" + args.methods.replace(",", "-")
    )
    path = os.path.join(
        ROOT, "benchmarks", "results", f"runner-{jax.default_backend()}{suffix}.md"
    )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
