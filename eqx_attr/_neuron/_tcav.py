"""TCAV: testing with concept activation vectors (Kim et al., ICML 2018).

The per-example part is the layer gradient of the target (the "sensitivity")
and its directional derivative along a CAV; the batch part vmaps it over the
inputs (one forward and backward pass per input, shared by every CAV) and
aggregates Captum's `sign_count` and `magnitude` scores; `interpret` fits the
CAVs against several random sets and tests the scores against those of
random-vs-random CAVs (a two-sided t-test, as Captum's TCAV tutorial does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from .._attribution import (
    AbstractCompiledAttribution,
    Image,
    Target,
    batched_map,
    call_compiled,
    check_bool,
    check_choice,
    check_chunk_size,
    check_index,
    check_input,
    check_key,
    check_positive_int,
    check_where,
    index_target,
    make_objective,
)
from .._layers import inspect_layer, layer_activation, read_layer
from .._layout import InputLayout, input_layout_field
from .._method_entry import MethodEntry
from ._cav import CAV, as_activations, fit_cav

__all__ = ["CAV", "TCAV", "TCAVResult", "TCAVScores", "fit_cav"]

ROWS: tuple[MethodEntry, ...] = ()


class TCAVScores(eqx.Module):
    """TCAV scores of a set of inputs along one CAV (or `k` CAVs).

    Built by [`eqx_attr.TCAV.scores`][].

    **Arguments:** the fields (a leading axis `k` for several CAVs):

    - `sign_count`: the fraction of inputs whose directional derivative is
        positive: Kim et al.'s TCAV score.
    - `magnitude`: the sum of the positive directional derivatives over the sum
        of their absolute values (0 when every derivative is 0), in `[0, 1]`;
        the definition in Captum's `TCAV` docstring.
    - `mean_derivative`: the mean directional derivative (what Captum 0.9's
        code returns as `magnitude`; it scales with the CAV's norm).
    - `derivatives`: `(*k, n)`, each input's directional derivative.

    **Returns:** a container of the four arrays.

    ```python
    s = xa.TCAV(model, lambda m: m.conv1).scores(xs, 3, cav)
    s.sign_count, s.magnitude
    ```
    """

    sign_count: Float[Array, "*k"]
    magnitude: Float[Array, "*k"]
    mean_derivative: Float[Array, "*k"]
    derivatives: Float[Array, "*k n"]


def tcav_scores(derivatives: Float[Array, "*k n"]) -> TCAVScores:
    """Aggregate directional derivatives `(*k, n)` over the `n` inputs."""
    d = derivatives
    positive = jnp.sum(jnp.where(d > 0, d, 0), axis=-1)
    # As positive + negative, not sum |d|: a ratio that rounding cannot push
    # above 1 (two differently fused sums of the same terms may differ).
    total = positive + jnp.sum(jnp.where(d < 0, -d, 0), axis=-1)
    return TCAVScores(
        sign_count=jnp.mean((d > 0).astype(d.dtype), axis=-1),
        magnitude=jnp.where(total > 0, positive / jnp.where(total > 0, total, 1), 0),
        mean_derivative=jnp.mean(d, axis=-1),
        derivatives=d,
    )


def t_test(
    a: Float[Array, " n"], b: Float[Array, " m"], *, equal_var: bool = True
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Two-sided t-test of equal means: `(t statistic, p-value)`.

    Student's test with a pooled variance (`equal_var=True`) or Welch's test,
    as `scipy.stats.ttest_ind`; the p-value is the t distribution's two tails,
    `I_{df / (df + t^2)}(df / 2, 1 / 2)`. Two constant samples with equal
    means give NaN, as in SciPy.
    """
    na, nb = a.shape[0], b.shape[0]
    va, vb = jnp.var(a, ddof=1), jnp.var(b, ddof=1)
    if equal_var:
        df = jnp.asarray(na + nb - 2, a.dtype)
        pooled = ((na - 1) * va + (nb - 1) * vb) / df
        se2 = pooled * (1 / na + 1 / nb)
    else:
        se2 = va / na + vb / nb
        df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    t = (jnp.mean(a) - jnp.mean(b)) / jnp.sqrt(se2)
    p = jax.scipy.special.betainc(df / 2, 0.5, df / (df + t**2))
    # betainc may round a hair above 1 for t = 0.
    return t, jnp.minimum(p, 1)


class TCAVResult(eqx.Module):
    """The result of [`eqx_attr.TCAV.interpret`][]: scores and their significance.

    With `N` random sets there are `N - 1` runs of each kind: the concept
    against random set `i`, and random set 0 against random set `i`
    (`i = 1 .. N - 1`).

    **Arguments:** the fields:

    - `sign_count`, `magnitude`: `(N - 1,)`, the concept CAVs' scores
        ([`eqx_attr.TCAVScores`][]).
    - `random_sign_count`, `random_magnitude`: `(N - 1,)`, the random CAVs'.
    - `accuracy`, `random_accuracy`: `(N - 1,)`, the CAVs' held-out accuracies.
    - `t_statistic`, `p_value`: the two-sided t-test between the concept and the
        random scores (of the kind `interpret`'s `score` names).
    - `significant`: `p_value < alpha / n_comparisons` (False for a NaN p-value).
    - `cavs`, `random_cavs`: the fitted [`eqx_attr.CAV`][]s, `N - 1` each.

    **Returns:** a container of these fields.

    ```python
    r = xa.TCAV(model, lambda m: m.conv1).interpret(xs, 3, concept, randoms, key=key)
    r.sign_count.mean(), r.p_value, r.significant
    ```
    """

    sign_count: Float[Array, " r"]
    magnitude: Float[Array, " r"]
    random_sign_count: Float[Array, " r"]
    random_magnitude: Float[Array, " r"]
    accuracy: Float[Array, " r"]
    random_accuracy: Float[Array, " r"]
    t_statistic: Float[Array, ""]
    p_value: Float[Array, ""]
    significant: Bool[Array, ""]
    cavs: CAV
    random_cavs: CAV


def _check_cav(cav: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(cav, CAV):
        raise TypeError(
            "`cav` must be an `xa.CAV` (from `xa.fit_cav`, or built by hand), got "
            f"{type(cav).__name__}."
        )
    if tuple(cav.shape) != tuple(shape):
        raise ValueError(
            f"`cav` was fitted to activations of shape {cav.shape}, but `where` "
            f"names a layer whose output has shape {shape}. Fit the CAV on this "
            "layer's activations (`tcav.activations(xs)`)."
        )


def _random_sets(random_acts: Any) -> list[Array]:
    if isinstance(random_acts, (list, tuple)):
        sets = [
            as_activations(r, f"random_acts[{i}]") for i, r in enumerate(random_acts)
        ]
    else:
        stacked = as_activations(random_acts, "random_acts")
        sets = list(stacked)
    if len(sets) < 3:
        raise ValueError(
            f"`random_acts` holds {len(sets)} random set(s); the significance test "
            "needs at least 3 (set 0 is the counterpart of the random-vs-random "
            "CAVs, the others give one score each: at least 2 per side). Pass a "
            "list of random sets, e.g. 10 sets of 50 examples' activations."
        )
    return sets


class TCAV(AbstractCompiledAttribution):
    """Testing with concept activation vectors: a concept's influence on a class.

    Kim et al., *Interpretability Beyond Feature Attribution: Quantitative
    Testing with Concept Activation Vectors (TCAV)*, ICML 2018; Captum's `TCAV`
    semantics. The sensitivity of input `x` to a concept is the directional
    derivative `grad_layer f_target(x) . cav` of the target's score along the
    concept's CAV (the layer gradient is Captum's default, `LayerGradientXActivation`
    with `multiply_by_inputs=False`). Over a set of inputs of one class,
    `sign_count` is the share of positive derivatives and `magnitude` the
    positive share of their absolute sum.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `where`: a `where` function naming the layer, e.g. `lambda m: m.conv1`.
        Its gradient must depend on the input: at a layer followed by linear
        maps only (SmallCNN's `conv2`), every `sign_count` is 0 or 1.
    - `call_index`: which call of the layer to read if it is called several times.
    - `input_layout`: `"chw"`, `"hwc"` or `None`; checked, not needed.

    **Returns:** `tcav(x, target)` gives the layer gradient of the target's
    score (shaped like the layer's output): one example in, jit- and vmap-able.
    [`eqx_attr.TCAV.directional_derivative`][] projects it on CAVs,
    [`eqx_attr.TCAV.scores`][] aggregates a batch, [`eqx_attr.TCAV.interpret`][]
    fits the CAVs and tests their significance, and
    [`eqx_attr.TCAV.activations`][] gives the layer activations to fit on.

    ```python
    tcav = xa.TCAV(model, lambda m: m.conv1)
    result = tcav.interpret(xs, 3, concept_acts, [r0, r1, r2], key=key)
    result.sign_count, result.p_value, result.significant
    ```
    """

    model: Callable[..., Any]
    where: Callable = eqx.field(static=True)
    call_index: int | None = eqx.field(static=True, default=None, kw_only=True)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        check_where(self.where, "where", "lambda m: m.conv2")
        check_index(self.call_index, "call_index")

    def attribute(
        self, x: Array, target: Target, key: PRNGKeyArray | None
    ) -> Float[Array, "*act"]:
        del key
        info = inspect_layer(self.model, self.where, x, self.call_index)
        _, _, _, grad = read_layer(
            self.model, self.where, x, make_objective(target, info.out), info
        )
        return grad

    def _directional(self, x: Array, target: Target, cav: CAV) -> Array:
        grad = self.attribute(x, target, None)
        _check_cav(cav, grad.shape)
        return cav.vector.astype(grad.dtype) @ grad.reshape(-1)

    def directional_derivative(
        self, x: Image, target: Target, cav: CAV
    ) -> Float[Array, "*k"]:
        """The directional derivative of the target's score along `cav`.

        **Arguments:** `x` (one example), `target` (as for the call), `cav` (an
        [`eqx_attr.CAV`][] of this layer, or `k` stacked ones).

        **Returns:** `grad_layer f_target(x) . cav.vector`: a scalar, or `(k,)`.
        """
        _check_cav(cav, tuple(cav.shape))
        x = check_input(x)
        return call_compiled(self._directional, x, self._checked_target(x, target), cav)

    def activations(
        self, xs: Image, *, chunk_size: int | Literal["auto"] | None = "auto"
    ) -> Float[Array, "n ..."]:
        """The layer's activations for a batch `xs` `(n, *example shape)`, to fit
        CAVs on (for data sets that do not fit in memory, stream them with
        `xa.explain_dataset(xa.LayerActivation(model, where), ...)` instead).

        **Returns:** `(n, *layer shape)`.
        """
        check_chunk_size(chunk_size)
        xs = self._check_batch(xs)
        return call_compiled(self._activations, xs, chunk_size)

    def _activations(self, xs: Array, chunk_size: Any) -> Array:
        def one(x):
            return layer_activation(
                self.model, self.where, x, call_index=self.call_index
            )

        return batched_map(one, xs, chunk_size)

    def _check_batch(self, xs: Any) -> Array:
        xs = check_input(xs, "xs")
        if xs.ndim < 2:
            raise ValueError(
                f"`xs` has shape {xs.shape}; pass a batch of examples, "
                "`(n, *example shape)`."
            )
        return xs

    def _batch_target(self, xs: Array, target: Target) -> tuple[Target, bool]:
        """The checked target and whether it holds one class per input."""
        if not (isinstance(target, (jax.Array, np.ndarray)) and target.ndim == 1):
            return index_target(self.model, xs[0], target), False
        if target.shape[0] != xs.shape[0]:
            raise ValueError(
                f"`target` holds {target.shape[0]} classes for {xs.shape[0]} inputs; "
                "pass one class per input, or one int for all of them."
            )
        index_target(self.model, xs[0], jnp.asarray(target)[0])
        return jnp.asarray(target), True

    def scores(
        self,
        xs: Image,
        target: Target,
        cav: CAV,
        *,
        chunk_size: int | Literal["auto"] | None = "auto",
    ) -> TCAVScores:
        """TCAV scores of the inputs `xs` along `cav` (or `k` stacked CAVs).

        **Arguments:**

        - `xs`: `(n, *example shape)`, usually examples of the class `target`.
        - `target`: one target for every input (int, 0-d array, callable) or a
            1-D integer array of one class per input.
        - `cav`: an [`eqx_attr.CAV`][] of this layer, or `k` stacked ones: each
            input's forward and backward pass is shared by all of them.
        - `chunk_size`: inputs per vectorised chunk (`None`: all at once;
            `"auto"`, the default: as many as fit the memory budget).

        **Returns:** a [`eqx_attr.TCAVScores`][].
        """
        check_chunk_size(chunk_size)
        _check_cav(cav, tuple(cav.shape))
        xs = self._check_batch(xs)
        target, per_example = self._batch_target(xs, target)
        return call_compiled(self._scores, xs, target, cav, per_example, chunk_size)

    def _scores(
        self, xs: Array, target: Any, cav: CAV, per_example: bool, chunk_size: Any
    ) -> TCAVScores:
        if per_example:
            d = batched_map(
                lambda xt: self._directional(xt[0], xt[1], cav),
                (xs, target),
                chunk_size,
            )
        else:
            d = batched_map(lambda x: self._directional(x, target, cav), xs, chunk_size)
        return tcav_scores(jnp.moveaxis(d, 0, -1))

    def interpret(
        self,
        xs: Image,
        target: Target,
        concept_acts: Any,
        random_acts: Sequence[Any] | Any,
        *,
        key: PRNGKeyArray | None = None,
        score: Literal["sign_count", "magnitude"] = "sign_count",
        alpha: float = 0.05,
        n_comparisons: int = 1,
        equal_var: bool = True,
        test_fraction: float = 0.33,
        l2: float = 0.01,
        n_steps: int = 1000,
        chunk_size: int | Literal["auto"] | None = "auto",
    ) -> TCAVResult:
        """Fit the CAVs, score `xs` and test the scores' significance.

        CAVs are fitted (with [`eqx_attr.fit_cav`][]) for the concept against each
        random set `i >= 1`, and for random set 0 against each random set
        `i >= 1`; `xs` are scored along all of them in one pass; the concept's
        scores are compared with the random ones by a two-sided t-test (Kim et
        al.: a concept whose scores do not differ from random directions' is not
        meaningful).

        **Arguments:**

        - `xs`, `target`: the inputs and their class, as for
            [`eqx_attr.TCAV.scores`][].
        - `concept_acts`: `(n, *layer shape)` activations of the concept's
            examples (an array, or a Zarr array written by `xa.explain_dataset`).
        - `random_acts`: a list of `N >= 3` random sets `(n_i, *layer shape)`,
            or one array `(N, n, *layer shape)`. Sets of equal size are fitted
            in one vmapped program.
        - `key`: PRNG key of the CAVs' train/test splits.
        - `score`: which score the test compares, `"sign_count"` (Kim et al.'s)
            or `"magnitude"`.
        - `alpha`, `n_comparisons`: significant when `p < alpha / n_comparisons`
            (Bonferroni's correction for that many tests; 1: none).
        - `equal_var`: Student's t-test (True, as Captum's tutorial) or Welch's.
        - `test_fraction`, `l2`, `n_steps`: the CAV fit, as for `fit_cav`.
        - `chunk_size`: inputs per vectorised chunk when scoring.

        **Returns:** a [`eqx_attr.TCAVResult`][].
        """
        key = check_key(key, "TCAV.interpret (the CAVs' train/test splits)")
        check_choice(score, "score", ("sign_count", "magnitude"))
        check_bool(equal_var, "equal_var")
        check_positive_int(n_comparisons, "n_comparisons")
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ValueError(
                f"`alpha` must lie strictly between 0 and 1, got {alpha!r}."
            )
        concept = as_activations(concept_acts, "concept_acts")
        randoms = _random_sets(random_acts)
        options: dict[str, Any] = dict(
            test_fraction=test_fraction, l2=l2, n_steps=n_steps
        )
        keys = jax.random.split(key, 2 * (len(randoms) - 1))
        k_concept, k_random = keys[: len(randoms) - 1], keys[len(randoms) - 1 :]
        others = randoms[1:]

        def fit_all(pos: Array, ks: Array) -> CAV:
            if len({r.shape for r in randoms}) == 1:
                fit = functools.partial(fit_cav, pos, **options)
                return jax.vmap(lambda r, k: fit(r, key=k))(jnp.stack(others), ks)
            fitted = [
                fit_cav(pos, r, key=k, **options)
                for r, k in zip(others, ks, strict=True)
            ]
            return jax.tree.map(lambda *v: jnp.stack(v), *fitted)

        cavs, random_cavs = fit_all(concept, k_concept), fit_all(randoms[0], k_random)
        both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), cavs, random_cavs)
        s = self.scores(xs, target, both, chunk_size=chunk_size)
        r = len(others)
        chosen = s.sign_count if score == "sign_count" else s.magnitude
        t, p = t_test(chosen[:r], chosen[r:], equal_var=equal_var)
        return TCAVResult(
            sign_count=s.sign_count[:r],
            magnitude=s.magnitude[:r],
            random_sign_count=s.sign_count[r:],
            random_magnitude=s.magnitude[r:],
            accuracy=cavs.accuracy,
            random_accuracy=random_cavs.accuracy,
            t_statistic=t,
            p_value=p,
            significant=p < alpha / n_comparisons,
            cavs=cavs,
            random_cavs=random_cavs,
        )
