"""Smoke test of benchmarks/run.py: one tiny scenario per kind, one repeat.

Checks the report structure and that ours and Captum agree on identical weights;
no wall-clock assertions (the machine is shared).
"""

import importlib.util
import json
import os
import pathlib
import re
import sys
from dataclasses import replace

import captum  # noqa: F401  (the benchmarks compare with it: a dev dependency)
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_run():
    spec = importlib.util.spec_from_file_location(
        "bench_run", ROOT / "benchmarks" / "run.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: dataclasses look their module up while being created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_smoke(tmp_path):
    run = _load_run()
    H = run.H
    sizes = replace(run.QUICK, small_batch=2, ig_steps=(4,), cnn_ig_steps=(4,))
    settings = H.Settings(repeats=1, budget_s=0.0)
    lines: list[str] = []
    results = run.run(["mlp"], ["ig"], sizes, settings, log=lines.append)
    results += run.run(["cnn"], ["gradcam"], sizes, settings, log=lines.append)

    names = [r.name for r in results]
    assert names == ["mlp/ig-gl-4", "mlp/ig-trapezoid-4", "cnn/gradcam"]
    assert len(lines) == len(results)
    for r in results:
        assert r.repeats == 1 and len(r.ours_times_s) == 1
        assert r.ours_s > 0 and r.peer_s > 0 and r.ours_first_s > 0
        # Pure Python: the harness divides the same two floats (exact).
        assert r.ratio == pytest.approx(r.ours_s / r.peer_s)
        # A non-trivial reference, matched closely: the same function on both sides.
        # Already the policy's form, a floor relative to the reference's size: ours
        # (XLA) against Captum (torch), float32 with different kernels and orders.
        assert r.ref_max_abs > 1e-6
        assert r.max_abs_diff <= 2e-3 * r.ref_max_abs
        assert r.agree is True
        if H.rss_supported():
            assert r.ours_peak_mb is not None and r.ours_peak_mb >= 0
            assert r.peer_peak_mb is not None and r.peer_peak_mb >= 0

    targets = run.evaluate_targets(results, "cpu")
    assert {t["status"] for t in targets} <= {"met", "MISSED", "n/a"}
    agree = [t for t in targets if t["target"] == "attributions agree with Captum"]
    assert agree and agree[0]["status"] == "met"

    meta = H.machine_info("cpu")
    json_path, md_path = H.write_reports(results, meta, targets, str(tmp_path / "r"))
    data = json.loads(pathlib.Path(json_path).read_text())
    assert set(data) == {"meta", "results", "targets"}
    assert data["meta"]["cores"] >= 1 and data["meta"]["torch"]
    assert [r["name"] for r in data["results"]] == names
    for key in ("ours_s", "ours_first_s", "peer_s", "ratio", "max_abs_diff"):
        assert all(isinstance(r[key], float) for r in data["results"])
    md = pathlib.Path(md_path).read_text()
    header = [line for line in md.splitlines() if line.startswith("| scenario")][0]
    n_cols = header.count("|")
    rows = [line for line in md.splitlines() if line.startswith("| mlp/ig-gl-4 ")]
    assert len(rows) == 1 and rows[0].count("|") == n_cols
    assert "cnn/gradcam" in md and "DISAGREE" not in md


def test_disagreement_is_flagged():
    """A peer computing something else must be flagged, not averaged away."""
    import jax.numpy as jnp
    import numpy as np

    run = _load_run()
    H = run.H
    case = H.Case(
        "toy/off-by-one",
        "toy",
        "x + 1 vs x",
        3,
        lambda: jnp.arange(3.0) + 1.0,
        lambda: np.arange(3.0),
    )
    r = H.run_case(case, H.Settings(repeats=1, memory=False), log=lambda s: None)
    # Exact: small integers (2 - 1, and max |[0, 1, 2]|), whatever the rounding.
    assert r.max_abs_diff == pytest.approx(1.0)
    assert r.ref_max_abs == pytest.approx(2.0)
    assert r.agree is False
    md = H.markdown([r], H.machine_info("cpu"), [])
    assert "DISAGREE" in md


def test_every_registered_method_is_accounted_for():
    # The benchmarks read the method registry: each registered method names the
    # script that times it against a peer, or says why it is not timed.
    spec = importlib.util.spec_from_file_location(
        "bench_coverage", ROOT / "benchmarks" / "coverage.py"
    )
    assert spec is not None and spec.loader is not None
    coverage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(coverage)
    from eqx_attr._registry import methods

    names = [entry.name for entry in methods()]
    assert sorted(coverage.COVERAGE) == sorted(names)
    for name, (script, peer) in coverage.COVERAGE.items():
        assert peer, name
        if script is not None:
            source = (ROOT / "benchmarks" / script).read_text()
            entry = next(e for e in methods() if e.name == name)
            assert entry.cls.__name__ in source or name in source, (name, script)


def test_targets_of_the_cpu_issue():
    """The CPU targets read the right rows: thread-dependent conv limits, the
    unchunked memory bound, and chunked against unchunked time."""
    run = _load_run()
    H = run.H

    def row(name, ratio, kind="peer", chunk="auto", ours_s=1.0, peaks=(None, None)):
        model = name.split("/")[0]
        return H.Result(
            name=name, model=model, method=name, batch=16, kind=kind,
            peer_name="Captum", ours_s=ours_s, ours_min_s=ours_s, ours_first_s=1.0,
            ours_compile_s=1.0, peer_s=ours_s / ratio, peer_min_s=ours_s / ratio,
            peer_first_s=1.0, ratio=ratio, ratio_min=ratio, ours_peak_mb=peaks[0],
            peer_peak_mb=peaks[1], max_abs_diff=0.0, ref_max_abs=1.0, agree=True,
            repeats=1, ours_times_s=[ours_s], peer_times_s=[ours_s / ratio],
            extra={"n_steps": 32, "chunk_size": chunk},
        )  # fmt: skip

    results = [
        row("cnn/ig-gl-50", 0.9),
        row("cnn/ig-gl-50-unchunked", 0.95, chunk=None, peaks=(130.0, 100.0)),
        row("mlp/ig-gl-50", 0.65),
        row("cnn/gradients", 0.95),
        row("cnn/ig-gl-32-chunk8", 1.0, "memory", 8, ours_s=1.2),
        row("cnn/ig-gl-32-chunk16", 1.0, "memory", 16, ours_s=1.4),
        row("cnn/ig-gl-32-unchunked", 1.0, "memory", None, ours_s=1.0),
    ]

    def status(threads):
        return {
            t["target"].split(": ", 1)[-1]: t["status"]
            for t in run.evaluate_targets(results, "cpu", threads)
        }

    two, one = status(2), status(1)
    assert two["cnn/ig-gl-50, batch 16, <= 0.8x Captum"] == "MISSED"
    assert one["cnn/ig-gl-50, batch 16, <= 1.0x Captum"] == "met"
    assert two["mlp/ig-gl-50, batch 16, <= 0.7x Captum"] == "met"
    assert one["cnn/gradients, batch 16, <= 1.0x Captum"] == "met"
    assert not any("cnn/gradients" in t for t in two)  # only at one thread
    memory = [v for t, v in two.items() if "peak memory" in t]
    assert memory == ["MISSED"]  # 130 / 100 MiB; the memory rows have no peaks
    chunked = [
        (t["target"].split(":")[0], t["status"])
        for t in run.evaluate_targets(results, "cpu", 2)
        if "chunked conv" in t["target"]
    ]
    assert chunked == [
        ("cnn/ig-gl-32-chunk8", "met"), ("cnn/ig-gl-32-chunk16", "MISSED")
    ]  # fmt: skip


def test_large_benchmark_smoke(tmp_path):
    # `make bench-large`'s script end to end on one tiny row: both sides in their
    # own processes, the report and the JSON written, the outputs agreeing.
    import subprocess

    out = tmp_path / "large.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_large.py"), "--quick",
           "--models", "resnet18", "--methods", "gradients,ig", "--batches", "2",
           "--repeats", "0", "--out", str(out)]  # fmt: skip
    # XLA's default optimisations, as `make bench-large` runs: under the suite's
    # cheap-compile flags (tests/conftest.py: backend optimisation level 0 and
    # the classic emitters together), XLA:CPU computes this IG wrongly
    # (completeness 0.79 instead of 0.006), at HEAD before this test as well.
    isa = [f for f in os.environ.get("XLA_FLAGS", "").split() if "max_isa" in f]
    env = {**os.environ, "XLA_FLAGS": " ".join(isa)}
    subprocess.run(cmd, check=True, capture_output=True, timeout=600, env=env)
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["model"], r["method"], r["batch"]) for r in rows] == [
        ("resnet18", "gradients", 2),
        ("resnet18", "ig", 2),
    ]
    for r in rows:
        assert r["ours_peak_mib"] > 0 and r["peer_peak_mib"] > 0
        assert r["ratio"] == pytest.approx(r["ours_steady_s"] / r["peer_steady_s"])
        assert r["rel_diff"] <= 2e-3  # the same function on identical weights
    # IG is complete on both sides (32 Gauss-Legendre steps on a small ResNet).
    assert rows[1]["ours_completeness"] < 0.05
    text = out.read_text()
    assert "| resnet18 | ig | 2 |" in text and "Completeness" in text


