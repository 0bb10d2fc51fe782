"""A leaderboard of attribution methods: which is faithful for this model?"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._batch import batch_runner
from ._arcc import arcc_score, coherency_of_maps, scale_cam
from ._base import spatial_map
from ._complexity import Sparseness
from ._deletion import Deletion, Insertion
from ._efficient_mprt import discrete_entropy
from ._randomisation import _layer_count, randomise_layers
from ._road import ROAD, ROADConfidenceChange
from ._similarity import spearman

COLUMNS = (
    "deletion", "insertion", "road_morf", "sparseness", "mprt", "efficient_mprt",
    "arcc",
)  # fmt: skip
_HEADERS = {
    "deletion": "deletion AUC (lower)",
    "insertion": "insertion AUC (higher)",
    "road_morf": "ROAD MoRF (lower)",
    "sparseness": "sparseness",
    "mprt": "MPRT full random (lower)",
    "efficient_mprt": "eMPRT (higher)",
    "arcc": "ARCC (higher)",
}
# pytorch-grad-cam's ARCC: ROADCombined at these percentiles.
ARCC_PERCENTILES = (20, 40, 60, 80)


@dataclasses.dataclass(frozen=True)
class Leaderboard:
    """Methods x metrics, averaged over the evaluated examples.

    **Fields:** `scores` (method -> column -> mean), `deletion_curves` (method ->
    mean deletion curve, `n_steps + 1` points), `seconds` (wall time of the whole
    evaluation, attributions included), `n_examples`.

    **Arguments:** the four fields above, as keywords or in that order.

    **Returns:** a frozen record; `table()` renders it as Markdown and
    `plot(path)` draws the mean deletion curves.
    """

    scores: dict[str, dict[str, float]]
    deletion_curves: dict[str, np.ndarray]
    seconds: float
    n_examples: int

    def table(self) -> str:
        """The leaderboard as a Markdown table (methods sorted by deletion AUC)."""
        names = sorted(self.scores, key=lambda n: self.scores[n]["deletion"])
        width = max(len("method"), *(len(n) for n in names))
        head = f"| {'method':<{width}} | " + " | ".join(_HEADERS[c] for c in COLUMNS)
        rule = (
            "|"
            + "-" * (width + 2)
            + "|"
            + "|".join("-" * (len(_HEADERS[c]) + 2) for c in COLUMNS)
        )
        rows = [
            f"| {n:<{width}} | "
            + " | ".join(f"{self.scores[n][c]:>{len(_HEADERS[c])}.3f}" for c in COLUMNS)
            for n in names
        ]
        return "\n".join([head + " |", rule + "|", *(r + " |" for r in rows)])

    def plot(self, path: str | os.PathLike) -> Any:
        """Write the mean deletion curve of every method to `path` (matplotlib)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, curve in self.deletion_curves.items():
            frac = np.linspace(0, 1, len(curve))
            auc = self.scores[name]["deletion"]
            ax.plot(frac, curve, label=f"{name} ({auc:.3f})")
        ax.set_xlabel("fraction of pixels deleted (most relevant first)")
        ax.set_ylabel("target probability")
        ax.set_title(f"Deletion curves, {self.n_examples} held-out examples")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return fig


# Module-level compiled functions: their compilations are shared between calls
# (a closure jitted inside a function would compile again on every call).
_attribute = batch_runner()  # (method, xs, targets, keys) -> attributions
_randomise = eqx.filter_jit(randomise_layers)


@eqx.filter_jit
def _scores(model, road, deletion, insertion, arcc_road, xs, targets, attrs, keys):
    def one(x, t, a, k, k_arcc):
        curve = deletion.curve(x, t, a)
        m = scale_cam(spatial_map(a))  # ARCC's map: grad-cam's scaling
        return {
            "deletion_curve": curve,
            "deletion": jnp.sum(curve) - (curve[0] + curve[-1]) / 2,
            "insertion": insertion(x, t, a),
            "road_morf": road(x, t, a, key=k),
            "sparseness": Sparseness()(a),
            "arcc_map": m,
            "arcc_mixed": (x * jnp.broadcast_to(m, x.shape)).astype(x.dtype),
            "arcc_complexity": jnp.mean(jnp.abs(m)),
            # ARCC's own split of its key: (ROAD, method)
            "arcc_road": arcc_road(x, t, m, key=jax.random.split(k_arcc)[0]),
        }

    out = jax.vmap(one)(xs, targets, attrs, keys[0], keys[1])
    out["deletion"] = out["deletion"] / deletion.n_steps
    return out


@jax.jit
def _method_keys(keys: Array) -> Array:
    return jax.vmap(lambda k: jax.random.split(k)[1])(keys)


@jax.jit
def _coherency(new: Array, maps: Array) -> Array:
    return jax.vmap(coherency_of_maps)(new, maps)


def _mprt_full(method: Any, xs, targets, attrs, keys, key) -> tuple[Array, Array]:
    """MPRT's last cascading step and EfficientMPRT, from one randomised model."""
    n = _layer_count(method)
    if n == 0:
        return jnp.full(xs.shape[0], jnp.nan), jnp.full(xs.shape[0], jnp.nan)
    randomised = _randomise(method, tuple(range(n)), key)
    return _randomisation_scores(attrs, _attribute(randomised, xs, targets, keys))


@jax.jit
def _randomisation_scores(a: Array, b: Array) -> tuple[Array, Array]:
    def one(u, v):
        h0 = discrete_entropy(u)
        return spearman(jnp.abs(u), jnp.abs(v)), (discrete_entropy(v) - h0) / h0

    return jax.vmap(one)(a, b)


