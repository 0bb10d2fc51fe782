"""The errors for a model that raised while traced on one example: which
exceptions a model may raise ([`MODEL_ERRORS`][]) and the message that names the
cause and the fix ([`model_rejected_input`][]): a shape, a dtype, a model left in
training mode, a model that needs its state."""

from __future__ import annotations

from typing import Any

# What a model may raise while traced on a wrong input or in the wrong mode:
# shapes and dtypes (TypeError, ValueError), BatchNorm in training mode (a
# NameError for its unbound batch axis), Dropout without a key (RuntimeError).
MODEL_ERRORS = (TypeError, ValueError, NameError, RuntimeError)

_MODE_HINT = (
    "The model is in training mode (inference=False): explain it in inference "
    "mode, `model = eqx.nn.inference_mode(model)`; a model with `eqx.nn.State` "
    "(BatchNorm) is explained as `xa.models.with_state(model, state)`, which does "
    "both."
)
_STATE_HINT = (
    "The model takes a state (`model(x, state) -> (out, state)`): explain "
    "`xa.models.with_state(model, state)`, a function of one example in inference "
    "mode."
)


def _model_error_hint(x: Any, error: Exception) -> str | None:
    text = str(error)
    if "same dtype" in text or "dtypes" in text:
        return (
            f"`x` is {x.dtype} but the model computes in another dtype: cast one to "
            "the other, `x.astype(jnp.float32)` or the model's floating leaves, "
            f"`jax.tree.map(lambda a: a.astype(jnp.{x.dtype}) if "
            "eqx.is_inexact_array(a) else a, model)`."
        )
    if "unbound axis name" in text or "Dropout requires a key" in text:
        return _MODE_HINT
    if "old state" in text or ("missing" in text and "'state'" in text):
        return _STATE_HINT
    return None


def model_rejected_input(x: Any, error: Exception) -> ValueError:
    """The error for a model that raised on `x` while being traced."""
    hint = _model_error_hint(x, error)
    if hint is None:
        hint = (
            "Pass ONE example without a batch axis, shaped as the model expects "
            "(e.g. (1, 28, 28) for SmallCNN); batch with "
            "`eqx.filter_vmap(method)(xs, targets)`."
        )
    return ValueError(
        f"The model rejected input `x` of shape {x.shape} and dtype {x.dtype}: "
        f"{type(error).__name__}: {error}\n{hint}"
    )
