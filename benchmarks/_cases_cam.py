"""CAM rows against Captum: Grad-CAM, Guided Grad-CAM, and the three methods
sharing one jitted call."""

from __future__ import annotations

import os
import sys

import equinox as eqx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as H  # noqa: E402
from _scenarios import Bench, Sizes, ours_call  # noqa: E402

import eqx_attr as xa  # noqa: E402


def case_gradcam(b: Bench, s: Sizes) -> list[H.Case]:
    from captum.attr import LayerGradCam

    if b.layer is None:
        return []
    lgc = LayerGradCam(b.twin, b.twin_layer)
    ours = xa.GradCAM(b.model, b.layer, resize=None, **b.cam_kwargs)
    signed = xa.GradCAM(b.model, b.layer, relu=False, resize=None, **b.cam_kwargs)

    def peer(relu):
        # Captum returns (B, 1, h, w) at the layer's resolution.
        return lambda: lgc.attribute(b.xt, target=b.tt, relu_attributions=relu)[:, 0]

    return [
        H.Case(
            f"{b.name}/gradcam",
            b.name,
            "GradCAM(resize=None) vs LayerGradCam(relu_attributions=True)",
            len(b.xs),
            ours_call(ours, b),
            peer(True),
            # Compared before the ReLU, which would hide the sign and can zero a
            # whole map.
            ours_check=ours_call(signed, b),
            peer_check=peer(False),
            note="diff on the signed map (relu off); timed with relu on",
        )
    ]


def case_guided_gradcam(b: Bench, s: Sizes) -> list[H.Case]:
    from captum.attr import GuidedGradCam

    if b.layer is None:
        return []
    ggc = GuidedGradCam(b.twin, b.twin_layer)
    ours = xa.GuidedGradCAM(b.model, b.layer, resize="nearest", **b.cam_kwargs)
    return [
        H.Case(
            f"{b.name}/guided-gradcam",
            b.name,
            "GuidedGradCAM vs GuidedGradCam (nearest upsampling)",
            len(b.xs),
            ours_call(ours, b),
            lambda: ggc.attribute(b.xt, target=b.tt, interpolate_mode="nearest"),
        )
    ]


def case_shared(b: Bench, s: Sizes) -> list[H.Case]:
    """Gradients + Grad-CAM + Guided Grad-CAM in one jitted call vs 3 Captum calls."""
    from captum.attr import GuidedGradCam, LayerGradCam, Saliency

    if b.layer is None:
        return []
    sal = Saliency(b.twin)
    lgc = LayerGradCam(b.twin, b.twin_layer)
    ggc = GuidedGradCam(b.twin, b.twin_layer)
    methods = (
        xa.Gradients(b.model),
        xa.GradCAM(b.model, b.layer, resize=None, **b.cam_kwargs),
        xa.GuidedGradCAM(b.model, b.layer, resize="nearest", **b.cam_kwargs),
    )

    @eqx.filter_jit
    def run(meths, xs, ts):
        return eqx.filter_vmap(lambda x, t: tuple(m(x, t) for m in meths))(xs, ts)

    def peer():
        return (
            sal.attribute(b.xt, target=b.tt, abs=False),
            lgc.attribute(b.xt, target=b.tt, relu_attributions=True)[:, 0],
            ggc.attribute(b.xt, target=b.tt, interpolate_mode="nearest"),
        )

    return [
        H.Case(
            f"{b.name}/shared-grad+gradcam+guided",
            b.name,
            "Gradients + GradCAM + GuidedGradCAM: one jit vs 3 Captum calls",
            len(b.xs),
            lambda: run(methods, b.xs, b.ts),
            peer,
        )
    ]
