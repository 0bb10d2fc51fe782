"""Timing, peak-memory and report machinery shared by `benchmarks/run.py`.

A benchmark *case* pairs two zero-argument callables, ours (JAX) and the peer's
(PyTorch/Captum), that compute the same attribution on the same weights. `run_case`
times them interleaved in the same process, measures the peak memory of one call of
each, and records the largest absolute difference between their outputs.
"""

from __future__ import annotations

import ctypes
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import numpy as np

# ---------------------------------------------------------------------------------
# Cases and results


@dataclass
class Case:
    """One scenario: our callable and the peer's, computing the same thing.

    `ours` must return JAX arrays (a PyTree of them), `peer` torch tensors or NumPy
    arrays (a tuple/list of them). The first call of `ours` includes compilation.
    When exact agreement needs other settings than the timed ones (SmoothGrad with
    noise), `ours_check`/`peer_check` compute the outputs compared instead.
    `kind` groups rows in the report: "peer" (vs Captum), "overhead" (IG vs the
    same number of plain gradient passes, both ours), "memory" (IG chunking).
    """

    name: str
    model: str
    method: str
    batch: int
    ours: Callable[[], Any]
    peer: Callable[[], Any]
    peer_name: str = "Captum"
    ours_check: Callable[[], Any] | None = None
    peer_check: Callable[[], Any] | None = None
    kind: str = "peer"
    # Applied to the peer's output before comparing (e.g. a documented rescaling).
    peer_transform: Callable[[Any], Any] | None = None
    tol: float = 1e-4
    note: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Result:
    name: str
    model: str
    method: str
    batch: int
    kind: str
    peer_name: str
    ours_s: float
    ours_min_s: float
    ours_first_s: float
    ours_compile_s: float
    peer_s: float
    peer_min_s: float
    peer_first_s: float
    ratio: float
    ratio_min: float
    ours_peak_mb: float | None
    peer_peak_mb: float | None
    max_abs_diff: float | None
    ref_max_abs: float | None
    agree: bool | None
    repeats: int
    ours_times_s: list[float]
    peer_times_s: list[float]
    note: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------
# Blocking and conversion


def block(out: Any) -> Any:
    """Wait for every array in `out` (JAX dispatch is asynchronous; torch on GPU)."""
    leaves = jax.tree_util.tree_leaves(out)
    if any(isinstance(leaf, jax.Array) for leaf in leaves):
        jax.block_until_ready(out)
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available() and any(
            isinstance(leaf, torch.Tensor) and leaf.is_cuda for leaf in leaves
        ):
            torch.cuda.synchronize()
    return out


def to_numpy(out: Any) -> list[np.ndarray]:
    """The leaves of `out` as float64 NumPy arrays (torch tensors detached)."""
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in to_numpy(o)]
    if hasattr(out, "detach"):
        return [out.detach().cpu().double().numpy()]
    return [np.asarray(leaf, np.float64) for leaf in jax.tree_util.tree_leaves(out)]


def compare(ours: Any, peer: Any) -> tuple[float, float]:
    """`(max |ours - peer|, max |peer|)` over matching leaves, shapes checked."""
    a, b = to_numpy(ours), to_numpy(peer)
    if len(a) != len(b):
        raise ValueError(f"ours returned {len(a)} arrays, the peer {len(b)}")
    diff, ref = 0.0, 0.0
    for x, y in zip(a, b, strict=True):
        if x.shape != y.shape:
            raise ValueError(f"shape mismatch: ours {x.shape}, peer {y.shape}")
        diff = max(diff, float(np.max(np.abs(x - y))))
        ref = max(ref, float(np.max(np.abs(y))))
    return diff, ref


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = block(fn())
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------------------------
# Peak memory
#
# JAX's CPU client reports no memory statistics (`memory_stats()` is None), and
# torch has no CPU allocator statistics, so on CPU both sides are measured the same
# way: the growth of the process's peak resident set (VmHWM) during ONE call, after
# resetting the peak with `/proc/self/clear_refs` and trimming glibc's free lists.
# For that call glibc is told to serve every allocation of 64 KiB or more with its
# own mmap (returned to the kernel on free), so buffers that an earlier call freed
# cannot hide inside the heap. Outside the measured call the threshold is fixed at
# glibc's 32 MiB maximum, the value its dynamic threshold converges to anyway, so the
# timed calls are unaffected. On GPU the frameworks' own peak counters are used.

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def _libc():
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_supported() -> bool:
    if _LIBC is None:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kb("VmHWM")
    except OSError:
        return False
    return True


def steady_malloc() -> None:
    """Fix glibc's mmap/trim thresholds for the timed calls (see above)."""
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 64 * 1024 * 1024)


