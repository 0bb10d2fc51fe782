"""A stateful Equinox model (`eqx.nn.State`, e.g. BatchNorm) as a function of one
example: [`with_state`][] and the module it returns, [`WithState`][]."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax


class WithState(eqx.Module):
    """`x -> model(x, state)[0]` in inference mode: what every method explains.

    Made by [`eqx_attr.models.with_state`][]. The wrapped model and its state are
    fields, so the whole thing is a PyTree: it can be jit-compiled, differentiated
    with respect to the parameters and swapped by `eqx.tree_at`. Attributes the
    wrapper does not have are read from the model, so a layer selector written for
    the bare model (`lambda m: m.conv2`) selects the same layer here.

    **Arguments:**

    - `model`: the stateful model, called as `model(x, state)` and returning
        `(output, new_state)`.
    - `state`: its `eqx.nn.State` (from `eqx.nn.make_with_state`, or after training).

    **Returns:** calling it on one example returns the model's output; the new
    state the model returns is dropped (inference reads the state, never updates
    it).
    """

    model: Any
    state: eqx.nn.State

    def __call__(self, x: Any) -> Any:
        # A fresh State object per call: `eqx.nn.State.set` retires the object it
        # is called on, and the same wrapper is traced many times by a method.
        state = jax.tree_util.tree_map(lambda leaf: leaf, self.state)
        out = self.model(x, state)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "`with_state(model, state)` calls `model(x, state)` and expects "
                f"`(output, new_state)`; the model returned {type(out).__name__}. A "
                "model without state needs no wrapper: pass it to the method as is."
            )
        return out[0]

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; never for the fields themselves
        # (guarded so a half-built instance cannot recurse).
        if name in ("model", "state") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.model, name)


def with_state(
    model: Callable[..., Any], state: Any, *, inference: bool = True
) -> WithState:
    """A stateful model (`eqx.nn.BatchNorm` and friends) as a function of one example.

    Equinox models with state are called as `model(x, state) -> (out, state)`; the
    methods of this library explain functions of one example. `with_state` binds
    the state and, by default, switches the model to inference mode
    (`eqx.nn.inference_mode`): BatchNorm then normalises with its running
    statistics instead of a batch axis, and Dropout is the identity.

    **Arguments:**

    - `model`: the stateful model.
    - `state`: its `eqx.nn.State`.
    - `inference`: switch the model to inference mode first (default `True`).
        With `False` the model is kept as it is; BatchNorm in training mode then
        needs a named batch axis and cannot explain one example.

    **Returns:** a [`eqx_attr.models.WithState`][] module, `x -> model(x, state)[0]`.
    Layer selectors for the bare model work on it unchanged
    (`xa.GradCAM(with_state(model, state), lambda m: m.conv2)`).

    ```python
    model, state = eqx.nn.make_with_state(MyNet)(key)
    f = xa.models.with_state(model, state)
    heat = xa.GradCAM(f, lambda m: m.conv2)(x, target=3)
    ```
    """
    if not isinstance(state, eqx.nn.State):
        raise TypeError(
            f"`state` must be an `eqx.nn.State` (from `eqx.nn.make_with_state`); got "
            f"{type(state).__name__}."
        )
    try:
        jax.tree_util.tree_leaves(state)
    except ValueError as e:
        raise ValueError(
            "`state` was already used: `eqx.nn.State.set` (a layer in training "
            "mode calls it) retires the object it is called on. Pass the state the "
            "model returned last, or a fresh one from `eqx.nn.make_with_state`."
        ) from e
    if not isinstance(inference, bool):
        raise TypeError(f"`inference` must be True or False; got {inference!r}.")
    if inference:
        model = eqx.nn.inference_mode(model, True)
    return WithState(model, state)
