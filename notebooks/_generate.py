# ruff: noqa: E501  (markdown tables are long lines)
"""Write the tutorial notebooks (run: `python notebooks/_generate.py`).

The notebooks are generated so their code stays reviewable as plain Python; they
are stored without outputs and executed end to end by `tests/test_notebooks.py`
with `EQX_ATTR_FAST=1` (fewer digits, steps and epochs).
"""

import pathlib

import nbformat
from _crp_notebook import crp_cells
from _decoy_notebook import decoy_cells
from _metrics_notebook import evaluating_cells
from _tcav_notebook import tcav_cells
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).parent

SETUP = """\
%matplotlib inline
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from IPython.display import display

import eqx_attr as xa

# EQX_ATTR_FAST=1 (set by the test suite) shrinks every setting so the notebook
# runs in seconds; unset, you get the full-size pictures.
FAST = os.environ.get("EQX_ATTR_FAST") == "1"
data = xa.datasets.mnist()
print(f"fast mode: {FAST}; {len(data.x_train)} training and "
      f"{len(data.x_test)} held-out digits")"""

MODEL = """\
# The demo's CNN, trained once and then loaded from the cache
# ($EQX_ATTR_CACHE, else ~/.cache/eqx_attr). Fast mode trains a narrower CNN for
# 1 epoch only: the notebooks show numbers of whatever model training produced
# and assert only what holds for any model.
config = xa.training.TrainConfig(epochs=1) if FAST else None
model = xa.training.pretrained_small_cnn(width=8 if FAST else 16, config=config,
                                         progress=False)
print("test accuracy:", xa.training.accuracy(model, data.x_test, data.y_test))"""

DIGITS = """\
from eqx_attr._batch import batch_runner
from eqx_attr._cli._demo import choose_digits

n_digits = 4 if FAST else 8
idx = choose_digits(data.y_test, n_digits)  # one per class: 0, 1, 2, ...
xs = jnp.asarray(data.x_test[idx])
targets = jnp.asarray(xa.training.predict(model, xs), jnp.int32)
keys = jax.random.split(jax.random.key(0), n_digits)
labels = [f"label {y}, pred {t}" for y, t in zip(data.y_test[idx], targets)]


run_batch = batch_runner()  # one compile per kind of method


def explain(method, xs=xs, targets=targets):
    \"\"\"Attribute a batch: one vmapped call, compiled once per kind of method.\"\"\"
    out = run_batch(method, xs, targets, keys[: len(xs)])
    return jax.tree_util.tree_map(np.asarray, out)"""


