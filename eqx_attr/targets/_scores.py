"""Targets on a vector of scores, a segmentation map or an embedding."""

from __future__ import annotations

import abc
import numbers
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Shaped

from .._checks import error_if

ClassLike = int | np.integer | Int[Array, "*stack"] | Int[np.ndarray, "*stack"]


class AbstractTarget(eqx.Module):
    """Base class of targets: `target(output) -> scalar`.

    A target maps the model's output for ONE example (an array, or any PyTree)
    to the scalar score that a method explains. Concrete targets are final
    Equinox modules; pass one as `target=` to any method.

    **Arguments:** none here; subclasses hold their options as fields.

    **Returns:** calling a target on the model's output gives a 0-d float array.

    ```python
    a = xa.IntegratedGradients(model)(x, target=xa.targets.Margin(3))
    ```
    """

    @abc.abstractmethod
    def __call__(self, output: Any) -> Float[Array, ""]:
        """The scalar score of `output` (the model's output for one example)."""


# ---------------------------------------------------------------------------------
# Checks shared by the targets


def _is_int(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, bool
    )


def _class_field(c: Any, name: str) -> int | Array:
    """`c` as a target stores it: a Python int, or an integer array (a stack of
    class indices is allowed; it is vmapped over before the call)."""
    if _is_int(c):
        if int(c) < 0:
            raise ValueError(f"`{name}` must be a class index >= 0, got {int(c)}.")
        return int(c)
    if isinstance(c, (jax.Array, np.ndarray)):
        if not jnp.issubdtype(c.dtype, jnp.integer):
            raise TypeError(
                f"`{name}` must be an integer class index, got dtype {c.dtype}; pass "
                f"`{name}.astype(jnp.int32)`."
            )
        return jnp.asarray(c)
    raise TypeError(
        f"`{name}` must be an int or an integer array, got {type(c).__name__}."
    )


def _vector(output: Any, who: str) -> Array:
    """The output as a 1-D vector of scores, or an error saying what to pass."""
    if not isinstance(output, jax.Array):
        raise ValueError(
            f"{who} needs the model's output to be a 1-D array of scores, but it is "
            f"a {type(output).__name__}. Select the scores first, e.g. "
            f'`target=lambda out: xa.targets.{who}(...)(out["logits"])`.'
        )
    if output.ndim != 1:
        raise ValueError(
            f"{who} needs the model's output to be a 1-D array of scores, but it "
            f"has shape {output.shape}. Reduce or select it in a callable target, "
            f"e.g. `target=lambda out: xa.targets.{who}(...)(out.mean(axis=0))`."
        )
    return output


def _checked_index(index: Any, n: int, name: str) -> Any:
    """`index` (int or integer array) checked to lie in [0, n): a trace-time error
    for a Python int or a concrete array, `eqx.error_if` for a traced one."""
    if _is_int(index):
        if not 0 <= int(index) < n:
            raise ValueError(
                f"`{name}={int(index)}` is out of range for an output with {n} "
                f"entries; pass an index in [0, {n - 1}]."
            )
        return int(index)
    if not isinstance(index, Tracer):
        bad = np.asarray(index)
        if np.any((bad < 0) | (bad >= n)):
            raise ValueError(
                f"`{name}` holds {bad.tolist()}, out of range for an output with {n} "
                f"entries; pass indices in [0, {n - 1}]."
            )
        return index
    return error_if(
        index,
        jnp.any((index < 0) | (index >= n)),
        f"`{name}` is out of range for an output with {n} entries; indices must "
        f"lie in [0, {n - 1}].",
    )


def _scalar_index(c: Any, n: int, name: str, who: str) -> Any:
    if isinstance(c, jax.Array) and c.ndim != 0:
        raise ValueError(
            f"`{name}` of {who} has shape {c.shape}: one call takes one class. For "
            f"a stack of targets, vmap over them: `jax.vmap(lambda t: method(x, t))"
            f"(xa.targets.{who}(jnp.arange(10)))`."
        )
    return _checked_index(c, n, name)


# ---------------------------------------------------------------------------------
# Classification


class ClassIndex(AbstractTarget):
    """The score of one class: `output[c]`, the same as `target=c`.

    **Arguments:**

    - `c`: the class index, an int or a 0-d integer array (a stack of indices,
        e.g. `jnp.arange(10)`, to vmap over). A Python int out of range is an
        error at trace time, a traced one at run time (`eqx.error_if`).

    **Returns:** `ClassIndex(c)(scores)` is `scores[c]` for a 1-D `scores`.

    ```python
    a = xa.Gradients(model)(x, target=xa.targets.ClassIndex(3))
    ```
    """

    c: int | Int[Array, "*stack"]

    def __init__(self, c: ClassLike):
        self.c = _class_field(c, "c")

    def __call__(self, output: Any) -> Float[Array, ""]:
        scores = _vector(output, "ClassIndex")
        return scores[_scalar_index(self.c, scores.shape[0], "c", "ClassIndex")]


