"""The layer spec of the CAM family: which layer, how its output is laid out.

A [`LayerSpec`][] says which call of which sub-module to read (`layer`,
`call_index`) and how to turn its output into channels-first maps `(C, h, w)`
(`layout`, `n_prefix_tokens`, `grid`). Every CAM-family method holds one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from .._attribution import check_choice, check_index, check_where
from .._checks import error_if
from .._layers import LayerInfo, inspect_layer, read_layer
from .._tokens import token_grid

LAYOUTS = ("chw", "hwc", "tokens")


def _grid_converter(grid: Any) -> Any:
    # Static fields must be hashable: accept a list, store a tuple.
    return tuple(grid) if isinstance(grid, list) else grid


class LayerSpec(eqx.Module):
    """Which layer a CAM-family method reads, and the layout of its output.

    **Arguments:**

    - `layer`: a `where` function as for `eqx.tree_at`, naming the module whose
        output is explained, e.g. `lambda m: m.conv2`.
    - `layout`: `"chw"` (default, conv feature maps `(C, H, W)`), `"hwc"`
        (channels last) or `"tokens"` (a transformer's `(N, D)` tokens, folded to
        a `(D, h, w)` map).
    - `n_prefix_tokens`: with `layout="tokens"`, the number of leading class /
        register tokens to drop before folding (1 for a ViT with a class token).
    - `grid`: with `layout="tokens"`, the patch grid `(h, w)`; `None` infers a
        square grid.
    - `call_index`: which call of `layer` to read when it is called several times
        per forward pass; `None` (default) requires exactly one call.

    **Returns:** a static description of the layer, accepted wherever a CAM-family
    method or [`eqx_attr.layer_activation_and_gradient`][] takes `layer`.

    ```python
    spec = LayerSpec(lambda m: m.blocks[-1].norm1, layout="tokens", n_prefix_tokens=1)
    h = xa.GradCAM(vit, spec)(x, target=3)
    ```
    """

    layer: Callable = eqx.field(static=True)
    layout: str = eqx.field(static=True, default="chw")
    n_prefix_tokens: int = eqx.field(static=True, default=0)
    grid: tuple[int, int] | None = eqx.field(
        static=True, default=None, converter=_grid_converter
    )
    call_index: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_where(self.layer, "layer", "lambda m: m.conv2")
        check_choice(self.layout, "layout", LAYOUTS)
        check_index(self.n_prefix_tokens, "n_prefix_tokens", optional=False)
        grid = self.grid
        if grid is not None and not (
            isinstance(grid, tuple)
            and len(grid) == 2
            and all(isinstance(g, int) and g >= 1 for g in grid)
        ):
            raise ValueError(
                "`grid` must be None or a pair of positive ints `(h, w)`, got "
                f"{grid!r}."
            )
        if self.layout != "tokens" and (self.n_prefix_tokens != 0 or grid is not None):
            raise ValueError(
                "`n_prefix_tokens` and `grid` apply to `layout='tokens'` only; pass "
                "`layout='tokens'` for a transformer's `(N, D)` token activations."
            )
        check_index(self.call_index, "call_index")

    def inspect(self, model: Callable, x: Array) -> LayerInfo:
        """Trace-time checks of `layer` and `layout`, before any computation runs."""
        info = inspect_layer(model, self.layer, x, self.call_index)
        jax.eval_shape(self.maps, info.act)
        return info

    def read(
        self, model: Callable, x: Array, objective: Callable, info: LayerInfo
    ) -> tuple[Any, Array, Array, Array]:
        """`(scores, objective(scores), activation, d objective / d activation)`;
        `scores` is the model's output (a PyTree for a model returning one).

        One forward and one backward pass; `info` comes from
        [`eqx_attr.LayerSpec.inspect`][].
        """
        return read_layer(model, self.layer, x, objective, info)

    def maps(self, a: Array) -> Array:
        """Channels-first maps `(C, h, w)` from the layer's activation (or gradient)."""
        if self.layout == "tokens":
            if a.ndim != 2:
                raise ValueError(
                    "`layout='tokens'` needs the layer to output tokens `(N, D)`, but "
                    f"it outputs shape {a.shape}; use `layout='chw'` for `(C, H, W)`."
                )
            h, w = token_grid(a.shape[0], self.n_prefix_tokens, self.grid)
            t = a[self.n_prefix_tokens :]
            return jnp.transpose(t.reshape(h, w, a.shape[1]), (2, 0, 1))
        if a.ndim != 3:
            hint = (
                " For transformer tokens `(N, D)` pass `layout='tokens'`."
                if a.ndim == 2
                else " Point `layer` at a convolutional feature map."
            )
            raise ValueError(
                f"`layout={self.layout!r}` needs the layer to output a 3-D feature "
                f"map, but it outputs shape {a.shape}.{hint}"
            )
        return jnp.transpose(a, (2, 0, 1)) if self.layout == "hwc" else a

    def gradient_maps(self, grad: Array, method: str) -> Array:
        """[`maps`][eqx_attr.LayerSpec.maps] of the gradient `d target / d
        activation`, refusing (via `eqx.error_if`) a token gradient that is zero
        on every patch token but not on the class tokens: the target then depends
        on the layer's class tokens alone, as after a ViT's last block, and every
        gradient CAM would return an all-zero map. It depends on values (a
        gradient), so it is checked at run time; `method` names the method in the
        message."""
        g = self.maps(grad)
        if self.layout != "tokens" or self.n_prefix_tokens == 0:
            return g
        prefix = grad[: self.n_prefix_tokens]
        only_prefix = jnp.all(g == 0) & jnp.any(prefix != 0)
        return error_if(
            g,
            only_prefix,
            f"{method}: the target depends only on the class token of `layer`'s "
            "output, so the map would be all zero.\nAfter a ViT's last block only "
            "the class token reaches the head: point `layer` at the last block's "
            "input, e.g. `lambda m: m.blocks[-1].norm1` (a norm of the whole "
            "`(N, D)` tokens) or the block before, `lambda m: m.blocks[-2]`.",
        )

    def keep_mask(self, shape: tuple, k: Array) -> Array:
        """A 0/1 mask, in the layer's own layout, that zeroes channel `k`."""
        if self.layout == "chw":
            keep = jnp.arange(shape[0]) != k
            return keep.reshape(shape[0], 1, 1) & jnp.ones(shape, bool)
        if self.layout == "hwc":
            keep = jnp.arange(shape[2]) != k
            return keep.reshape(1, 1, shape[2]) & jnp.ones(shape, bool)
        # Tokens: only the patch tokens carry the map; the class token is left alone.
        keep = jnp.arange(shape[1]).reshape(1, shape[1]) != k
        prefix = jnp.arange(shape[0]).reshape(shape[0], 1) < self.n_prefix_tokens
        return keep | prefix


