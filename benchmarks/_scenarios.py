"""The benchmark scenarios: problem sizes, the models with their PyTorch twins and
data, and our side of a case (a fresh batch runner, so its first call compiles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Sizes:
    """Problem sizes; `default`, `quick` and `full` presets below."""

    small_batch: int = 64  # MLP and SmallCNN on 28x28
    large_batch: int = 8  # ResNet-18 and ViT-Tiny on 224x224
    cnn_width: int = 16  # SmallCNN's default: the demo's model
    ig_steps: tuple[int, ...] = (50, 256)
    # Steps for IG on the CNN and on the 224x224 models; the spec's 50/256 on these
    # take minutes per call on a 2-core CPU, so the default set uses fewer.
    cnn_ig_steps: tuple[int, ...] = (50,)
    large_ig_steps: tuple[int, ...] = (4,)
    # IG's `chunk_size` on the 224x224 models: the library's default ("auto").
    large_ig_chunk: int | str | None = "auto"
    sg_samples: int = 25
    chunk_steps: tuple[int, ...] = (32, 128, 512)
    chunk_size: int = 64
    overhead_steps: int = 50
    overhead_cnn_batch: int = 8
    image: int = 224


DEFAULT = Sizes()
QUICK = Sizes(
    small_batch=4,
    large_batch=1,
    cnn_width=4,
    ig_steps=(8,),
    cnn_ig_steps=(8,),
    large_ig_steps=(2,),
    large_ig_chunk="auto",
    sg_samples=4,
    chunk_steps=(8, 32),
    chunk_size=8,
    overhead_steps=8,
    overhead_cnn_batch=2,
    image=32,
)
FULL = replace(DEFAULT, cnn_ig_steps=(50, 256), large_ig_steps=(50,))

ALL_MODELS = ("mlp", "cnn", "resnet18", "vit_tiny")
ALL_METHODS = (
    "grad",
    "gxi",
    "ig",
    "smoothgrad",
    "guided",
    "deconv",
    "gradcam",
    "guided-gradcam",
    "all-targets",
    "shared",
    "ig-chunk",
    "ig-overhead",
)


# ---------------------------------------------------------------------------------
# Models, twins and data


@dataclass
class Bench:
    """A model, its torch twin, a batch, and (for CAM) the layer on both sides."""

    name: str
    model: Any
    twin: Any
    xs: jax.Array
    ts: jax.Array
    xt: Any
    tt: Any
    n_classes: int
    layer: Callable | None = None
    twin_layer: Any = None
    cam_kwargs: dict = field(default_factory=dict)


class _TokensAsGrid:
    """Show Captum a ViT token layer as a `(B, D, h, w)` map.

    Captum's LayerGradCam treats dimension 1 of the hooked layer's output as the
    channels and averages the gradient over the rest, so it cannot read a
    `(B, N + 1, D)` token sequence. This wraps the twin's layer so that its patch
    tokens pass through an `nn.Identity` (`.grid`) shaped `(B, D, h, w)`: hooking
    `.grid` gives the usual Grad-CAM over the patch grid, which is what
    `xa.GradCAM(..., layout="tokens", n_prefix_tokens=1)` computes.
    """

    @staticmethod
    def wrap(layer: Any, n_prefix: int) -> Any:
        import torch

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = layer
                self.grid = torch.nn.Identity()

            def forward(self, x):
                t = self.inner(x)
                prefix, patches = t[:, :n_prefix], t[:, n_prefix:]
                b, n, d = patches.shape
                h = int(round(n**0.5))
                g = self.grid(patches.transpose(1, 2).reshape(b, d, h, n // h))
                return torch.cat([prefix, g.reshape(b, d, n).transpose(1, 2)], dim=1)

        return Wrapped()


# Benchmark scenario -> (zoo architecture, factory keywords from the sizes, input).
def _scenario(name: str, sizes: Sizes) -> tuple[str, dict, tuple, int]:
    small, large = (1, 28, 28), (3, sizes.image, sizes.image)
    if name == "mlp":
        return "mlp", {}, small, sizes.small_batch
    if name == "cnn":
        return "small_cnn", {"width": sizes.cnn_width}, small, sizes.small_batch
    if name == "resnet18":
        return "resnet18", {}, large, sizes.large_batch
    if name == "vit_tiny":
        patch = 16 if sizes.image % 16 == 0 and sizes.image >= 64 else 8
        kw = {"image_size": sizes.image, "patch_size": patch}
        return "vit_tiny", kw, large, sizes.large_batch
    raise ValueError(f"unknown model {name!r}; choose from {ALL_MODELS}")


def build_bench(name: str, sizes: Sizes, device: str) -> Bench:
    """The scenario's zoo model and twin; its CAM layer from the model registry."""
    import torch

    from eqx_attr.models import model_spec, where_from_path
    from eqx_attr.torch_twins import to_torch

    arch, kwargs, shape, batch = _scenario(name, sizes)
    spec = model_spec(arch)
    model = spec.factory(key=jax.random.key(0), **kwargs)
    n_classes = spec.config(model)["n_classes"]
    twin = to_torch(model)
    layer = spec.layer() if name != "mlp" else None
    twin_layer = None
    cam = dict(spec.layer_options)
    if layer is not None and cam.get("layout") == "tokens":
        # The same path names the twin's layer; Captum needs tokens as a grid.
        parent, _, attr = spec.cam_layer.rpartition(".")
        owner = where_from_path(parent)(twin)
        wrapped = _TokensAsGrid.wrap(getattr(owner, attr), spec.n_prefix_tokens)
        setattr(owner, attr, wrapped)
        twin_layer = wrapped.grid
    elif layer is not None:
        twin_layer = where_from_path(spec.cam_layer)(twin)
    kx, kt = jax.random.split(jax.random.key(1))
    if shape[0] == 1:
        xs = jax.random.uniform(kx, (batch, *shape), jnp.float32)
    else:  # normalised images
        xs = jax.random.normal(kx, (batch, *shape), jnp.float32)
    ts = jax.random.randint(kt, (batch,), 0, n_classes, jnp.int32)
    tdev = "cuda" if device == "gpu" else "cpu"
    twin = twin.to(tdev)
    xt = torch.tensor(np.asarray(xs), device=tdev)
    tt = torch.tensor(np.asarray(ts), dtype=torch.long, device=tdev)
    return Bench(name, model, twin, xs, ts, xt, tt, n_classes, layer, twin_layer, cam)


# ---------------------------------------------------------------------------------
# Our side: a fresh jitted, vmapped call per case, so the first call compiles


def batched(method: Any) -> Callable[..., Any]:
    """`run(meth, xs, ts, keys=None)`: the library's batch runner, fresh per case."""
    from eqx_attr._batch import batch_runner

    del method  # one fresh runner per case, so its first call compiles
    return batch_runner()


def ours_call(method: Any, b: Bench) -> Callable[[], Any]:
    run = batched(method)
    return lambda: run(method, b.xs, b.ts)
