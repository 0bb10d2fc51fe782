"""Integrated Gradients rows against Captum, and the chunk study: IG with and
without `chunk_size`, and IG against `n_steps` plain gradient passes."""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as H  # noqa: E402
from _scenarios import Bench, Sizes, batched, ours_call  # noqa: E402

import eqx_attr as xa  # noqa: E402


def _ig_case(
    b: Bench,
    n: int,
    method: str,
    chunk: int | str | None = "auto",
    kind: str = "peer",
    unroll: bool = False,
) -> H.Case:
    """IG against Captum's. `chunk`: ours, the library's default `"auto"` (Captum
    then runs its default, every point at once), `None` (every point at once on
    both sides) or a chunk size."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(b.twin)
    # Captum's internal_batch_size counts path points over the whole batch; ours
    # counts them per example (under vmap), so the same memory bound is B * chunk.
    ibs = chunk * len(b.xs) if isinstance(chunk, int) else None
    ours = xa.IntegratedGradients(
        b.model, n_steps=n, method=method, chunk_size=chunk, unroll_chunks=unroll
    )
    short = {"gausslegendre": "gl", "riemann_trapezoid": "trapezoid"}[method]
    suffix = (
        "" if chunk == "auto" else "-unchunked" if chunk is None else f"-chunk{chunk}"
    )
    name = f"{b.name}/ig-{short}-{n}" + suffix
    name += "-unrolled" if unroll else ""
    transform, note = None, ""
    if method == "riemann_trapezoid":
        # Captum's trapezoid rule puts steps of 1/n on nodes linspace(0, 1, n),
        # whose spacing is 1/(n-1): its weights sum to (n-1)/n, not 1, so its
        # attributions are exactly (n-1)/n times the trapezoid rule's (ours).
        transform = lambda a: a * (n / (n - 1))
        note = "Captum's trapezoid weights sum to (n-1)/n; compared after x n/(n-1)"
    return H.Case(
        name,
        b.name,
        f"IntegratedGradients({method}, n_steps={n}, chunk_size={chunk!r}"
        + (", unroll_chunks=True)" if unroll else ")"),
        len(b.xs),
        ours_call(ours, b),
        lambda: ig.attribute(
            b.xt, target=b.tt, n_steps=n, method=method, internal_batch_size=ibs
        ),
        kind=kind,
        tol=2e-3,
        peer_transform=transform,
        note=note,
        extra={"n_steps": n, "chunk_size": chunk},
    )


def case_ig(b: Bench, s: Sizes) -> list[H.Case]:
    if b.name == "mlp":
        steps, chunk = s.ig_steps, "auto"
    elif b.name == "cnn":
        steps, chunk = s.cnn_ig_steps, "auto"
    else:
        steps, chunk = s.large_ig_steps, s.large_ig_chunk
    cases = [_ig_case(b, n, "gausslegendre", chunk) for n in steps]
    # Captum's default quadrature is Gauss-Legendre; the trapezoid rule is compared
    # too on the small models, at the first step count.
    if b.name in ("mlp", "cnn"):
        cases.append(_ig_case(b, steps[0], "riemann_trapezoid", chunk))
    if chunk == "auto" and b.name == "cnn":
        # Every point at once (`chunk_size=None`), what "auto" replaces on CPU for
        # conv nets (it runs the MLP and the 224x224 models unchunked anyway).
        cases.append(_ig_case(b, steps[0], "gausslegendre", None))
    return cases


def case_ig_chunk(b: Bench, s: Sizes) -> list[H.Case]:
    if b.name == "cnn":
        # The cost of chunking on a conv net: the same IG with and without it.
        small = replace(
            b, xs=b.xs[: s.overhead_cnn_batch], ts=b.ts[: s.overhead_cnn_batch]
        )
        small.xt, small.tt = b.xt[: s.overhead_cnn_batch], b.tt[: s.overhead_cnn_batch]
        n = s.chunk_steps[0]
        chunk = s.chunk_size // 4
        # On CPU the scan runs fastest with about 64 points per iteration (batch x
        # chunk): XLA:CPU's loop bodies then stay in cache.
        return [
            _ig_case(small, n, "gausslegendre", chunk, kind="memory"),
            _ig_case(small, n, "gausslegendre", chunk // 2, kind="memory"),
            _ig_case(small, n, "gausslegendre", chunk, kind="memory", unroll=True),
            _ig_case(small, n, "gausslegendre", None, kind="memory"),
        ]
    if b.name != "mlp":
        return []
    cases = [
        _ig_case(b, n, "gausslegendre", s.chunk_size, kind="memory")
        for n in s.chunk_steps
    ]
    # The same largest step count without chunking, for contrast.
    cases.append(_ig_case(b, s.chunk_steps[-1], "gausslegendre", None, kind="memory"))
    return cases


def case_ig_overhead(b: Bench, s: Sizes) -> list[H.Case]:
    """IG(batch, n) against one plain gradient pass over batch * n inputs."""
    if b.name not in ("mlp", "cnn"):
        return []
    n = s.overhead_steps
    batch = len(b.xs) if b.name == "mlp" else min(s.overhead_cnn_batch, len(b.xs))
    xs, ts = b.xs[:batch], b.ts[:batch]
    ig = xa.IntegratedGradients(b.model, n_steps=n)
    grad = xa.Gradients(b.model)
    run_ig, run_grad = batched(ig), batched(grad)
    big_x = jnp.repeat(xs, n, axis=0) * jnp.linspace(0.0, 1.0, batch * n).reshape(
        -1, 1, 1, 1
    )
    big_t = jnp.repeat(ts, n)
    # Compile the reference outside the timing: only ours' first call is reported.
    jax.block_until_ready(run_grad(grad, big_x, big_t))
    return [
        H.Case(
            f"{b.name}/ig-{n}-vs-{n}x-gradients",
            b.name,
            f"IG(n_steps={n}) vs Gradients on {batch}x{n} inputs",
            batch,
            lambda: run_ig(ig, xs, ts),
            lambda: run_grad(grad, big_x, big_t),
            peer_name="n_steps gradient passes",
            kind="overhead",
            extra={"n_steps": n},
        )
    ]
