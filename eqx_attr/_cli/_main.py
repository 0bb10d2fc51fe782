"""The command line: `python -m eqx_attr {demo,explain,methods}` (also `eqx-attr`)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------
# Methods by name


class CLIError(Exception):
    """Bad input from the command line: reported as one line, exit status 2."""


def _needs_layer(name: str) -> bool:
    return "cam" in name


# name -> (help, builder(model, layer, args, baseline)); CAM-family methods need a
# layer. Builders import lazily so `--help` stays fast.
def _method_table() -> dict[str, tuple[str, Callable[..., Any]]]:
    import eqx_attr as xa

    def ig(m, layer, a, baseline):
        return xa.IntegratedGradients(
            m, n_steps=a.n_steps, baseline=baseline, chunk_size=a.chunk_size
        )

    def sg(m, layer, a, baseline):
        return xa.SmoothGrad(xa.Gradients(m), n_samples=a.n_samples, stdev=a.stdev)

    def cam(cls, **extra):
        def build(m, layer, a, baseline):
            kwargs = dict(layer.cam_kwargs)
            kwargs.update(extra)
            return getattr(xa, cls)(m, layer.where, **kwargs)

        return build

    def classic_cam(m, layer, a, baseline):
        if layer.classifier is None:
            raise CLIError(
                "`--method cam` needs a model whose last feature map is average-"
                "pooled straight into a linear classifier (small_cnn, resnet*); use "
                "gradcam for this model"
            )
        return xa.CAM(m, layer.where, classifier=layer.classifier, **layer.cam_kwargs)

    return {
        "gradients": (
            "gradient of the score (saliency)",
            lambda m, layer, a, b: xa.Gradients(m),
        ),
        "gradients_x_input": (
            "input x gradient",
            lambda m, layer, a, b: xa.GradientsXInput(m),
        ),
        "integrated_gradients": ("Integrated Gradients (--n-steps, --baseline)", ig),
        "smoothgrad": ("SmoothGrad of the gradient (--n-samples, --stdev)", sg),
        "guided_backprop": (
            "Guided Backpropagation",
            lambda m, layer, a, b: xa.GuidedBackprop(m),
        ),
        "deconvolution": ("Deconvnet", lambda m, layer, a, b: xa.Deconvolution(m)),
        "cam": ("Class Activation Mapping (GAP + linear models)", classic_cam),
        "gradcam": ("Grad-CAM", cam("GradCAM")),
        "guided_gradcam": ("Guided Grad-CAM", cam("GuidedGradCAM")),
        "gradcam_plus_plus": ("Grad-CAM++", cam("GradCAMPlusPlus")),
        "xgradcam": ("XGrad-CAM", cam("XGradCAM")),
        "hirescam": ("HiRes-CAM", cam("HiResCAM")),
        "layercam": ("Layer-CAM", cam("LayerCAM")),
        "eigencam": ("Eigen-CAM", cam("EigenCAM")),
        "scorecam": ("Score-CAM (--chunk-size)", cam("ScoreCAM")),
        "ablationcam": ("Ablation-CAM (--chunk-size)", cam("AblationCAM")),
    }


METHOD_NAMES = (
    "gradients",
    "gradients_x_input",
    "integrated_gradients",
    "smoothgrad",
    "guided_backprop",
    "deconvolution",
    "cam",
    "gradcam",
    "guided_gradcam",
    "gradcam_plus_plus",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "scorecam",
    "ablationcam",
)
_ALIASES = {
    "ig": "integrated_gradients",
    "saliency": "gradients",
    "gxi": "gradients_x_input",
    "gradcampp": "gradcam_plus_plus",
    "gradcam++": "gradcam_plus_plus",
    "guided_bp": "guided_backprop",
    "deconvnet": "deconvolution",
}

# ---------------------------------------------------------------------------------
# Layers


class LayerChoice:
    """The CAM layer of a model: a `where` function and CAM options."""

    def __init__(self, path: str, where, cam_kwargs=None, classifier=None):
        self.path = path
        self.where = where
        self.cam_kwargs = cam_kwargs or {}
        self.classifier = classifier


_PATH_PART = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[-?\d+\])*)$")


def parse_layer_path(path: str) -> Callable[[Any], Any]:
    """`"layer4[-1].conv2"` -> `lambda m: m.layer4[-1].conv2`, without `eval`."""
    steps: list[tuple[str, Any]] = []
    for part in path.split("."):
        match = _PATH_PART.match(part.strip())
        if not match:
            raise CLIError(
                f"--layer {path!r}: cannot parse {part!r}; use attribute names and "
                "integer indices, e.g. 'layer4', 'features[29]', 'blocks[-1].norm1'"
            )
        steps.append(("attr", match.group(1)))
        for index in re.findall(r"\[(-?\d+)\]", match.group(2)):
            steps.append(("item", int(index)))

    def where(model):
        node = model
        for kind, value in steps:
            node = getattr(node, value) if kind == "attr" else node[value]
        return node

    return where


def default_layer(arch: str, model: Any, override: str | None) -> LayerChoice:
    """The usual CAM layer of a zoo model, or `override` (a `--layer` path)."""
    is_vit = arch.startswith("vit")
    kwargs = {"layout": "tokens", "n_prefix_tokens": 1} if is_vit else {}
    classifier = None
    if arch == "small_cnn":
        path, classifier = "conv2", (lambda m: m.fc)
    elif arch.startswith("resnet"):
        path, classifier = "layer4", (lambda m: m.fc)
    elif arch.startswith("vgg"):
        # The last ReLU of `features`, before the last max-pool.
        path = "features[-2]"
    elif is_vit:
        path = "blocks[-1].norm1"
    else:
        path = ""
    if override and override != path:
        # CAM's classifier is only known to sit right after the default layer.
        path, classifier = override, None
    if not path:
        raise CLIError(
            f"model {arch!r} has no convolutional feature map for CAM methods; pass "
            "--layer PATH, or use an input-space method such as gradients"
        )
    where = parse_layer_path(path)
    try:
        where(model)
    except (AttributeError, IndexError, TypeError) as e:
        raise CLIError(f"--layer {path!r} does not name a layer of {arch}: {e}") from e
    return LayerChoice(path, where, kwargs, classifier)


# ---------------------------------------------------------------------------------
# Images


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_normalize(spec: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """`imagenet`, `none`, `MEAN,STD` or `M1,..,Mc,S1,..,Sc` -> per-channel arrays."""
    if spec == "imagenet":
        if channels != 3:
            raise CLIError(
                f"--normalize imagenet needs a 3-channel model; this one takes "
                f"{channels} channel(s); use --normalize none or MEAN,STD"
            )
        return np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    if spec == "none":
        return np.zeros(channels), np.ones(channels)
    try:
        values = [float(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if len(values) == 2:
        mean, std = np.full(channels, values[0]), np.full(channels, values[1])
    elif len(values) == 2 * channels:
        mean, std = np.array(values[:channels]), np.array(values[channels:])
    else:
        raise CLIError(
            f"--normalize {spec!r}: expected 'imagenet', 'none', 'MEAN,STD' or "
            f"{channels} means then {channels} stds, comma-separated"
        )
    if np.any(std <= 0):
        raise CLIError(f"--normalize {spec!r}: standard deviations must be > 0")
    return mean, std


def load_image(path: str, channels: int, size: int, resize: int | None) -> np.ndarray:
    """Read an image file into `(channels, size, size)` float32 pixels in [0, 1].

    With `resize`, the shorter side is first scaled to `resize` pixels (bicubic),
    then the centre `size x size` square is cropped (torchvision's evaluation
    transform). With `resize=None` the image must already be `size x size`.
    Greyscale images feed 1-channel models, RGB (or RGBA, whose alpha is dropped)
    images 3-channel ones; anything else is an error.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise CLIError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "PA"):
                img = img.convert("RGBA" if "A" in mode or "transparency" in img.info
                                  else "RGB")  # fmt: skip
                mode = img.mode
            if mode in ("RGBA", "LA"):
                img = img.convert(mode[:-1])
                mode = img.mode
            if mode in ("I;16", "I", "F"):
                img = img.convert("F")
            n_img = {"L": 1, "1": 1, "F": 1, "RGB": 3}.get(img.mode)
            if n_img is None:
                raise CLIError(
                    f"image {path} has mode {mode}; convert it to RGB or greyscale"
                )
            if n_img != channels:
                raise CLIError(
                    f"image {path} has {n_img} channel(s) but the model takes "
                    f"{channels}; convert the image (e.g. to "
                    f"{'greyscale' if channels == 1 else 'RGB'}) first"
                )
            w, h = img.size
            if resize is not None:
                scale = resize / min(w, h)
                new = (max(size, round(w * scale)), max(size, round(h * scale)))
                img = img.resize(new, Image.Resampling.BICUBIC)
                w, h = img.size
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
            elif (w, h) != (size, size):
                raise CLIError(
                    f"image {path} is {w}x{h} but the model takes {size}x{size}; "
                    "drop --no-resize to resize and centre-crop it"
                )
            arr = np.asarray(img, dtype=np.float32)
    except UnidentifiedImageError as e:
        raise CLIError(
            f"cannot read image {path}: not an image file Pillow knows"
        ) from e
    except OSError as e:
        raise CLIError(f"cannot read image {path}: {e}") from e
    if img.mode != "F":
        arr = arr / 255.0
    elif arr.max() > 1.0:
        arr = arr / 65535.0
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
    return np.ascontiguousarray(arr, dtype=np.float32)


