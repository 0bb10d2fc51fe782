"""A model whose layer returns a given value: the rest of the network as a function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
from jaxtyping import Array, Float

from ._tap import _Hook, resolve_layer


class LayerOutputReplaced(eqx.Module):
    """A model whose `layer` returns `value` instead of its own output.

    Built by [`eqx_attr.replace_layer_output`][]. Each call counts the layer's
    calls afresh (at trace time), so the check "called exactly once, or
    `call_index` in range" holds per forward pass.

    **Arguments:**

    - `model`: the original model.
    - `value`: the array the layer returns instead of its output.
    - `layer`: a `where` function naming the layer.
    - `call_index`: which call of the layer to replace when it is called several
        times (`None`: it must be called exactly once).

    **Returns:** calling it on `x` gives the model's output with the layer's output
    replaced by `value`.
    """

    model: Callable
    value: Array
    layer: Callable = eqx.field(static=True)
    call_index: int | None = eqx.field(static=True, default=None)

    def __call__(self, x: Any) -> Any:
        count = [0]
        index = 0 if self.call_index is None else self.call_index
        value = self.value

        def action(module, leaves, args, kwargs):
            del leaves
            i = count[0]
            count[0] += 1
            if i != index:
                return module(*args, **kwargs)
            out = jax.eval_shape(lambda: module(*args, **kwargs))
            if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != value.shape:
                got = getattr(out, "shape", type(out).__name__)
                raise ValueError(
                    f"The replacement `value` has shape {value.shape}, but `layer` "
                    f"returns {got}; pass a value shaped like the layer's output."
                )
            # The layer's own computation is dead code now; XLA removes it.
            return value.astype(out.dtype)

        resolve_layer(self.model, self.layer)
        hooked = eqx.tree_at(
            self.layer, self.model, replace_fn=lambda s: _Hook(s, None, action)
        )
        result = hooked(x)
        if count[0] == 0:
            raise ValueError(
                "`layer` selects a sub-module that the model's forward pass never "
                "calls, so replacing its output changes nothing. Point `layer` at a "
                "module used in `model.__call__`."
            )
        if self.call_index is None and count[0] > 1:
            raise ValueError(
                f"`layer` is called {count[0]} times in one forward pass; pick which "
                "call to replace with `call_index=k`, or point `layer` at a distinct "
                "sub-module called once."
            )
        if index >= count[0]:
            raise ValueError(
                f"`call_index={index}` is out of range: `layer` is called "
                f"{count[0]} time(s) per forward pass."
            )
        return result


def replace_layer_output(
    model: Callable,
    layer: Callable,
    value: Float[Array, "*act"],
    *,
    call_index: int | None = None,
) -> LayerOutputReplaced:
    """A copy of `model` in which `layer`'s output is replaced by `value`.

    The "rest of the network" as a function of the layer's activation: ablation
    methods (Ablation-CAM) and counterfactual edits run the model with a changed
    activation. `vmap` over `value` batches only the part after the layer.

    **Arguments:**

    - `model`: maps one example to a 1-D vector of scores.
    - `layer`: a `where` function naming the sub-module, as for `eqx.tree_at`.
    - `value`: the activation to use instead, shaped like the layer's output.
    - `call_index`: which call to replace when the layer is called several times.

    **Returns:**

    A callable Equinox module `x -> scores`; the original model is unchanged.

    ```python
    act = xa.layer_activation(model, lambda m: m.conv2, x)
    m0 = xa.replace_layer_output(model, lambda m: m.conv2, act.at[5].set(0.0))
    drop = model(x)[3] - m0(x)[3]              # what channel 5 contributed
    ```
    """
    resolve_layer(model, layer)
    return LayerOutputReplaced(model, value, layer, call_index)
