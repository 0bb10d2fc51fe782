"""Draw the documentation's pictures into `docs/figures/` (`make docs` runs this).

```bash
python docs/_make_figures.py                 # the trained demo CNN and MNIST ViT
python docs/_make_figures.py --fast          # random weights, few methods: seconds
```

Full mode uses the cached trained models (`xa.training.pretrained_small_cnn()`
and `pretrained_mnist_vit()`; each trains once, about a minute on two cores, if
the cache is empty). `--fast` (the test suite's setting) uses randomly
initialised models, two digits and one method per family, so the pages build
with the same figure files in a few seconds of compute. The benchmark plot is
read from `benchmarks/results/cpu.json` in both modes.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _explain(method: Any, xs: Any, ts: Any, key: Any | None = None) -> Any:
    """One jitted, vmapped call of `method` over the digits."""
    import equinox as eqx
    import jax

    if key is None:
        return eqx.filter_jit(eqx.filter_vmap(method))(xs, ts)
    keys = jax.random.split(key, xs.shape[0])
    call = lambda m, x, t, k: m(x, t, key=k)  # noqa: E731
    return eqx.filter_jit(eqx.filter_vmap(call, in_axes=(None, 0, 0, 0)))(
        method, xs, ts, keys
    )


def _family_figures(model: Any, vit: Any, data: Any, fast: bool) -> dict[str, dict]:
    """`{figure name: {column title: maps}}` for the method families."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import eqx_attr as xa

    n = 2 if fast else 4
    xs = jnp.asarray(data.x_test[:n])
    ts = jnp.argmax(eqx.filter_jit(eqx.filter_vmap(model))(xs), axis=-1)
    key = jax.random.key(0)
    steps = 8 if fast else 32
    layer = lambda m: m.conv2  # noqa: E731
    refs = xa.baselines.Custom(jnp.asarray(data.x_train[:8]), draws=True)
    mask = xa.masks.grid((28, 28), 4)
    attn = lambda m: [b.attn.attn_drop for b in m.blocks]  # noqa: E731
    vit_layer = lambda m: m.blocks[-1].norm1  # noqa: E731

    # name -> (method, needs a key); `--fast` keeps the first two of each family.
    families: dict[str, list[tuple[str, Any, bool]]] = {
        "gradient": [
            ("Gradients", xa.Gradients(model), False),
            ("IG", xa.IntegratedGradients(model, n_steps=steps), False),
            ("Gradients×Input", xa.GradientsXInput(model), False),
            ("SmoothGrad", xa.SmoothGrad(xa.Gradients(model), n_samples=steps), True),
            ("Guided Backprop", xa.GuidedBackprop(model), False),
            ("Deconvolution", xa.Deconvolution(model), False),
        ],
        "rules": [
            ("DeepLift", xa.DeepLift(model), False),
            ("LRP ε+♭", xa.LRP(model), False),
            (
                "LRP γ-box",
                xa.LRP(model, composite=xa.lrp.EpsilonGammaBox(0.0, 1.0)),
                False,
            ),
            ("LRP αβ", xa.LRP(model, composite=xa.lrp.EpsilonAlpha2Beta1()), False),
            ("DeepLiftShap", xa.DeepLiftShap(model, baseline=refs), False),
            (
                "GradientShap",
                xa.GradientShap(model, baseline=refs, n_samples=steps),
                True,
            ),
        ],
        "cam": [
            ("Grad-CAM", xa.GradCAM(model, layer), False),
            ("CAM", xa.CAM(model, layer, classifier=lambda m: m.fc), False),
            ("Grad-CAM++", xa.GradCAMPlusPlus(model, layer), False),
            ("HiResCAM", xa.HiResCAM(model, layer), False),
            ("LayerCAM", xa.LayerCAM(model, layer), False),
            ("EigenCAM", xa.EigenCAM(model, layer), False),
            ("Score-CAM", xa.ScoreCAM(model, layer), False),
            ("Guided Grad-CAM", xa.GuidedGradCAM(model, layer), False),
        ],
        # The rest of the family (pytorch-grad-cam's methods), its own figure so
        # that `cam.png` and the demo grid keep their width. First (and `--fast`'s
        # only one): the cheapest to compile.
        "cam_more": [
            ("XGrad-CAM", xa.XGradCAM(model, layer), False),
            ("Ablation-CAM", xa.AblationCAM(model, layer), False),
            ("Eigen-Grad-CAM", xa.EigenGradCAM(model, layer), False),
            ("Grad-CAM elem.", xa.GradCAMElementWise(model, layer), False),
            ("Shapley-CAM", xa.ShapleyCAM(model, layer), False),
            ("Finer-CAM", xa.FinerCAM(model, layer), False),
            ("KPCA-CAM", xa.KPCACAM(model, layer), False),
            ("FullGrad", xa.FullGrad(model), False),
            ("Random-CAM", xa.RandomCAM(model, layer), True),
            ("Sobel-CAM", xa.SobelCAM(model), False),
        ],
        "perturbation": [
            ("Occlusion", xa.Occlusion(model, (1, 7, 7), (1, 3, 3)), False),
            ("Feature ablation", xa.FeatureAblation(model, mask=mask), False),
            ("KernelSHAP", xa.KernelShap(model, mask=mask, n_samples=256), True),
            ("LIME", xa.Lime(model, mask=mask, n_samples=256), True),
            ("RISE", xa.RISE(model, n_masks=1000, cell_size=4), True),
            ("Blur IG", xa.BlurIG(model, steps=steps), False),
        ],
        "transformers": [
            ("Rollout", xa.AttentionRollout(vit, attn), False),
            ("Chefer", xa.CheferRelevance(vit, attn), False),
            ("CP-LRP", xa.ConservativeLRP(vit, attn), False),
            (
                "Grad-CAM (tokens)",
                xa.GradCAM(vit, vit_layer, layout="tokens", n_prefix_tokens=1),
                False,
            ),
        ],
    }
    out: dict[str, dict] = {"_inputs": {"xs": xs, "ts": ts}}
    for name, entries in families.items():
        if fast:
            entries = entries[:1]
        if name == "transformers":
            targets = jnp.argmax(eqx.filter_jit(eqx.filter_vmap(vit))(xs), -1)
        else:
            targets = ts
        out[name] = {}
        for title, method, keyed in entries:
            key, sub = jax.random.split(key)
            t0 = time.perf_counter()
            out[name][title] = _explain(method, xs, targets, sub if keyed else None)
            print(f"{name}: {title} {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def _grid(path: pathlib.Path, xs: Any, maps: dict, labels: list[str]) -> None:
    import eqx_attr as xa

    fig = xa.viz.grid(xs, maps, row_labels=labels, path=path)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _metrics_figure(path: pathlib.Path, model: Any, xs: Any, ts: Any, maps: dict):
    """Mean deletion curves of a few methods (`Deletion.curve`)."""
    import equinox as eqx
    import jax
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    import eqx_attr as xa

    metric = xa.metrics.Deletion(model, n_steps=14, baseline=0.0)
    curve = eqx.filter_jit(eqx.filter_vmap(metric.curve))
    fig = Figure(figsize=(5, 3.2), layout="constrained")
    ax = fig.subplots()
    fractions = [k / 14 for k in range(15)]
    for title, a in maps.items():
        ax.plot(fractions, jax.numpy.mean(curve(xs, ts, a), axis=0), label=title)
    ax.set_xlabel("fraction of pixels removed (most relevant first)")
    ax.set_ylabel("softmax probability")
    ax.set_title("Deletion curves (lower area = more faithful)")
    ax.legend()
    fig.savefig(path, dpi=110)


def _attacks_figure(path: pathlib.Path, model: Any, data: Any, fast: bool) -> None:
    """Dombrowski et al.'s manipulation: a digit, its manipulated version, maps.

    The gradient map of one digit is pushed toward the gradient map of another
    digit (`xa.attacks.manipulate_explanation`, softplus surrogate) while the
    logits stay put. `--fast`: a few steps on a small random MLP (the picture
    only has to exist); full mode: the demo CNN.
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    import eqx_attr as xa

    if fast:  # a cheap compile: the attack differentiates through the map
        model = eqx.filter_jit(xa.models.MLP)(width=16, key=jax.random.key(2))
    x, other = (jnp.asarray(data.x_test[i]) for i in (0, 1))

    @eqx.filter_jit  # one program: the target, the maps and the attack
    def attack(model, x, other):
        target = jnp.argmax(model(x))
        h_t = xa.Gradients(model)(other, target)  # the map to reach: another digit's
        x_adv = xa.attacks.manipulate_explanation(
            xa.Gradients(model), model, x, h_t, target=target, eps=0.1,
            step_size=0.002, n_steps=4 if fast else 500, gamma=1e-4, beta=10.0,
            lower=0.0, upper=1.0,
        )  # fmt: skip
        maps = [xa.Gradients(model)(z, target) for z in (x, x_adv)]
        probs = [jax.nn.softmax(model(z))[target] for z in (x, x_adv)]
        # The attack's own measure: squared distance of the L1-normalised maps.
        unit = lambda h: h / jnp.sum(jnp.abs(h))  # noqa: E731
        dists = [jnp.sum((unit(h) - unit(h_t)) ** 2) for h in maps]
        return target, x_adv, h_t, maps, probs, dists

    target, x_adv, h_t, (h, h_adv), (p, p_adv), (d, d_adv) = attack(model, x, other)
    panels = [
        (x[0], "gray", f"input (class {int(target)}: p = {float(p):.2f})"),
        (x_adv[0], "gray", f"manipulated, |δ|∞ ≤ 0.1 (p = {float(p_adv):.2f})"),
        (jnp.abs(h[0]), "hot", f"its gradient map (distance {float(d):.1e})"),
        (jnp.abs(h_adv[0]), "hot", f"map after (distance {float(d_adv):.1e})"),
        (jnp.abs(h_t[0]), "hot", "target map (another digit's)"),
    ]
    fig = Figure(figsize=(11, 2.6), layout="constrained")
    for ax, (img, cmap, title) in zip(fig.subplots(1, 5), panels, strict=True):
        ax.imshow(img, cmap=cmap)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.savefig(path, dpi=110)


def _benchmark_figure(path: pathlib.Path) -> None:
    """ours / Captum (median times) for every scenario of the default run."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = json.loads((ROOT / "benchmarks/results/cpu.json").read_text())["results"]
    rows = [r for r in rows if r.get("kind") == "peer" and r.get("ratio")]
    fig = Figure(figsize=(7, 0.22 * len(rows) + 1.2), layout="constrained")
    ax = fig.subplots()
    names = [r["name"] for r in rows]
    ratios = [r["ratio"] for r in rows]
    colours = ["tab:green" if v < 1 else "tab:red" for v in ratios]
    ax.barh(range(len(rows)), ratios, color=colours)
    ax.set_yticks(range(len(rows)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("time ours / Captum (log scale; < 1: eqx_attr is faster)")
    ax.set_title("benchmarks/results/cpu.json, 2 shared CPU cores")
    fig.savefig(path, dpi=110)


def _segmentation_figure(path: pathlib.Path, data: Any, fast: bool) -> None:
    """Grad-CAM, IG and LRP of a segmentation target: each digit's own pixels
    (`x > 0.5`) as class `1 + label` of the zoo's `SmallSegmenter`. `--fast`: a
    random, narrow segmenter (the picture only has to exist); full mode: the
    trained one (`xa.training.pretrained_mnist_segmenter`)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import eqx_attr as xa

    if fast:
        seg = eqx.filter_jit(xa.models.SmallSegmenter)(width=2, key=jax.random.key(0))
    else:
        seg = xa.training.pretrained_mnist_segmenter()
    xs = jnp.asarray(data.x_test[:4])
    regions = xa.targets.SegmentationRegion(
        jnp.asarray(data.y_test[:4]) + 1, xs[:, 0] > 0.5
    )
    methods = {
        "Grad-CAM": xa.GradCAM(seg, lambda m: m.context),
        "IG": xa.IntegratedGradients(seg, n_steps=32),
        "LRP": xa.LRP(seg),
    }
    maps = {
        title: eqx.filter_jit(eqx.filter_vmap(m))(xs, regions)
        for title, m in methods.items()
    }
    labels = [f"region: digit {int(y)}" for y in data.y_test[:4]]
    _grid(path, xs, maps, labels)


def _crp_figure(path: pathlib.Path, model: Any, xs: Any, ts: Any) -> None:
    """CRP: each digit's explanation conditioned on each of the three channels of
    `conv2` with the most relevance for its class (zennit-crp's picture)."""
    import equinox as eqx
    import jax.numpy as jnp

    import eqx_attr as xa

    xs, ts = xs[:4], ts[:4]
    layer = lambda m: m.conv2  # noqa: E731

    @eqx.filter_jit
    def run(model, xs, ts):
        rel = eqx.filter_vmap(xa.ChannelRelevance(model, layer))(xs, ts)
        top = jnp.argsort(-rel, axis=1)[:, :3]

        def per_digit(x, t, ids):
            return eqx.filter_vmap(lambda c: xa.CRP(model, layer, c)(x, t))(ids)

        return top, eqx.filter_vmap(per_digit)(xs, ts, top)

    top, maps = run(model, xs, ts)
    labels = [f"channels {', '.join(str(int(c)) for c in row)}" for row in top]
    _grid(path, xs, {f"CRP, top channel {k + 1}": maps[:, k] for k in range(3)}, labels)


def _models(fast: bool) -> tuple[Any, Any]:
    import equinox as eqx
    import jax

    import eqx_attr as xa

    if fast:
        # Built under jit: one compile instead of one per initialisation op.
        cnn = eqx.filter_jit(xa.models.SmallCNN)(key=jax.random.key(0))
        vit = eqx.filter_jit(xa.models.ViT)(
            image_size=28, patch_size=7, in_channels=1, n_classes=10,
            dim=16, depth=2, heads=2, key=jax.random.key(1),
        )  # fmt: skip
        return cnn, vit
    return xa.training.pretrained_small_cnn(), xa.training.pretrained_mnist_vit()


def main(argv: list[str] | None = None) -> None:
    """Write every figure of the docs.

    **Arguments:** `argv`, the command line (`--out FOLDER`, `--fast`).

    **Returns:** nothing; the PNG files are written.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    parser.add_argument(
        "--fast", action="store_true", help="random weights, few methods"
    )
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    import eqx_attr as xa

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = xa.datasets.mnist()
    model, vit = _models(args.fast)
    print(f"data and models: {time.perf_counter() - start:.1f} s", flush=True)
    figures = _family_figures(model, vit, data, args.fast)
    xs, ts = figures.pop("_inputs").values()
    labels = [
        f"label {int(y)}, pred {int(p)}"
        for y, p in zip(data.y_test[: len(ts)], np.asarray(ts), strict=True)
    ]
    print(f"attributions: {time.perf_counter() - start:.1f} s", flush=True)
    for name, maps in figures.items():
        _grid(out / f"{name}.png", xs, maps, labels)
    print(f"grids: {time.perf_counter() - start:.1f} s", flush=True)
    demo: dict[str, Any] = {}
    for name in ("gradient", "rules", "cam"):
        demo.update(figures[name])
    _grid(out / "demo_grid.png", xs, demo, labels)
    firsts: dict[str, Callable] = {
        k: v
        for fam in ("gradient", "rules", "cam")
        for k, v in list(figures[fam].items())[:1]
    }
    _metrics_figure(out / "metrics.png", model, xs, ts, firsts)
    _benchmark_figure(out / "benchmarks.png")
    _attacks_figure(out / "attacks.png", model, data, args.fast)
    _segmentation_figure(out / "segmentation.png", data, args.fast)
    _crp_figure(out / "crp.png", model, xs, ts)
    print(f"wrote {len(list(out.glob('*.png')))} figures to {out} "
          f"in {time.perf_counter() - start:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
