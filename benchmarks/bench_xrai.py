"""XRAI vs PAIR's `saliency.core.XRAI` 0.2.1: same model, same image, same steps.

Run: `python benchmarks/bench_xrai.py [--repeats 3] [--steps 32]`. Writes
`benchmarks/results/xrai-cpu.md`. PAIR drives our JAX model through its
call-model function (a jitted batch of gradients, `batch_size = steps`, so its IG
makes one call per baseline); ours is `xa.XRAI` compiled once before timing. Our
segmentation cache is cleared before each timed call ("cold"), and, separately,
kept ("cached": a second class of the same image). The outputs are checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import saliency.core as sc
from skimage import data, transform

import eqx_attr as xa
from eqx_attr._region import _xrai_regions


def _time(fn, repeats, before=lambda: None):
    before()
    fn()  # warm-up (compilation for ours)
    times = []
    for _ in range(repeats):
        before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _photo(channels: int, side: int) -> np.ndarray:
    img = data.camera() if channels == 1 else data.chelsea()
    img = transform.resize(img / 255.0, (side, side), anti_aliasing=True)
    img = img[..., None] if img.ndim == 2 else img
    return np.moveaxis(img, -1, 0).astype(np.float32)


def _pair_call(model, target):
    grads = jax.jit(jax.vmap(jax.grad(lambda z: model(z)[target])))

    def call(x_batch, call_model_args=None, expected_keys=None):
        g = grads(jnp.asarray(np.moveaxis(x_batch, -1, 1), jnp.float32))
        return {sc.base.INPUT_OUTPUT_GRADIENTS: np.moveaxis(np.asarray(g), 1, -1)}

    return call


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/xrai-cpu.md")
    args = parser.parse_args()
    setups = [
        ("SmallCNN, camera 1x28x28", 1, 28),
        ("SmallCNN (3 channels), cat 3x112x112", 3, 112),
        ("SmallCNN (3 channels), cat 3x224x224", 3, 224),
    ]
    rows = []
    target = 3
    for label, channels, side in setups:
        model = xa.models.SmallCNN(in_channels=channels, key=jax.random.key(0))
        x = _photo(channels, side)
        method = eqx.filter_jit(xa.XRAI(model, n_steps=args.steps).heat_and_ranks)
        xj = jnp.asarray(x)
        ours = lambda: jax.block_until_ready(method(xj, target))  # noqa: E731
        call = _pair_call(model, target)
        params = sc.XRAIParameters(steps=args.steps, return_xrai_segments=True)
        peer = lambda: sc.XRAI().GetMaskWithDetails(  # noqa: E731
            np.moveaxis(x, 0, -1), call, batch_size=args.steps, extra_parameters=params
        )
        clear = _xrai_regions._CACHE.data.clear
        t_cold = _time(ours, args.repeats, before=clear)
        t_cached = _time(ours, args.repeats)
        t_peer = _time(peer, args.repeats)
        heat, ranks = ours()
        ref = peer()
        same = bool(np.array_equal(np.asarray(ranks), ref.segments)) and np.allclose(
            heat, ref.attribution_mask, rtol=1e-4, atol=1e-7
        )
        rows.append((label, t_cold, t_cached, t_peer, same, int(ranks.max())))
        print(
            f"{label}: ours {t_cold:.3f}s (cached {t_cached:.3f}s) PAIR "
            f"{t_peer:.3f}s ratio {t_cold / t_peer:.2f} equal={same}",
            flush=True,
        )
    host = _host_rows(args.repeats)
    lines = [
        "# XRAI vs PAIR saliency 0.2.1 (CPU)",
        "",
        f"Median of {args.repeats} runs after a warm-up, same process, same model; "
        f"IG with {args.steps} steps per baseline (min and max image). The machine "
        "was shared with other jobs while this ran: absolute times are inflated, "
        "the ratios are the result.",
        "",
        "| setup | regions | ours (s) | ours, cached segments (s) | PAIR (s) "
        "| ours / PAIR | equal |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, a, c, b, same, n in rows:
        lines.append(
            f"| {label} | {n} | {a:.3f} | {c:.3f} | {b:.3f} | {a / b:.2f} | {same} |"
        )
    lines += [
        "",
        "The host part alone (no model): segmenting a 3x224x224 photo, and ranking "
        "the regions of a random attribution over those segments.",
        "",
        "| step | ours (s) | PAIR (s) | ours / PAIR | equal |",
        "|---|---|---|---|---|",
    ]
    for label, a, b, same in host:
        lines.append(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f} | {same} |")
    Path(args.out).write_text("\n".join(lines) + "\n")


def _host_rows(repeats):
    """Segmentation and ranking, ours vs PAIR's private helpers, on one photo."""
    from saliency.core import xrai as pair_xrai

    image = np.moveaxis(_photo(3, 224), 0, -1)
    attr = np.random.default_rng(0).normal(size=image.shape[:2]).astype(np.float32)
    clear = _xrai_regions._CACHE.data.clear
    ours_masks = _xrai_regions.image_masks(image)
    pair_masks = pair_xrai._get_segments_felzenszwalb(image)
    same_masks = bool(
        np.array_equal(ours_masks.to_dense(image.shape[:2]), np.stack(pair_masks))
    )
    t_seg = _time(lambda: _xrai_regions.image_masks(image), repeats, before=clear)
    t_seg_pair = _time(lambda: pair_xrai._get_segments_felzenszwalb(image), repeats)
    heat, ranks = _xrai_regions.rank_regions(attr, ours_masks)
    ref_heat, ref_ranks = pair_xrai.XRAI._xrai(attr, pair_masks)
    same_rank = bool(
        np.array_equal(ranks, ref_ranks)
        and np.array_equal(heat, ref_heat.astype(np.float32))
    )
    t_rank = _time(lambda: _xrai_regions.rank_regions(attr, ours_masks), repeats)
    t_rank_pair = _time(lambda: pair_xrai.XRAI._xrai(attr, pair_masks), repeats)
    rows = [
        (f"segments ({len(pair_masks)} masks)", t_seg, t_seg_pair, same_masks),
        (f"full ranking ({int(ranks.max())} regions)", t_rank, t_rank_pair, same_rank),
    ]
    for label, a, b, same in rows:
        print(f"host {label}: ours {a:.3f}s PAIR {b:.3f}s equal={same}", flush=True)
    return rows


if __name__ == "__main__":
    main()
