"""Cells of the CRP part of the "Inside the network" notebook.

`crp_cells()` returns cells in `_generate.py`'s format (strings; a `md:` prefix
marks markdown). They run after the notebook's SETUP, MODEL and DIGITS cells
(`FAST`, `data`, `model`, `xs`, `targets` are defined).
"""


def crp_cells() -> list[str]:
    """The CRP section.

    **Arguments:** none.

    **Returns:** the section's cells, markdown cells prefixed with `md:`.
    """
    return [
        """md:## Conditional relevance: CRP

LRP splits a class score over the input pixels. **Concept Relevance
Propagation** (Achtibat et al., Nature Machine Intelligence 2023) splits it
over the channels of a hidden layer first: `xa.LayerLRP` gives the relevance
arriving at `conv2`, `xa.ChannelRelevance` sums it per channel, and
`xa.CRP(model, layer, concepts)` lets only the chosen channels' relevance flow
on to the input. The result is one heatmap per concept: *where* in the digit
the channel found what made the class score.""",
        """\
layer = lambda m: m.conv2
rel = eqx.filter_jit(eqx.filter_vmap(xa.ChannelRelevance(model, layer)))(xs, targets)
n_top = 3
top = jnp.argsort(-rel, axis=1)[:, :n_top]         # each digit's most relevant channels


def concept_maps(x, t, ids):
    # one CRP heatmap per channel id: a vmap over the ids shares the forward pass
    return eqx.filter_vmap(lambda c: xa.CRP(model, layer, c)(x, t))(ids)


maps = eqx.filter_jit(eqx.filter_vmap(concept_maps))(xs, targets, top)
lrp = explain(xa.LRP(model))
print("channel relevances:", rel.shape, " CRP maps:", maps.shape)

# Conditioning on every channel, one at a time, splits LRP's map exactly.
n_channels = rel.shape[1]
every = eqx.filter_jit(concept_maps)(xs[0], targets[0], jnp.arange(n_channels))
scale = float(np.abs(lrp[0]).max())
assert np.allclose(every.sum(0), lrp[0], atol=1e-4 * scale)
assert np.allclose(rel[0].sum(), np.asarray(
    xa.LayerLRP(model, layer)(xs[0], targets[0])).sum(), rtol=1e-4, atol=1e-6)""",
        """\
from matplotlib.figure import Figure

n_show = min(4, len(xs))
fig = Figure(figsize=(2 * (n_top + 3), 2 * n_show))
axes = fig.subplots(n_show, n_top + 3, squeeze=False)
for i in range(n_show):
    row = axes[i]
    row[0].imshow(np.asarray(xs[i, 0]), cmap="gray")
    row[0].set_title(labels[i], fontsize=8)
    pics = [lrp[i, 0]] + [np.asarray(maps[i, k, 0]) for k in range(n_top)]
    names = ["LRP"] + [f"channel {int(c)}" for c in top[i]]
    for ax, pic, name in zip(row[1:], pics, names):
        v = float(np.abs(pic).max()) or 1.0
        ax.imshow(pic, cmap="bwr", vmin=-v, vmax=v)
        ax.set_title(name, fontsize=8)
    row[-1].bar(np.arange(n_channels), np.asarray(rel[i]), color="gray")
    row[-1].bar(np.asarray(top[i]), np.asarray(rel[i])[np.asarray(top[i])], color="red")
    row[-1].set_title("relevance per channel", fontsize=8)
for ax in axes[:, :-1].ravel():
    ax.set_axis_off()
fig.tight_layout()
display(fig)""",
        """md:### Relevance maximisation

Which digits is a channel *about*? Rank a data set's examples by the
channel's relevance for their predicted class (zennit-crp's `RelMax`: the
relevance summed over space, normalised by the sum of absolute channel
relevances), or by its maximal activation (`ActMax`). `xa.explain_dataset`
stores the `(C,)` score of every example in a Zarr store (resumable, sharded,
on every device); `xa.top_k_references` ranks it, reading it in chunks.""",
        """\
import tempfile

n_ref = 200 if FAST else 2000
ref_x = data.x_test[:n_ref]
store = tempfile.mkdtemp()
scores = {
    "relevance": xa.explain_dataset(
        xa.ChannelRelevance(model, layer, normalize=True), ref_x, "predicted",
        out=f"{store}/rel.zarr", batch_size=100, progress=False)["attributions"],
    "activation": xa.explain_dataset(
        xa.ChannelActivation(model, layer), ref_x, "predicted",
        out=f"{store}/act.zarr", batch_size=100, progress=False)["attributions"],
}
k = 6
refs = {name: xa.top_k_references(s, k) for name, s in scores.items()}
for name, (idx, val) in refs.items():
    assert idx.shape == (n_channels, k)
    assert np.all(np.diff(val, axis=1) <= 0)        # best first
channels = [int(c) for c in top[0]]
fig = Figure(figsize=(1.2 * k, 1.3 * 2 * len(channels)))
axes = fig.subplots(2 * len(channels), k, squeeze=False)
for j, c in enumerate(channels):
    for r, name in enumerate(refs):
        idx, _ = refs[name]
        for m in range(k):
            ax = axes[2 * j + r, m]
            ax.imshow(ref_x[idx[c, m], 0], cmap="gray")
            ax.set_axis_off()
        axes[2 * j + r, 0].set_title(f"channel {c}, by {name}", fontsize=8, loc="left")
fig.tight_layout()
display(fig)""",
        """md:The references by relevance show what the channel contributes to
*decisions*; those by activation, what merely excites it. For one digit the
CRP heatmaps above say where that concept was found in it.""",
    ]