def test_random_configurations_are_reproducible_and_varied():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _large_configs import random_configs

    a, b = random_configs(20, seed=3), random_configs(20, seed=3)
    assert a == b and a != random_configs(20, seed=4)
    assert len({c["arch"][:3] for c in a}) >= 4  # res, vgg, vit, mlp, sma(ll_cnn)
    assert len({c["side"] for c in a}) >= 3


def test_memory_profile_of_a_vit(tmp_path):
    # `benchmarks/profile_memory.py` end to end on ViT-Tiny, with and without the
    # derivative pass: it reports what JAX keeps and what is alive at XLA's peak,
    # and the pass (one kept array per GELU and softmax) plans less. XLA's default
    # optimisations, as the script is run (see the large smoke test).
    import subprocess

    isa = [f for f in os.environ.get("XLA_FLAGS", "").split() if "max_isa" in f]
    env = {**os.environ, "XLA_FLAGS": " ".join(isa)}
    script = str(ROOT / "benchmarks" / "profile_memory.py")
    planned = {}
    for extra in ([], ["--plain"]):
        cmd = [sys.executable, script, "--model", "vit_tiny", "--batch", "2", *extra]
        out = subprocess.run(
            cmd, check=True, capture_output=True, text=True, timeout=600, env=env
        ).stdout
        assert "kept for the backward pass" in out and "alive at XLA's peak" in out
        (mib,) = re.findall(r"XLA plans ([0-9.]+) MiB of temporaries", out)
        planned[bool(extra)] = float(mib)
    assert planned[False] < 0.8 * planned[True], planned
