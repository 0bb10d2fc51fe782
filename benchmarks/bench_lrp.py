"""LRP (EpsilonPlusFlat) against Zennit and Captum's LRP, on identical weights.

Both sides run in this process on the same weights and the same batch; each call
is timed after a warm-up (our first call compiles), interleaved, and the median
is reported with the ratio ours / theirs (below 1: we are faster). Zennit's
EpsilonPlusFlat is compared exactly (max |difference| reported); Captum's LRP
has no Flat rule, so it is timed with its default rules (Epsilon on every
layer) against our `rule=Epsilon(1e-9)` (Captum's epsilon), also compared.

ResNet-18 (`--models resnet18`: 3x224x224, batch 8, random batch-norm
statistics): Zennit runs with its `ResNetCanonizer` (batch norms merged, skip
sums split by `Norm`). Captum's LRP only splits a skip sum written as its
`Addition_Module`, so its twin's blocks add `out + shortcut` through one; its
batch norms get the Epsilon rule unmerged, which with bias-free convolutions
gives the merged Epsilon relevances (up to the stabiliser).

    python benchmarks/bench_lrp.py [--quick] [--threads 2] [--repeats 10]
    python benchmarks/bench_lrp.py --models resnet18 --batch 8 --repeats 2

Writes `benchmarks/results/lrp-cpu.md` (`lrp-cpu-resnet18.md` for ResNet-18).
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
    p.add_argument("--batch", type=int, default=None, help="64 (MLP/CNN), 8 (ResNet)")
    p.add_argument(
        "--models",
        default="mlp,smallcnn",
        help="comma-separated: mlp, smallcnn, resnet18",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - {"mlp", "smallcnn", "resnet18"}
    if unknown:
        p.error(f"--models: unknown {sorted(unknown)}; use mlp, smallcnn, resnet18")
    resnet = args.models == ["resnet18"]
    if args.batch is None:
        args.batch = 8 if resnet else 64
    if args.out is None:
        name = "lrp-cpu-resnet18.md" if resnet else "lrp-cpu.md"
        args.out = str(ROOT / "benchmarks" / "results" / name)
    return args


def random_batch_norms(model, key):
    """Random statistics for every frozen batch norm (fresh ones are identities)."""
    import equinox as eqx
    import jax

    from eqx_attr.models import FrozenBatchNorm2d

    is_bn = lambda n: isinstance(n, FrozenBatchNorm2d)
    find = lambda m: [
        n for n in jax.tree_util.tree_leaves(m, is_leaf=is_bn) if is_bn(n)
    ]
    new = []
    for bn, k in zip(find(model), jax.random.split(key, len(find(model))), strict=True):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        c = bn.weight.shape
        new.append(
            eqx.tree_at(
                lambda b: (b.weight, b.bias, b.running_mean, b.running_var),
                bn,
                (
                    jax.random.uniform(k1, c, minval=0.5, maxval=1.5),
                    0.1 * jax.random.normal(k2, c),
                    0.1 * jax.random.normal(k3, c),
                    jax.random.uniform(k4, c, minval=0.5, maxval=1.5),
                ),
            )
        )
    return eqx.tree_at(find, model, new)


def resnet_twins(model):
    """Zennit's twin (`block.relu` aliased, as its canonizer expects) and Captum's
    (each block's skip sum through Captum's `Addition_Module`)."""
    from captum.attr._utils.custom_modules import Addition_Module

    from eqx_attr.torch_twins import BasicBlock, to_torch

    class CaptumBlock(BasicBlock):
        def forward(self, x):
            out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
            shortcut = x if self.downsample is None else self.downsample(x)
            return self.relu2(self.add(out, shortcut))

    zennit_twin, captum_twin = to_torch(model).eval(), to_torch(model).eval()
    for module in zennit_twin.modules():
        if isinstance(module, BasicBlock):
            module.relu = module.relu1
    for module in captum_twin.modules():
        if isinstance(module, BasicBlock):
            module.__class__ = CaptumBlock
            module.add = Addition_Module()
    return zennit_twin, captum_twin


def main() -> None:
    args = parse()
    os.environ.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen={'true' if args.threads > 1 else 'false'} "
        f"intra_op_parallelism_threads={args.threads}",
    )
    import torch
    from _torchvision_stub import install

    install()  # before Zennit and Captum are imported
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    batch = 4 if args.quick else args.batch
    repeats = 2 if args.quick else args.repeats
    models = build_models(args)
    rows = []
    for name, (make_twins, model, shape, n_classes) in models.items():
        data = inputs(batch, shape, n_classes)
        for method, peer, f_ours, f_peer in pairs(name, make_twins, model, data):
            rows.append(compare(name, method, peer, f_ours, f_peer, repeats))
    lines = report(args, models, rows, batch, repeats, load0)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def pooled_cnn(twin):
    """SmallCNN's twin with its mean as a module, so Zennit and Captum see it."""
    import torch

    class PooledCNN(torch.nn.Module):
        def __init__(self, twin):
            super().__init__()
            self.conv1, self.conv2, self.fc = twin.conv1, twin.conv2, twin.fc
            self.pool = torch.nn.AdaptiveAvgPool2d(1)

        def forward(self, x):
            return self.fc(self.pool(self.conv2(self.conv1(x))).flatten(1))

    return PooledCNN(twin)


