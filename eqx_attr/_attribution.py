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

from ._rules._fast_derivatives import fast_derivatives, loop_body

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
    """

    model: eqx.AbstractVar[Callable[..., Any]]

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
    x = eqx.error_if(
        x,
        jnp.any(~jnp.isfinite(x)),
        f"`{name}` contains NaN or inf; attributions of a non-finite input are "
        "meaningless. Clean, clip or impute the input first "
        f"(e.g. `jnp.nan_to_num({name})`).",
    )
    return x


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


def model_rejected_input(x: Any, error: Exception) -> ValueError:
    """The error for a model that raised on `x` while being traced."""
    return ValueError(
        f"The model rejected input `x` of shape {x.shape} and dtype {x.dtype}: "
        f"{type(error).__name__}: {error}\nPass ONE example without a batch axis, "
        "shaped as the model expects (e.g. (1, 28, 28) for SmallCNN); batch with "
        "`eqx.filter_vmap(method)(xs, targets)`."
    )


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


def make_objective(target: Target, out_shape: tuple[int, ...]) -> Callable:
    """Turn `target` into a function `scores -> scalar`.

    `out_shape` is the shape of the model's output for one example; it is known at
    trace time, so an out-of-range Python int is a trace-time error, and a traced
    integer target is checked with `eqx.error_if` (plain indexing would clamp it and
    silently explain the wrong class).
    """
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
            t = eqx.error_if(
                target,
                (target < 0) | (target >= n),
                f"`target` is out of range for a model with {n} outputs; class "
                f"indices must lie in [0, {n - 1}].",
            )
            return scores[t]

        return objective

    raise TypeError(
        f"`target` must be an int, a 0-d integer array, a callable scores -> scalar, "
        f"or None; got {type(target).__name__}."
    )


def forward_shape(model: Callable, x: Array) -> jax.ShapeDtypeStruct:
    """The model's output shape for `x`, with a clear error if the model rejects it."""
    try:
        out = jax.eval_shape(model, x)
    except (TypeError, ValueError) as e:
        raise model_rejected_input(x, e) from e
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            "The model must return a single array of scores for one example; it "
            f"returned {type(out).__name__}."
        )
    return out


def resolve_target(
    model: Callable, x: Array, target: Target
) -> Callable[[Array], Array]:
    """The objective `scores -> scalar` for `target`, checked against the model.

    Checks the input shape against the model and the target against the model's
    output, both at trace time.
    """
    out = forward_shape(model, x)
    return make_objective(target, out.shape)


def scalar_function(
    model: Callable, x: Array, target: Target
) -> Callable[[Array], Array]:
    """`f(x) -> scalar`: the model followed by the target's reduction.

    The checks of [`resolve_target`][]; the returned function is what the gradient
    methods differentiate. Its max pools are differentiated without XLA's
    select-and-scatter (same values, same derivatives, far less memory), and on
    CPU its thin convolutions (first layers) are computed in faster forms, equal
    up to rounding; see `eqx_attr/_rules/_fast_derivatives.py`.
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


def batched_map(fn: Callable, xs: Any, chunk_size: int | None) -> Any:
    """Map `fn` over the leading axis of `xs`, vectorised.

    With `chunk_size=None` all elements run in one `vmap`; otherwise
    `jax.lax.map(..., batch_size=chunk_size)` bounds the memory to `chunk_size`
    elements at a time.
    """
    if chunk_size is None:
        return jax.vmap(fn)(xs)
    with loop_body():  # convolutions in forms XLA:CPU runs fast in loops
        return jax.lax.map(fn, xs, batch_size=chunk_size)


__all__ = [
    "AbstractAttribution",
    "Attribution",
    "Image",
    "Target",
]