Layers = LayerSpec | tuple[LayerSpec, ...]
"""What a CAM holds as `spec`: one layer, or a tuple of layers (one map each)."""

LayerArg = Callable | LayerSpec | list | tuple
"""What a CAM's `layer` argument takes: a `where` function, a `LayerSpec`, or a
list / tuple of them (checked by `as_layer_specs`)."""


def as_layer_specs(layer: Any, **options: Any) -> Layers:
    """`layer` as a [`LayerSpec`][], or a list / tuple of `where` functions and
    `LayerSpec`s as a tuple of them (layout `options` apply to the `where`
    functions; a one-element list stays a tuple: it asks for the multi-layer
    pipeline, scaled to `[0, 1]`)."""
    if not isinstance(layer, (list, tuple)):
        return as_layer_spec(layer, **options)
    if not layer:
        raise ValueError(
            "`layer` is an empty list; pass a `where` function, a `LayerSpec`, or "
            "a non-empty list of them."
        )
    specs = []
    for item in layer:
        if isinstance(item, (list, tuple)):
            raise ValueError(
                "`layer` must be a flat list of `where` functions or `LayerSpec`s, "
                f"but it holds a {type(item).__name__}."
            )
        specs.append(as_layer_spec(item, **options))
    return tuple(specs)


def as_layer_spec(layer: Any, **options: Any) -> LayerSpec:
    """`layer` as a [`LayerSpec`][]: a `where` function plus layout `options`."""
    if isinstance(layer, LayerSpec):
        if options:
            raise ValueError(
                f"Pass the layout options {sorted(options)} inside the `LayerSpec`, "
                "not next to it."
            )
        return layer
    return LayerSpec(layer, **options)