def build_models(args: argparse.Namespace) -> dict:
    """Name -> (make twins, model, input shape, classes) for `--models`."""
    import jax

    import eqx_attr as xa
    from eqx_attr.torch_twins import to_torch

    width_mlp, width_cnn = (16, 4) if args.quick else (256, 16)
    key = jax.random.key(0)
    models = {}
    if "mlp" in args.models:
        mlp = xa.models.MLP(width=width_mlp, key=key)
        models["MLP"] = (lambda m: (to_torch(m),) * 2, mlp, (1, 28, 28), 10)
    if "smallcnn" in args.models:
        cnn = xa.models.SmallCNN(width=width_cnn, key=key)
        models["SmallCNN"] = (
            lambda m: (pooled_cnn(to_torch(m)),) * 2,
            cnn,
            (1, 28, 28),
            10,
        )
    if "resnet18" in args.models:
        side = 64 if args.quick else 224
        r18 = xa.models.resnet18(width=8 if args.quick else 64, key=key)
        r18 = random_batch_norms(r18, jax.random.key(4))
        models["ResNet-18"] = (resnet_twins, r18, (3, side, side), 1000)
    return models


def inputs(batch: int, shape: tuple, n_classes: int) -> tuple:
    """`(xs, ts, xt, tt)`: a random batch and targets, in JAX and in torch."""
    import jax
    import numpy as np
    import torch

    xs = jax.random.uniform(jax.random.key(1), (batch, *shape))
    ts = jax.random.randint(jax.random.key(2), (batch,), 0, n_classes)
    xt = torch.tensor(np.asarray(xs))
    tt = torch.tensor(np.asarray(ts), dtype=torch.long)
    return xs, ts, xt, tt


def pairs(name: str, make_twins, model, data: tuple) -> list[tuple]:
    """`(method, peer, ours, theirs)`: EpsilonPlusFlat against Zennit, Epsilon
    against Captum's LRP; `ours` and `theirs` are zero-argument calls."""
    import captum.attr
    import equinox as eqx
    import jax
    import torch
    import zennit.composites as zcomp
    from zennit.torchvision import ResNetCanonizer

    import eqx_attr as xa

    xs, ts, xt, tt = data
    zennit_twin, captum_twin = (t.eval() for t in make_twins(model))
    canonizers = [ResNetCanonizer()] if name == "ResNet-18" else None

    def ours(method):
        f = eqx.filter_jit(eqx.filter_vmap(method))
        return lambda: jax.block_until_ready(f(xs, ts))

    comp = zcomp.EpsilonPlusFlat(canonizers=canonizers)

    def zennit():
        x = xt.clone().requires_grad_(True)
        with comp.context(zennit_twin) as m:
            out = m(x)
            mask = torch.nn.functional.one_hot(tt, out.shape[1]).to(out)
            (g,) = torch.autograd.grad(out, x, grad_outputs=out * mask)
        return g

    lrp = captum.attr.LRP(captum_twin)
    return [
        ("EpsilonPlusFlat", "Zennit", ours(xa.LRP(model)), zennit),
        (
            "Epsilon (Captum's rules)",
            "Captum LRP",
            ours(xa.LRP(model, rule=xa.lrp.Epsilon(1e-9))),
            lambda: lrp.attribute(xt.clone(), target=tt),
        ),
    ]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def compare(name, method, peer, f_ours, f_peer, repeats) -> tuple:
    """Time both sides interleaved (after a warm-up) and compare their outputs."""
    import numpy as np

    first, a = timed(f_ours)
    _, b = timed(f_peer)
    t_ours, t_peer = [], []
    for _ in range(repeats):
        t_ours.append(timed(f_ours)[0])
        t_peer.append(timed(f_peer)[0])
    diff = float(np.abs(np.asarray(a) - b.detach().numpy()).max())
    ref = float(np.abs(b.detach().numpy()).max())
    mo, mp = statistics.median(t_ours), statistics.median(t_peer)
    print(f"{name:9s} {method:26s} vs {peer:10s} ours {mo * 1e3:8.1f} ms "
          f"peer {mp * 1e3:8.1f} ms ratio {mo / mp:5.2f} "
          f"max|diff| {diff:.1e} (max|ref| {ref:.1e}) "
          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    return (name, method, peer, mo, mp, mo / mp, first, diff, ref)


def report(args, models, rows, batch, repeats, load0) -> list[str]:
    """The Markdown report's lines."""
    lines = [
        "# LRP vs Zennit and Captum (CPU)",
        "",
        f"Batch {batch}, "
        + ", ".join(f"{n} {'x'.join(map(str, m[2]))}" for n, m in models.items())
        + f" inputs, {args.threads} threads (XLA and torch), "
        f"median of {repeats} interleaved calls after a warm-up; `ratio` = ours / "
        "theirs. Run on a machine shared with other jobs (loaded): ratios are more "
        "meaningful than absolute times. Load average (1 min) at the start "
        f"{load0:.1f}, at the end {os.getloadavg()[0]:.1f}.",
        "",
        f"Command: `python benchmarks/bench_lrp.py --threads {args.threads} "
        f"--repeats {repeats} --batch {batch} --models {','.join(args.models)}"
        f"{' --quick' if args.quick else ''}`",
        "",
        "| model | method | peer | ours (ms) | peer (ms) | ratio | first call "
        "(s, compile) | max abs diff | max abs ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if "ResNet-18" in models:
        header = len(lines) - 2
        lines[header:header] = [
            "ResNet-18: random batch-norm statistics; Zennit with its "
            "`ResNetCanonizer` (batch norms merged, skip sums by `Norm`); Captum's "
            "LRP supports the skip sums only through its `Addition_Module`, so its "
            "twin's blocks add through one (Epsilon rule there; its batch norms get "
            "Epsilon unmerged).",
            "",
        ]
    for name, method, peer, mo, mp, ratio, first, diff, ref in rows:
        lines.append(
            f"| {name} | {method} | {peer} | {mo * 1e3:.1f} | {mp * 1e3:.1f} | "
            f"{ratio:.2f} | {first:.1f} | {diff:.1e} | {ref:.1e} |"
        )
    return lines


if __name__ == "__main__":
    main()
