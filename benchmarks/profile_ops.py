"""Where XLA:CPU spends a gradient method's time: per-kernel times of one program.

Builds SmallCNN (width 16, random weights) or a zoo model (`--model resnet18
--side 224`), compiles the batched input gradient
that every gradient method runs (or, with `--forward`, the forward pass alone),
runs it under JAX's profiler and prints each kernel's mean time per call, largest
first, with the HLO of the kernels that matter (fusions named `ynn_fusion*` run
in YNNPACK; the others are XLA's own loops).

    python benchmarks/profile_ops.py --batch 200
    python benchmarks/profile_ops.py --batch 200 --forward
    python benchmarks/profile_ops.py --model resnet18 --side 224 --batch 1
    python benchmarks/profile_ops.py --model resnet18 --batch 1 --weights-as-arguments
    python benchmarks/profile_ops.py --model vgg16 --batch 1 --feature-ablation 32

By default the model's weights are compile-time constants of the program, as in
`jax.jit(lambda x: method(x, t))`; with `--weights-as-arguments` they are passed
to it, as the library's compiled calls (`eqx.filter_jit` over the method) and
runners do: XLA:CPU then re-lays out every convolution kernel on every call.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_attr as xa
from eqx_attr._attribution import scalar_function


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--forward", action="store_true", help="the forward pass alone")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--model", default="small_cnn", help="a zoo architecture")
    p.add_argument("--side", type=int, default=None, help="input side (zoo default)")
    p.add_argument("--n-classes", type=int, default=None, help="(zoo default)")
    p.add_argument(
        "--weights-as-arguments",
        action="store_true",
        help="pass the model's arrays to the program (as the library's compiled "
        "calls and runners do) instead of closing over them as constants",
    )
    p.add_argument(
        "--feature-ablation",
        type=int,
        default=None,
        metavar="PATCH",
        help="profile FeatureAblation over PATCHxPATCH squares instead",
    )
    args = p.parse_args()

    spec = xa.models.model_spec(args.model)
    kw = {"width": 16} if args.model == "small_cnn" else {}
    kw |= {"n_classes": args.n_classes} if args.n_classes else {}
    model = spec.factory(key=jax.random.key(0), **kw)
    shape = spec.input_shape(model, args.side)
    xs = jax.random.uniform(jax.random.key(1), (args.batch, *shape))
    ts = jnp.arange(args.batch) % 10
    params, static = eqx.partition(model, eqx.is_array)

    def program(params, xs, ts):
        m = eqx.combine(params, static)
        if args.feature_ablation:
            patch = (args.feature_ablation,) * 2
            mask = xa.masks.grid(xs.shape[-2:], patch)
            return jax.vmap(xa.FeatureAblation(m, mask=mask))(xs, ts)
        one = lambda x, t: scalar_function(m, x, t)(x)
        return jax.vmap(one if args.forward else jax.grad(one))(xs, ts)

    if args.weights_as_arguments:
        jitted = jax.jit(program)
        fn = lambda xs, ts: jitted(params, xs, ts)
        compiled = jitted.lower(params, xs, ts).compile()
    else:
        fn = jax.jit(lambda xs, ts: program(params, xs, ts))
        compiled = fn.lower(xs, ts).compile()
    for _ in range(3):
        jax.block_until_ready(fn(xs, ts))
    start = time.perf_counter()
    for _ in range(args.calls):
        jax.block_until_ready(fn(xs, ts))
    wall = (time.perf_counter() - start) / args.calls * 1000

    folder = tempfile.mkdtemp(prefix="eqx_attr_profile_")
    jax.profiler.start_trace(folder, create_perfetto_trace=True)
    for _ in range(args.calls):
        jax.block_until_ready(fn(xs, ts))
    jax.profiler.stop_trace()
    (path,) = glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True)
    events = json.load(gzip.open(path))["traceEvents"]

    total: collections.Counter = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and "dur" in e and re.fullmatch(r"[\w.]+", name):
            total[name] += e["dur"]  # XLA's kernels (not Python or runtime spans)
    hlo = {}
    for line in compiled.as_text().splitlines():
        m = re.match(r"\s*(?:ROOT )?%(\S+) = (.*)", line)
        if m:
            hlo[m.group(1)] = re.sub(r", metadata=\{.*|, backend_config=.*", "", m[2])
    what = "forward" if args.forward else "input gradient"
    what = "FeatureAblation" if args.feature_ablation else what
    print(f"{args.model} {what}, {args.batch} x {shape}: ms per call, by kernel")
    print(f"{wall:8.2f}  (wall time, unprofiled calls)")
    print(f"{sum(total.values()) / args.calls / 1000:8.2f}  (all kernels)")
    moved = sum(us for name, us in total.items() if name.startswith("transpose"))
    print(f"{moved / args.calls / 1000:8.2f}  (of which transposes)")
    for name, us in total.most_common(args.top):
        ms = us / args.calls / 1000
        print(f"{ms:8.2f}  {name:28s} {hlo.get(name, '')[:110]}")


if __name__ == "__main__":
    main()
