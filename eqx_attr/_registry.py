"""The one table of attribution methods.

Every public method has exactly one [`MethodEntry`][] here. The CLI, the demo, the
benchmarks, the notebooks' helper and the tests' method list read this table, so
adding a method means: one new file in its family, one entry below, and tests of
its mathematics (the contract tests then cover it automatically).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ._attribution import AbstractAttribution


Family = Literal["gradient", "rules", "cam", "perturbation", "transformer"]
Need = Literal["layer", "classifier", "key", "baseline", "mask", "attention"]


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What a registry entry may use to build its method with sensible defaults.

    **Arguments:**

    - `model`: the model to explain (one example in, a vector of scores out).
    - `layer`: a `where` function naming the feature map (CAM family).
    - `layer_options`: extra keyword arguments for layer methods (`layout`,
        `n_prefix_tokens`, `grid`, `call_index`).
    - `classifier`: a `where` naming the linear classifier after global pooling
        (classic CAM).
    - `attention`: a `where` naming the attention-probability modules (transformers).
    - `n_prefix_tokens`: class/register tokens before the patch tokens.
    - `mask`: integer feature ids broadcastable to the input (perturbation family).
    - `baseline`: a baseline (number, array or `eqx_attr.baselines` object).
    - `options`: method options by name (`n_steps`, `n_samples`, `chunk_size`, ...);
        an entry reads the ones it understands and falls back to its defaults.
    - `input_shape`: the shape of one example, e.g. `(1, 28, 28)`.
    """

    model: Any
    layer: Callable[[Any], Any] | None = None
    layer_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    classifier: Callable[[Any], Any] | None = None
    attention: Callable[[Any], Any] | None = None
    n_prefix_tokens: int = 0
    mask: Any = None
    baseline: Any = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None

    def option(self, name: str, default: Any) -> Any:
        """`options[name]` when given (and not None), else `default`."""
        value = self.options.get(name)
        return default if value is None else value

    def need(self, name: str) -> Any:
        """The field `name` (e.g. `"layer"`), which the method cannot do without."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(
                f"This method needs `{name}`; pass it in the `BuildContext` (on the "
                "command line it comes from the model registry or `--layer`)."
            )
        return value


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    """One attribution method, as the tools around the library see it.

    **Arguments:**

    - `name`: the canonical CLI name (`snake_case`), unique in the table.
    - `cls`: the public class.
    - `family`: which family package it lives in.
    - `summary`: one line for `eqx-attr methods` and the docs.
    - `build`: `BuildContext -> method`, with sensible defaults.
    - `aliases`: other CLI names.
    - `needs`: what the build needs from the context (`layer`, `key`, ...).
    - `output`: `"input"` when the attribution is shaped like `x`, `"map"` for an
        `(H, W)` map.
    - `baselines`: for entries that need a baseline, whether they take exactly
        one (`"one"`, DeepLIFT), a set of draws to average over (`"many"`,
        DeepLiftShap, GradientShap) or either (`"any"`, IG).
    - `axioms`: properties the attributions satisfy that tools may check, e.g.
        `"completeness"` (they sum to `f(x) - f(baseline)`; the demo reports it).
    """

    name: str
    cls: type
    family: Family
    summary: str
    build: Callable[[BuildContext], AbstractAttribution]
    aliases: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    output: Literal["input", "map"] = "input"
    axioms: frozenset[str] = frozenset()
    baselines: Literal["one", "many", "any"] = "any"

    @property
    def random(self) -> bool:
        """Whether `__call__` needs `key`."""
        return "key" in self.needs


def _entries() -> tuple[MethodEntry, ...]:
    # Imported here, not at module level: the registry is read by tools, and the
    # method modules import this module's types only for annotations.
    import eqx_attr as xa

    def ig(c: BuildContext):
        return xa.IntegratedGradients(
            c.model,
            n_steps=c.option("n_steps", 32),
            baseline=c.baseline if c.baseline is not None else 0.0,
            chunk_size=c.option("chunk_size", "auto"),
        )

    def cam(cls: type, **fixed: Any) -> Callable[[BuildContext], Any]:
        def build(c: BuildContext):
            return cls(c.model, c.layer, **{**c.layer_options, **fixed})

        return build

    def chunked_cam(cls: type) -> Callable[[BuildContext], Any]:
        def build(c: BuildContext):
            return cls(
                c.model,
                c.layer,
                chunk_size=c.option("chunk_size", 32),
                **c.layer_options,
            )

        return build

    layer = frozenset({"layer"})
    return (
        # --- gradient family ---
        MethodEntry(
            "gradients",
            xa.Gradients,
            "gradient",
            "gradient of the score (saliency)",
            lambda c: xa.Gradients(c.model),
            aliases=("saliency",),
        ),
        MethodEntry(
            "gradients_x_input",
            xa.GradientsXInput,
            "gradient",
            "input times gradient",
            lambda c: xa.GradientsXInput(c.model),
            aliases=("gxi",),
        ),
        MethodEntry(
            "integrated_gradients",
            xa.IntegratedGradients,
            "gradient",
            "Integrated Gradients (n_steps, baseline)",
            ig,
            aliases=("ig",),
            needs=frozenset({"baseline"}),
            axioms=frozenset({"completeness"}),
        ),
        MethodEntry(
            "smoothgrad",
            xa.SmoothGrad,
            "gradient",
            "SmoothGrad of the gradient (n_samples, stdev)",
            lambda c: xa.SmoothGrad(
                xa.Gradients(c.model),
                n_samples=c.option("n_samples", 32),
                stdev=c.option("stdev", 0.15),
            ),
            needs=frozenset({"key"}),
        ),
        # --- rule-based backward passes ---
        MethodEntry(
            "guided_backprop",
            xa.GuidedBackprop,
            "rules",
            "Guided Backpropagation",
            lambda c: xa.GuidedBackprop(c.model),
            aliases=("guided_bp",),
        ),
        MethodEntry(
            "deconvolution",
            xa.Deconvolution,
            "rules",
            "Deconvnet",
            lambda c: xa.Deconvolution(c.model),
            aliases=("deconvnet",),
        ),
        MethodEntry(
            "deeplift",
            xa.DeepLift,
            "rules",
            "DeepLIFT, Rescale rule (baseline)",
            lambda c: xa.DeepLift(
                c.model, baseline=c.baseline if c.baseline is not None else 0.0
            ),
            aliases=("deep_lift",),
            baselines="one",
            needs=frozenset({"baseline"}),
        ),
        MethodEntry(
            "deeplift_shap",
            xa.DeepLiftShap,
            "rules",
            "DeepLIFT averaged over baselines (baseline draws, chunk_size)",
            lambda c: xa.DeepLiftShap(
                c.model,
                baseline=c.baseline
                if c.baseline is not None
                else xa.baselines.UniformNoise(n_draws=c.option("n_samples", 8)),
                chunk_size=c.options.get("chunk_size"),
            ),
            aliases=("deepliftshap",),
            baselines="many",
            needs=frozenset({"baseline", "key"}),
        ),
        MethodEntry(
            "gradient_shap",
            xa.GradientShap,
            "rules",
            "GradientShap (baseline draws, n_samples, stdev)",
            lambda c: xa.GradientShap(
                c.model,
                baseline=c.baseline
                if c.baseline is not None
                else xa.baselines.UniformNoise(n_draws=8),
                n_samples=c.option("n_samples", 32),
                stdev=c.option("stdev", 0.0),
                chunk_size=c.options.get("chunk_size"),
            ),
            aliases=("gradientshap",),
            baselines="many",
            needs=frozenset({"baseline", "key"}),
        ),
        MethodEntry(
            "lrp",
            xa.LRP,
            "rules",
            "Layer-wise Relevance Propagation (composite: epsilon_plus_flat, "
            "epsilon_plus, epsilon_alpha2_beta1, epsilon_gamma_box)",
            lambda c: xa.LRP(
                c.model,
                composite=xa.lrp.composite_by_name(
                    c.option("composite", "epsilon_plus_flat"),
                    low=c.option("low", 0.0),
                    high=c.option("high", 1.0),
                ),
            ),
        ),
        # --- CAM family ---
        MethodEntry(
            "cam",
            xa.CAM,
            "cam",
            "Class Activation Mapping (global average pooling + linear models)",
            lambda c: xa.CAM(
                c.model,
                c.need("layer"),
                classifier=c.need("classifier"),
                **c.layer_options,
            ),
            needs=frozenset({"layer", "classifier"}),
            output="map",
        ),
        MethodEntry(
            "gradcam",
            xa.GradCAM,
            "cam",
            "Grad-CAM",
            cam(xa.GradCAM),
            needs=layer,
            output="map",
        ),
        MethodEntry(
            "guided_gradcam",
            xa.GuidedGradCAM,
            "cam",
            "Guided Grad-CAM",
            cam(xa.GuidedGradCAM),
            needs=layer,
        ),
        MethodEntry(
            "gradcam_plus_plus",
            xa.GradCAMPlusPlus,
            "cam",
            "Grad-CAM++",
            cam(xa.GradCAMPlusPlus),
            aliases=("gradcampp", "gradcam++"),
            needs=layer,
            output="map",
        ),
        MethodEntry(
            "xgradcam",
            xa.XGradCAM,
            "cam",
            "XGrad-CAM",
            cam(xa.XGradCAM),
            needs=layer,
            output="map",
        ),
        MethodEntry(
            "hirescam",
            xa.HiResCAM,
            "cam",
            "HiRes-CAM",
            cam(xa.HiResCAM),
            needs=layer,
            output="map",
        ),
        MethodEntry(
            "layercam",
            xa.LayerCAM,
            "cam",
            "Layer-CAM",
            cam(xa.LayerCAM),
            needs=layer,
            output="map",
        ),
        MethodEntry(
            "eigencam",
            xa.EigenCAM,
            "cam",
            "Eigen-CAM",
            cam(xa.EigenCAM),
            needs=layer,
            output="map",
        ),
        MethodEntry(
            "scorecam",
            xa.ScoreCAM,
            "cam",
            "Score-CAM (chunk_size)",
            chunked_cam(xa.ScoreCAM),
            needs=layer,
            output="map",
        ),
        MethodEntry(
            "ablationcam",
            xa.AblationCAM,
            "cam",
            "Ablation-CAM (chunk_size)",
            chunked_cam(xa.AblationCAM),
            needs=layer,
            output="map",
        ),
        # --- perturbation family ---
        *_perturbation_entries(xa),
        # --- transformer family ---
        MethodEntry(
            "attention_rollout",
            xa.AttentionRollout,
            "transformer",
            "attention rollout (class-agnostic; head_fusion, discard_ratio)",
            lambda c: xa.AttentionRollout(
                c.model,
                c.attention,
                n_prefix_tokens=c.n_prefix_tokens,
                head_fusion=c.option("head_fusion", "mean"),
                discard_ratio=c.option("discard_ratio", 0.0),
            ),
            aliases=("rollout",),
            needs=frozenset({"attention"}),
            output="map",
        ),
        MethodEntry(
            "chefer_relevance",
            xa.CheferRelevance,
            "transformer",
            "Chefer et al. 2021: gradient-weighted attention relevance",
            lambda c: xa.CheferRelevance(
                c.model, c.attention, n_prefix_tokens=c.n_prefix_tokens
            ),
            aliases=("chefer",),
            needs=frozenset({"attention"}),
            output="map",
        ),
        MethodEntry(
            "conservative_lrp",
            xa.ConservativeLRP,
            "transformer",
            "CP-LRP (Ali et al. 2022): LRP-0 with attention and layer norm detached",
            lambda c: xa.ConservativeLRP(c.model, c.attention),
            aliases=("cp_lrp",),
            needs=frozenset({"attention"}),
        ),
    )


def _perturbation_entries(xa: Any) -> tuple[MethodEntry, ...]:
    from ._perturbation._registry import entries

    return entries(xa, MethodEntry)


_TABLE: tuple[MethodEntry, ...] | None = None


def methods(family: str | None = None) -> tuple[MethodEntry, ...]:
    """Every registered method, in table order (optionally one family's)."""
    global _TABLE
    if _TABLE is None:
        table = _entries()
        seen: dict[str, str] = {}
        for entry in table:
            for name in (entry.name, *entry.aliases):
                if name in seen:
                    raise RuntimeError(
                        f"registry: {name!r} names both {seen[name]} and {entry.name}"
                    )
                seen[name] = entry.name
        _TABLE = table
    if family is None:
        return _TABLE
    return tuple(e for e in _TABLE if e.family == family)


def get(name: str) -> MethodEntry:
    """The entry called `name` (or one of its aliases; `-` and `_` alike)."""
    key = name.strip().lower().replace("-", "_")
    for entry in methods():
        if key == entry.name or key in entry.aliases:
            return entry
    known = ", ".join(e.name for e in methods())
    raise ValueError(f"Unknown method {name!r}; choose one of: {known}.")
