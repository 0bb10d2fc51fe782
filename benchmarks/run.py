"""eqx_attr against Captum on identical weights: speed, memory and agreement.

For every scenario the eqx_attr model and its PyTorch twin (`eqx_attr.torch_twins`,
same weights) are built, our method (one jitted, vmapped call over the batch) and
Captum's run interleaved in this process, and the script records our steady-state
time (median after a warm-up), our first call (compile + run), Captum's time, the
ratio, the peak memory of one call of each, and the largest absolute difference
between the two attributions.

```
python benchmarks/run.py                    # default set, a few minutes on CPU
python benchmarks/run.py --quick            # smoke run: tiny sizes
python benchmarks/run.py --models mlp,cnn --methods ig,all-targets --repeats 9
python benchmarks/run.py --full             # the spec's sizes everywhere (long)
```

Results go to `benchmarks/results/<device>.json` and `.md` (see `--out`).

The `--methods`, by module:

- `_cases_gradient.py`: `grad` (`Gradients` vs `Saliency(abs=False)`), `gxi`
  (`GradientsXInput` vs `InputXGradient`), `smoothgrad` (`SmoothGrad` vs
  `NoiseTunnel(Saliency)`), `guided` (`GuidedBackprop`), `deconv`
  (`Deconvolution`), `all-targets` (every class in one vmap);
- `_cases_ig.py`: `ig` (`IntegratedGradients`), and the chunk study `ig-chunk`
  and `ig-overhead`;
- `_cases_cam.py`: `gradcam` (`GradCAM` vs `LayerGradCam`), `guided-gradcam`
  (`GuidedGradCAM` vs `GuidedGradCam`), `shared` (three methods in one call).

`_scenarios.py` holds the sizes and builds the models, twins and data;
`_targets.py` evaluates the issues' targets on the rows (and `--rerender`s a
report); `_harness.py` times, measures and writes the reports.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as H  # noqa: E402
from _cases_cam import case_gradcam, case_guided_gradcam, case_shared  # noqa: E402
from _cases_gradient import (  # noqa: E402
    case_all_targets,
    case_grad,
    case_gxi,
    case_smoothgrad,
    simple,
)
from _cases_ig import case_ig, case_ig_chunk, case_ig_overhead  # noqa: E402
from _scenarios import (  # noqa: E402
    ALL_METHODS as ALL_METHODS,
    ALL_MODELS as ALL_MODELS,
    DEFAULT as DEFAULT,
    FULL as FULL,
    QUICK as QUICK,
    Bench as Bench,
    Sizes as Sizes,
    build_bench as build_bench,
)
from _targets import evaluate_targets as evaluate_targets, rerender  # noqa: E402

CASES: dict[str, Callable[[Bench, Sizes], list[H.Case]]] = {
    "grad": case_grad,
    "gxi": case_gxi,
    "ig": case_ig,
    "smoothgrad": case_smoothgrad,
    "guided": simple("GuidedBackprop", "GuidedBackprop"),
    "deconv": simple("Deconvolution", "Deconvolution"),
    "gradcam": case_gradcam,
    "guided-gradcam": case_guided_gradcam,
    "all-targets": case_all_targets,
    "shared": case_shared,
    "ig-chunk": case_ig_chunk,
    "ig-overhead": case_ig_overhead,
}

# Which methods apply to which model by default (ViT: no ReLU modules, no conv map).
APPLICABLE = {
    "mlp": set(ALL_METHODS) - {"gradcam", "guided-gradcam", "shared"},
    "cnn": set(ALL_METHODS),
    "resnet18": {"grad", "ig", "gradcam", "guided-gradcam", "shared"},
    "vit_tiny": {"grad", "ig", "gradcam"},
}


# ---------------------------------------------------------------------------------
# Driver


def run(
    models: list[str],
    methods: list[str],
    sizes: Sizes,
    settings: H.Settings,
    log: Callable[[str], None] = print,
) -> list[H.Result]:
    import torch

    results = []
    for name in models:
        bench = build_bench(name, sizes, settings.device)
        for method in methods:
            if method not in APPLICABLE.get(name, set()):
                continue
            for case in CASES[method](bench, sizes):
                results.append(H.run_case(case, settings, log))
        del bench
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return results


def _csv(value: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad:
        raise SystemExit(f"{flag}: unknown {bad}; choose from {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rerender:
        return rerender(args.rerender)
    if args.quick and args.full:
        raise SystemExit("--quick and --full exclude each other")
    sizes = QUICK if args.quick else FULL if args.full else DEFAULT
    if args.batch_size is not None:
        sizes = replace(sizes, small_batch=args.batch_size, large_batch=args.batch_size)
    models = _csv(args.models, ALL_MODELS, "--models")
    methods = _csv(args.methods, ALL_METHODS, "--methods")
    threads = _setup_backends(args)
    settings = H.Settings(
        device=args.device,
        repeats=1 if args.quick else args.repeats,
        budget_s=args.budget,
        memory=not args.no_memory,
    )
    meta = H.machine_info(args.device)
    results = run(models, methods, sizes, settings)
    targets = evaluate_targets(results, args.device, threads)
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", args.device
    )
    json_path, md_path = H.write_reports(results, meta, targets, out)
    print(H.markdown(results, meta, targets))
    print(f"wrote {json_path} and {md_path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ALL_MODELS))
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--batch-size", type=int, default=None, help="override batches")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per side")
    p.add_argument(
        "--budget", type=float, default=5.0, help="seconds per case before repeats stop"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for both sides (default: all cores); 1 is steadier on a "
        "loaded machine",
    )
    p.add_argument("--out", default=None, help="output path without extension")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    p.add_argument("--full", action="store_true", help="the spec's sizes everywhere")
    p.add_argument("--no-memory", action="store_true", help="skip peak memory")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="enable JAX's persistent compilation cache here (first calls then "
        "measure cache loads, not compiles)",
    )
    p.add_argument(
        "--rerender",
        default=None,
        metavar="JSON",
        help="re-evaluate the targets and rewrite the Markdown of an earlier run",
    )
    return p


def _setup_backends(args: argparse.Namespace) -> int:
    """Threads, device and compilation cache for both sides; the thread count."""
    threads = args.threads or os.cpu_count() or 1
    if args.threads == 1:
        # Must be set before the XLA CPU client starts (it starts lazily). The flag
        # alone does not stop XLA:CPU from running independent operations on
        # several threads at once, so the process is also pinned to one core:
        # both sides then really have one.
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        )
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch

    if args.device == "gpu":
        if jax.default_backend() != "gpu" or not torch.cuda.is_available():
            raise SystemExit(
                "--device gpu needs a CUDA jaxlib and a CUDA torch; this machine has "
                f"jax backend {jax.default_backend()!r}, torch.cuda.is_available()="
                f"{torch.cuda.is_available()}."
            )
    else:
        jax.config.update("jax_platforms", "cpu")
    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # Same core count on both sides: XLA's CPU client uses every core.
    torch.set_num_threads(threads)
    H.steady_malloc()
    return threads


if __name__ == "__main__":
    raise SystemExit(main())
