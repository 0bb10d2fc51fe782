# ruff: noqa: E501  (markdown lines)
"""Cells of the "DecoyMNIST" notebook (hooked into `_generate.py`).

`decoy_cells()` returns the cells in `_generate.py`'s format (strings; a `md:`
prefix marks markdown). The notebook reproduces Ross et al. (IJCAI 2017, "Right
for the Right Reasons", section 4, Decoy MNIST) and extends it to three more
explanation methods as the penalty. Its full run (`EQX_ATTR_FAST` unset) makes
the table of `docs/decoy-mnist.md`; the test suite runs it with
`EQX_ATTR_FAST=1` (a few steps on a few digits) and asserts only what holds for
any training run.
"""

SETUP = """\
%matplotlib inline
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from IPython.display import display

import eqx_attr as xa

# EQX_ATTR_FAST=1 (set by the test suite): two steps of each row on decoy data, on
# 64 digits, a narrow CNN, one lambda for all; unset, the full run that makes the
# docs' table.
FAST = os.environ.get("EQX_ATTR_FAST") == "1"
decoy = xa.datasets.decoy_mnist(seed=0)
clean = xa.datasets.mnist()  # the same digits and split, without patches
n_train = 64 if FAST else len(decoy.y_train)
print(f"fast mode: {FAST}; {n_train} training and {len(decoy.y_test)} test digits")"""

PICTURE = """\
fig, axes = plt.subplots(2, 6, figsize=(9, 3.4))
for row, (name, xs, ys) in enumerate([("train", decoy.x_train, decoy.y_train),
                                      ("test", decoy.x_test, decoy.y_test)]):
    for ax, x, y in zip(axes[row], xs[:6], ys[:6]):
        ax.imshow(x[0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name}: label {y}", fontsize=8)
        ax.axis("off")
fig.tight_layout()
display(fig)
plt.close(fig)
# The training patch's shade is (255 - 25 y) / 255: it gives the label away.
shade = (decoy.x_train[:, 0] * decoy.mask_train).sum((1, 2)) / 16
assert np.allclose(shade * 255, 255 - 25 * decoy.y_train, atol=1e-3)"""

