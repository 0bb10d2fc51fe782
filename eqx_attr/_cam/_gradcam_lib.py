"""pytorch-grad-cam's gradient CAMs beyond Grad-CAM: Eigen-Grad-CAM, Grad-CAM
element-wise, Shapley-CAM and Finer-CAM.

Each follows the formula of the pytorch-grad-cam (1.5.x) source file its docstring
names; the differences (a fixed eigenvector sign, JAX's resize) are stated there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._attribution import (
    make_objective,
)
from .._layers import replace_layer_output
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import CLIPPED_MAP, Differentiability, MethodEntry
from ._base import (
    AbstractCAM,
    AbstractGradientCAM,
    as_float,
    layer_build,
)
from ._smoothing import check_no_eigen_smooth
from ._spec import LayerArg, Layers
from ._variants import eigencam_map

__all__ = ["EigenGradCAM", "FinerCAM", "GradCAMElementWise", "ShapleyCAM"]


class EigenGradCAM(AbstractGradientCAM):
    """Eigen-Grad-CAM: the first principal component of gradient times activation.

    pytorch-grad-cam's `eigen_grad_cam.py` (`EigenGradCAM.get_cam_image`:
    `get_2d_projection(grads * activations)`, `utils/svd_on_activations.py`): the
    products `G_k * A_k` form a matrix with one row per location and one column
    per channel; its columns are centred and each location is projected on the
    first right singular vector `v`. The sign of `v`, arbitrary in an SVD, is fixed
    as in [`eqx_attr.EigenCAM`][]: `sum_k v_k >= 0`.

    **Arguments:** as for [`eqx_attr.GradCAM`][]: `model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.EigenGradCAM(model, lambda m: m.conv2)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_no_eigen_smooth(
            self.eigen_smooth,
            "EigenGradCAM",
            "its map is already the first principal component of gradient x activation",
        )

    def _combine(self, a: Array, g: Array) -> Array:
        return eigencam_map(g * a)


class GradCAMElementWise(AbstractGradientCAM):
    """Grad-CAM element-wise: the positive part of gradient times activation, summed.

    pytorch-grad-cam's `grad_cam_elementwise.py`
    (`GradCAMElementWise.get_cam_image`: `np.maximum(grads * activations, 0)`
    summed over channels): map `relu(sum_k relu(G_k * A_k))`. Unlike
    [`eqx_attr.HiResCAM`][] (`sum_k G_k * A_k`), each product is clipped at zero
    before the channels are summed.

    **Arguments:** as for [`eqx_attr.GradCAM`][]: `model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.GradCAMElementWise(model, lambda m: m.conv2)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    input_layout: InputLayout = input_layout_field()

    def _combine(self, a: Array, g: Array) -> Array:
        return jnp.sum(jnp.maximum(g * a, 0), axis=0)


