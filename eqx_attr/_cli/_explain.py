"""`explain` and `methods`: one image through a zoo model, and the registries' lists.

What a method needs (a layer, a classifier, a key, a baseline, a mask, an
attention selector) comes from the method registry; what the model offers (input
shape, default CAM layer and layout, classifier, attention) from the model
registry. Nothing here branches on a method's or a model's name.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .._registry import BuildContext, MethodEntry, get, methods
from ..images import load_image, normalization
from ..models._paths import where_from_path
from ..models._zoo import MODEL_SPECS, ModelSpec


class CLIError(Exception):
    """Bad input from the command line: reported as one line, exit status 2."""


def resolve_method(name: str) -> MethodEntry:
    """The registry entry for `--method NAME` (aliases, `-` and `_` alike)."""
    try:
        return get(name)
    except ValueError:
        known = ", ".join(e.name for e in methods())
        raise CLIError(f"unknown method {name!r}; choose one of {known}") from None


def load_model(arch: str, weights: str) -> tuple[ModelSpec, Any]:
    """The zoo model `arch` filled from `weights`, and its registry entry."""
    from ..models import load_pretrained

    if arch not in MODEL_SPECS:
        raise CLIError(
            f"unknown model {arch!r}; choose one of {', '.join(MODEL_SPECS)}"
        )
    if not os.path.exists(weights):
        raise CLIError(f"weights file not found: {weights}")
    return MODEL_SPECS[arch], load_pretrained(weights, arch)


def _layer(spec: ModelSpec, model: Any, override: str | None) -> tuple[str, Any]:
    path = override or spec.cam_layer
    if not path:
        raise CLIError(
            f"model {spec.name!r} has no convolutional feature map for layer methods; "
            "pass --layer PATH, or use an input-space method such as gradients"
        )
    try:
        where = where_from_path(path)
    except ValueError as e:
        raise CLIError(f"--layer {path!r}: {e}") from e
    try:
        where(model)
    except (AttributeError, IndexError, TypeError) as e:
        raise CLIError(
            f"--layer {path!r} does not name a layer of {spec.name}: {e}"
        ) from e
    return path, where


def feature_cells(shape: tuple[int, ...], cell: int | None) -> np.ndarray:
    """Integer feature ids `(1, H, W)`: square cells of `cell` pixels (default H/7)."""
    h, w = shape[-2:]
    cell = cell or max(1, -(-h // 7))
    rows, cols = np.arange(h) // cell, np.arange(w) // cell
    ids = rows[:, None] * (cols.max() + 1) + cols[None, :]
    return ids[None].astype(np.int32)


def build_context(
    entry: MethodEntry,
    spec: ModelSpec,
    model: Any,
    args: argparse.Namespace,
    baseline: Any,
    shape: tuple[int, ...],
) -> tuple[BuildContext, str | None]:
    """The [`BuildContext`][] for `entry` on `model`, and the layer path used."""
    path, layer, classifier = None, None, None
    if "layer" in entry.needs:
        path, layer = _layer(spec, model, args.layer)
    if "classifier" in entry.needs:
        # The classifier is only known to sit right after the default layer.
        if spec.classifier is None or path != spec.cam_layer:
            raise CLIError(
                f"--method {entry.name} needs the model's last feature map to be "
                "average-pooled straight into a linear classifier (small_cnn, "
                "resnet*, at their default layer); use gradcam for this model"
            )
        classifier = spec.classifier_where()
    attention = spec.attention_where()
    if "attention" in entry.needs and attention is None:
        raise CLIError(
            f"--method {entry.name} needs a transformer's attention maps; model "
            f"{spec.name!r} has none (use a vit_* model)"
        )
    ctx = BuildContext(
        model=model,
        layer=layer,
        layer_options=dict(spec.layer_options) if path == spec.cam_layer else {},
        classifier=classifier,
        attention=attention,
        n_prefix_tokens=spec.n_prefix_tokens,
        mask=feature_cells(shape, args.cell) if "mask" in entry.needs else None,
        baseline=baseline,
        options={
            "n_steps": args.n_steps,
            "n_samples": args.n_samples,
            "stdev": args.stdev,
            "chunk_size": args.chunk_size,
            "neuron": getattr(args, "neuron", 0),
            "concepts": getattr(args, "concept", 0),
        },
        input_shape=shape,
    )
    return ctx, path


def _check_args(args: argparse.Namespace) -> None:
    for option in ("n_steps", "n_samples"):
        if getattr(args, option) < 1:
            raise CLIError(f"--{option.replace('_', '-')} must be >= 1")
    for option in ("chunk_size", "size", "cell"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise CLIError(f"--{option.replace('_', '-')} must be >= 1")
    if not 0 <= args.alpha <= 1:
        raise CLIError("--alpha must lie in [0, 1]")


def _pixels(args: argparse.Namespace, spec: ModelSpec, model: Any):
    try:
        shape = spec.input_shape(model, args.size)
    except ValueError as e:
        raise CLIError(f"--size {args.size}: {e}") from e
    if len(shape) != 3 or shape[1] != shape[2]:
        raise CLIError(f"{spec.name} input shape {shape} is not a square image")
    channels, side, _ = shape
    mean, std = normalization(
        args.normalize or ("imagenet" if channels == 3 else "none"), channels
    )
    if args.no_resize:
        resize = None
    elif args.resize is not None:
        if args.resize < side:
            raise CLIError(f"--resize {args.resize} is smaller than the input {side}")
        resize = args.resize
    else:
        resize = round(side * 256 / 224) if side >= 64 else side
    pixels = load_image(args.image, channels, side, resize)
    return pixels, mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)


def _baseline(name: str, pixels: np.ndarray, mean, std) -> Any:
    import jax.numpy as jnp

    from ..baselines import Blur, Zeros

    def pixel_value(value: float):
        return jnp.asarray((np.full_like(pixels, value) - mean) / std, jnp.float32)

    choices: dict[str, Callable[[], Any]] = {
        "black": lambda: pixel_value(0.0),
        "white": lambda: pixel_value(1.0),
        "zeros": lambda: Zeros(),
        "blur": lambda: Blur(sigma=max(1.0, pixels.shape[-1] / 32)),
    }
    return choices[name]()


def _predict(model: Any, x: Any, target: int | None, out: Callable) -> int:
    import equinox as eqx

    scores = np.asarray(eqx.filter_jit(model)(x), np.float64)
    if scores.ndim != 1:
        raise CLIError(f"model output has shape {scores.shape}, expected a vector")
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    top = np.argsort(-scores)[:5]
    out("top-5: " + ", ".join(f"{int(c)} ({probs[c]:.3f})" for c in top))
    target = int(top[0]) if target is None else target
    if not 0 <= target < scores.shape[0]:
        raise CLIError(
            f"--target {target} is out of range; the model has {scores.shape[0]} "
            f"classes (0..{scores.shape[0] - 1})"
        )
    return target


def _layer_picture(attr: np.ndarray, size: tuple[int, ...], name: str) -> np.ndarray:
    """A layer's `(C, h, w)` attribution as a picture: summed over channels and
    resized to the image (as a CAM is); other shapes are saved, not drawn."""
    if attr.ndim != 3:
        raise CLIError(
            f"{name} returned a layer attribution of shape {attr.shape}, which is "
            "not a feature map to draw; pass --layer naming a convolution, or keep "
            "the numbers with --save-array"
        )
    import jax

    return np.asarray(jax.image.resize(attr.sum(axis=0), size, "bilinear"))


def cmd_explain(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    """Explain one image; writes `args.out` (and `args.save_array`)."""
    entry = resolve_method(args.method)
    _check_args(args)
    spec, model = load_model(args.model.strip().lower(), args.weights)
    pixels, mean, std = _pixels(args, spec, model)

    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from ..viz import grid

    x = jnp.asarray((pixels - mean) / std, jnp.float32)
    target = _predict(model, x, args.target, out)
    baseline = _baseline(args.baseline, pixels, mean, std)
    ctx, path = build_context(entry, spec, model, args, baseline, tuple(x.shape))
    method = entry.build(ctx)
    t = target if entry.takes_target else None  # a neuron method: its neuron
    attr = eqx.filter_jit(lambda m, x, k: m(x, t, key=k))(
        method, x, jax.random.key(args.seed)
    )
    attr = np.asarray(attr)
    if not np.all(np.isfinite(attr)):
        raise CLIError(f"{entry.name} returned non-finite values for this input")
    if args.save_array:
        np.save(args.save_array, attr, allow_pickle=False)
    what = f"class {target}" if entry.takes_target else "neuron"
    title = f"{entry.name}, {what}" + (f" ({path})" if path else "")
    if entry.output == "layer":
        if attr.ndim != 3 and args.save_array:  # a vector: the numbers, no picture
            out(f"target {target}: wrote {args.save_array} (shape {attr.shape})")
            return 0
        attr = _layer_picture(attr, tuple(x.shape[-2:]), entry.name)
    grid(
        pixels[None],
        {title: attr[None]},
        overlay=attr.ndim == 2,
        alpha=args.alpha,
        cell=3.0,
        path=args.out,
    )
    extra = f" and {args.save_array}" if args.save_array else ""
    out(f"target {target}: wrote {args.out}{extra}")
    return 0


def _orders(entry) -> str:
    """The differentiability contract's orders, e.g. `2, 2` or `refused`."""
    d = entry.differentiable
    return "refused" if d.input == d.params == 0 else f"{d.input}, {d.params}"


def cmd_methods(out: Callable[[str], None] = print) -> int:
    """List the registered methods (by family) and the zoo models."""
    out("methods (--method):")
    for entry in methods():
        needs = f" [needs {', '.join(sorted(entry.needs))}]" if entry.needs else ""
        grad = f" [d/dx, d/dparams: {_orders(entry)}]"
        out(f"  {entry.name:<22} {entry.family:<12} {entry.summary}{needs}{grad}")
    aliases = [f"{a} -> {e.name}" for e in methods() for a in e.aliases]
    out("aliases: " + ", ".join(aliases))
    out("models (--model):")
    for spec in MODEL_SPECS.values():
        layer = spec.cam_layer or "-"
        out(f"  {spec.name:<12} layer {layer}")
    return 0