class LabelSet(AbstractTarget):
    """The summed scores of several labels (multi-label classification).

    **Arguments:**

    - `labels`: the class indices, a non-empty sequence of ints or a 1-D integer
        array (a label listed twice counts twice).

    **Returns:** `LabelSet(labels)(scores)` is `sum(scores[labels])`.

    ```python
    a = xa.Gradients(model)(x, target=xa.targets.LabelSet([1, 7]))
    ```
    """

    labels: Int[Array, "*stack k"]

    def __init__(self, labels: Sequence[int] | Int[ArrayLike, "*stack k"]):
        if isinstance(labels, (jax.Array, np.ndarray)):
            arr = labels
        elif isinstance(labels, Sequence) and all(_is_int(v) for v in labels):
            arr = np.asarray(labels, np.int32)
        else:
            raise TypeError(
                "`labels` must be a sequence of ints or an integer array, e.g. "
                f"`LabelSet([1, 7])`; got {labels!r}."
            )
        if arr.ndim == 0 or arr.shape[-1] == 0:
            raise ValueError(
                f"`labels` must be a non-empty 1-D list of class indices, got shape "
                f"{arr.shape}; e.g. `LabelSet([1, 7])`."
            )
        if not jnp.issubdtype(arr.dtype, jnp.integer):
            raise TypeError(
                f"`labels` must hold integer class indices, got dtype {arr.dtype}."
            )
        if isinstance(arr, np.ndarray) and np.any(arr < 0):
            raise ValueError(f"`labels` must be class indices >= 0, got {arr}.")
        self.labels = jnp.asarray(arr)

    def __call__(self, output: Any) -> Float[Array, ""]:
        scores = _vector(output, "LabelSet")
        if self.labels.ndim != 1:
            raise ValueError(
                f"`labels` of LabelSet has shape {self.labels.shape}: one call takes "
                "one 1-D set; vmap over a stack of sets."
            )
        labels = _checked_index(self.labels, scores.shape[0], "labels")
        return jnp.sum(scores[labels])


class Margin(AbstractTarget):
    """The margin of a class: its score minus the largest other score.

    Positive when `c` is the predicted class. Its gradient points from the
    runner-up class toward `c`.

    **Arguments:**

    - `c`: the class index, as for [`eqx_attr.targets.ClassIndex`][].

    **Returns:** `Margin(c)(scores)` is `scores[c] - max_{j != c} scores[j]`.

    ```python
    a = xa.Gradients(model)(x, target=xa.targets.Margin(3))
    ```
    """

    c: int | Int[Array, "*stack"]

    def __init__(self, c: ClassLike):
        self.c = _class_field(c, "c")

    def __call__(self, output: Any) -> Float[Array, ""]:
        scores = _vector(output, "Margin")
        n = scores.shape[0]
        if n < 2:
            raise ValueError(
                "Margin needs at least two scores (the class and a rival); the model "
                f"returns {n}. Use `xa.targets.ClassIndex` instead."
            )
        c = _scalar_index(self.c, n, "c", "Margin")
        others = jnp.where(jnp.arange(n) == c, -jnp.inf, scores)
        return scores[c] - jnp.max(others)


class LogSoftmax(AbstractTarget):
    """The log-probability of a class: `log_softmax(scores)[c]`.

    **Arguments:**

    - `c`: the class index, as for [`eqx_attr.targets.ClassIndex`][].

    **Returns:** `LogSoftmax(c)(scores)` is `scores[c] - logsumexp(scores)`.

    ```python
    a = xa.Gradients(model)(x, target=xa.targets.LogSoftmax(3))
    ```
    """

    c: int | Int[Array, "*stack"]

    def __init__(self, c: ClassLike):
        self.c = _class_field(c, "c")

    def __call__(self, output: Any) -> Float[Array, ""]:
        scores = _vector(output, "LogSoftmax")
        c = _scalar_index(self.c, scores.shape[0], "c", "LogSoftmax")
        return jax.nn.log_softmax(scores)[c]


# ---------------------------------------------------------------------------------
# Dense and structured outputs


