"""Cells of the TCAV part of the "Inside the network" notebook.

`tcav_cells()` returns cells in `_generate.py`'s format (strings; a `md:` prefix
marks markdown). They run after the notebook's SETUP, MODEL and DIGITS cells
(`FAST`, `data`, `model`, `xs`, `targets` are defined).
"""


def tcav_cells() -> list[str]:
    """The TCAV section.

    **Arguments:** none.

    **Returns:** the section's cells, markdown cells prefixed with `md:`.
    """
    return [
        """md:## Concepts: TCAV

Is the CNN's score for a class sensitive to a *concept*, a direction in a
hidden layer defined by examples rather than by pixels? TCAV (Kim et al., ICML
2018) fits a **concept activation vector** (CAV): the normal of a linear
classifier separating the layer activations of concept examples from those of
random examples. The TCAV score of a class is the share of its inputs whose
score increases along the CAV (the sign of the directional derivative
`grad_layer f_class(x) . cav`).

Our concept is **closed loop**: digits 0, 6, 8 and 9. The random sets are
digits drawn from the whole training set. The layer is `conv1`: `conv2` is
average-pooled straight into the classifier, so its gradient is the same for
every input and every TCAV score there would be 0 or 1.""",
        """\
n_per_set = 20 if FAST else 100   # examples per concept / random set
n_random = 4 if FAST else 10      # random sets: one concept CAV per set
rng = np.random.default_rng(0)
loops = np.flatnonzero(np.isin(data.y_train, [0, 6, 8, 9]))
concept_idx = rng.choice(loops, n_per_set, replace=False)
random_idx = rng.choice(len(data.y_train), n_random * n_per_set, replace=False)

tcav = xa.TCAV(model, lambda m: m.conv1)
concept_acts = tcav.activations(jnp.asarray(data.x_train[concept_idx]))
random_acts = tcav.activations(jnp.asarray(data.x_train[random_idx]))
random_acts = random_acts.reshape(n_random, n_per_set, *concept_acts.shape[1:])
print("activations:", concept_acts.shape, "concept;", random_acts.shape, "random")""",
        """md:For each class, `interpret` fits the CAVs of the concept against each
random set but the first, and of the first random set against the others
(random directions), scores held-out test digits of that class along all of
them, and compares the two score distributions with a two-sided t-test. A
concept only matters when its scores differ significantly from those of
random directions; `n_comparisons` applies Bonferroni's correction over the
classes tested.""",
        """\
classes = [0, 1, 6, 7] if FAST else list(range(10))
n_inputs = 16 if FAST else 100
results = {}
for c in classes:
    inputs = jnp.asarray(data.x_test[data.y_test == c][:n_inputs])
    results[c] = tcav.interpret(inputs, c, concept_acts, random_acts,
                                key=jax.random.key(c), n_comparisons=len(classes))

print("class  TCAV (concept)  TCAV (random)   p-value  significant  CAV accuracy")
for c, r in results.items():
    concept, rand = r.sign_count, r.random_sign_count
    print(f"{c:>5}  {float(concept.mean()):6.2f} ± {float(concept.std()):4.2f}"
          f"   {float(rand.mean()):6.2f} ± {float(rand.std()):4.2f}"
          f"   {float(r.p_value):7.3g}  {str(bool(r.significant)):>11}"
          f"  {float(r.accuracy.mean()):12.2f}")

# What holds for any trained model: scores and accuracies are shares, p-values
# probabilities (NaN only when both score sets are constant and equal).
for r in results.values():
    for v in (r.sign_count, r.magnitude, r.random_sign_count, r.accuracy):
        assert bool(jnp.all((v >= 0) & (v <= 1)))
    assert bool(jnp.isnan(r.p_value)) or 0.0 <= float(r.p_value) <= 1.0""",
        """\
from matplotlib.figure import Figure

fig = Figure(figsize=(7, 3))
ax = fig.subplots()
pos = np.arange(len(classes))
for offset, name, get in [(-0.2, "closed loop", lambda r: r.sign_count),
                          (0.2, "random", lambda r: r.random_sign_count)]:
    means = [float(get(r).mean()) for r in results.values()]
    stds = [float(get(r).std()) for r in results.values()]
    ax.bar(pos + offset, means, 0.4, yerr=stds, label=name, capsize=2)
for i, r in enumerate(results.values()):
    if bool(r.significant):
        ax.text(i, 1.02, "*", ha="center")
ax.set_xticks(pos, [str(c) for c in classes])
ax.set_ylim(0, 1.1)
ax.set_xlabel("class")
ax.set_ylabel("TCAV score (sign_count)")
ax.set_title("Concept 'closed loop' at conv1 (* significant)", fontsize=9)
ax.legend(fontsize=8)
display(fig)""",
        """md:Read the scores with their test: a CAV fitted on random digits also
gives scores far from 0.5, because the layer gradient of a class points in a
consistent direction. Only a significant difference from the random CAVs says
the concept direction matters for the class. For large concept and random
sets, stream the activations to a Zarr store with
`xa.explain_dataset(xa.LayerActivation(model, where), ...)` and pass its
`attributions` array to `interpret` (see the docs' *Concepts: TCAV* page).""",
    ]
