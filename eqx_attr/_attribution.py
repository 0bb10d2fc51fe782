"""The attribution interface and the target handling every method shares."""

import abc
import numbers
from collections.abc import Callable
from typing import Any, TypeAlias

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Shaped

from ._checks import NON_FINITE, FiniteXChecked, deferred, deferred_checks, error_if
from ._engine._fast_derivatives import fast_derivatives, loop_body
from ._layout import check_input_layout
from ._memory import resolve_chunk_size
from ._model_errors import MODEL_ERRORS as MODEL_ERRORS, model_rejected_input

# A target is: a class index (Python int or 0-d integer array), a callable that maps
# the model's scores to a scalar, or None for a model that already returns a scalar.
# The array case is annotated loosely on purpose: a wrongly shaped or typed target
# then reaches `make_objective`, whose error says how to fix it.
Target: TypeAlias = (
    int
    | np.integer
    | Shaped[Array, "..."]
    | Shaped[np.ndarray, "..."]
    | Callable[..., Any]
    | None
)
Image: TypeAlias = Shaped[Array, "*dims"] | Shaped[np.ndarray, "*dims"]
Attribution: TypeAlias = Float[Array, "*dims"]


class AbstractAttribution(eqx.Module):
    """Base class of every attribution method.

    A method holds the model (an Equinox module, or any callable mapping ONE example
    to a 1-D vector of scores) and the options of the method. Concrete methods are
    final: to change one, wrap it (as [`eqx_attr.SmoothGrad`][] does) rather than
    subclass it.

    **Call:** `method(x, target, *, key=None)`, one example in, one attribution out.
    Batches and many targets are `eqx.filter_vmap` / `jax.vmap` over this call.

    **Protected protocol (for the tools, not for users):**
    `_attribution_and_scores(x, target, key) -> (attribution, scores or None)`.
    The data-set runner ([`eqx_attr.explain_dataset`][]) calls it by name on every
    method, instead of `__call__`, to store each example's target score too: a
    method whose own forward pass gives the model's output on `x` (the gradient
    CAMs) overrides it to return those scores, saving the runner a forward pass;
    the default returns `(self(x, target, key=key), None)`. An override must
    return exactly what `__call__` returns as its first element.

    **Input layout:** every method of the registry takes `input_layout=` as a
    keyword: `"chw"` (channels first, `(C, H, W)`), `"hwc"` (channels last,
    `(H, W, C)`) or `None` (default: inferred from `x`'s shape: a 3-D input
    whose last axis has 1, 3 or 4 entries and whose first axis does not is
    channels-last, every other 3-D input channels-first; pass the layout
    explicitly for an ambiguous shape such as `(3, 32, 3)`).
    Methods whose result does not depend on the layout (gradients, IG, DeepLIFT,
    LRP, ...) check the value and otherwise ignore it; methods that use the
    spatial axes (the CAM family, RISE, XRAI, Blur IG, the mask-based
    perturbations, the transformer maps) read them from the resolved layout.
    """

    model: eqx.AbstractVar[Callable[..., Any]]

    def __check_init__(self):
        # Every registry method owns an `input_layout` field; a user's own
        # subclass without one has nothing to check.
        check_input_layout(getattr(self, "input_layout", None))

    @abc.abstractmethod
    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Any:
        """Attribute the target's score to the input `x`.

        **Arguments:**

        - `x`: one example, without a batch axis, of floating dtype.
        - `target`: an int class index, a 0-d integer array, a callable
            `scores -> scalar`, or `None` when the model returns a scalar.
        - `key`: a PRNG key, required by random methods only.

        **Returns:**

        The attribution (shape depends on the method).
        """

    def _attribution_and_scores(
        self, x: Image, target: Target, key: PRNGKeyArray | None
    ) -> tuple[Any, Array | None]:
        """`(self(x, target, key=key), scores)` for the data-set runner.

        `scores` is the model's output on `x` when the method's own forward pass
        gives it (the runner then stores the target's score without another
        forward pass), else `None`.
        """
        return self(x, target, key=key), None


# ---------------------------------------------------------------------------------
# Input checks


