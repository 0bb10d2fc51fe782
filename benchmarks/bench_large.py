"""ImageNet-size rows: the zoo's ResNet-18/50, VGG-16 and ViT-B/16 at 224x224
against Captum and Zennit on identical weights, each side in its own process.

A row is (model, method, batch). For each row the parent writes the weights once
(a torchvision/timm-keyed safetensors file, with random batch-norm statistics) and
the batch (`.npz`), then starts two workers, ours and the peer's, one after the
other. Each worker loads the same files, calls the method once (the first call:
ours compiles), then `--repeats` more times (steady state: the median), and
writes its output; the parent reads each worker's peak resident memory from the
kernel (`VmHWM`; the peer's less the resident pages of the JAX import that our
twins' module brings, which a Captum user would not load) and compares the outputs.

    python benchmarks/bench_large.py                      # everything (hours)
    python benchmarks/bench_large.py --models resnet18 --batches 1,8
    python benchmarks/bench_large.py --quick              # 64x64, small widths
    python benchmarks/bench_large.py --random 12          # random configurations

`make bench-large` runs the whole set; `docs/benchmarks.md` reports the rows run
so far. Writes `benchmarks/results/large-cpu.md` and `.json` (`--out`), after every
row: an interrupted run keeps the rows it finished.

`--random N` draws N configurations the defaults were never tuned on
(`_large_configs.py`) and runs the methods whose chunking the memory budget
chooses (IG and SmoothGrad unless `--methods` says otherwise, batch 4) on each;
the report gives the median and the worst ratio over all of them.
Methods without a peer for a model (DeepLIFT, LRP and Guided Grad-CAM on ViT:
Captum and Zennit have no rules for attention, LayerNorm and GELU) are skipped.
Score-CAM (CNNs) is compared with its formula written in torch, attention rollout
(ViT) with torch forward hooks (`bench_transformer.py`): neither has a peer in
Captum.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from _large_configs import MODELS, named_configs, random_configs  # noqa: E402
from _large_workers import PATCH, SAMPLES, STEPS, worker  # noqa: E402

METHODS = ("gradients", "ig", "smoothgrad", "deeplift", "gradient_shap", "gradcam",
           "guided_gradcam", "occlusion", "feature_ablation", "lrp", "scorecam",
           "rollout")  # fmt: skip
# No peer rules for these on a ViT (and Score-CAM's reference masks pixels with
# a feature map, which a ViT's tokens are not).
NOT_FOR_VIT = {"deeplift", "lrp", "guided_gradcam", "scorecam"}
ONLY_VIT = {"rollout"}
NEEDS_LAYER = {"gradcam", "guided_gradcam", "scorecam"}  # not for an MLP


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batches", default="1,8")
    p.add_argument("--side", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="64x64, narrow models")
    p.add_argument("--random", type=int, default=0, help="N random configurations")
    p.add_argument("--seed", type=int, default=0, help="of the random configurations")
    p.add_argument(
        "--rerender",
        default=None,
        help="comma-separated .json files of earlier runs: one report of their rows",
    )
    p.add_argument(
        "--compile-cache",
        action="store_true",
        help="also time our first call with a cold, then a warm compilation cache",
    )
    p.add_argument("--out", default=None)
    p.add_argument("--worker", choices=("ours", "peer"), help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    a = p.parse_args()
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]
    a.models, a.methods = split(a.models), split(a.methods)
    if a.random:
        a.methods = a.methods if "--methods" in sys.argv else ["ig", "smoothgrad"]
        a.batches = a.batches if "--batches" in sys.argv else "4"
    a.batches = [int(b) for b in split(a.batches)]
    for name, known in (("models", MODELS), ("methods", METHODS)):
        bad = set(getattr(a, name)) - set(known)
        if bad:
            p.error(f"--{name}: unknown {sorted(bad)}; choose from {list(known)}")
    if a.quick:
        a.side, a.repeats = 64, 1
    return a


def spawn(
    a: argparse.Namespace, side: str, job_path: pathlib.Path, repeats: int | None = None
) -> int:
    """Run one worker (it reads its own peak, `VmHWM`: a forked child's
    `ru_maxrss` would start from the parent's); its return code."""
    env = dict(os.environ)
    env.setdefault(
        "XLA_FLAGS",
        f"--xla_cpu_multi_thread_eigen={'true' if a.threads > 1 else 'false'} "
        f"intra_op_parallelism_threads={a.threads}",
    )
    repeats = a.repeats if repeats is None else repeats
    cmd = [sys.executable, __file__, "--worker", side, "--job", str(job_path),
           "--repeats", str(repeats), "--threads", str(a.threads)]  # fmt: skip
    return subprocess.run(cmd, env=env).returncode


def failure(rc: int) -> str:
    """What a worker's return code says, for the report."""
    if rc == -9:  # what Linux's out-of-memory killer sends
        return "killed (SIGKILL: out of memory)"
    return f"killed by signal {-rc}" if rc < 0 else f"failed (exit {rc})"


def prepare(cfg: dict, tmp: pathlib.Path) -> dict:
    """Write a configuration's weights once (torch keys, random batch-norm
    statistics); what the workers need to rebuild it."""
    import jax
    from bench_lrp import random_batch_norms
    from safetensors.numpy import save_file

    from eqx_attr.models import model_spec
    from eqx_attr.torch_twins import numpy_state_dict, to_torch

    spec = model_spec(cfg["arch"])
    model = spec.factory(key=jax.random.key(0), **cfg["kw"])
    if cfg["arch"].startswith("resnet"):
        model = random_batch_norms(model, jax.random.key(4))
    path = tmp / f"{cfg['name']}.safetensors"
    save_file(numpy_state_dict(to_torch(model)), str(path))
    config = spec.config(model)
    shape = spec.input_shape(model, None if spec.fixed_input else cfg["side"])
    load_kw = {k: v for k, v in cfg["kw"].items() if k == "in_shape"}
    return {"arch": cfg["arch"], "weights": str(path), "twin_class": spec.cls.__name__,
            "config": config, "n_classes": config["n_classes"], "shape": shape,
            "load_kw": load_kw}  # fmt: skip


def batch_file(tmp: pathlib.Path, name: str, b: int, shape, n_classes: int):
    import numpy as np

    rng = np.random.default_rng(1)
    xs = rng.standard_normal((b, *shape), dtype=np.float32)
    ts = rng.integers(0, n_classes, b).astype(np.int32)
    path = tmp / f"{name}-{b}.npz"
    np.savez(path, xs=xs, ts=ts)
    return str(path)


def row(a, tmp, cfg: dict, info: dict, method: str, b: int) -> dict:
    import numpy as np

    name = cfg["name"]
    data = batch_file(tmp, name, b, info["shape"], info["n_classes"])
    job = dict(info, method=method, data=data)
    stem = tmp / f"{name}-{method}-{b}"
    for side in ("ours", "peer"):
        job[f"{side}_out"], job[f"{side}_json"] = (
            f"{stem}-{side}.npy",
            f"{stem}-{side}.json",
        )
    job_path = stem.with_suffix(".job.json")
    job_path.write_text(json.dumps(job))
    result = {"model": cfg["label"], "method": method, "batch": b}
    for side in ("ours", "peer"):
        rc = spawn(a, side, job_path)
        if rc:  # the row is kept, marked (e.g. a side that runs out of memory)
            result[f"{side}_failed"] = failure(rc)
            continue
        res = json.loads(pathlib.Path(job[f"{side}_json"]).read_text())
        result |= {f"{side}_{k}": v for k, v in res.items()}
    if "ours_failed" in result or "peer_failed" in result:
        print(json.dumps(result), flush=True)
        return result
    if a.compile_cache:  # ours twice more with one fresh cache folder: cold, warm
        job["cache"], job["ours_out"] = str(stem) + "-xla", str(stem) + "-cached.npy"
        job["ours_json"] = str(stem) + "-cached.json"
        job_path.write_text(json.dumps(job))
        for run in ("cold", "warm"):
            if rc := spawn(a, "ours", job_path, repeats=0):
                raise RuntimeError(f"cached run {failure(rc)}: {job_path}")
            res = json.loads(pathlib.Path(job["ours_json"]).read_text())
            result[f"ours_first_{run}_cache_s"] = res["first_s"]
    ours, peer = np.load(job["ours_out"]), np.load(job["peer_out"])
    if "ours_deltas" in result:  # max over examples of |sum(map) - delta| / |delta|
        delta = np.asarray(result["ours_deltas"])
        for side, out in (("ours", ours), ("peer", peer)):
            sums = out.reshape(len(delta), -1).astype(np.float64).sum(1)
            result[f"{side}_completeness"] = float(
                np.max(np.abs(sums - delta) / np.abs(delta))
            )
    ours, peer = ours.reshape(-1), peer.reshape(-1)
    random = method in ("smoothgrad", "gradient_shap")
    scale = float(np.abs(peer).max())
    result["rel_diff"] = (
        None if random else float(np.abs(ours - peer).max()) / (scale or 1)
    )
    result["peer_all_zero"] = scale == 0.0  # (a ReLU'd CAM can be)
    result["ratio"] = result["ours_steady_s"] / result["peer_steady_s"]
    result["rss_ratio"] = result["ours_peak_mib"] / result["peer_peak_mib"]
    print(json.dumps({k: v for k, v in result.items()}), flush=True)
    return result


def report(a, rows: list[dict]) -> list[str]:
    import jax
    import torch

    peer = lambda m: {
        "lrp": "Zennit EpsilonPlusFlat",
        "scorecam": "formula (torch)",
        "rollout": "torch hooks",
    }.get(m, "Captum")
    title = f"ImageNet-size rows, {a.side}x{a.side}"
    if a.random:
        title = f"{a.random} random configurations (seed {a.seed})"
    lines = [
        f"# {title}, {a.threads} threads",
        "",
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__}, torch {torch.__version__}; random weights (random "
        f"batch-norm statistics); each side in its own process; steady state = "
        f"median of {a.repeats} calls after the first; IG {STEPS} steps "
        f"(Gauss-Legendre, both), SmoothGrad/GradientShap {SAMPLES} samples, "
        f"Occlusion/FeatureAblation {PATCH}x{PATCH} patches. Command: "
        f"`python benchmarks/bench_large.py {' '.join(sys.argv[1:])}`.",
        "",
        "| model | method | batch | ours s | peer s | ours/peer | first call ours / "
        "peer s | peak RSS ours / peer MiB | RSS ratio | max rel. diff | peer |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    done = [r for r in rows if "ratio" in r]
    for r in rows:
        if "ratio" not in r:  # a side did not finish
            side = lambda k: (
                r.get(f"{k}_failed")
                or (
                    f"{r[f'{k}_steady_s']:.3f} (first {r[f'{k}_first_s']:.1f}, peak "
                    f"{r[f'{k}_peak_mib']:.0f} MiB)"
                )
            )
            cells = [r["model"], r["method"], r["batch"], side("ours"), side("peer")]
            lines.append("| " + " | ".join(map(str, cells)) + " | | | | | | |")
            continue
        diff = "n/a (own draws)" if r["rel_diff"] is None else f"{r['rel_diff']:.1e}"
        if r.get("peer_all_zero"):
            diff += (
                " (both maps all zero)" if r["rel_diff"] == 0 else " (peer all zero)"
            )
        cells = [
            r["model"], r["method"], r["batch"], f"{r['ours_steady_s']:.3f}",
            f"{r['peer_steady_s']:.3f}", f"{r['ratio']:.2f}",
            f"{r['ours_first_s']:.1f} / {r['peer_first_s']:.1f}",
            f"{r['ours_peak_mib']:.0f} / {r['peer_peak_mib']:.0f}",
            f"{r['rss_ratio']:.2f}", diff, peer(r["method"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    cached = [r for r in done if "ours_first_warm_cache_s" in r]
    if cached:
        lines += ["", "Our first call with `xa.enable_compile_cache()`, in a new "
                  "process each: cold cache (compiles, writes) / warm cache (loads)."
                  "", "", "| model | method | batch | no cache s | cold s | warm s |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {r['model']} | {r['method']} | {r['batch']} | {r['ours_first_s']:.1f}"
            f" | {r['ours_first_cold_cache_s']:.1f} | "
            f"{r['ours_first_warm_cache_s']:.1f} |"
            for r in cached
        ]
    complete = [r for r in done if "ours_completeness" in r]
    if complete:
        lines += ["", "Completeness, max over the batch of |sum(map) - (f(x) - f(0))| "
                  "/ |f(x) - f(0)|:", "", "| model | method | batch | ours | peer |",
                  "|---|---|---|---|---|"]  # fmt: skip
        lines += [
            f"| {r['model']} | {r['method']} | {r['batch']} | "
            f"{r['ours_completeness']:.1e} | {r['peer_completeness']:.1e} |"
            for r in complete
        ]
    for key, what in (("ratio", "Time"), ("rss_ratio", "Peak RSS")):
        values = [r[key] for r in done]
        if values:
            lines.append(
                f"\n{what} ratio ours / peer over {len(values)} rows: median "
                f"{statistics.median(values):.2f}, worst {max(values):.2f}."
            )
    if len(done) < len(rows):
        lines.append(
            f"\n{len(rows) - len(done)} row(s) where a side did not finish are left "
            "out of the ratios."
        )
    return lines


def main() -> None:
    a = parse()
    if a.worker:
        return worker(a)
    rows = []
    out = pathlib.Path(a.out or ROOT / "benchmarks" / "results" / "large-cpu.md")
    if a.rerender:  # one report from the rows of earlier runs
        for path in a.rerender.split(","):
            rows += json.loads(pathlib.Path(path).read_text())
        out.write_text("\n".join(report(a, rows)) + "\n")
        out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        return print(f"wrote {out}")
    with tempfile.TemporaryDirectory(prefix="bench_large_") as t:
        tmp = pathlib.Path(t)
        configs = random_configs(a.random, a.seed) if a.random else None
        for cfg in configs or named_configs(a.models, a.side, a.quick):
            info = prepare(cfg, tmp)
            for method in a.methods:
                vit = cfg["arch"].startswith("vit")
                if (vit and method in NOT_FOR_VIT) or (not vit and method in ONLY_VIT):
                    continue
                if cfg["arch"] == "mlp" and method in NEEDS_LAYER:
                    continue
                for b in a.batches:
                    rows.append(row(a, tmp, cfg, info, method, b))
                    # Written after every row: an interrupted run keeps its rows.
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text("\n".join(report(a, rows)) + "\n")
                    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
