"""Benchmark: DeepLift and DeepLiftShap (ours, jitted) against Captum, same weights.

Both sides run in this process on identical weights (torch twins), interleaved,
with the same number of threads; the report gives median times and the ratio
ours / Captum (< 1: we are faster), and the largest absolute difference between
the two outputs (Captum loses the Rescale rule of a ReLU followed directly by a
max pool, see tests/test_deeplift.py, so SmallCNN differs by design).

    python benchmarks/bench_rules.py [--threads 2] [--repeats 5] [--models ...]

Writes `benchmarks/results/rules-cpu.md` (`rules-cpu-extra.md` for other models).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--baselines", type=int, default=8, help="DeepLiftShap baselines")
    p.add_argument(
        "--models", default="mlp,smallcnn", help="comma-separated: mlp,smallcnn,resnet"
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return p.parse_args()


ARGS = _parse()
if ARGS.threads == 1:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    )

import captum.attr  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import eqx_attr as xa  # noqa: E402
from eqx_attr.torch_twins import to_torch  # noqa: E402

torch.set_num_threads(ARGS.threads)
warnings.filterwarnings("ignore")


def _time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _case(name, model, shape, n_classes, batch, shap=True):
    key = jax.random.key(0)
    xs = jax.random.uniform(jax.random.key(1), (batch, *shape))
    ts = jax.random.randint(jax.random.key(2), (batch,), 0, n_classes)
    b = 0.1 * jax.random.uniform(jax.random.key(3), shape)
    bs = jax.random.uniform(jax.random.key(4), (ARGS.baselines, *shape))
    twin = to_torch(model)
    xt, tt = torch.tensor(np.asarray(xs)), [int(t) for t in ts]
    bt, bst = torch.tensor(np.asarray(b))[None], torch.tensor(np.asarray(bs))
    del key
    rows = []

    dl = eqx.filter_jit(eqx.filter_vmap(xa.DeepLift(model, baseline=b)))
    shap = xa.DeepLiftShap(model, baseline=xa.baselines.Custom(bs, draws=True))
    dls = eqx.filter_jit(eqx.filter_vmap(shap))
    pairs = [
        (
            "DeepLift",
            lambda: jax.block_until_ready(dl(xs, ts)),
            lambda: captum.attr.DeepLift(twin).attribute(xt, bt, target=tt),
        ),
        (
            f"DeepLiftShap ({ARGS.baselines} baselines)",
            lambda: jax.block_until_ready(dls(xs, ts)),
            lambda: captum.attr.DeepLiftShap(twin).attribute(xt, bst, target=tt),
        ),
    ]
    for method, ours, peer in pairs if shap else pairs[:1]:
        t0 = time.perf_counter()
        a = ours()  # compile
        compile_s = time.perf_counter() - t0
        p = peer()
        diff = float(np.max(np.abs(np.asarray(a) - p.detach().numpy())))
        t_ours = _time(ours, ARGS.repeats)
        t_peer = _time(peer, ARGS.repeats)
        rows.append((name, method, batch, t_ours, t_peer, compile_s, diff))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    key = jax.random.key(0)
    rows = []
    models = ARGS.models.split(",")
    if "mlp" in models:
        rows += _case("MLP", xa.models.MLP(key=key), (1, 28, 28), 10, ARGS.batch)
    if "smallcnn" in models:
        net = xa.models.SmallCNN(key=key)
        rows += _case("SmallCNN", net, (1, 28, 28), 10, ARGS.batch)
    if "resnet" in models:  # DeepLift only: DeepLiftShap is 8x the work
        net = xa.models.resnet18(n_classes=10, key=key)
        rows += _case("ResNet-18 224x224", net, (3, 224, 224), 10, 8, shap=False)
    lines = [
        "# Rule-based methods vs Captum (CPU)",
        "",
        f"Threads: torch {ARGS.threads}, XLA all {os.cpu_count()} cores, median of "
        f"{ARGS.repeats} runs, "
        f"jax {jax.__version__}, torch {torch.__version__}, captum "
        f"{captum.__version__}. The machine was shared with other jobs while this "
        "ran: ratios are more reliable than absolute times.",
        "",
        "| model | method | batch | ours (s) | Captum (s) | ours / Captum | "
        "compile (s) | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, method, batch, t_o, t_p, comp, diff in rows:
        lines.append(
            f"| {name} | {method} | {batch} | {t_o:.4f} | {t_p:.4f} | "
            f"{t_o / t_p:.3g}x | {comp:.1f} | {diff:.1e} |"
        )
    lines += [
        "",
        "SmallCNN differs from Captum by design: Captum drops the Rescale rule of "
        "a ReLU directly followed by a max pool (not complete); ours is complete.",
        "",
        "Command: `python benchmarks/bench_rules.py " + " ".join(sys.argv[1:]) + "`",
    ]
    out = Path(ARGS.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "rules-cpu.md" if ARGS.models == "mlp,smallcnn" else "rules-cpu-extra.md"
    (out / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
