"""The command line's parser; its method and model lists come from the registries."""

from __future__ import annotations

import argparse
from typing import Any

from .._registry import methods
from .._version import __version__
from ..models._zoo import MODEL_SPECS
from ._explain_dataset import add_parser as add_explain_dataset

_EXAMPLES = """\
examples:
  # the MNIST demo: train or load the CNN, explain 8 digits with every method
  python -m eqx_attr demo

  # Grad-CAM of class 281 (tabby cat) for your own torchvision ResNet-50 weights
  python -m eqx_attr explain --model resnet50 --weights resnet50.safetensors \\
      --image photo.jpg --method gradcam --target 281 --out map.png

  # Integrated Gradients of the predicted class, 64 steps, blurred baseline
  python -m eqx_attr explain --model vgg16 --weights vgg16.safetensors \\
      --image photo.jpg --method ig --n-steps 64 --baseline blur --out ig.png

  # list the methods and models
  python -m eqx_attr methods
"""

_WEIGHTS_HELP = """\
weights: a .safetensors (or .npz) file holding either a PyTorch state dict
(torchvision VGG/ResNet or timm ViT key names; export one with
`safetensors.torch.save_file(model.state_dict(), "w.safetensors")`) or a file
written by `eqx_attr.models.save`. Nothing is downloaded.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage dump)."""

    def error(self, message: str):  # pragma: no cover - exercised via main()
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m eqx_attr",
        description=(
            "eqx_attr: feature attribution for vision models in JAX + Equinox. "
            "Run the MNIST demo, or explain your own pretrained model's prediction "
            "on an image."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"eqx_attr {__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_demo(sub)
    _add_explain(sub)
    add_explain_dataset(sub)
    sub.add_parser(
        "methods",
        help="list the methods and the model names",
        description="List the attribution methods and zoo architectures by name.",
    )
    return parser


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser(
        "demo",
        help="train/load the MNIST CNN and explain 8 digits with every method",
        description=(
            "Train (first run, well under a minute on CPU) or load from the cache "
            "the demo CNN, print its held-out accuracy, explain 8 held-out digits "
            "with every method, write the grid OUT/attributions.png and one PNG per "
            "method, and print each method's time and IG's completeness error; "
            "then rank the methods on faithfulness and sanity metrics (a table and "
            "OUT/deletion_curves.png) and explain the same digits with the MNIST "
            "ViT's methods (OUT/vit_attributions.png; the ViT trains once). "
            "Weights are cached in $EQX_ATTR_CACHE, else $XDG_CACHE_HOME/eqx_attr, "
            "else ~/.cache/eqx_attr."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--out", default="demo_out", help="output folder (default: demo_out)"
    )
    demo.add_argument(
        "--digits", type=int, default=8, help="number of held-out digits (default: 8)"
    )
    demo.add_argument(
        "--no-progress", action="store_true", help="hide the training progress bar"
    )
    demo.add_argument(
        "--no-leaderboard", action="store_true", help="skip the metrics leaderboard"
    )
    demo.add_argument(
        "--leaderboard-all",
        action="store_true",
        help="rank the costly perturbation methods and Score-CAM too (minutes)",
    )
    demo.add_argument("--no-vit", action="store_true", help="skip the ViT panel")
    demo.add_argument(
        "--methods",
        metavar="NAME[,NAME...]",
        help="run only these methods (names from `methods`; default: all)",
    )


def _add_explain(sub: Any) -> None:
    ex = sub.add_parser(
        "explain",
        help="explain a pretrained model's prediction on one image",
        description=(
            "Load a zoo architecture with your pretrained weights, read an image, "
            "resize and centre-crop it to the model's input size, normalise it, "
            "print the top-5 classes, and save the attribution of --target (default: "
            "the predicted class) drawn over the image."
        ),
        epilog=_WEIGHTS_HELP + "\n" + _EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument(
        "--model",
        required=True,
        metavar="NAME",
        help="architecture: " + ", ".join(MODEL_SPECS),
    )
    ex.add_argument(
        "--weights",
        required=True,
        metavar="FILE",
        help="pretrained weights (see below)",
    )
    ex.add_argument(
        "--image", required=True, metavar="FILE", help="image file (PNG, JPEG, ...)"
    )
    ex.add_argument(
        "--method",
        default="gradcam",
        metavar="NAME",
        help="one of: "
        + ", ".join(e.name for e in methods())
        + " (aliases: "
        + ", ".join(f"{a}={e.name}" for e in methods() for a in e.aliases)
        + "); default: gradcam",
    )
    ex.add_argument(
        "--target",
        type=int,
        default=None,
        help="class index to explain (default: the predicted class)",
    )
    ex.add_argument("--out", default="attribution.png", metavar="FILE",
                    help="output PNG (default: attribution.png)")  # fmt: skip
    ex.add_argument(
        "--save-array",
        default=None,
        metavar="FILE.npy",
        help="also save the raw attribution array (NumPy .npy)",
    )
    _add_options(ex)


def _add_options(ex: Any) -> None:
    ex.add_argument(
        "--layer",
        default=None,
        metavar="PATH",
        help="CAM layer as an attribute path, e.g. 'layer4[-1]', 'features[29]', "
        "'blocks[-1].norm1' (default: the model's, see `methods`)",
    )
    ex.add_argument(
        "--normalize",
        default=None,
        metavar="SPEC",
        help="input normalisation: 'imagenet' (mean 0.485,0.456,0.406, std "
        "0.229,0.224,0.225), 'none' (pixels in [0, 1]), 'MEAN,STD' (all channels), "
        "or C means then C stds; default: imagenet for 3-channel models, none "
        "otherwise",
    )
    ex.add_argument(
        "--size",
        type=int,
        default=None,
        help="input side in pixels (default: 224; 28 for small_cnn/mlp; a ViT's is "
        "fixed by its weights)",
    )
    ex.add_argument(
        "--resize",
        type=int,
        default=None,
        help="scale the shorter side to this before the centre crop (default: "
        "size * 256 / 224 for ImageNet-sized inputs, else size)",
    )
    ex.add_argument(
        "--no-resize",
        action="store_true",
        help="use the image as is; it must already have the model's size",
    )
    ex.add_argument("--n-steps", type=int, default=50,
                    help="integrated_gradients: steps (default: 50)")  # fmt: skip
    ex.add_argument(
        "--baseline",
        default="black",
        choices=("black", "white", "zeros", "blur"),
        help="integrated_gradients: black/white pixels (normalised like the image), "
        "zeros (after normalisation), or a blurred copy (default: black)",
    )
    ex.add_argument("--neuron", type=int, default=0,
                    help="neuron_* methods: the neuron, a flat index into the "
                    "layer's output (default: 0)")  # fmt: skip
    ex.add_argument("--concept", type=int, default=0,
                    help="crp: the channel of the layer to condition on "
                    "(default: 0)")  # fmt: skip
    ex.add_argument("--n-samples", type=int, default=25,
                    help="smoothgrad: noisy samples (default: 25)")  # fmt: skip
    ex.add_argument("--stdev", type=float, default=0.15,
                    help="smoothgrad: noise level relative to the input range "
                         "(default: 0.15)")  # fmt: skip
    ex.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="integrated_gradients/scorecam/ablationcam: evaluate this many "
        "inputs at a time (bounds memory)",
    )
    ex.add_argument(
        "--cell",
        type=int,
        default=None,
        help="methods that perturb features: side in pixels of the square feature "
        "cells (default: a 7x7 grid of cells)",
    )
    ex.add_argument("--alpha", type=float, default=0.5,
                    help="opacity of the map (default: 0.5)")  # fmt: skip
    ex.add_argument("--seed", type=int, default=0,
                    help="PRNG seed for random methods (default: 0)")  # fmt: skip