TRAIN = """\
EPOCHS = 1 if FAST else 10
BATCH = 32 if FAST else 100
STEPS = 2 if FAST else None   # fast mode: two steps per row
LAMBDA_RRR = 1000.0           # the weight of the input-gradient penalty (pixels in [0, 1])


class FlatCNN(eqx.Module):
    # Two strided convolutions and a dense head over every position. Unlike the
    # zoo's SmallCNN, whose global average pooling hides where a feature is, its
    # head can single out the corner cells: it can take the shortcut.

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, width, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, width, 3, stride=2, padding=1, key=k1)  # 14x14
        self.conv2 = eqx.nn.Conv2d(width, width, 3, stride=2, padding=1, key=k2)  # 7x7
        self.fc = eqx.nn.Linear(width * 49, 10, key=k3)

    def __call__(self, x):
        h = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        return self.fc(h.reshape(-1))


MODELS = {
    # Ross et al.'s model is a 2-hidden-layer ReLU MLP (50 and 30 units); the
    # zoo's MLP has equal widths: 50 and 50.
    "MLP": lambda: xa.models.MLP(width=50, depth=2, key=jax.random.key(0)),
    # Grad-CAM needs a feature map: a small CNN that can read the patch.
    "FlatCNN": lambda: FlatCNN(2 if FAST else 8, jax.random.key(0)),
}


def summed_log_probs(out):
    # The penalty's target: the sum of the log-probabilities over the classes, as
    # Ross et al.'s, so the "gradients" row below is their penalty exactly.
    return jnp.sum(jax.nn.log_softmax(out))


def explanation_penalty(make_method):
    \"\"\"sum over the patch of method(x, summed_log_probs) ** 2, for one example.\"\"\"
    def penalty(model, x, mask):
        a = make_method(model)(x, summed_log_probs)
        a = a if a.ndim == 2 else jnp.sum(a, axis=0)  # a (1, H, W) map: its channel
        return jnp.sum((mask * a) ** 2)
    return penalty


PENALTIES = {
    # Ross et al.: xa.losses.right_for_the_right_reasons with y=None is the penalty.
    "RRR (input gradients)": lambda model, x, mask:
        xa.losses.right_for_the_right_reasons(model, x, None, mask),
    "Integrated Gradients (4 steps)": explanation_penalty(
        lambda m: xa.IntegratedGradients(m, n_steps=4, chunk_size=None)),
    # LRP-epsilon: on an MLP, EpsilonPlusFlat's Flat first layer would spread the
    # relevance evenly over all pixels, whatever their values.
    "LRP (epsilon)": explanation_penalty(lambda m: xa.LRP(m, rule=xa.lrp.Epsilon())),
    # relu=False: a squared penalty on the signed map (a ReLU'd map could be
    # silenced on the patch by making it negative there, while the model still
    # reads the patch).
    "Grad-CAM": explanation_penalty(
        lambda m: xa.GradCAM(m, lambda c: c.conv2, relu=False)),
}


def make_step(penalty, optimiser):
    @eqx.filter_jit
    def step(model, opt_state, x, y, mask, lam):
        def loss_fn(model):
            def one(x, y, mask):
                ce = -jax.nn.log_softmax(model(x))[y]
                pen = 0.0 if penalty is None else penalty(model, x, mask)
                return ce, pen
            ce, pen = jax.vmap(one)(x, y, mask)
            return jnp.mean(ce) + lam * jnp.mean(pen), (jnp.mean(ce), jnp.mean(pen))

        (_, aux), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt_state = optimiser.update(grads, opt_state, model)
        return eqx.apply_updates(model, updates), opt_state, aux
    return step


OPTIMISER = optax.adamw(1e-3, weight_decay=1e-4)  # the decay: Ross et al.'s L2
mean_penalty = eqx.filter_jit(
    lambda model, penalty, x, mask: jnp.mean(jax.vmap(
        lambda x, mask: penalty(model, x, mask))(x, mask)))


def weight_of(arch, penalty, x, mask):
    \"\"\"lambda that gives `penalty` RRR's initial weight on the first batch.

    Explanations of different methods have unrelated units: each penalty's
    lambda is LAMBDA_RRR times (initial RRR penalty / its initial penalty),
    averaged over the first training batch at the common initialisation.\"\"\"
    model = MODELS[arch]()
    rrr = mean_penalty(model, PENALTIES["RRR (input gradients)"], x, mask)
    return float(LAMBDA_RRR * rrr / mean_penalty(model, penalty, x, mask))


def train(arch, xs, ys, masks, penalty=None, lam=0.0):
    \"\"\"`arch` trained with AdamW on (xs, ys); returns model, times, history.\"\"\"
    model = MODELS[arch]()
    opt_state = OPTIMISER.init(eqx.filter(model, eqx.is_array))
    step = make_step(penalty, OPTIMISER)  # compiled anew for each row: fair times
    rng = np.random.default_rng(0)  # the same batches for every row
    history, first = [], None
    start = time.perf_counter()
    for _ in range(EPOCHS):
        order = rng.permutation(len(ys))
        batches = [order[i:i + BATCH] for i in range(0, len(ys) - BATCH + 1, BATCH)]
        for idx in batches[:STEPS]:
            model, opt_state, aux = step(model, opt_state, jnp.asarray(xs[idx]),
                                         jnp.asarray(ys[idx]), jnp.asarray(masks[idx]),
                                         lam)
            history.append([float(v) for v in aux])  # also waits for the step
            if first is None:
                first = time.perf_counter() - start  # compile + one step
    return model, {"compile": first, "total": time.perf_counter() - start}, np.array(history)"""

RUN = """\
n = n_train
no_mask = np.zeros_like(decoy.mask_train[:n])
first = (jnp.asarray(decoy.x_train[:BATCH]), jnp.asarray(decoy.mask_train[:BATCH]))
ROWS = [  # (model, data, penalty)
    ("MLP", "clean", None),
    ("MLP", "decoy", None),
    ("MLP", "decoy", "RRR (input gradients)"),
    ("MLP", "decoy", "Integrated Gradients (4 steps)"),
    ("MLP", "decoy", "LRP (epsilon)"),
    ("FlatCNN", "clean", None),
    ("FlatCNN", "decoy", None),
    ("FlatCNN", "decoy", "Grad-CAM"),
]
if FAST:  # the test suite: the rows on decoy data only (one compile fewer per model)
    ROWS = [row for row in ROWS if row[1] == "decoy"]
rows = {}  # (model, data, penalty) -> (lambda, model, times, history)
for arch, data_name, pen_name in ROWS:
    data = clean if data_name == "clean" else decoy
    masks = no_mask if pen_name is None else decoy.mask_train[:n]
    penalty = None if pen_name is None else PENALTIES[pen_name]
    if penalty is None:
        lam = 0.0
    else:  # fast mode: no calibration (its programs compile for seconds)
        lam = LAMBDA_RRR if FAST else weight_of(arch, penalty, *first)
    model, times, hist = train(arch, data.x_train[:n], data.y_train[:n], masks,
                               penalty, lam)
    rows[arch, data_name, pen_name] = (lam, model, times, hist)
    print(f"{arch}, {data_name}, {pen_name}: lambda = {lam:.3g}, "
          f"{times['total']:.1f} s", flush=True)

n_test = 64 if FAST else len(decoy.y_test)
predict = eqx.filter_jit(lambda model, x: jnp.argmax(jax.vmap(model)(x), axis=-1))


def accuracy(model, xs, ys):
    return float(np.mean(np.asarray(predict(model, jnp.asarray(xs[:n_test])))
                         == ys[:n_test]))


print("| model | training data | penalty | lambda | decoy test | clean test "
      "| compile + 1st step (s) | total time (s) | epochs |")
print("|---|---|---|---|---|---|---|---|---|")
for (arch, data_name, pen_name), (lam, model, times, hist) in rows.items():
    acc_decoy = accuracy(model, decoy.x_test, decoy.y_test)
    acc_clean = accuracy(model, clean.x_test, clean.y_test)
    print(f"| {arch} | {data_name} | {pen_name or 'none'} | {lam:.3g} "
          f"| {acc_decoy:.3f} | {acc_clean:.3f} | {times['compile']:.1f} "
          f"| {times['total']:.1f} | {EPOCHS} |")"""