class ShapleyCAM(AbstractCAM):
    """Shapley-CAM: channel weights from the gradient and a Hessian-vector product.

    Cai, *CAMs as Shapley Value-based Explainers*, 2025, as pytorch-grad-cam's
    `shapley_cam.py` computes it (`ShapleyCAM.get_cam_weights`): with
    `G = dS/dA` and `H A` the Hessian of the target's score `S` with respect to
    the activation applied to the activation itself,
    `w_k = mean_ij (G - H A / 2)_kij`, map `relu(sum_k w_k A_k)`. `H A` is
    `jax.jvp` of `jax.grad` (forward over reverse), through the rest of the network
    as a function of the layer's output ([`eqx_attr.replace_layer_output`][]). For
    a score that is piecewise linear in `A` (an int target on a ReLU network after
    the layer) `H A = 0` and the map is Grad-CAM's; pytorch-grad-cam pairs it with
    a softmax-based target, here a callable `target` such as
    `lambda s: jax.nn.log_softmax(s)[3]`.

    **Arguments:** as for [`eqx_attr.GradCAM`][]: `model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.ShapleyCAM(model, lambda m: m.conv2)(x, lambda s: jax.nn.softmax(s)[3])
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    input_layout: InputLayout = input_layout_field()

    def _map(self, x, target, info, key):
        return self._map_and_scores(x, target, info, key)[0]

    def _map_and_scores(self, x, target, info, key):
        objective = make_objective(target, info.out)
        spec = self._one_spec
        scores, _, act, _ = spec.read(self.model, x, objective, info)

        def score_of(value):
            rest = replace_layer_output(
                self.model, spec.layer, value, call_index=spec.call_index
            )
            return objective(rest(x))

        g, hvp = jax.jvp(jax.grad(score_of), (act,), (act,))
        a = as_float(spec.maps(act))
        w = as_float(spec.gradient_maps(g, "ShapleyCAM"))
        w = w - 0.5 * as_float(spec.maps(hvp))
        return self._weighted(jnp.mean(w, axis=(1, 2)), a), scores


def finer_objective(
    main: Array, ranks: tuple[int, ...], alpha: float, score: Callable
) -> Callable[[Array], Array]:
    """pytorch-grad-cam's `FinerWeightedTarget` for the class `main`, comparing it
    with the classes ranked `ranks` by closeness of score (0 is `main` itself)."""

    def objective(scores):
        s = as_float(scores)
        distance = jax.lax.stop_gradient(jnp.abs(s - s[main]))
        distance = distance.at[main].set(-jnp.inf)  # main first, even on ties
        others = jnp.argsort(distance, stable=True)[jnp.asarray(ranks)]
        p = jax.nn.softmax(s)[others]
        wn = as_float(score(scores))  # the main score, its index checked
        return jnp.sum(p * (wn - alpha * s[others])) / (jnp.sum(p) + 1e-9)

    return objective


class FinerCAM(AbstractCAM):
    """Finer-CAM: Grad-CAM of the target's score against its closest classes.

    Zhang et al., *Finer-CAM: Spotting the Difference Reveals Finer Details for
    Visual Explanation*, CVPR 2025, as pytorch-grad-cam's `finer_cam.py` computes
    it (`FinerCAM.forward` with the default `base_method=GradCAM`, and
    `FinerWeightedTarget` in `utils/model_targets.py`): the classes are sorted by
    `abs(y_j - y_t)`, `t` the target class (rank 0); with `R` the classes at
    `comparison` ranks and `p = softmax(y)`, Grad-CAM explains
    `sum_{j in R} p_j (y_t - alpha y_j) / (sum_{j in R} p_j + 1e-9)` (the
    gradient flows through `p` too, as in pytorch-grad-cam; the ranking does not).
    The target is always rank 0 (pytorch-grad-cam's unstable sort could put a
    class tied with it first).

    **Arguments:** as for [`eqx_attr.GradCAM`][] (`model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`), and

    - `alpha`: the comparison strength (default 1).
    - `comparison`: the ranks of the classes compared with (default `(1, 2, 3)`:
        the three closest); each must be below the number of classes.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`). A
    class-index `target` is the class `t`; a callable `target` is explained as
    given (Grad-CAM of it), as pytorch-grad-cam does when `targets` are passed.

    ```python
    h = xa.FinerCAM(model, lambda m: m.conv2)(x, target=3)
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    alpha: float = eqx.field(static=True, default=1.0)
    comparison: tuple[int, ...] = eqx.field(static=True, default=(1, 2, 3))
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        layer: LayerArg,
        relu: bool = True,
        resize: str | None = "bilinear",
        *,
        alpha: float = 1.0,
        comparison: tuple[int, ...] = (1, 2, 3),
        input_layout: InputLayout = None,
        **layer_options: Any,
    ):
        AbstractCAM.__init__(
            self, model, layer, relu, resize, input_layout=input_layout,
            **layer_options,
        )  # fmt: skip
        self.alpha = alpha
        self.comparison = tuple(comparison)

    def __check_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise ValueError(f"`alpha` must be a number, got {self.alpha!r}.")
        ranks = self.comparison
        if not ranks or not all(
            isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranks
        ):
            raise ValueError(
                "`comparison` must be a non-empty tuple of ranks >= 1 (rank 0 is the "
                f"target itself), got {ranks!r}."
            )

    def _map(self, x, target, info, key):
        return self._map_and_scores(x, target, info, key)[0]

    def _map_and_scores(self, x, target, info, key):
        score = make_objective(target, info.out)
        objective = score
        if target is not None and not callable(target):
            n = info.out.shape[0]
            if max(self.comparison) >= n:
                raise ValueError(
                    f"`comparison={self.comparison}` needs more classes than the "
                    f"model's {n}: every rank must be below {n}."
                )
            main = jnp.asarray(target)
            objective = finer_objective(main, self.comparison, float(self.alpha), score)
        spec = self._one_spec
        scores, _, act, grad = spec.read(self.model, x, objective, info)
        a = as_float(spec.maps(act))
        g = as_float(spec.gradient_maps(grad, "FinerCAM"))
        return self._weighted(jnp.mean(g, axis=(1, 2)), a), scores


_LAYER = frozenset({"layer"})
_NO_PEER = "no installable peer: pytorch-grad-cam needs torchvision"

ROWS = (
    MethodEntry(
        "eigengradcam",
        EigenGradCAM,
        "cam",
        "Eigen-Grad-CAM (first principal component of gradient x activation)",
        layer_build(EigenGradCAM),
        needs=_LAYER,
        output="map",
        differentiable=Differentiability(
            1, 1, "through an SVD: undefined where the top singular values coincide"
        ),
        benchmark=(None, _NO_PEER),
    ),
    MethodEntry(
        "gradcam_elementwise",
        GradCAMElementWise,
        "cam",
        "Grad-CAM element-wise (sum of relu(gradient x activation))",
        layer_build(GradCAMElementWise),
        needs=_LAYER,
        output="map",
        differentiable=CLIPPED_MAP,
        benchmark=(None, _NO_PEER),
    ),
    MethodEntry(
        "shapleycam",
        ShapleyCAM,
        "cam",
        "Shapley-CAM (gradient minus half the Hessian-vector product)",
        layer_build(ShapleyCAM),
        needs=_LAYER,
        output="map",
        differentiable=CLIPPED_MAP,
        benchmark=(None, _NO_PEER),
    ),
    MethodEntry(
        "finercam",
        FinerCAM,
        "cam",
        "Finer-CAM (Grad-CAM of the target against its closest classes)",
        layer_build(FinerCAM),
        needs=_LAYER,
        output="map",
        differentiable=CLIPPED_MAP,
        benchmark=(None, _NO_PEER),
    ),
)
