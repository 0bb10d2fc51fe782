"""Attention rollout and Chefer relevance vs torch hook-based references.

Both sides run in this process on identical weights: our ViT (`xa.models`) and
its timm-layout PyTorch twin (`eqx_attr.torch_twins.to_torch`). The torch side is
what users write today: forward hooks on `attn_drop` collect the attention (and,
for Chefer, `register_hook` its gradient), then the same combination rule.
Ours: `eqx.filter_jit(eqx.filter_vmap(method))` over the batch.

    python benchmarks/bench_transformer.py                 # ViT-Tiny, batch 8, 224
    python benchmarks/bench_transformer.py --quick         # small sizes, seconds

Writes `benchmarks/results/transformer-<device>.{json,md}`.
"""

from __future__ import annotations

import argparse
import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as H  # noqa: E402

import eqx_attr as xa  # noqa: E402

ATTN = lambda m: [b.attn.attn_drop for b in m.blocks]  # noqa: E731


def torch_attention(twin, xs, targets=None):
    """Per-block attention `(B, heads, N, N)` (and gradients) via hooks."""
    import torch

    attentions, grads = [], []

    def hook(module, inputs, output):
        attentions.append(output)
        if targets is not None:
            output.register_hook(grads.append)

    handles = [b.attn.attn_drop.register_forward_hook(hook) for b in twin.blocks]
    try:
        if targets is None:
            with torch.no_grad():
                twin(xs)
        else:
            scores = twin(xs)
            scores.gather(1, targets[:, None]).sum().backward()
    finally:
        for h in handles:
            h.remove()
    return [a.detach() for a in attentions], grads[::-1]


def torch_rollout(twin, xs):
    import torch

    attentions, _ = torch_attention(twin, xs)
    n = attentions[0].shape[-1]
    eye = torch.eye(n)
    result = eye.expand(xs.shape[0], n, n)
    for a in attentions:
        a = (a.mean(1) + eye) / 2
        result = (a / a.sum(-1, keepdim=True)) @ result
    side = int((n - 1) ** 0.5)
    return result[:, 0, 1:].reshape(-1, side, side)


def torch_chefer(twin, xs, targets):
    import torch

    attentions, grads = torch_attention(twin, xs.requires_grad_(False), targets)
    n = attentions[0].shape[-1]
    r = torch.eye(n).expand(xs.shape[0], n, n)
    for a, g in zip(attentions, grads, strict=True):
        r = r + (g * a).clamp(min=0).mean(1) @ r
    side = int((n - 1) ** 0.5)
    return r[:, 0, 1:].reshape(-1, side, side)


def cases(size: str, batch: int, image: int) -> list[H.Case]:
    import torch

    from eqx_attr.torch_twins import to_torch

    build = {"tiny": xa.models.vit_tiny, "small": xa.models.vit_small}[size]
    vit = build(image_size=image, key=jax.random.key(0))
    twin = to_torch(vit)
    xs = jax.random.uniform(jax.random.key(1), (batch, 3, image, image))
    ts = jnp.arange(batch) % 1000
    xt, tt = torch.tensor(np.asarray(xs)), torch.tensor(np.asarray(ts))
    rollout = eqx.filter_jit(
        eqx.filter_vmap(xa.AttentionRollout(vit, ATTN, resize=None))
    )
    chefer = eqx.filter_jit(eqx.filter_vmap(xa.CheferRelevance(vit, ATTN, resize=None)))
    name = f"vit_{size}"
    return [
        H.Case(
            f"{name}/attention-rollout", name, "AttentionRollout", batch,
            lambda: rollout(xs), lambda: torch_rollout(twin, xt),
            peer_name="torch hooks",
        ),
        H.Case(
            f"{name}/chefer-relevance", name, "CheferRelevance", batch,
            lambda: chefer(xs, ts), lambda: torch_chefer(twin, xt, tt),
            peer_name="torch hooks",
        ),
    ]  # fmt: skip


def markdown(results: list[H.Result], meta: dict) -> str:
    lines = [
        f"Run {meta['date_utc']} on {meta.get('cpu', '?')} ({meta['cores']} cores, "
        f"device `{meta['device']}`), jax {meta['jax']}, torch {meta['torch']}; "
        f"load average at start {' '.join(meta.get('loadavg_at_start', []))} "
        f"(a shared machine: other jobs ran meanwhile). Command: "
        f"`{meta['command']}`.",
        "",
        "| scenario | batch | ours | ours 1st call | torch hooks | ours / torch "
        "(of min) | max abs diff | repeats |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.batch} | {H._fmt_s(r.ours_s)} | "
            f"{H._fmt_s(r.ours_first_s)} | {H._fmt_s(r.peer_s)} | {r.ratio:.2f} "
            f"({r.ratio_min:.2f}) | {r.max_abs_diff:.1e} (of {r.ref_max_abs:.1e}) | "
            f"{r.repeats} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 2 at 64x64")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    batch, image = (2, 64) if args.quick else (args.batch, args.image)
    device = "gpu" if jax.default_backend() == "gpu" else "cpu"
    settings = H.Settings(device=device, repeats=args.repeats, memory=False)
    results = [H.run_case(c, settings, print) for c in cases("tiny", batch, image)]
    meta = H.machine_info(device)
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or os.path.join(here, "results", f"transformer-{device}")
    if args.quick and args.out is None:
        out += "-quick"
    H.write_reports(results, meta, [], out)
    with open(out + ".md", "w") as f:
        f.write(markdown(results, meta))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