CHECKS = """\
# What holds for any training run (the test suite's checks; no accuracy bound):
# every loss is finite, and every penalty was active (> 0) on the decoy patches
# at every step: the explanations did reach the patch.
for name, (lam, model, times, hist) in rows.items():
    assert hist.shape == (EPOCHS * (STEPS or n // BATCH), 2), hist.shape
    assert np.isfinite(hist).all(), name
    assert np.isfinite(lam) and lam >= 0, name
    if lam > 0:
        assert (hist[:, 1] > 0).all(), name
print("checks passed")"""

EXPLAIN = """\
# Where do the models look? Input gradients of the predicted class on test digits
# (their patch: the shade of a random digit).
idx = np.arange(4)
xs = jnp.asarray(decoy.x_test[idx])
shown = {"MLP, plain": ("MLP", "decoy", None),
         "MLP, RRR": ("MLP", "decoy", "RRR (input gradients)")}
maps = {}
for title, key in shown.items():
    model = rows[key][1]
    grads = eqx.filter_jit(eqx.filter_vmap(xa.Gradients(model)))(xs, predict(model, xs))
    maps[title] = np.asarray(grads)
fig = xa.viz.grid(xs, maps, row_labels=[f"label {y}" for y in decoy.y_test[idx]])
display(fig)
plt.close(fig)"""


def decoy_cells() -> list[str]:
    """The notebook: the data set, the eight training runs, the table, checks."""
    return [
        "md:# DecoyMNIST: right for the right reasons\n\n"
        "Ross et al. (IJCAI 2017) add a 4x4 gray patch to a random corner of every "
        "MNIST digit. In training its shade, `255 - 25 y`, reveals the label; at test "
        "time it is the shade of a random digit. A model trained plainly reads the patch and fails "
        "at test time. Their fix penalises the squared input gradient of the summed "
        "log-probabilities on the patch (`xa.losses.right_for_the_right_reasons`). "
        "Here the same, and three methods the paper did not try as the penalty "
        "(Integrated Gradients, LRP and Grad-CAM). The gradient methods and LRP train "
        "Ross et al.'s kind of model, a 2-hidden-layer MLP (`xa.models.MLP`); "
        "Grad-CAM needs a feature map, so it trains a small CNN whose dense head "
        "reads every position (the zoo's SmallCNN pools globally and does not take "
        "the shortcut), beside that CNN's own clean and plain rows.",
        SETUP,
        "md:## The data set\n\n`xa.datasets.decoy_mnist(seed)` builds it "
        "deterministically from the 5,000 digits of `xa.datasets.mnist()` "
        "(4,000 training, 1,000 test). Top row: training digits; bottom row: test "
        "digits.",
        PICTURE,
        "md:## Training with and without the penalty\n\n"
        "Every penalty is `lambda * mean over the batch of sum over the patch of "
        "a(x)^2`, where `a` is the method's explanation of the summed log-probabilities "
        "(for input gradients, exactly Ross et al.'s penalty). Explanations of "
        "different methods have unrelated units, so each penalty's lambda gives it "
        "the initial weight that `lambda = 1000` gives the input-gradient penalty. "
        "Every row of a model starts from the same initial weights and sees the "
        "same batches; the times include compilation, on whatever machine runs the "
        "notebook.",
        TRAIN,
        RUN,
        CHECKS,
        "md:## What the models look at\n\nInput gradients of the MLP trained "
        "plainly and with Ross et al.'s penalty.",
        EXPLAIN,
    ]
