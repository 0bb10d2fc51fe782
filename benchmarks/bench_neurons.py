"""Benchmark: many neurons of a layer in ONE vmapped call against Captum's loop.

`NeuronGradient` and `NeuronIntegratedGradients` of every channel of SmallCNN's
`conv2` block at one spatial position (64 neurons, one example): ours is one
`eqx.filter_vmap` over the neuron index, compiled once (the forward pass is
shared, see tests/test_neuron_attr.py); Captum's is a loop over
`neuron_selector`, one forward and backward pass per neuron (its API takes one
neuron per call). Both sides run in this process on identical weights (torch
twin), with the same number of threads; the report gives median times, the ratio
ours / Captum (< 1: we are faster) and the largest absolute difference.

    python benchmarks/bench_neurons.py [--threads 2] [--repeats 5] [--quick]

Writes `benchmarks/results/neurons-cpu.md` (not with `--quick`).
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
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n-steps", type=int, default=16, help="IG steps")
    p.add_argument(
        "--quick", action="store_true", help="8 neurons, 1 repeat, no report file"
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return p.parse_args()


ARGS = _parse()
if ARGS.threads == 1:
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    )

import captum  # noqa: E402
import captum.attr  # noqa: E402
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
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


def main() -> None:
    repeats = 1 if ARGS.quick else ARGS.repeats
    model = xa.models.SmallCNN(key=jax.random.key(0))
    where = lambda m: m.conv2  # noqa: E731
    twin = to_torch(model)
    layer = twin.get_submodule("conv2")
    x = jax.random.uniform(jax.random.key(1), (1, 28, 28))
    xt = torch.tensor(np.asarray(x))[None]
    n_channels = 8 if ARGS.quick else 64
    neurons = [(c, 3, 3) for c in range(n_channels)]
    ns = jnp.asarray(neurons, jnp.int32)
    steps = ARGS.n_steps

    # Model and input are arguments of the compiled call (not constants that XLA
    # could fold at compile time), as when a user jits a method.
    cases = {
        "NeuronGradient": (
            lambda m, z, n: xa.NeuronGradient(m, where, n)(z),
            lambda sel: captum.attr.NeuronGradient(twin, layer).attribute(
                xt, neuron_selector=sel
            ),
        ),
        "NeuronIntegratedGradients": (
            lambda m, z, n: xa.NeuronIntegratedGradients(
                m, where, n, n_steps=steps, chunk_size=None
            )(z),
            lambda sel: captum.attr.NeuronIntegratedGradients(twin, layer).attribute(
                xt, neuron_selector=sel, n_steps=steps
            ),
        ),
    }
    rows = []
    for name, (one, theirs) in cases.items():
        ours = eqx.filter_jit(
            lambda m, z, ns, one=one: eqx.filter_vmap(lambda n: one(m, z, n))(ns)
        )
        t = time.perf_counter()
        got = np.asarray(jax.block_until_ready(ours(model, x, ns)))
        compile_s = time.perf_counter() - t

        def peer(theirs=theirs):
            return np.stack([theirs(sel).detach().numpy()[0] for sel in neurons])

        want = peer()
        diff = float(np.abs(got - want).max())
        scale = float(np.abs(want).max())
        t_ours = _time(
            lambda ours=ours: jax.block_until_ready(ours(model, x, ns)), repeats
        )
        t_peer = _time(peer, repeats)
        rows.append((name, n_channels, t_ours, t_peer, compile_s, diff, scale))
        print(rows[-1], flush=True)

    lines = [
        "# Neuron methods: all neurons in one vmap vs Captum's loop (CPU)",
        "",
        f"SmallCNN, one 1x28x28 example, neurons `(c, 3, 3)` of `conv2` for every "
        f"channel c; IG with {steps} steps. Threads: torch {ARGS.threads}, XLA all "
        f"{os.cpu_count()} cores, median of {repeats} runs, jax {jax.__version__}, "
        f"torch {torch.__version__}, captum {captum.__version__}. The machine was "
        "shared with other jobs while this ran: ratios are more reliable than "
        "absolute times.",
        "",
        "| method | neurons | ours (s) | Captum loop (s) | ours / Captum | "
        "compile (s) | max abs diff | max abs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, k, t_o, t_p, comp, diff, scale in rows:
        lines.append(
            f"| {name} | {k} | {t_o:.4f} | {t_p:.4f} | {t_o / t_p:.3g}x | "
            f"{comp:.1f} | {diff:.1e} | {scale:.1e} |"
        )
    lines += [
        "",
        "Command: `python benchmarks/bench_neurons.py " + " ".join(sys.argv[1:]) + "`",
    ]
    print("\n".join(lines))
    if not ARGS.quick:
        out = Path(ARGS.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "neurons-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