def nb(cells):
    book = new_notebook()
    book.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    book.metadata["language_info"] = {"name": "python"}
    book.cells = [
        new_markdown_cell(c[3:]) if c.startswith("md:") else new_code_cell(c)
        for c in cells
    ]
    for i, cell in enumerate(book.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: regenerating changes nothing
    return book


# ---------------------------------------------------------------------------------

TOUR = [
    """md:# A tour of every method on MNIST

The demo CNN (`SmallCNN()`, width 16, > 97% on the held-out digits)
explained with every attribution method of `eqx_attr`, one held-out digit per
class. Every method is an Equinox module called as `method(x, target, key=...)`
on ONE example; batches are `jax.vmap`s. Red = positive evidence for the target
class, blue = negative; CAM-family heat maps are drawn over the digit.""",
    SETUP,
    MODEL,
    DIGITS,
    """md:## Building every method

`layer` is a `where` function naming the last feature map (`conv2`, a 7x7 map
that is average-pooled straight into the classifier `fc`).""",
    """\
layer = lambda m: m.conv2
steps = 8 if FAST else 32
samples = 4 if FAST else 32
methods = {
    "Gradients": xa.Gradients(model),
    "Gradients×Input": xa.GradientsXInput(model),
    "SmoothGrad": xa.SmoothGrad(xa.Gradients(model), n_samples=samples, stdev=0.15),
    "VarGrad": xa.SmoothGrad(xa.Gradients(model), n_samples=samples, kind="vargrad"),
    "Integrated Gradients": xa.IntegratedGradients(model, n_steps=steps),
    "Guided Backprop": xa.GuidedBackprop(model),
    "Deconvnet": xa.Deconvolution(model),
    "CAM": xa.CAM(model, layer, classifier=lambda m: m.fc),
    "Grad-CAM": xa.GradCAM(model, layer),
    "Guided Grad-CAM": xa.GuidedGradCAM(model, layer),
    "Grad-CAM++": xa.GradCAMPlusPlus(model, layer),
    "XGrad-CAM": xa.XGradCAM(model, layer),
    "HiRes-CAM": xa.HiResCAM(model, layer),
    "Layer-CAM": xa.LayerCAM(model, layer),
    "Eigen-CAM": xa.EigenCAM(model, layer),
    "Score-CAM": xa.ScoreCAM(model, layer),
    "Ablation-CAM": xa.AblationCAM(model, layer),
}
if FAST:  # the test suite's setting: six methods (tests/test_contract.py runs all)
    methods = {k: methods[k] for k in ("Gradients", "SmoothGrad",
                                       "Integrated Gradients", "Guided Backprop",
                                       "Grad-CAM", "Score-CAM")}
maps = {}
for name, method in methods.items():
    t = time.perf_counter()
    maps[name] = explain(method)
    print(f"{name:<22} {maps[name].shape}  {time.perf_counter() - t:5.2f} s "
          "(compile + run)")""",
    """md:## The grid

Each map is scaled by its own 99.5th percentile of `|a|` (maps of different
methods have unrelated units) and clipped.""",
    """\
fig = xa.viz.grid(xs, maps, row_labels=labels)
display(fig)""",
    """md:## LRP composites

Layer-wise Relevance Propagation with the four composites of `xa.lrp` (Zennit's
definitions): the relevance starts as the target's score and is redistributed
layer by layer, so each map sums to about the score (exactly, up to the biases'
share). `EpsilonGammaBox` needs the input's range, here `[0, 1]`.""",
    """\
lrp = {
    "EpsilonPlusFlat": xa.LRP(model),
    "EpsilonPlus": xa.LRP(model, composite=xa.lrp.EpsilonPlus()),
    "EpsilonAlpha2Beta1": xa.LRP(model, composite=xa.lrp.EpsilonAlpha2Beta1()),
    "EpsilonGammaBox": xa.LRP(
        model, composite=xa.lrp.EpsilonGammaBox(low=0.0, high=1.0)),
}
lrp_maps = {name: explain(method) for name, method in lrp.items()}
scores = np.asarray(jax.vmap(model)(xs))[np.arange(len(xs)), np.asarray(targets)]
for name, a in lrp_maps.items():
    ratio = a.reshape(len(xs), -1).sum(1) / scores
    print(f"{name:<20} relevance / score: {np.round(ratio, 2)}")
display(xa.viz.grid(xs, lrp_maps, row_labels=labels))""",
    """md:## Perturbation methods and PAIR's path methods

These need no gradient: they only evaluate the model on perturbed copies of the
digit, every copy of one example in one vectorised batch. The feature-based ones
work on a mask of 16 cells of 7x7 pixels (`xa.masks.grid`); RISE and XRAI return
an `(H, W)` map. Blur IG and Guided IG are PAIR's path methods, XRAI ranks
Felzenszwalb regions by IG attribution.""",
    """\
mask = xa.masks.grid((28, 28), 7)  # 16 features
few = 1 if FAST else 8
perturbation = {
    "Occlusion 7x7 / 3": xa.Occlusion(model, (1, 7, 7), (1, 3, 3)),
    "FeatureAblation": xa.FeatureAblation(model, mask=mask),
    "ShapleyValueSampling": xa.ShapleyValueSampling(model, mask=mask,
                                                    n_permutations=few),
    "KernelShap": xa.KernelShap(model, mask=mask, n_samples=32 * few),
    "Lime": xa.Lime(model, mask=mask, n_samples=32 * few),
    "RISE": xa.RISE(model, n_masks=64 * few, cell_size=7),
    "XRAI": xa.XRAI(model, n_steps=4 * few),
    "Blur IG": xa.BlurIG(model, steps=4 * few),
    "Guided IG": xa.GuidedIG(model, steps=4 * few),
}
if FAST:  # the test suite's setting: three methods, Shapley sampling among them
    perturbation = {k: perturbation[k] for k in ("Occlusion 7x7 / 3",
                                                 "ShapleyValueSampling", "XRAI")}
perturbation_maps = {}
for name, method in perturbation.items():
    t = time.perf_counter()
    perturbation_maps[name] = explain(method)
    print(f"{name:<22} {perturbation_maps[name].shape}  "
          f"{time.perf_counter() - t:5.2f} s (compile + run)")
# Shapley values are efficient: per example the 16 features sum to f(x) - f(0)
# (every pixel of a cell carries its feature's value: read one pixel per cell).
f_x = jax.vmap(model)(xs)[jnp.arange(len(xs)), targets]
f_0 = jax.vmap(model)(jnp.zeros_like(xs))[jnp.arange(len(xs)), targets]
svs = perturbation_maps["ShapleyValueSampling"][:, 0, ::7, ::7].reshape(len(xs), -1).sum(1)
# Up to float32 rounding, which is relative to the scores whose differences the
# features' values are, not to their sum: 1e-5 (~80 ulps) of |f(x)| + |f(0)|.
score_size = np.abs(np.asarray(f_x)) + np.abs(np.asarray(f_0))
assert np.all(np.abs(svs - np.asarray(f_x - f_0)) <= 1e-5 * score_size)
display(xa.viz.grid(xs, perturbation_maps, row_labels=labels))""",
    """md:## Pros and cons

| method | pros | cons |
| --- | --- | --- |
| **Gradients** (saliency) | one backward pass; exact local sensitivity | noisy; saturated units give zero gradient although they matter (fails *sensitivity*); says how to change the score, not what caused it |
| **Gradients×Input** | sharper than gradients; exact for linear models | zero wherever the input is zero (black background never gets credit); inherits gradient noise |
| **SmoothGrad** / VarGrad | averages away gradient noise; wraps *any* method | `n_samples` times the cost; needs a noise level; random (pass `key`) |
| **Integrated Gradients** | axioms: completeness (sums to `f(x) - f(b)`), sensitivity, implementation invariance | needs a baseline, which changes the picture (see notebook 02); `n_steps` forward/backward passes |
| **Guided Backprop** | crisp, high-resolution pictures | nearly class-insensitive (Adams et al. / Nie et al.: it mostly reconstructs the image); not a gradient of anything |
| **Deconvnet** | shows which input patterns excite the units | also largely class-insensitive; noisy |
| **CAM** | exact and cheap for GAP + linear models; class-discriminative | only for that architecture; resolution of the last feature map (7x7 here) |
| **Grad-CAM** | any CNN layer; class-discriminative; cheap | coarse; the spatial average of gradients can miss small or multiple objects |
| **Guided Grad-CAM** | high resolution *and* class-discriminative | inherits Guided Backprop's problems |
| **Grad-CAM++** | better for several instances of a class | more complex weights, same coarse resolution |
| **XGrad-CAM** | weights chosen to satisfy sensitivity / conservation axioms | coarse |
| **HiRes-CAM** | element-wise product: faithful to the model for GAP heads (equals CAM there) | can be noisier than Grad-CAM |
| **Layer-CAM** | works at earlier, finer layers too | finer layers are noisier |
| **Eigen-CAM** | no gradients, no class: first principal component of the activations | not class-discriminative; sign of the component is arbitrary |
| **Score-CAM** | no gradients; weights from actual score changes | one forward pass per channel; masks are off-distribution inputs |
| **Ablation-CAM** | no gradients; measures what removing a channel does | one forward pass (from the layer on) per channel |
""",
    """md:## Sanity check: the maps depend on the class

A faithful method explains *the target*: the maps for the true class and for
another class should differ. Guided Backprop and Deconvnet barely change.""",
    """\
other = (targets + 1) % 10
for name in ["Gradients", "Integrated Gradients", "Guided Backprop", "Grad-CAM"]:
    a = maps[name].reshape(len(xs), -1)
    b = explain(methods[name], targets=other).reshape(len(xs), -1)
    corr = [np.corrcoef(u, v)[0, 1] if u.std() > 0 and v.std() > 0 else np.nan
            for u, v in zip(a, b)]
    print(f"{name:<22} corr(map for predicted class, map for next class) = "
          f"{np.nanmean(corr):+.2f}")""",
]

# ---------------------------------------------------------------------------------

BASELINES = [
    """md:# Integrated Gradients: the baseline matters

IG attributes `f(x) - f(b)` along the straight path from a baseline `b` to the
input `x`: `attr = (x - b) * mean over the path of grad f`. The baseline says what
"absence of a feature" means, and changing it changes the map. Here: black,
white, uniform noise (averaged over draws), a blurred copy of the digit, and the
data set's mean digit (Sturmfels, Lundberg & Lee, *Visualizing the Impact of
Feature Attribution Baselines*, Distill 2020).""",
    SETUP,
    MODEL,
    DIGITS,
    """\
B = xa.baselines
draws = 4 if FAST else 16
steps = 16 if FAST else 64
baselines = {
    "black": B.Zeros(),
    "white": B.Constant(1.0),
    f"uniform noise ({draws} draws)": B.UniformNoise(n_draws=draws),
    "blurred (sigma 3)": B.Blur(sigma=3.0),
    "data-set mean": B.DatasetMean.from_data(data.x_train),
}
from matplotlib.figure import Figure

# What each baseline looks like, for the first digit.
fig = Figure(figsize=(2 * len(baselines), 2.4))
for ax, (name, b) in zip(fig.subplots(1, len(baselines)), baselines.items()):
    ax.imshow(np.asarray(b(xs[0], key=jax.random.key(1))[0, 0]), cmap="gray",
              vmin=0, vmax=1)
    ax.set_title(name, fontsize=8)
    ax.set_axis_off()
display(fig)""",
    """md:## The maps

With the black baseline, `x - b = x`: black background pixels can never receive
attribution, whatever the model does with them. The white baseline flips that:
the background now carries (negative or positive) credit. Noise and the mean
digit spread credit over the background in between; the blurred baseline keeps
the coarse shape and credits the sharp strokes.""",
    """\
ig = {name: xa.IntegratedGradients(model, n_steps=steps, baseline=b,
                                   return_delta=True)
      for name, b in baselines.items()}
maps, deltas = {}, {}
for name, method in ig.items():
    a, d = explain(method)
    maps[name], deltas[name] = a, d
display(xa.viz.grid(xs, maps, row_labels=labels))""",
    """md:## Completeness for each baseline

`delta = sum(attr) - (f(x) - f(b))` is the quadrature error of the path integral:
IG's attributions add up to the difference of the target's score between input
and baseline as `n_steps` grows. How small it is at a given `n_steps` depends on
the model (a ReLU net's integrand has kinks), so it is shown here, not asserted;
what is asserted is that `delta` is exactly that difference. For the random
baseline, `f(b)` is the average over the draws.""",
    """\
f = jax.vmap(lambda x, t: model(x)[t])
fx = np.asarray(f(xs, targets))
print(f"{'baseline':<26}{'mean f(x)-f(b)':>15}{'max |delta|':>13}{'max rel.':>10}")
for name, b in baselines.items():
    total = maps[name].reshape(len(xs), -1).sum(1)
    gap = total - deltas[name]             # = f(x) - f(b)
    rel = np.abs(deltas[name]) / np.maximum(np.abs(gap), 1e-12)
    print(f"{name:<26}{gap.mean():15.3f}{np.abs(deltas[name]).max():13.2e}"
          f"{rel.max():10.2e}")
    if "noise" not in name:  # deterministic baselines: f(b) is computable here
        bs = jax.vmap(lambda x: b(x, key=jax.random.key(1))[0])(xs)
        fb = np.asarray(f(bs, targets))
        # delta is computed as documented, whatever the model: sum(a) - delta
        # equals f(x) - f(b) up to float32 rounding, which is relative to the
        # terms that cancel (the scores, and the attributions' magnitudes):
        # 1e-5 of them, ~80 float32 ulps.
        size_a = np.abs(maps[name]).reshape(len(xs), -1).sum(1)
        terms = np.abs(fx) + np.abs(fb) + size_a
        assert np.all(np.abs(gap - (fx - fb)) <= 1e-5 * terms), name""",
    """md:## What the model thinks of each baseline

A good baseline should be *uninformative*: the model's prediction on it should
be close to uniform. The white image and the mean digit are not neutral for this
model; that is part of what the maps above show.""",
    """\
for name, b in baselines.items():
    bs = b(xs[0], key=jax.random.key(1))
    p = np.asarray(jax.nn.softmax(jax.vmap(model)(bs), axis=-1).mean(0))
    print(f"{name:<26} predicted {p.argmax()} with p = {p.max():.2f}; "
          f"entropy {-(p * np.log(p + 1e-12)).sum():.2f} (uniform: {np.log(10):.2f})")""",
]

# ---------------------------------------------------------------------------------

CNN_VIT = [
    """md:# A CNN and a Vision Transformer on the same digits

Train the demo CNN and a small ViT (`xa.training.pretrained_mnist_vit()`: 7x7
patches, a class token, dim 64, 4 blocks) on the same 4,000 digits and compare
how they see the held-out ones: with the methods both share, with the
transformer's own methods (attention rollout, Chefer relevance, CP-LRP), and
with faithfulness metrics. Both use the weights cache, so re-running is instant.""",
    SETUP,
    MODEL,
    """\
vit_config = xa.training.TrainConfig(epochs=1, learning_rate=2e-3) if FAST else None
t = time.perf_counter()
vit = xa.training.pretrained_mnist_vit(dim=32 if FAST else 64, depth=2 if FAST else 4,
                                       config=vit_config, progress=False)
print(f"ViT ready in {time.perf_counter() - t:.1f} s; test accuracy:",
      xa.training.accuracy(vit, data.x_test, data.y_test))""",
    DIGITS,
    """md:## Same methods, two models

Input-space methods apply to any model. For Grad-CAM the ViT's "feature map" is
the token sequence after the last block's first layer norm: `layout="tokens"`
folds the 16 patch tokens (after the class token) back into a 4x4 grid. The
transformer methods read every block's attention probabilities, named by a
`where` exactly as for `eqx.tree_at`.""",
    """\
from eqx_attr._cli import _compare

steps = 16 if FAST else 64
models = {"CNN": model, "ViT": vit}
methods = {"CNN": _compare.cnn_methods(model, n_steps=steps),
           "ViT": _compare.vit_methods(vit, n_steps=steps)}
maps, preds = {}, {}
for mname, m in models.items():
    preds[mname] = jnp.asarray(xa.training.predict(m, xs), jnp.int32)
    for name, a in _compare.explain_all(methods[mname], xs, preds[mname]).items():
        maps[f"{mname} {name}"] = a
display(xa.viz.grid(xs, maps, row_labels=labels))""",
    """md:## How similar are the explanations?

Correlation of the two models' IG maps per digit, and the share of positive
IG attribution that falls on the digit's own strokes (pixels > 0.5).""",
    """\
def on_strokes(a, x):
    pos = np.clip(a, 0, None)
    return (pos * (np.asarray(x) > 0.5)).sum() / max(pos.sum(), 1e-12)

ig = "Integrated Gradients"
for i in range(len(xs)):
    a_cnn, a_vit = maps[f"CNN {ig}"][i].ravel(), maps[f"ViT {ig}"][i].ravel()
    corr = np.corrcoef(a_cnn, a_vit)[0, 1]
    print(f"digit {int(data.y_test[idx[i]])}: corr(CNN IG, ViT IG) = {corr:+.2f}; "
          f"on strokes: CNN {on_strokes(maps[f'CNN {ig}'][i], xs[i]):.2f}, "
          f"ViT {on_strokes(maps[f'ViT {ig}'][i], xs[i]):.2f}")""",
    """md:## Faithfulness and sparseness, per method per model

Deletion AUC (remove the most relevant pixels first: lower is better),
insertion AUC (reveal them first: higher is better) and sparseness (Gini index
of |a|) on held-out digits both models classify correctly; `Random` is uniform
noise, the floor. `benchmarks/cnn_vs_vit.py` runs this on 200 digits.""",
    """\
n = 16 if FAST else 200
if hasattr(xa, "metrics"):
    scores, _ = _compare.compare_cnn_vit(model, vit, data.x_test[:n],
                                         data.y_test[:n], ig_steps=steps)
    print(_compare.comparison_markdown(scores))
else:
    print("eqx_attr.metrics is not part of this build: no scores.")""",
    """md:The ViT's Grad-CAM, rollout and Chefer maps are blocky (a 4x4 patch grid);
the CNN's 7x7 Grad-CAM is finer. Rollout is class-agnostic and close to uniform
on a shallow ViT; Chefer relevance weights the attention by its gradient and is
class-specific. The table answers the seeds' question with numbers: see the
docs' Transformers page (docs/methods/transformers.md) for the full-size run.""",
]

# ---------------------------------------------------------------------------------

AXIOMS = [
    """md:# The axioms of Integrated Gradients, numerically

Sundararajan, Taly & Yan (*Axiomatic Attribution for Deep Networks*, 2017) ask
attribution methods for **sensitivity**, **implementation invariance** and
**completeness**. This notebook checks each one numerically.""",
    SETUP,
    """md:## Sensitivity

If the input and the baseline differ in one feature and the outputs differ, that
feature must get non-zero attribution. The paper's example: `f(x) = 1 - relu(1 -
x)` at `x = 2` with baseline `0`. The function went from 0 to 1, but it is flat
at `x = 2`: the gradient is 0. IG gives the whole change to `x`.""",
    """\
f = lambda x: 1.0 - jax.nn.relu(1.0 - x[0])   # a scalar model: target=None
x = jnp.array([2.0])
grad = xa.Gradients(f)(x)
ig_attr, delta = xa.IntegratedGradients(f, n_steps=64).attribute_with_delta(x)
print("f(x) - f(0) =", f(x) - f(jnp.zeros(1)))
print("Gradients:  ", grad, "<- zero: violates sensitivity")
print("IG:         ", ig_attr, " delta =", delta)
# The gradient is exactly 0 (ReLU's derivative below its kink). IG is exactly 1
# up to rounding: the Gauss-Legendre nodes lie symmetrically about 1/2, where the
# path crosses the kink, so the weights before it sum to 1/2; float32 rounding of
# a sum of terms of total size 1 stays below 1e-5.
assert float(grad[0]) == 0.0 and abs(float(ig_attr[0]) - 1.0) <= 1e-5""",
    """md:## Implementation invariance

Two networks that compute the same function must get the same attributions. A
ReLU is positively homogeneous, `relu(c z) = c relu(z)` for `c > 0`, so scaling
the first convolution's output channels by `c_k > 0` and dividing the next
convolution's input weights by `c_k` changes the weights but not the function.
Gradient-based methods only see the function, so their maps match.""",
    MODEL,
    DIGITS,
    """\
conv_a = model.conv1.layers[0]            # 1 -> w channels, then ReLU and pool
conv_b = model.conv1.layers[3]            # w -> 2w channels
# Powers of two: scaling by them is exact in floating point, so the twin computes
# bit for bit the same function (other scales would differ by rounding, and a
# ReLU input within rounding of 0 could then switch sides).
c = 2.0 ** jax.random.randint(jax.random.key(3), (conv_a.out_channels,), -3, 4)
twin = eqx.tree_at(
    lambda m: (m.conv1.layers[0].weight, m.conv1.layers[0].bias,
               m.conv1.layers[3].weight),
    model,
    (conv_a.weight * c[:, None, None, None], conv_a.bias * c[:, None, None],
     conv_b.weight / c[None, :, None, None]),
)
logit_gap = jnp.max(jnp.abs(jax.vmap(model)(xs) - jax.vmap(twin)(xs)))
weight_gap = jnp.max(jnp.abs(conv_a.weight - twin.conv1.layers[0].weight))
print(f"weights differ by up to {weight_gap:.2f}; logits by {logit_gap:.1e}")
steps = 16 if FAST else 64
for name, build in {
    "Gradients": lambda m: xa.Gradients(m),
    "Integrated Gradients": lambda m: xa.IntegratedGradients(m, n_steps=steps),
    "SmoothGrad (same key)": lambda m: xa.SmoothGrad(xa.Gradients(m), n_samples=8),
    "Grad-CAM": lambda m: xa.GradCAM(m, lambda m: m.conv2),
}.items():
    a, b = explain(build(model)), explain(build(twin))
    gap, scale = np.abs(a - b).max(), np.abs(a).max()
    print(f"{name:<22} max |difference| / max |attr| = {gap / max(scale, 1e-30):.1e}")
    # Holds for any weights: the twin computes the same floats (0 here), and the
    # bound allows float32 rounding (1e-5, ~80 ulps, of the largest attribution)
    # should XLA ever compile the two models apart.
    assert gap <= 1e-5 * scale, name""",
    """md:## Completeness

IG's attributions sum to `f(x) - f(b)`. The residual `delta` measures the
quadrature error; it shrinks as `n_steps` grows, much faster with Gauss-Legendre
nodes than with Riemann sums (the integrand is piecewise smooth for a ReLU net).
How fast depends on the trained weights, so the table is shown, not asserted.""",
    """\
x0, t0 = xs[0], int(targets[0])
f_x, f_b = model(x0)[t0], model(jnp.zeros_like(x0))[t0]
print(f"f(x) - f(black) = {f_x - f_b:.4f}")
print(f"{'n_steps':>8}{'riemann_trapezoid':>20}{'gausslegendre':>16}")
grid_steps = [4, 16, 64] if FAST else [4, 8, 16, 32, 64, 128]
with_delta = eqx.filter_jit(lambda ig, x, t: ig.attribute_with_delta(x, t))
errors = {}
for n in grid_steps:
    row = []
    for rule in ["riemann_trapezoid", "gausslegendre"]:
        a, d = with_delta(xa.IntegratedGradients(model, n_steps=n, method=rule),
                          x0, t0)
        # delta is exactly sum(a) - (f(x) - f(b)): check the identity itself, to
        # float32 rounding (1e-5, ~80 ulps) of the terms that cancel.
        terms = abs(float(f_x)) + abs(float(f_b)) + float(jnp.sum(jnp.abs(a)))
        assert abs(float(jnp.sum(a)) - float(f_x - f_b) - float(d)) <= 1e-5 * terms
        row.append(abs(float(d)) / abs(float(f_x - f_b)))
    errors[n] = row
    print(f"{n:8d}{row[0]:20.2e}{row[1]:16.2e}")""",
    """md:On a network that is smooth by construction (softplus instead of ReLU,
untrained weights) the integrand is analytic along the path, and Gauss-Legendre
reaches completeness to float32 rounding with a few dozen nodes, for any
weights of this scale:""",
    """\
smooth_mlp = eqx.nn.MLP(28 * 28, 10, 32, 2, activation=jax.nn.softplus,
                        key=jax.random.key(4))
smooth = lambda x: smooth_mlp(x.reshape(-1))
a, d = xa.IntegratedGradients(smooth, n_steps=64).attribute_with_delta(x0, t0)
scale = abs(float(smooth(x0)[t0])) + abs(float(smooth(jnp.zeros_like(x0))[t0]))
print(f"smooth net, 64 Gauss-Legendre nodes: |delta| = {abs(float(d)):.1e} "
      f"(scores of size {scale:.2f})")
# delta: the (negligible) quadrature error plus float32 rounding, relative to
# the terms that cancel in it (scores and |attributions|): 1e-5, ~80 ulps.
assert abs(float(d)) <= 1e-5 * (scale + float(jnp.sum(jnp.abs(a))))""",
    """md:Gradients×Input, by contrast, is complete only for linear models:""",
    """\
gxi = xa.GradientsXInput(model)(x0, t0)
print(f"sum(Gradients×Input) = {float(jnp.sum(gxi)):.3f} vs f(x) - f(0) = "
      f"{float(f_x - f_b):.3f}")""",
]


INSIDE = [
    "md:# Inside the network: concepts (TCAV) and conditional relevance (CRP)\n\n"
    "Which directions of a hidden layer encode a concept, and which channels "
    "of a layer carry the relevance of a decision: TCAV (Kim et al., ICML 2018) "
    "and CRP (Achtibat et al., Nature Machine Intelligence 2023) on the MNIST CNN.",
    SETUP,
    MODEL,
    DIGITS,
    *tcav_cells(),
    *crp_cells(),
]


def main():
    for name, cells in [
        ("01_mnist_tour", TOUR),
        ("02_integrated_gradients_baselines", BASELINES),
        ("03_cnn_vs_vit", CNN_VIT),
        ("04_axioms", AXIOMS),
        ("05_evaluating_explanations", evaluating_cells(SETUP, MODEL, DIGITS)),
        ("06_decoy_mnist", decoy_cells()),
        ("07_inside_the_network", INSIDE),
    ]:
        path = HERE / f"{name}.ipynb"
        nbformat.write(nb(cells), path)
        print("wrote", path)


if __name__ == "__main__":
    main()
