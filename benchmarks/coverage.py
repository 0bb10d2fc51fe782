"""Which benchmark measures each registered method, and against which peer.

Keyed by the method registry's names (`eqx_attr._registry.methods()`): adding a
method to the registry without saying here how it is benchmarked (or why it is
not) fails `tests/test_benchmarks.py::test_every_registered_method_is_accounted_for`.
Each value is `(script, peer)`: the script under `benchmarks/` that times the
method and the peer it runs side by side with, or `(None, reason)`.
"""

from __future__ import annotations

COVERAGE: dict[str, tuple[str | None, str]] = {
    "gradients": ("run.py", "Captum Saliency (--methods grad)"),
    "gradients_x_input": ("run.py", "Captum InputXGradient (--methods gxi)"),
    "integrated_gradients": (
        "run.py",
        "Captum IntegratedGradients (--methods ig,ig-chunk,ig-overhead,all-targets)",
    ),
    "smoothgrad": ("run.py", "Captum NoiseTunnel(Saliency) (--methods smoothgrad)"),
    "guided_backprop": ("run.py", "Captum GuidedBackprop (--methods guided)"),
    "deconvolution": ("run.py", "Captum Deconvolution (--methods deconv)"),
    "deeplift": ("bench_rules.py", "Captum DeepLift"),
    "deeplift_shap": ("bench_rules.py", "Captum DeepLiftShap"),
    "gradient_shap": (
        None,
        "not timed: its cost is n_samples gradients, as SmoothGrad's (timed); "
        "equality with Captum's GradientShap is tested",
    ),
    "lrp": ("bench_lrp.py", "Zennit EpsilonPlusFlat and Captum LRP"),
    "cam": (None, "no installable peer: Captum has no CAM"),
    "gradcam": ("run.py", "Captum LayerGradCam (--methods gradcam)"),
    "guided_gradcam": ("run.py", "Captum GuidedGradCam (--methods guided-gradcam)"),
    "gradcam_plus_plus": (None, "no installable peer: Captum has no Grad-CAM++"),
    "xgradcam": (None, "no installable peer: Captum has no XGrad-CAM"),
    "hirescam": (None, "no installable peer: Captum has no HiRes-CAM"),
    "layercam": (None, "no installable peer: Captum has no Layer-CAM"),
    "eigencam": (None, "no installable peer: Captum has no Eigen-CAM"),
    "scorecam": (None, "no installable peer: Captum has no Score-CAM"),
    "ablationcam": (None, "no installable peer: Captum has no Ablation-CAM"),
    "occlusion": ("bench_perturbation.py", "Captum Occlusion"),
    "feature_ablation": ("bench_perturbation.py", "Captum FeatureAblation"),
    "shapley_values": (
        None,
        "not timed: 2**F forwards, the same batch as FeatureAblation's per "
        "coalition; equality with Captum's ShapleyValues is tested",
    ),
    "shapley_value_sampling": ("bench_perturbation.py", "Captum ShapleyValueSampling"),
    "kernel_shap": ("bench_perturbation.py", "Captum KernelShap"),
    "lime": (
        None,
        "not timed: the same coalition batch as KernelShap (timed) plus a "
        "lasso solve; equality with Captum's Lime is tested",
    ),
    "rise": (None, "no installable peer: RISE's reference code is not on PyPI"),
    "blur_ig": (
        None,
        "not timed: PAIR's saliency drives our own jitted gradient, so a ratio "
        "would time the same gradients twice; equality is tested",
    ),
    "guided_ig": (
        None,
        "not timed: as blur_ig, PAIR's saliency would run our gradient; "
        "equality is tested",
    ),
    "xrai": ("bench_xrai.py", "PAIR saliency XRAI"),
    "attention_rollout": ("bench_transformer.py", "torch forward hooks (timm twin)"),
    "chefer_relevance": ("bench_transformer.py", "torch hooks and autograd"),
    "conservative_lrp": (
        None,
        "no installable peer: CP-LRP's reference code is not on PyPI; "
        "conservation is tested",
    ),
}
