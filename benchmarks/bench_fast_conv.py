"""The convolution rewrite of the gradient methods, off and on, side by side.

Every gradient method differentiates the model through one pass
(`eqx_attr/_engine/_fast_derivatives.py`) that replaces max pools and, on CPU,
thin convolutions and the convolutions of loop bodies (`_fast_conv.py`). This
script builds each method twice on SmallCNN (width 16, random weights), once with
the convolutions left to XLA (`convs=False`, max pools still replaced) and once as
shipped, and times the two in interleaved rounds in one process, so machine noise
hits both alike. It also reports XLA's planned temporary memory of chunked IG as
`n_steps` grows. Writes `benchmarks/results/fast-conv-cpu.md`.

    python benchmarks/bench_fast_conv.py --rounds 10
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import eqx_attr as xa
from eqx_attr import _attribution
from eqx_attr._engine import _fast_derivatives
from eqx_attr._layers import _tap as _layer_tap
from eqx_attr.models import SmallCNN

ROOT = pathlib.Path(__file__).resolve().parents[1]
_SHIPPED = _fast_derivatives.fast_derivatives


def _use(convs: bool) -> None:
    # Both call sites of the pass, built with or without the convolution rewrite.
    fn = functools.partial(_SHIPPED, convs=convs)
    _attribution.fast_derivatives = fn
    _layer_tap.fast_derivatives = fn


def _cases(model) -> dict:
    ig = lambda **kw: xa.IntegratedGradients(model, **kw)
    sg = xa.SmoothGrad(xa.Gradients(model), n_samples=25)
    return {
        "gradients": (xa.Gradients(model), 64),
        "gradients-x-input": (xa.GradientsXInput(model), 64),
        "smoothgrad-25": (lambda x, t: sg(x, t, key=jax.random.key(0)), 64),
        "gradcam (conv2)": (xa.GradCAM(model, lambda m: m.conv2, resize=None), 64),
        "gradcam (conv1)": (xa.GradCAM(model, lambda m: m.conv1, resize=None), 64),
        "ig-gl-50, batch 16": (ig(n_steps=50), 16),
        "ig-gl-50, batch 64": (ig(n_steps=50), 64),
        "ig-gl-32, chunk_size=16 (scan)": (ig(n_steps=32, chunk_size=16), 8),
        "ig-gl-32, chunk_size=8 (scan)": (ig(n_steps=32, chunk_size=8), 8),
        "ig-gl-32, chunk_size=16, unrolled": (
            ig(n_steps=32, chunk_size=16, unroll_chunks=True),
            8,
        ),
        "ig-gl-32 (unchunked)": (ig(n_steps=32), 8),
    }


def _build(model, convs: bool) -> dict:
    _use(convs)
    built = {}
    for name, (method, batch) in _cases(model).items():
        xs = jax.random.uniform(jax.random.key(1), (batch, 1, 28, 28))
        ts = jnp.arange(batch) % 10
        fn = jax.jit(jax.vmap(lambda x, t, m=method: m(x, t)))
        out = jax.block_until_ready(fn(xs, ts))  # compiled with this setting
        built[name] = (fn, xs, ts, out)
    _use(True)
    return built


def planned_memory(model, steps=(32, 128, 512)) -> list[tuple]:
    xs = jax.random.uniform(jax.random.key(1), (8, 1, 28, 28))
    ts = jnp.arange(8)
    rows = []
    for convs in (False, True):
        _use(convs)
        for n in steps:
            row = [convs, n]
            for kw in (
                {"chunk_size": 8},
                {"chunk_size": 16},
                {"chunk_size": 16, "unroll_chunks": True},
                {},
            ):
                ig = xa.IntegratedGradients(model, n_steps=n, **kw)
                fn = jax.jit(jax.vmap(lambda x, t, m=ig: m(x, t)))
                memory = fn.lower(xs, ts).compile().memory_analysis()
                row.append(memory.temp_size_in_bytes / 2**20)
            rows.append(tuple(row))
    _use(True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/fast-conv-cpu.md"))
    args = p.parse_args()
    model = SmallCNN(key=jax.random.key(0))
    off, on = _build(model, False), _build(model, True)
    times = {(k, s): [] for k in off for s in ("off", "on")}
    for _ in range(args.rounds):
        for side, built in (("off", off), ("on", on)):
            for name, (fn, xs, ts, _) in built.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(xs, ts))
                times[(name, side)].append(time.perf_counter() - t0)
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, jax "
        f"{jax.__version__}, {jax.default_backend()}, {args.rounds} interleaved "
        "rounds. Command: `python benchmarks/bench_fast_conv.py "
        f"--rounds {args.rounds}`. SmallCNN, random weights.",
        "",
        "| method | batch | XLA's convolutions (median / min) | rewritten "
        "(median / min) | ratio of medians | max abs diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (_, xs, _, out_off) in off.items():
        a, b = times[(name, "off")], times[(name, "on")]
        diff = float(jnp.max(jnp.abs(out_off - on[name][3])))
        lines.append(
            f"| {name} | {len(xs)} | {np.median(a) * 1e3:.1f} / "
            f"{min(a) * 1e3:.1f} ms | {np.median(b) * 1e3:.1f} / {min(b) * 1e3:.1f} "
            f"ms | {np.median(b) / np.median(a):.2f} | {diff:.1e} |"
        )
    lines += [
        "",
        "XLA's planned temporary memory of IG, 8 digits:",
        "",
        "| convolutions | n_steps | scan, chunk 8 | scan, chunk 16 | unrolled, "
        "chunk 16 | unchunked |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for convs, n, *mib in planned_memory(model):
        cells = " | ".join(f"{m:.1f} MiB" for m in mib)
        lines.append(f"| {'rewritten' if convs else 'XLA'} | {n} | {cells} |")
    text = "\n".join(lines) + "\n"
    print(text)
    pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