def peak_rss_mb(fn: Callable[[], Any]) -> float:
    """Peak resident-set growth (MiB) during one call of `fn` (Linux + glibc)."""
    assert _LIBC is not None
    gc.collect()
    _LIBC.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, 0)
    _LIBC.malloc_trim(0)
    try:
        base = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        out = block(fn())
        peak = _status_kb("VmHWM")
        del out
    finally:
        steady_malloc()
    return max(peak - base, 0) / 1024


def peak_gpu_mb(fn: Callable[[], Any], side: str) -> float | None:
    """Peak device memory (MiB) of one call, from the framework's own counters."""
    if side == "ours":
        dev = jax.devices()[0]
        stats = dev.memory_stats() or {}
        if "peak_bytes_in_use" not in stats:
            return None
        # XLA's peak counter cannot be reset; report the peak over the process,
        # minus what is in use before the call.
        before = stats.get("bytes_in_use", 0)
        block(fn())
        return (dev.memory_stats()["peak_bytes_in_use"] - before) / 2**20
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    block(fn())
    return (torch.cuda.max_memory_allocated() - before) / 2**20


# ---------------------------------------------------------------------------------
# Running a case


@dataclass
class Settings:
    device: str = "cpu"
    repeats: int = 5
    # Stop repeating once ours + peer have run this long (seconds): a slow case gets
    # fewer repeats (at least `min_repeats`) so the whole script stays short.
    budget_s: float = 8.0
    min_repeats: int = 1
    memory: bool = True


def _measure_memory(fn: Callable[[], Any], settings: Settings, side: str):
    if not settings.memory:
        return None
    if settings.device == "gpu":
        return peak_gpu_mb(fn, side)
    if not rss_supported():
        return None
    return peak_rss_mb(fn)


def run_case(case: Case, settings: Settings, log: Callable[[str], None]) -> Result:
    """Time, memory-profile and cross-check one case. Ours and the peer alternate."""
    first, out_ours = timed(case.ours)
    second, out_ours = timed(case.ours)  # steady-state call, to split out compile
    peer_first, out_peer = timed(case.peer)
    if case.ours_check is not None:
        out_ours = block(case.ours_check())
    if case.peer_check is not None:
        out_peer = case.peer_check()
    if case.peer_transform is not None:
        out_peer = case.peer_transform(out_peer)
    if case.kind == "overhead":
        diff = ref = None
        agree = None
    else:
        diff, ref = compare(out_ours, out_peer)
        agree = diff <= case.tol * max(ref, 1e-12) + 1e-7
    del out_ours, out_peer

    ours_mem = _measure_memory(case.ours, settings, "ours")
    peer_mem = _measure_memory(case.peer, settings, "peer")

    ours_t, peer_t = [second], []
    spent = second + peer_first
    # The peer's first call is its warm-up; its timed calls alternate with ours.
    for i in range(settings.repeats):
        if i > 0:
            ours_t.append(timed(case.ours)[0])
        peer_t.append(timed(case.peer)[0])
        spent += ours_t[-1] + peer_t[-1]
        if i + 1 >= settings.min_repeats and spent > settings.budget_s:
            break
    ours_s = statistics.median(ours_t)
    peer_s = statistics.median(peer_t)
    res = Result(
        name=case.name,
        model=case.model,
        method=case.method,
        batch=case.batch,
        kind=case.kind,
        peer_name=case.peer_name,
        ours_s=ours_s,
        ours_min_s=min(ours_t),
        ours_first_s=first,
        ours_compile_s=max(first - ours_s, 0.0),
        peer_s=peer_s,
        peer_min_s=min(peer_t),
        peer_first_s=peer_first,
        ratio=ours_s / peer_s,
        ratio_min=min(ours_t) / min(peer_t),
        ours_peak_mb=ours_mem,
        peer_peak_mb=peer_mem,
        max_abs_diff=diff,
        ref_max_abs=ref,
        agree=agree,
        repeats=len(peer_t),
        ours_times_s=ours_t,
        peer_times_s=peer_t,
        note=case.note,
        extra=case.extra,
    )
    log(
        f"{case.name:<34} ours {ours_s * 1e3:9.1f} ms (first {first:6.2f} s)  "
        f"{case.peer_name} {peer_s * 1e3:9.1f} ms  ratio {res.ratio:5.2f}  "
        + (
            f"diff {diff:.1e}/{ref:.1e} {'ok' if agree else 'DISAGREE'}"
            if diff is not None
            else ""
        )
    )
    return res


# ---------------------------------------------------------------------------------
# Machine description and reports