class SegmentationRegion(AbstractTarget):
    """The summed class-`c` logits over a pixel region of a segmentation output.

    As pytorch-grad-cam's `SemanticSegmentationTarget`:
    `sum(output[c] * mask)`, for a model whose output is `(n_classes, H, W)`
    (channels first; select or transpose another layout in a lambda, e.g.
    `lambda out: region(out["out"])`).

    **Arguments:**

    - `c`: the class index, as for [`eqx_attr.targets.ClassIndex`][].
    - `mask`: the region, a boolean or float array `(H, W)` (a float mask weights
        the pixels).

    **Returns:** `SegmentationRegion(c, mask)(logits)` is `sum(logits[c] * mask)`.

    ```python
    mask = jnp.zeros((28, 28), bool).at[5:15, 5:15].set(True)
    a = xa.Gradients(seg_model)(x, target=xa.targets.SegmentationRegion(1, mask))
    ```
    """

    c: int | Int[Array, "*stack"]
    mask: Shaped[Array, "*stack h w"]

    def __init__(
        self,
        c: ClassLike,
        mask: Bool[ArrayLike, "..."] | Float[ArrayLike, "..."],
    ):
        self.c = _class_field(c, "c")
        if not isinstance(mask, (jax.Array, np.ndarray)):
            raise TypeError(
                f"`mask` must be a boolean or float array (H, W), got "
                f"{type(mask).__name__}."
            )
        if mask.ndim < 2:
            raise ValueError(
                f"`mask` must be a 2-D (H, W) pixel mask, got shape {mask.shape}."
            )
        if not (
            jnp.issubdtype(mask.dtype, jnp.bool_)
            or jnp.issubdtype(mask.dtype, jnp.floating)
        ):
            raise TypeError(
                f"`mask` must be boolean or floating, got dtype {mask.dtype}; pass "
                "`mask.astype(bool)`."
            )
        self.mask = jnp.asarray(mask)

    def __call__(self, output: Any) -> Float[Array, ""]:
        if not isinstance(output, jax.Array) or output.ndim != 3:
            shape = getattr(output, "shape", type(output).__name__)
            raise ValueError(
                "SegmentationRegion needs a segmentation output (n_classes, H, W); "
                f"the model returns {shape}. Select or transpose it in a lambda, e.g. "
                '`target=lambda out: region(out["out"])`.'
            )
        if self.mask.shape != output.shape[1:]:
            raise ValueError(
                f"`mask` has shape {self.mask.shape} but the segmentation output's "
                f"pixels are {output.shape[1:]}; pass a mask of shape "
                f"{output.shape[1:]}."
            )
        c = _scalar_index(self.c, output.shape[0], "c", "SegmentationRegion")
        return jnp.sum(output[c] * self.mask.astype(output.dtype))


class EmbeddingSimilarity(AbstractTarget):
    """The cosine similarity of an embedding output to a reference embedding.

    For embedding models (retrieval, CLIP-style encoders): explains what makes
    the input's embedding close to `ref`. Norms are clamped at `1e-8`, as in
    `torch.nn.functional.cosine_similarity`.

    **Arguments:**

    - `ref`: the reference embedding, shaped like the model's output.

    **Returns:** `EmbeddingSimilarity(ref)(e)` is
    `<e, ref> / (max(|e|, 1e-8) max(|ref|, 1e-8))`.

    ```python
    ref = model(x_query)
    a = xa.Gradients(model)(x, target=xa.targets.EmbeddingSimilarity(ref))
    ```
    """

    ref: Float[Array, "*dims"]

    def __init__(self, ref: Shaped[ArrayLike, "..."]):
        if not isinstance(ref, (jax.Array, np.ndarray)):
            raise TypeError(
                f"`ref` must be an array (the reference embedding), got "
                f"{type(ref).__name__}."
            )
        if not jnp.issubdtype(ref.dtype, jnp.floating) or ref.size == 0:
            raise ValueError(
                f"`ref` must be a non-empty floating array, got dtype {ref.dtype} "
                f"and shape {ref.shape}."
            )
        self.ref = jnp.asarray(ref)

    def __call__(self, output: Any) -> Float[Array, ""]:
        if not isinstance(output, jax.Array) or output.shape != self.ref.shape:
            shape = getattr(output, "shape", type(output).__name__)
            raise ValueError(
                f"`ref` has shape {self.ref.shape} but the model returns {shape}; "
                "pass a reference embedding shaped like the model's output (select "
                "the embedding in a lambda for a PyTree output)."
            )
        e, r = output.ravel(), self.ref.ravel().astype(output.dtype)
        ne = jnp.maximum(jnp.linalg.norm(e), 1e-8)
        nr = jnp.maximum(jnp.linalg.norm(r), 1e-8)
        return jnp.dot(e / ne, r / nr)
