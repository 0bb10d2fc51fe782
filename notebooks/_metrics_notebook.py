# ruff: noqa: E501  (markdown lines)
"""Cells of the "Evaluating explanations" notebook (hooked into `_generate.py`).

`evaluating_cells(SETUP, MODEL, DIGITS)` returns the cells in `_generate.py`'s
format (strings; a `md:` prefix marks markdown), reusing its set-up cells.
"""


def evaluating_cells(setup: str, model: str, digits: str) -> list[str]:
    """The notebook: sanity checks (MPRT), faithfulness curves and leaderboard,
    and the effect of the baseline on deletion and insertion."""
    return [
        "md:# Evaluating explanations\n\nA saliency map is a claim about the model. "
        "`xa.metrics` tests that claim: is the map tied to the model's weights "
        "(randomisation), does removing what it highlights change the prediction "
        "(faithfulness), and how does the answer depend on the baseline? Every "
        "metric is a jitted, vmapped Equinox module.",
        setup,
        model,
        digits,
        """\
methods = {
    "Gradients": xa.Gradients(model),
    "Gradients x Input": xa.GradientsXInput(model),
    "Integrated Gradients": xa.IntegratedGradients(model, n_steps=8 if FAST else 32),
    "Guided Backprop": xa.GuidedBackprop(model),
    "Grad-CAM": xa.GradCAM(model, lambda m: m.conv2),
}
if FAST:  # the test suite's setting: three methods, Guided Backprop among them
    methods = {k: methods[k] for k in ("Gradients", "Integrated Gradients",
                                       "Guided Backprop")}
attrs = {name: explain(m) for name, m in methods.items()}""",
        "md:## Sanity check: model parameter randomisation (MPRT)\n\n"
        "Adebayo et al. (2018) re-initialise the layers from the top down. An "
        "explanation that still looks the same ignores the model: Guided Backprop "
        "is the known failure (its maps stay close to an edge detector of the input).",
        """\
def mprt_curve(method):
    # One key for all digits: they share one randomised model.
    mprt = xa.metrics.MPRT(method)
    run = eqx.filter_jit(lambda x, t: jax.vmap(
        lambda a, b: mprt.curve(a, b, key=jax.random.key(1)))(x, t))
    return np.asarray(run(xs, targets)).mean(axis=0)

import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, method in methods.items():
    ax.plot(mprt_curve(method), marker="o", label=name)
ax.set_xlabel("layers randomised (top first)")
ax.set_ylabel("Spearman similarity to original")
ax.legend(fontsize=8)
display(fig)
plt.close(fig)""",
        "md:## Faithfulness: deletion curves and the leaderboard",
        """\
n_eval = 8 if FAST else 128
x_eval = jnp.asarray(data.x_test[:n_eval])
t_eval = jnp.asarray(xa.training.predict(model, x_eval), jnp.int32)
board = xa.metrics.leaderboard(model, methods, x_eval, t_eval, key=jax.random.key(0))
print(board.table())
print(f"evaluation took {board.seconds:.1f} s")
import tempfile
from IPython.display import Image

curves_png = os.path.join(tempfile.mkdtemp(), "deletion_curves.png")
board.plot(curves_png)
display(Image(curves_png))""",
        "md:The last two columns: EfficientMPRT (Hedström et al., 2023: how much "
        "more disordered, in histogram entropy, the explanation of the fully "
        "randomised model is; higher is better) and pytorch-grad-cam's ARCC (the "
        "harmonic mean of coherency, 1 - complexity and ROAD, on each map scaled to "
        "[0, 1]; higher is better).\n\n"
        "## pytorch-grad-cam's metrics on a CAM\n\n"
        "ARCC re-explains the digit multiplied by its own CAM (coherency), measures "
        "how much of the image the CAM covers (complexity) and how much imputing "
        "the most / least relevant pixels moves the score (ROAD, combined over "
        "20 ... 80 percentiles). `CamMultImageConfidenceChange` is the change of "
        "the softmax probability when the digit is multiplied by the CAM.",
        """\
cam_method = xa.GradCAM(model, lambda m: m.conv2)
cams = jnp.asarray(explain(cam_method))  # (n, 28, 28)
arcc = xa.metrics.ARCC(model, cam_method, scale=True)
cam_mult = xa.metrics.CamMultImageConfidenceChange(model)


@eqx.filter_jit
def gradcam_metrics(xs, ts, cams, keys):
    def one(x, t, c, k):
        terms = arcc.components(x, t, c, key=k)
        return {**terms, "ARCC": xa.metrics.arcc_score(**terms),
                "CAM-mult change": cam_mult(x, t, xa.metrics.scale_cam(c))}
    return jax.vmap(one)(xs, ts, cams, keys)


for name, v in gradcam_metrics(xs, targets, cams, keys).items():
    print(f"{name:<16}", np.round(np.asarray(v), 3))""",
        "md:Quantus 0.6's Sufficiency and Consistency compare the examples of a "
        "batch: do examples with similar (or equally discretised) explanations get "
        "the same prediction?",
        """\
grads = eqx.filter_jit(eqx.filter_vmap(xa.Gradients(model)))(x_eval, t_eval)
for metric in (xa.metrics.Sufficiency(model), xa.metrics.Consistency(model)):
    scores = np.asarray(eqx.filter_jit(metric)(x_eval, grads))
    print(type(metric).__name__, np.round(scores, 2), f"mean {scores.mean():.2f}")""",
        "md:## The baseline matters\n\nDeletion replaces pixels by the baseline, "
        "insertion starts from it. With a black baseline on MNIST, deleting "
        "background pixels changes nothing; a blurred baseline removes information "
        "everywhere. The ranking of methods can change with it.",
        """\
baselines = {"black (0.0)": 0.0, "blur (sigma 4)": xa.baselines.Blur(4.0),
             "mean digit": xa.baselines.DatasetMean.from_data(data.x_train[:512])}
rows = []
for bname, b in baselines.items():
    deletion = eqx.filter_jit(eqx.filter_vmap(xa.metrics.Deletion(model, baseline=b)))
    insertion = eqx.filter_jit(eqx.filter_vmap(xa.metrics.Insertion(model, baseline=b)))
    for name in methods:
        a = jnp.asarray(attrs[name])
        rows.append((bname, name, float(deletion(xs, targets, a).mean()),
                     float(insertion(xs, targets, a).mean())))
print(f"{'baseline':<16} {'method':<22} deletion  insertion")
for r in rows:
    print(f"{r[0]:<16} {r[1]:<22} {r[2]:8.3f}  {r[3]:9.3f}")""",
    ]