def machine_info(device: str) -> dict:
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "device": device,
        "cores": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "command": "python " + " ".join(sys.argv),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_at_start"] = f.read().split()[:3]
    except OSError:
        info["loadavg_at_start"] = ["unavailable"]
    import equinox
    import torch

    info["equinox"] = equinox.__version__
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
    try:
        import captum

        info["captum"] = captum.__version__
    except ImportError:
        info["captum"] = "not installed"
    if device == "gpu":
        info["gpu"] = str(jax.devices()[0].device_kind)
    return info


def _fmt_s(t: float) -> str:
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def _fmt_mb(m: float | None) -> str:
    return "n/a" if m is None else f"{m:.0f}"


def _fmt_diff(r: Result) -> str:
    if r.max_abs_diff is None:
        return "—"
    flag = "" if r.agree else " **DISAGREE**"
    return f"{r.max_abs_diff:.1e} (of {r.ref_max_abs:.1e}){flag}"


def markdown(results: list[Result], meta: dict, targets: list[dict]) -> str:
    lines = [
        f"Run {meta['date_utc']} on {meta.get('cpu', '?')} ({meta['cores']} cores, "
        f"device `{meta['device']}`"
        + (f", {meta['gpu']}" if "gpu" in meta else "")
        + f"), jax {meta['jax']}, torch {meta['torch']}, captum "
        f"{meta.get('captum', '?')}; load average at start "
        f"{' '.join(meta.get('loadavg_at_start', []))}. Command: "
        f"`{meta['command']}`.",
        "",
    ]
    peer = [r for r in results if r.kind == "peer"]
    if peer:
        lines += [
            "| scenario | batch | ours | ours 1st call (compile) | Captum | "
            "ours / Captum (of min) | peak MiB ours / Captum | max abs diff | "
            "repeats |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        for r in peer:
            lines.append(
                f"| {r.name} | {r.batch} | {_fmt_s(r.ours_s)} | "
                f"{_fmt_s(r.ours_first_s)} ({_fmt_s(r.ours_compile_s)}) | "
                f"{_fmt_s(r.peer_s)} | {r.ratio:.2f} ({r.ratio_min:.2f}) | "
                f"{_fmt_mb(r.ours_peak_mb)} / {_fmt_mb(r.peer_peak_mb)} | "
                f"{_fmt_diff(r)} | {r.repeats} |"
            )
        lines.append("")
    mem = [r for r in results if r.kind == "memory"]
    if mem:
        lines += [
            "Integrated Gradients with `chunk_size` (ours) and `internal_batch_size` "
            "(Captum, set to batch × chunk_size, the same bound): peak memory as "
            "`n_steps` grows.",
            "",
            "| scenario | n_steps | chunk_size | ours | Captum | "
            "peak MiB ours / Captum | max abs diff |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in mem:
            lines.append(
                f"| {r.name} | {r.extra.get('n_steps')} | "
                f"{r.extra.get('chunk_size') or 'none'} | {_fmt_s(r.ours_s)} | "
                f"{_fmt_s(r.peer_s)} | {_fmt_mb(r.ours_peak_mb)} / "
                f"{_fmt_mb(r.peer_peak_mb)} | {_fmt_diff(r)} |"
            )
        lines.append("")
    over = [r for r in results if r.kind == "overhead"]
    if over:
        lines += [
            "IG against the same number of plain gradient passes (both ours): "
            "`IG(batch, n_steps)` vs `Gradients` on a batch of `batch × n_steps`.",
            "",
            "| scenario | IG | gradients, same total size | IG / gradients (of min) | "
            "peak MiB IG / gradients |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in over:
            lines.append(
                f"| {r.name} | {_fmt_s(r.ours_s)} | {_fmt_s(r.peer_s)} | "
                f"{r.ratio:.2f} ({r.ratio_min:.2f}) | {_fmt_mb(r.ours_peak_mb)} / "
                f"{_fmt_mb(r.peer_peak_mb)} |"
            )
        lines.append("")
    if targets:
        lines += ["| target | measured | status |", "| --- | --- | --- |"]
        for t in targets:
            lines.append(f"| {t['target']} | {t['measured']} | {t['status']} |")
        lines.append("")
    return "\n".join(lines)


def write_reports(
    results: list[Result], meta: dict, targets: list[dict], out: str
) -> tuple[str, str]:
    """Write `<out>.json` and `<out>.md`; return their paths."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    json_path, md_path = out + ".json", out + ".md"
    with open(json_path, "w") as f:
        json.dump(
            {"meta": meta, "results": [asdict(r) for r in results], "targets": targets},
            f,
            indent=1,
        )
    with open(md_path, "w") as f:
        f.write(markdown(results, meta, targets))
    return json_path, md_path
