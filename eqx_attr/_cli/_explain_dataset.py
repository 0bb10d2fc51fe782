"""The `explain-dataset` subcommand of the command line.

Hooked into `python -m eqx_attr` (`eqx-attr`) by the main CLI with
`add_parser(subparsers)` and, for `args.command == "explain-dataset"`, `run(args)`.
The work itself is the runner's [`eqx_attr.explain_dataset`][]; this module only
reads the flags, the data and the weights.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np

from ._explain import CLIError, build_context, resolve_method

COMMAND = "explain-dataset"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `explain-dataset` to an `argparse` subparsers object; return its parser."""
    p = subparsers.add_parser(
        COMMAND,
        help="explain a whole data set into a resumable Zarr store",
        description="Explain every example of a data set with one method, on every "
        "local device (and every host), streamed to a Zarr store; a killed run "
        "started again computes only the rows not yet done.",
    )
    p.add_argument("--model", required=True, help="zoo architecture, e.g. small_cnn")
    p.add_argument("--weights", required=True, metavar="FILE", help=".safetensors/.npz")
    p.add_argument(
        "--data",
        required=True,
        metavar="mnist|FILE.npy|STORE.zarr",
        help="mnist (the held-out digits), a .npy file (memory-mapped) or a Zarr "
        "array (or a group with an array named 'xs')",
    )
    p.add_argument("--method", required=True, help="a method name (see `methods`)")
    p.add_argument("--out", required=True, metavar="STORE.zarr")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="rows per chunk of the store, a multiple of --batch-size (the unit "
        "of writes, of resuming and of sharing among hosts; default: ~2 MiB)",
    )
    p.add_argument(
        "--targets",
        default="predicted",
        metavar="predicted|labels|FILE.npy",
        help="class per row: the model's arg-max (default), the data set's labels "
        "(mnist), or a .npy file of integers",
    )
    p.add_argument("--layer", default=None, help="CAM layer path, e.g. conv2")
    p.add_argument("--n-steps", type=int, default=None)
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of random methods")
    p.add_argument("--overwrite", action="store_true", help="replace a foreign store")
    p.add_argument("--no-resume", action="store_true", help="start the store over")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    return p


def init_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` from the flags, or from JAX's environment.

    Without flags, `JAX_COORDINATOR_ADDRESS` (and a cluster JAX detects, such as
    SLURM) starts a multi-host run. Must run before the first JAX computation.
    """
    flags = (args.coordinator, args.num_processes, args.process_id)
    if all(f is None for f in flags) and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return
    if any(f is not None for f in flags) and None in flags:
        raise CLIError(
            "--coordinator, --num-processes and --process-id go together; pass all "
            "three (or none, and set JAX_COORDINATOR_ADDRESS)"
        )
    import jax

    # CPU processes need a collectives backend for the barriers; harmless elsewhere.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )


def _load_data(spec: str) -> tuple[Any, Any]:
    """(xs, labels or None) from `mnist`, a .npy file or a Zarr store."""
    if spec == "mnist":
        from ..datasets import mnist

        data = mnist()
        return data.x_test, data.y_test
    if not os.path.exists(spec):
        raise CLIError(f"--data: no such file or store: {spec}")
    if spec.endswith(".npy"):
        return np.load(spec, mmap_mode="r"), None
    if os.path.isdir(spec):
        from .._runner._store import zarr_module

        node = zarr_module().open(spec, mode="r")
        if hasattr(node, "shape"):
            return node, None
        if "xs" in node:
            return node["xs"], None
        raise CLIError(f"--data {spec}: a Zarr group without an array named 'xs'")
    raise CLIError(f"--data {spec}: expected mnist, a .npy file or a .zarr store")


def _targets(spec: str, labels: Any, n: int) -> Any:
    if spec == "predicted":
        return "predicted"
    if spec == "labels":
        if labels is None:
            raise CLIError("--targets labels: only --data mnist has labels")
        return labels
    if not spec.endswith(".npy") or not os.path.isfile(spec):
        raise CLIError(
            f"--targets {spec}: expected predicted, labels or an existing .npy file"
        )
    return np.load(spec)


def _build_method(
    args: argparse.Namespace, model: Any, shape: tuple[int, ...]
) -> tuple[Any, Any]:
    """The method, built from the registry exactly as `explain` builds it."""
    import jax

    from ..models._zoo import MODEL_SPECS

    entry = resolve_method(args.method)
    options = argparse.Namespace(
        layer=args.layer,
        n_steps=args.n_steps,
        n_samples=args.n_samples,
        stdev=None,
        chunk_size=args.chunk_size,
        cell=None,
    )
    ctx, _ = build_context(entry, MODEL_SPECS[args.model], model, options, None, shape)
    key = jax.random.key(args.seed) if entry.random else None
    return entry.build(ctx), key


def run(args: argparse.Namespace, out=print) -> int:
    """Run `explain-dataset` from parsed arguments; 0 on success, 2 on bad input."""
    try:
        if args.batch_size < 1:
            raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
        init_distributed(args)
        from .._runner._explain import explain_dataset
        from ..models import ARCHITECTURES, load_pretrained

        if args.model not in ARCHITECTURES:
            raise CLIError(
                f"unknown model {args.model!r}; choose one of "
                + ", ".join(ARCHITECTURES)
            )
        if not os.path.isfile(args.weights):
            raise CLIError(f"weights file not found: {args.weights}")
        model = load_pretrained(args.weights, args.model)
        xs, labels = _load_data(args.data)
        targets = _targets(args.targets, labels, len(xs))
        method, key = _build_method(args, model, tuple(xs.shape[1:]))
        group = explain_dataset(
            method,
            xs,
            targets,
            out=args.out,
            batch_size=args.batch_size,
            chunk_rows=args.chunk_rows,
            key=key,
            resume=not args.no_resume,
            progress=not args.no_progress,
            overwrite=args.overwrite,
        )
        meta = dict(group.attrs["eqx_attr"])
        out(
            f"{args.out}: {group['attributions'].shape[0]} rows, "
            f"{meta.get('rows_computed', 0)} computed in this run, "
            f"{meta.get('throughput_ex_per_s')} examples/s"
        )
        return 0
    except Exception as e:
        if not isinstance(e, (CLIError, OSError, ValueError, TypeError)):
            raise
        text = " ".join(str(e).split())
        text = text if len(text) <= 600 else text[:597] + "..."
        prefix = "" if isinstance(e, CLIError) else f"{type(e).__name__}: "
        print(f"error: {prefix}{text}", file=sys.stderr)
        return 2
