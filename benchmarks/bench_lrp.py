"""LRP (EpsilonPlusFlat) against Zennit and Captum's LRP, on identical weights.

Both sides run in this process on the same weights and the same batch; each call
is timed after a warm-up (our first call compiles), interleaved, and the median
is reported with the ratio ours / theirs (below 1: we are faster). Zennit's
EpsilonPlusFlat is compared exactly (max |difference| reported); Captum's LRP
has no Flat rule, so it is timed with its default rules (Epsilon on every
layer) against our `rule=Epsilon(1e-9)` (Captum's epsilon), also compared.

    python benchmarks/bench_lrp.py [--quick] [--threads 2] [--repeats 10]

Writes `benchmarks/results/lrp-cpu.md`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lrp-cpu.md"))
    return p.parse_args()


def main() -> None:
    args = parse()
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
        f"intra_op_parallelism_threads={args.threads}",
    )
    import equinox as eqx
    import jax
    import numpy as np
    import torch
    from _torchvision_stub import install

    import eqx_attr as xa
    from eqx_attr.torch_twins import to_torch

    install()
    import captum.attr
    import zennit.composites as zcomp

    torch.set_num_threads(args.threads)
    batch = 4 if args.quick else args.batch
    repeats = 2 if args.quick else args.repeats
    width_mlp, width_cnn = (16, 4) if args.quick else (256, 16)

    class PooledCNN(torch.nn.Module):
        # SmallCNN's twin with its mean as a module, so Zennit and Captum see it.
        def __init__(self, twin):
            super().__init__()
            self.conv1, self.conv2, self.fc = twin.conv1, twin.conv2, twin.fc
            self.pool = torch.nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.fc(self.pool(self.conv2(self.conv1(x))).flatten(1))

    key = jax.random.key(0)
    models = {
        "MLP": (lambda m: to_torch(m), xa.models.MLP(width=width_mlp, key=key)),
        "SmallCNN": (
            lambda m: PooledCNN(to_torch(m)),
            xa.models.SmallCNN(width=width_cnn, key=key),
        ),
    }
    xs = jax.random.uniform(jax.random.key(1), (batch, 1, 28, 28))
    ts = jax.random.randint(jax.random.key(2), (batch,), 0, 10)
    xt = torch.tensor(np.asarray(xs))
    tt = torch.tensor(np.asarray(ts), dtype=torch.long)

    def ours(method):
        f = eqx.filter_jit(eqx.filter_vmap(method))
        return lambda: jax.block_until_ready(f(xs, ts))

    def zennit(twin):
        comp = zcomp.EpsilonPlusFlat()

        def run():
            x = xt.clone().requires_grad_(True)
            with comp.context(twin) as m:
                out = m(x)
                mask = torch.nn.functional.one_hot(tt, out.shape[1]).to(out)
                (g,) = torch.autograd.grad(out, x, grad_outputs=out * mask)
            return g

        return run

    def captum_lrp(twin):
        lrp = captum.attr.LRP(twin)
        return lambda: lrp.attribute(xt.clone(), target=tt)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    rows = []
    for name, (make_twin, model) in models.items():
        twin = make_twin(model).eval()
        pairs = [
            ("EpsilonPlusFlat", "Zennit", ours(xa.LRP(model)), zennit(twin)),
            (
                "Epsilon (Captum's rules)",
                "Captum LRP",
                ours(xa.LRP(model, rule=xa.lrp.Epsilon(1e-9))),
                captum_lrp(twin),
            ),
        ]
        for method, peer, f_ours, f_peer in pairs:
            first, a = timed(f_ours)
            _, b = timed(f_peer)
            t_ours, t_peer = [], []
            for _ in range(repeats):
                t_ours.append(timed(f_ours)[0])
                t_peer.append(timed(f_peer)[0])
            diff = float(np.abs(np.asarray(a) - b.detach().numpy()).max())
            ref = float(np.abs(b.detach().numpy()).max())
            mo, mp = statistics.median(t_ours), statistics.median(t_peer)
            rows.append((name, method, peer, mo, mp, mo / mp, first, diff, ref))
            print(f"{name:9s} {method:26s} vs {peer:10s} ours {mo * 1e3:8.1f} ms "
                  f"peer {mp * 1e3:8.1f} ms ratio {mo / mp:5.2f} "
                  f"max|diff| {diff:.1e} (max|ref| {ref:.1e})")  # fmt: skip

    lines = [
        "# LRP vs Zennit and Captum (CPU)",
        "",
        f"Batch {batch}, 1x28x28 inputs, {args.threads} threads (XLA and torch), "
        f"median of {repeats} interleaved calls after a warm-up; `ratio` = ours / "
        "theirs. Run on a machine shared with other jobs (loaded): ratios are more "
        "meaningful than absolute times.",
        "",
        f"Command: `python benchmarks/bench_lrp.py --threads {args.threads} "
        f"--repeats {repeats}{' --quick' if args.quick else ''}`",
        "",
        "| model | method | peer | ours (ms) | peer (ms) | ratio | first call "
        "(s, compile) | max abs diff | max abs ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, method, peer, mo, mp, ratio, first, diff, ref in rows:
        lines.append(
            f"| {name} | {method} | {peer} | {mo * 1e3:.1f} | {mp * 1e3:.1f} | "
            f"{ratio:.2f} | {first:.1f} | {diff:.1e} | {ref:.1e} |"
        )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