def leaderboard(
    model: Callable[..., Any],
    methods: Mapping[str, Any],
    xs: Float[Array, " n *dims"],
    targets: Int[Array, " n"],
    *,
    key: PRNGKeyArray,
    n_steps: int = 20,
    baseline: Any = 0.0,
    road_percentages: tuple[int, ...] = (10, 30, 50, 70, 90),
    chunk_size: int | Literal["auto"] | None = "auto",
) -> Leaderboard:
    """Evaluate every method on `xs` with the faithfulness and sanity metrics.

    Columns: [`eqx_attr.metrics.Deletion`][] and [`eqx_attr.metrics.Insertion`][]
    AUC (softmax probability, `n_steps`, `baseline`), [`eqx_attr.metrics.ROAD`][]
    most-relevant-first accuracy at `road_percentages`,
    [`eqx_attr.metrics.Sparseness`][], the
    Spearman similarity of |a| before and after randomising every layer (the last
    cascading step of [`eqx_attr.metrics.MPRT`][]; near 1 means the method
    ignores the model), [`eqx_attr.metrics.EfficientMPRT`][] on the same
    randomised model (the relative rise of the explanation's entropy; higher is
    better), and pytorch-grad-cam's [`eqx_attr.metrics.ARCC`][] of the map summed
    over channels and min-max scaled to [0, 1] (`ARCC(model, method, scale=True)`;
    higher is better). Every metric runs jitted and vmapped over the examples.

    **Arguments:** `model`, `methods` (name -> attribution method of `model`),
    `xs`, `targets` (integer classes), `key`, `n_steps`, `baseline`,
    `road_percentages`, `chunk_size` (for the deletion/insertion steps).

    **Returns:** a [`eqx_attr.metrics.Leaderboard`][]; `.table()` is Markdown,
    `.plot(path)` writes
    the deletion curves.

    ```python
    board = xa.metrics.leaderboard(model, {"IG": xa.IntegratedGradients(model)},
                                   xs, ts, key=jax.random.key(0))
    print(board.table())
    ```
    """
    start = time.perf_counter()
    n = xs.shape[0]
    # By keyword: pyright reads the fields' order (`baseline` first), not the
    # `__init__` that Deletion and Insertion inherit.
    deletion = Deletion(
        model,
        n_steps=n_steps,
        baseline=baseline,
        score="probability",
        chunk_size=chunk_size,
    )
    insertion = Insertion(
        model,
        n_steps=n_steps,
        baseline=baseline,
        score="probability",
        chunk_size=chunk_size,
    )
    road = ROAD(model, percentages=road_percentages)
    arcc_road = ROADConfidenceChange(model, ARCC_PERCENTILES, order="combined")
    scores: dict[str, dict[str, float]] = {}
    curves: dict[str, np.ndarray] = {}
    for i, (name, method) in enumerate(methods.items()):
        k_attr, k_road, k_mprt = jax.random.split(jax.random.fold_in(key, i), 3)
        keys = jax.random.split(k_attr, n)
        attrs = _attribute(method, xs, targets, keys)
        # ARCC's per-example keys, apart from the existing ones.
        arcc_keys = jax.random.split(jax.random.fold_in(k_road, 1), n)
        out = _scores(
            model, road, deletion, insertion, arcc_road, xs, targets, attrs,
            (jax.random.split(k_road, n), arcc_keys),
        )  # fmt: skip
        mprt, efficient = _mprt_full(method, xs, targets, attrs, keys, k_mprt)
        # ARCC's coherency: the method's maps of x times its scaled map, through
        # the program already compiled for the method's attributions.
        remapped = _attribute(
            method, out["arcc_mixed"], targets, _method_keys(arcc_keys)
        )
        coherency = _coherency(remapped, out["arcc_map"])
        arcc = arcc_score(coherency, out["arcc_complexity"], out["arcc_road"])
        scores[name] = {
            c: float(jnp.mean(out[c])) for c in ("deletion", "insertion", "road_morf")
        }
        scores[name]["sparseness"] = float(jnp.mean(out["sparseness"]))
        scores[name]["mprt"] = float(jnp.mean(mprt))
        scores[name]["efficient_mprt"] = float(jnp.mean(efficient))
        scores[name]["arcc"] = float(jnp.mean(arcc))
        curves[name] = np.asarray(jnp.mean(out["deletion_curve"], axis=0))
    return Leaderboard(scores, curves, time.perf_counter() - start, n)


def demo_leaderboard(
    model: Callable[..., Any],
    methods: Mapping[str, Any],
    xs: Float[Array, " n *dims"],
    targets: Int[Array, " n"],
    out_dir: str | os.PathLike,
    print_fn: Callable[[str], None] = print,
) -> Leaderboard:
    """The demo's leaderboard: evaluate, print the table and seconds, plot curves.

    Writes `out_dir/deletion_curves.png`; returns the leaderboard.

    **Arguments:**

    - `model`: the classifier.
    - `methods`: a mapping from a display name to an attribution method.
    - `xs`, `targets`: the examples `(N, *dims)` and their classes `(N,)`.
    - `out_dir`: the folder of the plot.
    - `print_fn`: where the lines go (default `print`).

    **Returns:** the [`eqx_attr.metrics.Leaderboard`][].
    """
    board = leaderboard(model, methods, xs, targets, key=jax.random.key(0))
    print_fn(f"leaderboard on {board.n_examples} held-out digits:")
    print_fn(board.table())
    path = os.path.join(out_dir, "deletion_curves.png")
    board.plot(path)
    print_fn(f"evaluation took {board.seconds:.1f} s; wrote {path}")
    return board