def check_input(x: Any, name: str = "x") -> Array:
    """Return `x` as a floating JAX array, with clear errors for bad input.

    Non-floating images (bool, integer, complex) raise `TypeError` and empty ones
    `ValueError` at trace time.
    Non-finite values (NaN, +inf, -inf) raise at run time via `eqx.error_if`:
    an attribution of an infinite pixel is as meaningless as one of a NaN (the
    scores and gradients become inf or NaN), so both are errors rather than
    silently propagated.
    """
    if isinstance(x, (jax.Array, np.ndarray, np.generic)) or hasattr(
        x, "__jax_array__"
    ):
        dtype = x.dtype
    elif isinstance(x, (list, tuple, numbers.Number)):
        raise TypeError(
            f"`{name}` must be an array (got {type(x).__name__}); "
            f"pass `jnp.asarray({name}, dtype=jnp.float32)`."
        )
    else:
        raise TypeError(
            f"`{name}` must be a JAX or NumPy array, got {type(x).__name__}."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"`{name}` has dtype {dtype}; attributions need a floating-point image. "
            f"Convert it first, e.g. `{name}.astype(jnp.float32) / 255.0` for 8-bit "
            "pixels."
        )
    x = jnp.asarray(x)
    if x.size == 0:
        raise ValueError(
            f"`{name}` is empty (shape {x.shape}); attributions need at least one "
            "value. Pass ONE example shaped as the model expects."
        )
    return error_if(x, jnp.any(~jnp.isfinite(x)), NON_FINITE.format(name=name))


_TARGET_RANGE = (
    "`target` is out of range for a model with {n} outputs; class indices must lie "
    "in [0, {last}]."
)


def check_key(key: Any, method: str) -> PRNGKeyArray:
    """Raise a clear error when a random method is called without `key`.

    `method` names what is random, e.g. `"SmoothGrad"` or `"The baseline Blur"`.
    """
    if key is None:
        raise ValueError(
            f"{method} is random and needs a PRNG key: call it as "
            f"`method(x, target, key=jax.random.key(0))`."
        )
    return key


def check_where(where: Any, name: str, example: str) -> None:
    """Trace-time check that `where` is a `where` function (as for `eqx.tree_at`).

    `example` is the argument as the fix should show it, e.g.
    `"lambda m: m.conv2"`.
    """
    if not callable(where) or isinstance(where, eqx.Module):
        raise TypeError(
            f"`{name}` must be a `where` function selecting a sub-module, as for "
            f"`eqx.tree_at`, e.g. `{name}={example}`; got {type(where).__name__}."
        )


