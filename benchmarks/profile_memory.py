"""What a gradient program keeps in memory: XLA's planned peak, and what is alive
at it.

Builds a zoo model (random weights), compiles the batched input gradient that
every gradient method runs (as `profile_ops.py` does), and prints

- what JAX keeps for the backward pass (`saved_residuals`), grouped by shape and
  by the operation that made it, for ONE example;
- XLA's planned temporary memory and, from its buffer assignment and live
  ranges (`--xla_dump_to`), the buffers alive at the peak, grouped by shape and
  by the fusion that writes them.

    python benchmarks/profile_memory.py --model vit_base --batch 8
    python benchmarks/profile_memory.py --model vit_base --batch 8 --plain

`--plain` differentiates the model as written (`jax.grad` of the logit), without
the library's derivative pass (`_engine/_fast_derivatives.py`), for comparison.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import sys
import tempfile

import numpy as np


def _residuals(fn, x) -> None:
    from jax._src.ad_checkpoint import saved_residuals

    kept: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for aval, why in saved_residuals(fn, x):
        origin = why.split(" from ")[0] if why else "?"
        key = (tuple(aval.shape), origin)
        kept[key] += int(np.prod(aval.shape)) * aval.dtype.itemsize
        count[key] += 1
    total = sum(kept.values())
    print(f"kept for the backward pass, one example: {total / 2**20:.1f} MiB")
    for (shape, origin), size in kept.most_common(12):
        print(
            f"  {size / 2**20:8.1f} MiB  {count[shape, origin]:3d} x {shape} {origin}"
        )


def _peak(folder: str) -> None:
    """The live set at the peak of the program's temporary allocation."""
    names = [f for f in os.listdir(folder) if f.endswith("-live-range.txt")]
    # The largest program in the dump is the gradient (the rest: random draws).
    base = max(names, key=lambda f: os.path.getsize(os.path.join(folder, f)))
    base = base.removesuffix("-live-range.txt")
    live = open(os.path.join(folder, base + "-live-range.txt")).read()
    ranges = {}
    for m in re.finditer(r"^\s+(\S+?)(?:\{\})?:(\d+)-(\d+)$", live, re.M):
        ranges[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    text = open(os.path.join(folder, base + "-buffer-assignment.txt")).read()
    temp = text[text.index("preallocated-temp") :]
    temp = temp[: temp.find("\nallocation") if "\nallocation" in temp else None]
    values = {
        m.group(1): (int(m.group(2)), m.group(3))
        for m in re.finditer(
            r"value: <\d+ (\S+) @\d+> \(size=(\d+),offset=\d+\): (\S+)", temp
        )
    }
    steps = max(end for _, end in ranges.values()) + 1
    usage = np.zeros(steps, np.int64)
    for name, (size, _) in values.items():
        if name in ranges:
            start, end = ranges[name]
            usage[start : end + 1] += size
    at = int(usage.argmax())
    print(f"alive at XLA's peak (step {at} of {steps}): {usage[at] / 2**20:.1f} MiB")
    alive: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    for name, (size, shape) in values.items():
        start, end = ranges.get(name, (steps, -1))
        if start <= at <= end:
            key = (shape.split("{")[0], re.sub(r"\.\d+$", "", name))
            alive[key] += size
            count[key] += 1
    for (shape, op), size in alive.most_common(15):
        print(f"  {size / 2**20:8.1f} MiB  {count[shape, op]:3d} x {shape:24s} {op}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vit_base", help="a zoo architecture")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--side", type=int, default=None, help="input side (zoo default)")
    p.add_argument("--plain", action="store_true", help="without the derivative pass")
    args = p.parse_args()

    folder = tempfile.mkdtemp(prefix="eqx_attr_memory_")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_dump_to={folder} --xla_dump_hlo_pass_re=NONE"
    )
    try:
        _profile(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _profile(args: argparse.Namespace, folder: str) -> None:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import eqx_attr as xa
    from eqx_attr._attribution import scalar_function

    spec = xa.models.model_spec(args.model)
    model = spec.factory(key=jax.random.key(0))
    shape = spec.input_shape(model, args.side)
    xs = jax.random.uniform(jax.random.key(1), (args.batch, *shape))
    ts = jnp.arange(args.batch) % 10
    params, static = eqx.partition(model, eqx.is_array)

    def objective(m, x, t):
        if args.plain:
            return lambda z: m(z)[t]
        return scalar_function(m, x, t)

    def program(params, xs, ts):
        m = eqx.combine(params, static)
        return jax.vmap(lambda x, t: jax.grad(objective(m, x, t))(x))(xs, ts)

    what = "as written" if args.plain else "through the derivative pass"
    print(f"{args.model}, input gradient of {args.batch} x {shape}, {what}")
    _residuals(objective(model, xs[0], 3), xs[0])
    compiled = jax.jit(program).lower(params, xs, ts).compile()
    memory = compiled.memory_analysis()
    if memory is None:
        sys.exit("this backend reports no memory analysis")
    print(
        f"XLA plans {memory.temp_size_in_bytes / 2**20:.1f} MiB of temporaries "
        f"(arguments {memory.argument_size_in_bytes / 2**20:.1f} MiB)"
    )
    _peak(folder)


if __name__ == "__main__":
    main()
