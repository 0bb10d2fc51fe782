"""KPCA-CAM, as pytorch-grad-cam's `kpca_cam.py`: the first kernel principal
component of the layer's activations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._attribution import (
    check_choice,
)
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry
from ._base import (
    AbstractCAM,
    check_agnostic_target,
    layer_build,
    read_activation,
)
from ._smoothing import check_no_eigen_smooth
from ._spec import LayerArg, Layers

__all__ = ["KPCACAM"]

KERNELS = ("sigmoid", "rbf", "linear", "poly", "cosine")


def kernel_matrix(
    feats: Float[Array, "n d"], kernel: str, gamma: float | None
) -> Float[Array, "n n"]:
    """scikit-learn's `pairwise_kernels` for KernelPCA's defaults (`degree=3`,
    `coef0=1`, `gamma=1/d` when None)."""
    g = 1.0 / feats.shape[1] if gamma is None else gamma
    dot = feats @ feats.T
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (g * dot + 1.0) ** 3
    if kernel == "sigmoid":
        return jnp.tanh(g * dot + 1.0)
    if kernel == "rbf":
        sq = jnp.sum(feats * feats, axis=1)
        return jnp.exp(-g * jnp.maximum(sq[:, None] + sq[None, :] - 2 * dot, 0))
    norm = jnp.sqrt(jnp.sum(feats * feats, axis=1))
    unit = feats / jnp.where(norm > 0, norm, 1)[:, None]
    return unit @ unit.T


def kpca_map(a: Array, kernel: str, gamma: float | None) -> Array:
    """The first kernel principal component of the centred activations, per location."""
    c, h, w = a.shape
    feats = a.reshape(c, h * w).T
    feats = feats - jnp.mean(feats, axis=0, keepdims=True)
    k = kernel_matrix(feats, kernel, gamma)
    # KernelCenterer: K - 1K - K1 + 1K1
    col = jnp.mean(k, axis=0, keepdims=True)
    row = jnp.mean(k, axis=1, keepdims=True)
    kc = k - col - row + jnp.mean(k)
    vals, vecs = jnp.linalg.eigh((kc + kc.T) / 2)
    v, lam = vecs[:, -1], jnp.maximum(vals[-1], 0)
    # scikit-learn's `svd_flip(u_based_decision=True)`: the entry of largest
    # magnitude is positive.
    v = v * jnp.where(v[jnp.argmax(jnp.abs(v))] < 0, -1, 1).astype(v.dtype)
    return (v * jnp.sqrt(lam)).reshape(h, w)


class KPCACAM(AbstractCAM):
    """KPCA-CAM: the first kernel principal component of the layer's activations.

    Karmani et al., *KPCA-CAM: Visual Explainability of Deep Computer Vision
    Models using Kernel PCA*, 2024, as pytorch-grad-cam's `kpca_cam.py` computes it
    (`KPCA_CAM.get_cam_image` -> `get_2d_projection_kernel` in
    `utils/svd_on_activations.py`): the activations, one row per location, are
    centred over locations; scikit-learn's `KernelPCA(n_components=1, kernel,
    gamma).fit_transform` of them is the map: the centred kernel matrix's leading
    eigenvector times the square root of its eigenvalue, with scikit-learn's sign
    (the entry of largest magnitude positive). The kernel is dense, `(hw, hw)`.
    Class-agnostic: `target` is checked, then ignored.

    **Arguments:** as for [`eqx_attr.GradCAM`][] (`model`, `layer`, `relu`,
    `resize`, `layout`, `n_prefix_tokens`, `grid`, `call_index`), and

    - `kernel`: `"sigmoid"` (default, `tanh(gamma <a, b> + 1)`), `"rbf"`,
        `"linear"`, `"poly"` (`(gamma <a, b> + 1)^3`) or `"cosine"`, as
        scikit-learn defines them.
    - `gamma`: the kernel's coefficient; `None` (default) is `1 / n_channels`.

    **Returns:** an `(H, W)` map (or the layer's `(h, w)` with `resize=None`).

    ```python
    h = xa.KPCACAM(model, lambda m: m.conv2, kernel="rbf")(x)
    ```
    """

    model: Callable[..., Any]
    spec: Layers
    relu: bool = eqx.field(static=True, default=True)
    resize: str | None = eqx.field(static=True, default="bilinear")
    eigen_smooth: bool = eqx.field(static=True, default=False)
    aug_smooth: bool = eqx.field(static=True, default=False)
    kernel: str = eqx.field(static=True, default="sigmoid")
    gamma: float | None = eqx.field(static=True, default=None)
    input_layout: InputLayout = input_layout_field()

    def __init__(
        self,
        model: Callable[..., Any],
        layer: LayerArg,
        relu: bool = True,
        resize: str | None = "bilinear",
        *,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        input_layout: InputLayout = None,
        **layer_options: Any,
    ):
        AbstractCAM.__init__(
            self, model, layer, relu, resize, input_layout=input_layout,
            **layer_options,
        )  # fmt: skip
        self.kernel = kernel
        self.gamma = gamma

    def __check_init__(self):
        check_no_eigen_smooth(
            self.eigen_smooth,
            "KPCACAM",
            "its map is already a kernel principal component",
        )
        check_choice(self.kernel, "kernel", KERNELS)
        if self.gamma is not None and not (
            isinstance(self.gamma, (int, float))
            and not isinstance(self.gamma, bool)
            and self.gamma > 0
        ):
            raise ValueError(
                f"`gamma` must be None or a positive number, got {self.gamma!r}."
            )

    def _map(self, x, target, info, key):
        check_agnostic_target(target, info.out)
        return kpca_map(read_activation(self, x, info), self.kernel, self.gamma)


_LAYER = frozenset({"layer"})
_NO_PEER = "no installable peer: pytorch-grad-cam needs torchvision"

ROWS = (
    MethodEntry(
        "kpcacam",
        KPCACAM,
        "cam",
        "KPCA-CAM (first kernel principal component of the activations)",
        layer_build(KPCACAM),
        needs=_LAYER,
        output="map",
        differentiable=Differentiability(
            1,
            1,
            "through an eigendecomposition: undefined where top eigenvalues tie",
        ),
        benchmark=(None, _NO_PEER),
    ),
)