def check_bool(value: Any, name: str) -> None:
    """Trace-time check for flags such as `relu` or `return_delta`."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def check_index(value: Any, name: str, *, optional: bool = True) -> None:
    """Trace-time check for an integer >= 0 (or None when `optional`)."""
    if optional and value is None:
        return
    if not _is_int_like(value) or int(value) < 0:
        none = "None or " if optional else ""
        raise ValueError(f"`{name}` must be {none}an int >= 0, got {value!r}.")


def _is_int_like(target: Any) -> bool:
    return isinstance(target, (numbers.Integral, np.integer)) and not isinstance(
        target, bool
    )


def _output_shape(out: Any) -> tuple[int, ...] | None:
    """The shape of an array output (given as its shape, a `ShapeDtypeStruct` or
    an array), or `None` for a PyTree output (a dict, a tuple of arrays, ...)."""
    if isinstance(out, tuple) and all(_is_int_like(d) for d in out):
        return tuple(int(d) for d in out)
    if isinstance(out, (jax.ShapeDtypeStruct, jax.Array, np.ndarray)):
        return tuple(out.shape)
    return None


def _pytree_description(out: Any) -> str:
    if isinstance(out, dict):
        return f"a dict with keys {sorted(map(str, out))}"
    return f"a {type(out).__name__} (a PyTree, not one array)"


def make_objective(target: Target, out_shape: Any) -> Callable:
    """Turn `target` into a function `output -> scalar`.

    `out_shape` describes the model's output for one example: its shape (a tuple
    of ints), or the output as `jax.eval_shape` gives it (a `ShapeDtypeStruct`, or
    a PyTree of them for a model returning a dict or tuple). It is known at trace
    time, so an out-of-range Python int is a trace-time error, and a traced integer
    target is checked with `eqx.error_if` (plain indexing would clamp it and
    silently explain the wrong class). A callable target receives the WHOLE
    output, PyTree included; an int or `None` target needs an array output.
    """
    shape = _output_shape(out_shape)
    if shape is None and not (
        callable(target) and not isinstance(target, (jax.Array, np.ndarray))
    ):
        raise ValueError(
            f"The model returns {_pytree_description(out_shape)}, so `target` must "
            "be a callable that maps that whole output to a scalar, e.g. "
            '`target=lambda out: out["logits"][3]`, or one of `xa.targets` '
            "(e.g. `xa.targets.BoxScore(box)` for a detection dict); "
            f"got `target={target!r}`."
        )
    # From here on `out_shape` is the array output's shape (a callable target
    # returns below without using it).
    out_shape = shape
    if target is None:
        if out_shape != ():
            raise ValueError(
                f"`target=None` is only allowed for a model that returns a scalar, but "
                f"this model returns scores of shape {out_shape}. Pass the class index "
                "to explain, e.g. `target=3`, or a callable `scores -> scalar`."
            )
        return lambda scores: scores

    if callable(target) and not isinstance(target, (jax.Array, np.ndarray)):

        def call_target(scores):
            value = target(scores)
            if jnp.shape(value) != ():
                raise ValueError(
                    "A callable `target` must map the scores to a scalar, but it "
                    f"returned shape {jnp.shape(value)}. Reduce it, e.g. "
                    "`lambda s: s[3]` or `lambda s: jax.nn.log_softmax(s)[3]`."
                )
            return value

        return call_target

    if len(out_shape) != 1:
        raise ValueError(
            "An integer `target` needs a model whose output is a 1-D vector of "
            f"scores, but it returns shape {out_shape}. Use a callable `target` to "
            "reduce it to a scalar (e.g. a segmentation mask sum)."
        )
    (n,) = out_shape

    if _is_int_like(target):
        t = int(target)  # pyright: ignore[reportArgumentType]
        if not 0 <= t < n:
            raise ValueError(
                f"`target={t}` is out of range for a model with {n} outputs; pass a "
                f"class index in [0, {n - 1}]."
            )
        return lambda scores: scores[t]

    if isinstance(target, (jax.Array, np.ndarray)):
        if target.ndim != 0:
            raise ValueError(
                f"`target` must be a single class index (0-d integer array), got shape "
                f"{target.shape}. For a batch of targets, vmap over the call: "
                "`eqx.filter_vmap(method)(xs, targets)`."
            )
        if not jnp.issubdtype(target.dtype, jnp.integer):
            raise TypeError(
                f"`target` must be an integer class index, got dtype {target.dtype}; "
                "pass `target.astype(jnp.int32)`."
            )

        def objective(scores):
            bad, msg = (
                (target < 0) | (target >= n),
                _TARGET_RANGE.format(n=n, last=n - 1),
            )
            if deferred():  # a NaN score: derivatives carry it (`_checks`)
                return error_if(scores[target], bad, msg)
            return scores[error_if(target, bad, msg)]  # raises even if unused

        return objective

    raise TypeError(
        f"`target` must be an int, a 0-d integer array, a callable scores -> scalar, "
        f"or None; got {type(target).__name__}."
    )


def forward_shape(model: Callable, x: Array) -> jax.ShapeDtypeStruct:
    """The model's output shape for `x`, with a clear error if the model rejects it."""
    try:
        out = jax.eval_shape(model, x)
    except MODEL_ERRORS as e:
        raise model_rejected_input(x, e) from e
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            "The model must return a single array of scores for one example; it "
            f"returned {type(out).__name__}."
        )
    return out


def forward_output(model: Callable, x: Array) -> Any:
    """The model's output for `x` as `jax.eval_shape` gives it (a `ShapeDtypeStruct`,
    or a PyTree of them), with a clear error if the model rejects `x`."""
    try:
        return jax.eval_shape(model, x)
    except MODEL_ERRORS as e:
        raise model_rejected_input(x, e) from e


def resolve_target(model: Callable, x: Array, target: Target) -> Callable[[Any], Array]:
    """The objective `output -> scalar` for `target`, checked against the model.

    Checks the input shape against the model and the target against the model's
    output, both at trace time. A model may return a PyTree (a dict, a tuple) when
    `target` is a callable: it receives the whole output.
    """
    return make_objective(target, forward_output(model, x))


def scalar_function(
    model: Callable, x: Array, target: Target
) -> Callable[[Array], Array]:
    """`f(x) -> scalar`: the model followed by the target's reduction.

    The checks of [`resolve_target`][]; the returned function is what the gradient
    methods differentiate. Its max pools are differentiated without XLA's
    select-and-scatter (same values, same derivatives, far less memory), and on
    CPU its thin convolutions (first layers) are computed in faster forms, equal
    up to rounding; see `eqx_attr/_engine/_fast_derivatives.py`.
    """
    objective = resolve_target(model, x, target)
    call = fast_derivatives(model)

    def f(z):
        return objective(call(z))

    return f


