"""Cold `import eqx_attr`: its cost on top of its four core dependencies.

Each sample is a fresh interpreter that imports jax, equinox, jaxtyping and numpy,
then `eqx_attr`, timing both steps; the report gives the best of `--repeats`
samples, the modules loaded and the optional dependencies that were (not) loaded.
Writes `benchmarks/results/import-cpu.md`.

    python benchmarks/bench_import.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPTIONAL = ("matplotlib", "PIL", "torch", "optax", "tqdm", "zarr", "safetensors")

_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import jax, equinox, jaxtyping, numpy
t1 = time.perf_counter()
n_core = len(sys.modules)
import eqx_attr
t2 = time.perf_counter()
print(json.dumps({"core_s": t1 - t0, "eqx_attr_s": t2 - t1, "n_core": n_core,
                  "n_all": len(sys.modules),
                  "optional": sorted(m for m in %r if m in sys.modules)}))
"""


def sample(root: pathlib.Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE % (OPTIONAL,)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--before",
        default=None,
        help="a checkout of an older eqx_attr to measure in alternation",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/import-cpu.md"))
    args = parser.parse_args(argv)
    trees = {"this checkout": ROOT}
    if args.before:
        trees["before"] = pathlib.Path(args.before)
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.repeats):  # alternate, so both see the same load
        for name, root in trees.items():
            runs[name].append(sample(root))
    rows = []
    for name, samples in runs.items():
        best = min(samples, key=lambda r: r["eqx_attr_s"])
        core = min(r["core_s"] for r in samples)
        optional = ", ".join(best["optional"]) or "none"
        rows.append(
            f"| {name} | {core:.3f} | {best['eqx_attr_s']:.3f} | {best['n_core']} "
            f"+ {best['n_all'] - best['n_core']} | {optional} |"
        )
    lines = [
        "# Cold `import eqx_attr` (CPU)",
        "",
        f"Best of {args.repeats} fresh interpreters each (`{' '.join(sys.argv)}`); "
        "the machine is shared with other jobs, so compare rows, not runs.",
        "",
        "| tree | jax, equinox, jaxtyping, numpy [s] | then eqx_attr [s] | "
        f"modules | optional deps loaded (of {', '.join(OPTIONAL)}) |",
        "| --- | ---: | ---: | ---: | --- |",
        *rows,
        "",
    ]
    pathlib.Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
