"""The model configurations of `bench_large.py`: the zoo's ImageNet-size models,
and random configurations the library's defaults were never tuned on."""

from __future__ import annotations

import numpy as np

# Row name -> zoo architecture.
MODELS = {"resnet18": "resnet18", "resnet50": "resnet50", "vgg16": "vgg16",
          "vit_b16": "vit_base"}  # fmt: skip


def named_configs(models: list[str], side: int, quick: bool) -> list[dict]:
    """`{name, label, arch, kw, side}` for each of `models` at `side` pixels."""
    out = []
    for name in models:
        arch = MODELS[name]
        kw: dict = {"image_size": side} if arch.startswith("vit") else {}
        if quick:  # narrow models, ten classes: a smoke test of the script
            kw |= {"width": 8} if arch.startswith("resnet") else {}
            kw |= {"n_classes": 10}
        out.append({"name": name, "label": name, "arch": arch, "kw": kw, "side": side})
    return out


def random_configs(n: int, seed: int) -> list[dict]:
    """`n` configurations drawn from `seed`: ResNets of depth 18/34/50, VGG-11/13,
    ViT-Tiny/Small, MLPs and SmallCNNs, with random widths, depths, patch sizes,
    class counts and input sides from 32 to 160 pixels."""
    rng = np.random.default_rng(seed)

    def pick(*values):
        return values[int(rng.integers(len(values)))]

    out = []
    for i in range(n):
        family = pick("resnet", "vgg", "vit", "mlp", "cnn")
        side = int(pick(32, 48, 64, 96, 128, 160))
        if family == "resnet":
            arch, kw = f"resnet{pick(18, 34, 50)}", {"width": pick(8, 16, 32, 64)}
        elif family == "vgg":
            arch, kw = f"vgg{pick(11, 13)}", {}
        elif family == "vit":
            patch = pick(8, 16)
            side = max(4 * patch, side - side % patch)
            arch = f"vit_{pick('tiny', 'small')}"
            kw = {"image_size": side, "patch_size": patch}
        elif family == "mlp":
            arch = "mlp"
            kw = {"in_shape": (3, side, side), "width": pick(256, 512, 1024, 2048),
                  "depth": pick(1, 2, 3, 4)}  # fmt: skip
        else:
            arch, kw = "small_cnn", {"width": pick(8, 16, 32, 64), "in_channels": 3}
        kw["n_classes"] = pick(10, 100, 1000)
        shown = " ".join(f"{k}={v}" for k, v in kw.items() if k != "in_shape")
        out.append({"name": f"random{i}", "label": f"{arch} {shown}, {side}px",
                    "arch": arch, "kw": kw, "side": side})  # fmt: skip
    return out