def check_positive_int(value: Any, name: str, minimum: int = 1) -> None:
    """Trace-time check for integer options such as `n_steps` and `chunk_size`."""
    if not _is_int_like(value) or int(value) < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    """Trace-time check for string options such as `method` or `kind`."""
    if value not in choices:
        options = ", ".join(map(repr, choices))
        raise ValueError(f"Unknown `{name}={value!r}`; choose one of {options}.")


def batched_map(fn: Callable, xs: Any, chunk_size: int | str | None) -> Any:
    """Map `fn` over the leading axis of `xs`, vectorised.

    `chunk_size=None`: one `vmap`; an int: `jax.lax.map(..., batch_size=...)`,
    whose body gets convolutions XLA:CPU runs fast in loops (forward passes too),
    the form the budget measures; `"auto"`: the int the memory budget allows
    (`eqx_attr/_memory.py`), or `None` when every element fits it.
    """
    fast = fast_derivatives(fn)
    chunk_size = resolve_chunk_size(chunk_size, fast, xs)
    if chunk_size is None:
        return jax.vmap(fn)(xs)
    with loop_body():
        return jax.lax.map(fast, xs, batch_size=chunk_size)


def check_chunk_size(chunk_size: Any, *, allow_auto: bool = True) -> None:
    """Trace-time check of an optional `chunk_size`: `None` (everything at once), an
    int >= 1, or, where `allow_auto`, `"auto"` (chunks that fit the memory budget,
    [`eqx_attr.set_memory_budget`][])."""
    if chunk_size is None or (allow_auto and chunk_size == "auto"):
        return
    if allow_auto and isinstance(chunk_size, str):
        raise ValueError(
            f"`chunk_size` must be an integer >= 1, None (everything at once) or "
            f'"auto" (fit the memory budget), got {chunk_size!r}.'
        )
    check_positive_int(chunk_size, "chunk_size")


def index_target(model: Callable, x: Array, target: Target) -> Target:
    """The target as a compiled call takes it, after the trace-time checks.

    `target` is checked against the model's output on `x` (`resolve_target`); a
    Python int then becomes a 0-d int32 array, so one compilation serves every
    class. Any other target is returned as it is.
    """
    resolve_target(model, x, target)
    if _is_int_like(target):
        return jnp.asarray(target, jnp.int32)
    return target


def call_compiled(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` as one compiled program (`eqx.filter_jit`).

    `fn` may be a method of a Module (`method.attribute`): a bound method is a
    PyTree whose arrays are traced, so every instance of a class with the same
    static options shares the compilation. Inside a caller's `jit` it is inlined.
    The program is keyed on the checks' mode (`_checks.deferred`).
    """
    return _compiled(deferred(), fn, *args)


@eqx.filter_jit
def _compiled(mode: bool, fn: Callable[..., Any], *args: Any) -> Any:
    with deferred_checks(mode):
        return fn(*args)


class AbstractCompiledAttribution(AbstractAttribution):
    """Base of methods that trace once and call through `eqx.filter_jit`.

    For methods that expand one example into many (perturbations, path methods,
    XRAI) or interpret the whole model (DeepLIFT, LRP): even an eager call
    compiles the whole computation once instead of dispatching it operation by
    operation. A concrete method implements `attribute(x, target, key)`;
    `__call__` checks `x` and the target (`index_target`: an int becomes a 0-d
    array) and runs `attribute` through `call_compiled`. A second output
    (DeepLIFT's delta, XRAI's ranks) gets its own method, compiled the same way
    by `_compiled`; `__call__` always returns what `attribute` does.
    """

    @abc.abstractmethod
    def attribute(self, x: Array, target: Target, key: PRNGKeyArray | None) -> Any:
        """What `__call__` returns for one checked `x` (an int target arrives as a
        0-d array), traced inside the compiled call."""

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Any:
        return self._compiled(self.attribute, x, target, key)

    def _compiled(
        self,
        fn: Callable[[Array, Target, PRNGKeyArray | None], Any],
        x: Image,
        target: Target,
        key: PRNGKeyArray | None,
    ) -> Any:
        """`fn(x, target, key)` (a method of `self`) after the call's checks, as
        one compiled program."""
        x = check_input(x)
        return call_compiled(
            FiniteXChecked(fn), x, self._checked_target(x, target), key
        )

    def _checked_target(self, x: Array, target: Target) -> Target:
        """The trace-time checks of a call; the target as `attribute` takes it.

        Override to add checks of the model (LRP's batch norms), then call this.
        """
        return index_target(self.model, x, target)


__all__ = [
    "AbstractAttribution",
    "Attribution",
    "Image",
    "Target",
]
