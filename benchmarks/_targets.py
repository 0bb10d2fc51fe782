"""The targets of the speed issues, evaluated on the measured rows, and the
re-rendering of an earlier run's report with them."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as H  # noqa: E402


def evaluate_targets(
    results: list[H.Result], device: str, threads: int | None = None
) -> list[dict]:
    """The targets of the speed issues, on the measured rows. `threads`: the
    threads both sides ran with (the conv targets are looser at one thread)."""
    speed = _gpu_speed(results) if device == "gpu" else _cpu_speed(results, threads)
    return [
        *speed,
        *_unchunked_memory(results),
        *_chunked_time(results),
        *_overhead(results),
        *_chunked_memory(results),
        *_every_row(results),
    ]


def _target(target: str, measured: str, ok: bool | None) -> dict:
    """One target's row of the report: met, MISSED, or n/a (`ok=None`)."""
    status = "n/a" if ok is None else ("met" if ok else "MISSED")
    return {"target": target, "measured": measured, "status": status}


def _gpu_speed(results: list[H.Result]) -> list[dict]:
    """On GPU: faster than Captum on every scenario."""
    peer = [r for r in results if r.kind == "peer"]
    worst = max(peer, key=lambda r: r.ratio, default=None)
    return [
        _target(
            "GPU: faster than Captum on every scenario",
            f"worst {worst.name} {worst.ratio:.2f}x" if worst else "no rows",
            None if worst is None else all(r.ratio < 1 for r in peer),
        )
    ]


def _cpu_speed(results: list[H.Result], threads: int | None) -> list[dict]:
    """On CPU: IG with the default chunks, gradients (one thread) and all targets
    at once, each against Captum."""
    out = []
    one = threads == 1
    where = "CPU, 1 thread" if one else f"CPU, {threads or 'all'} threads"
    for r in results:
        # IG with the default chunks against Captum's.
        if "/ig-" not in r.name or r.kind != "peer":
            continue
        if r.extra.get("chunk_size", "auto") != "auto":
            continue
        limit = {"mlp": 0.7, "cnn": 1.0 if one else 0.8}.get(r.model)
        goal = f"<= {limit}x Captum" if limit else "as close to Captum as possible"
        ok = None if limit is None else r.ratio <= limit
        out.append(
            _target(
                f"{where}: {r.name}, batch {r.batch}, {goal}", f"{r.ratio:.2f}x", ok
            )
        )
    for r in results:
        if one and r.name == "cnn/gradients":
            out.append(
                _target(
                    f"{where}: {r.name}, batch {r.batch}, <= 1.0x Captum",
                    f"{r.ratio:.2f}x",
                    r.ratio <= 1.0,
                )
            )
    for model, limit in (("mlp", 0.5), ("cnn", 1.0)):
        for r in results:
            if r.model == model and "-all-" in r.name:
                out.append(
                    _target(
                        f"CPU: {r.name} <= {limit}x Captum",
                        f"{r.ratio:.2f}x",
                        r.ratio <= limit,
                    )
                )
    return out


def _unchunked_memory(results: list[H.Result]) -> list[dict]:
    """Unchunked IG on the small models: peak memory <= 1.2x Captum's."""
    out = []
    for r in results:
        if (
            "/ig-" in r.name
            and r.model in ("mlp", "cnn")
            and r.extra.get("chunk_size", "auto") is None
            and r.ours_peak_mb is not None
            and r.peer_peak_mb
        ):
            share = r.ours_peak_mb / r.peer_peak_mb
            out.append(
                _target(
                    f"{r.name}, batch {r.batch}: unchunked peak memory <= 1.2x "
                    "Captum's",
                    f"{r.ours_peak_mb:.0f} / {r.peer_peak_mb:.0f} MiB = {share:.2f}x",
                    share <= 1.2,
                )
            )
    return out


def _chunked_time(results: list[H.Result]) -> list[dict]:
    """Chunked conv IG: <= 1.3x the time of the same IG unchunked."""
    conv = [r for r in results if r.model == "cnn" and r.kind == "memory"]
    whole = next((r for r in conv if r.extra.get("chunk_size") is None), None)
    if whole is None:
        return []
    return [
        _target(
            f"{r.name}: chunked conv IG <= 1.3x the unchunked time",
            f"{r.ours_s / whole.ours_s:.2f}x ({r.ours_s * 1e3:.1f} vs "
            f"{whole.ours_s * 1e3:.1f} ms)",
            r.ours_s <= 1.3 * whole.ours_s,
        )
        for r in conv
        if isinstance(r.extra.get("chunk_size"), int)
    ]


def _overhead(results: list[H.Result]) -> list[dict]:
    """IG against `n_steps` plain gradient passes: <= 1.15x."""
    return [
        _target(
            f"{r.name}: IG <= 1.15x n_steps gradient passes",
            f"{r.ratio:.2f}x",
            r.ratio <= 1.15,
        )
        for r in results
        if r.kind == "overhead"
    ]


def _chunked_memory(results: list[H.Result]) -> list[dict]:
    """IG with `chunk_size` on the MLP: memory flat as `n_steps` grows."""
    mem = [
        r
        for r in results
        if r.kind == "memory"
        and r.model == "mlp"
        and r.extra.get("chunk_size")
        # Below chunk_size steps, a chunk holds fewer points: nothing to compare.
        and r.extra["n_steps"] >= r.extra["chunk_size"]
    ]
    if len(mem) < 2 or any(r.ours_peak_mb is None for r in mem):
        return []
    lo, hi = mem[0], mem[-1]
    return [
        _target(
            "IG with chunk_size: memory flat as n_steps grows",
            f"{lo.ours_peak_mb:.0f} MiB at n_steps={lo.extra['n_steps']}, "
            f"{hi.ours_peak_mb:.0f} MiB at n_steps={hi.extra['n_steps']}",
            hi.ours_peak_mb <= 1.5 * lo.ours_peak_mb + 8,
        )
    ]


def _every_row(results: list[H.Result]) -> list[dict]:
    """Every row: a compile time reported, and agreement with Captum."""
    disagree = [r.name for r in results if r.agree is False]
    return [
        _target(
            "compile time reported for every method",
            f"{len(results)} rows with a first-call time",
            all(r.ours_first_s > 0 for r in results),
        ),
        _target(
            "attributions agree with Captum",
            "all agree" if not disagree else "disagree: " + ", ".join(disagree),
            not disagree,
        ),
    ]


def rerender(json_path: str) -> int:
    """Rebuild `<out>.md` (and the targets) from `<out>.json` without re-running."""
    import json

    with open(json_path) as f:
        data = json.load(f)
    results = [H.Result(**r) for r in data["results"]]
    targets = evaluate_targets(
        results, data["meta"]["device"], data["meta"].get("torch_threads")
    )
    out = json_path.removesuffix(".json")
    H.write_reports(results, data["meta"], targets, out)
    print(H.markdown(results, data["meta"], targets))
    return 0
