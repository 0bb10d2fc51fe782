"""Gradient rows against Captum: gradients, gradients x input, SmoothGrad,
guided backprop and deconvolution, and all targets at once."""

from __future__ import annotations

import os
import sys

import equinox as eqx
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as H  # noqa: E402
from _scenarios import Bench, Sizes, batched, ours_call  # noqa: E402

import eqx_attr as xa  # noqa: E402


def case_grad(b: Bench, s: Sizes) -> list[H.Case]:
    from captum.attr import Saliency

    sal = Saliency(b.twin)
    return [
        H.Case(
            f"{b.name}/gradients",
            b.name,
            "Gradients vs Saliency(abs=False)",
            len(b.xs),
            ours_call(xa.Gradients(b.model), b),
            lambda: sal.attribute(b.xt, target=b.tt, abs=False),
        )
    ]


def case_gxi(b: Bench, s: Sizes) -> list[H.Case]:
    from captum.attr import InputXGradient

    ixg = InputXGradient(b.twin)
    return [
        H.Case(
            f"{b.name}/gradients-x-input",
            b.name,
            "GradientsXInput vs InputXGradient",
            len(b.xs),
            ours_call(xa.GradientsXInput(b.model), b),
            lambda: ixg.attribute(b.xt, target=b.tt),
        )
    ]


def case_smoothgrad(b: Bench, s: Sizes) -> list[H.Case]:
    from captum.attr import NoiseTunnel, Saliency

    nt = NoiseTunnel(Saliency(b.twin))
    n, stdev = s.sg_samples, 0.15
    sg = xa.SmoothGrad(
        xa.Gradients(b.model), n_samples=n, stdev=stdev, noise="absolute"
    )
    sg0 = xa.SmoothGrad(xa.Gradients(b.model), n_samples=n, stdev=0.0, noise="absolute")
    run = batched(sg)
    keys = jax.random.split(jax.random.key(2), len(b.xs))

    def peer(std):
        return lambda: nt.attribute(
            b.xt, nt_type="smoothgrad", nt_samples=n, stdevs=std, target=b.tt, abs=False
        )

    return [
        H.Case(
            f"{b.name}/smoothgrad-{n}",
            b.name,
            f"SmoothGrad(Gradients, n_samples={n}) vs NoiseTunnel(Saliency)",
            len(b.xs),
            lambda: run(sg, b.xs, b.ts, keys),
            peer(stdev),
            # Different RNGs: agreement is checked at stdev=0 (same compiled call,
            # stdev is an array field), timings use stdev=0.15.
            ours_check=lambda: run(sg0, b.xs, b.ts, keys),
            peer_check=peer(0.0),
            note="diff at stdev=0; timed at stdev=0.15",
        )
    ]


def simple(method_name: str, peer_cls: str):
    def build(b: Bench, s: Sizes) -> list[H.Case]:
        import captum.attr

        peer = getattr(captum.attr, peer_cls)(b.twin)
        return [
            H.Case(
                f"{b.name}/{method_name}",
                b.name,
                f"{method_name} vs {peer_cls}",
                len(b.xs),
                ours_call(getattr(xa, method_name)(b.model), b),
                lambda: peer.attribute(b.xt, target=b.tt),
            )
        ]

    return build


def case_all_targets(b: Bench, s: Sizes) -> list[H.Case]:
    """Every class of every example: one vmapped call vs Captum's loop."""
    import torch
    from captum.attr import Saliency

    sal = Saliency(b.twin)
    k = b.n_classes
    grad = xa.Gradients(b.model)

    @eqx.filter_jit
    def run(meth, xs):
        per_example = lambda x: jax.vmap(lambda t: meth(x, t))(jnp.arange(k))
        return jax.vmap(per_example)(xs)

    def peer():
        outs = [sal.attribute(b.xt, target=t, abs=False) for t in range(k)]
        return torch.stack(outs, dim=1)

    return [
        H.Case(
            f"{b.name}/gradients-all-{k}-targets",
            b.name,
            f"Gradients for all {k} classes: one vmap vs {k} Saliency calls",
            len(b.xs),
            lambda: run(grad, b.xs),
            peer,
        )
    ]