# ---------------------------------------------------------------------------------
# Models


def model_input(arch: str, model: Any, size_override: int | None) -> tuple[int, int]:
    """`(channels, side)` of the model's input."""
    if arch == "mlp":
        shape = model.in_shape
        if len(shape) != 3 or shape[1] != shape[2]:
            raise CLIError(f"mlp input shape {shape} is not a square image")
        return shape[0], shape[1]
    if arch == "small_cnn":
        return model.conv1.layers[0].in_channels, size_override or 28
    if arch.startswith("vit"):
        if size_override and size_override != model.image_size:
            raise CLIError(
                f"--size {size_override}: this ViT's weights fix its input at "
                f"{model.image_size}x{model.image_size}"
            )
        return model.in_channels, model.image_size
    return model.in_channels, size_override or 224


def load_model(arch: str, weights: str) -> Any:
    from .. import models

    if arch not in models.ARCHITECTURES:
        raise CLIError(
            f"unknown model {arch!r}; choose one of {', '.join(models.ARCHITECTURES)}"
        )
    if not os.path.exists(weights):
        raise CLIError(f"weights file not found: {weights}")
    return models.load_pretrained(weights, arch)


# ---------------------------------------------------------------------------------
# Parser


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
    from .. import __version__

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

    demo = sub.add_parser(
        "demo",
        help="train/load the MNIST CNN and explain 8 digits with every method",
        description=(
            "Train (first run, well under a minute on CPU) or load from the cache "
            "the demo CNN, print its held-out accuracy, explain 8 held-out digits "
            "with every method, write the grid OUT/attributions.png and one PNG per "
            "method, and print each method's time and IG's completeness error. "
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
        help="architecture: small_cnn, mlp, vgg11..vgg19 (_bn), "
        "resnet18/34/50/101/152, vit_tiny/small/base",
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
        + ", ".join(METHOD_NAMES)
        + " (aliases: "
        + ", ".join(f"{k}={v}" for k, v in _ALIASES.items())
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
    ex.add_argument(
        "--layer",
        default=None,
        metavar="PATH",
        help="CAM layer as an attribute path, e.g. 'layer4[-1]', 'features[29]', "
        "'blocks[-1].norm1' (default per model: small_cnn conv2, resnet layer4, vgg "
        "features[-2], vit blocks[-1].norm1)",
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
    ex.add_argument("--alpha", type=float, default=0.5,
                    help="opacity of the map (default: 0.5)")  # fmt: skip
    ex.add_argument("--seed", type=int, default=0,
                    help="PRNG seed for random methods (default: 0)")  # fmt: skip

    sub.add_parser(
        "methods",
        help="list the methods and the model names",
        description="List the attribution methods and zoo architectures by name.",
    )
    return parser


# ---------------------------------------------------------------------------------
# Commands


def _resolve_method(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in METHOD_NAMES:
        raise CLIError(
            f"unknown method {name!r}; choose one of {', '.join(METHOD_NAMES)}"
        )
    return key


def cmd_explain(args: argparse.Namespace, out=print) -> int:
    method_name = _resolve_method(args.method)
    arch = args.model.strip().lower()
    for option in ("n_steps", "n_samples"):
        if getattr(args, option) < 1:
            raise CLIError(f"--{option.replace('_', '-')} must be >= 1")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise CLIError("--chunk-size must be >= 1")
    if not 0 <= args.alpha <= 1:
        raise CLIError("--alpha must lie in [0, 1]")
    if args.size is not None and args.size < 1:
        raise CLIError("--size must be >= 1")
    model = load_model(arch, args.weights)
    channels, side = model_input(arch, model, args.size)
    spec = args.normalize or ("imagenet" if channels == 3 else "none")
    mean, std = parse_normalize(spec, channels)
    if args.no_resize:
        resize = None
    elif args.resize is not None:
        if args.resize < side:
            raise CLIError(f"--resize {args.resize} is smaller than the input {side}")
        resize = args.resize
    else:
        resize = round(side * 256 / 224) if side >= 64 else side
    pixels = load_image(args.image, channels, side, resize)

    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import eqx_attr as xa

    mean_b, std_b = mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)
    x = jnp.asarray((pixels - mean_b) / std_b, jnp.float32)
    scores = np.asarray(eqx.filter_jit(model)(x), np.float64)
    if scores.ndim != 1:
        raise CLIError(f"model output has shape {scores.shape}, expected a vector")
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    top = np.argsort(-scores)[:5]
    out("top-5: " + ", ".join(f"{int(c)} ({probs[c]:.3f})" for c in top))
    target = int(top[0]) if args.target is None else args.target
    if not 0 <= target < scores.shape[0]:
        raise CLIError(
            f"--target {target} is out of range; the model has {scores.shape[0]} "
            f"classes (0..{scores.shape[0] - 1})"
        )

    _, builder = _method_table()[method_name]
    layer = (
        default_layer(arch, model, args.layer) if _needs_layer(method_name) else None
    )

    def pixel_baseline(value: float):
        return jnp.asarray((np.full_like(pixels, value) - mean_b) / std_b, jnp.float32)

    baseline = {
        "black": lambda: pixel_baseline(0.0),
        "white": lambda: pixel_baseline(1.0),
        "zeros": lambda: xa.baselines.Zeros(),
        "blur": lambda: xa.baselines.Blur(sigma=max(1.0, side / 32)),
    }[args.baseline]()
    method = builder(model, layer, args, baseline)
    attr = eqx.filter_jit(lambda m, x, k: m(x, target, key=k))(
        method, x, jax.random.key(args.seed)
    )
    attr = np.asarray(attr)
    if not np.all(np.isfinite(attr)):
        raise CLIError(f"{method_name} returned non-finite values for this input")
    if args.save_array:
        np.save(args.save_array, attr, allow_pickle=False)
    title = f"{method_name}, class {target}"
    if layer is not None:
        title += f" ({layer.path})"
    xa.viz.grid(
        pixels[None],
        {title: attr[None]},
        overlay=True if attr.ndim == 2 else False,
        alpha=args.alpha,
        cell=3.0,
        path=args.out,
    )
    extra = f" and {args.save_array}" if args.save_array else ""
    out(f"target {target}: wrote {args.out}{extra}")
    return 0


def cmd_methods(out=print) -> int:
    from .. import models

    table = _method_table()
    out("methods (--method):")
    for name in METHOD_NAMES:
        out(f"  {name:<22} {table[name][0]}")
    out("aliases: " + ", ".join(f"{k} -> {v}" for k, v in _ALIASES.items()))
    out("models (--model): " + ", ".join(models.ARCHITECTURES))
    return 0


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 600 else text[:597] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 on success, 2 on bad input).

    Bad input (missing or unreadable files, wrong image size or channel count,
    unknown model or method, mismatched weights) prints ONE line on stderr.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "demo":
            from ._demo import run_demo

            if args.digits < 1:
                raise CLIError("--digits must be >= 1")
            run_demo(args.out, n_digits=args.digits, progress=not args.no_progress)
            return 0
        if args.command == "methods":
            return cmd_methods()
        return cmd_explain(args)
    except CLIError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError) as e:
        # Library errors (WeightsError is a ValueError) carry their own fix; the
        # command line shows them as one line, without a traceback.
        print(f"error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "load_image", "main", "parse_layer_path"]
