"""CP-LRP: conservative propagation through attention and layer norm.

Ali et al., *XAI for Transformers: Better Explanations through Conservative
Propagation*, ICML 2022. LRP-0 through a transformer equals gradient times input
once the non-conservative parts are held constant in the backward pass: the
attention probabilities (the softmax output), the normalisation of layer norm
(its `1 / sqrt(var + eps)`), and the gate of element-wise activations (GELU as
`z * Phi(z)` with `Phi(z)` detached, LRP's pass-through rule). These are PyTree
swaps with `eqx.tree_at`, so the forward pass is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from .._attribution import (
    AbstractAttribution,
    Attribution,
    Image,
    Target,
    check_input,
    scalar_function,
)
from .._layers import resolve_layers
from .._layout import (
    InputLayout,
    input_layout_field,
)
from .._method_entry import Differentiability, MethodEntry

__all__ = ["ConservativeLRP", "conservative_model"]
from ._common import attention_view


@jax.custom_vjp
def detach_backward(x: Array) -> Array:
    """`x`, with a zero backward pass: the map's `jax.lax.stop_gradient`.

    Inside the rewritten model's own backward pass (the one that computes the
    relevance) this is `stop_gradient`. Unlike it, differentiating the relevance
    itself (a loss of the map, `jax.grad` over the method) sees the identity: the
    forward rule returns `x` as plain code, so the map's derivative is the exact
    derivative of the computed map (issue 33: with `stop_gradient`, the detached
    scales and attention looked constant to that derivative too).
    """
    return x


def _detach_fwd(x):
    return x, None


def _detach_bwd(_, g):
    return (jnp.zeros_like(g),)


detach_backward.defvjp(_detach_fwd, _detach_bwd)


class DetachedOutput(eqx.Module):
    """Runs `module` and detaches its output: the attention probabilities."""

    module: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return jax.tree_util.tree_map(detach_backward, self.module(*args, **kwargs))


class DetachedLayerNorm(eqx.Module):
    """Layer norm over the last axis whose scale `1 / sqrt(var + eps)` is detached.

    Built from a layer norm module with `weight`, `bias` (either may be None) and
    `eps` fields (the zoo's `LayerNorm`, `eqx.nn.LayerNorm`); the forward pass is
    that of the module, the backward pass treats the normalisation as constant.
    """

    weight: Array | None
    bias: Array | None
    eps: float = eqx.field(static=True)

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * detach_backward(jax.lax.rsqrt(var + self.eps))
        shape = (1,) * (x.ndim - 1) + (-1,)
        if self.weight is not None:
            y = y * self.weight.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return y


class PassThrough(eqx.Module):
    """An element-wise activation `y = f(z)` written `z * stop_gradient(f(z) / z)`.

    Gradient times input at `z` then equals gradient times output at `y`: the
    relevance passes through unchanged (LRP's rule for element-wise activations).
    """

    module: Callable[..., Any]

    def __call__(self, z: Array, *, key: PRNGKeyArray | None = None) -> Array:
        del key
        y = self.module(z)
        nonzero = z != 0
        gate = jnp.where(nonzero, y / jnp.where(nonzero, z, 1), 0)
        return z * detach_backward(gate).astype(z.dtype)


def _detached_norm(module: Any) -> DetachedLayerNorm:
    weight = getattr(module, "weight", None)
    if not hasattr(module, "eps") or (weight is not None and jnp.ndim(weight) != 1):
        raise TypeError(
            "`norms` must select layer norm modules with `weight`, `bias` and `eps` "
            "fields normalising the last axis (the zoo's LayerNorm, "
            f"`eqx.nn.LayerNorm`); it selects a {type(module).__name__}."
        )
    return DetachedLayerNorm(weight, getattr(module, "bias", None), module.eps)


def _nodes(model: Any, where: Callable, name: str) -> list[Any]:
    # An empty selection is allowed for norms/activations (a model without them).
    found = where(model)
    if isinstance(found, (list, tuple)) and len(found) == 0:
        return []
    return resolve_layers(model, where, name)


def _swap(model: Any, where: Callable, name: str, fn: Callable) -> Any:
    nodes = _nodes(model, where, name)
    if not nodes:
        return model

    def many(m):
        found = where(m)
        return list(found) if isinstance(found, (list, tuple)) else [found]

    return eqx.tree_at(many, model, replace=[fn(s) for s in nodes])


def _zoo_wheres(model: Any) -> tuple[Callable, Callable]:
    from ..models import ViT

    if not isinstance(model, ViT):
        raise ValueError(
            "`norms` and `activations` default to the zoo ViT's modules, but the "
            f"model is a {type(model).__name__}. Pass `where` functions naming its "
            "layer norms and element-wise activations, e.g. `norms=lambda m: "
            "[n for b in m.layers for n in (b.ln1, b.ln2)] + [m.ln]`, "
            "`activations=lambda m: [b.mlp.gelu for b in m.layers]`."
        )
    norms = lambda m: [n for b in m.blocks for n in (b.norm1, b.norm2)] + [m.norm]  # noqa: E731
    acts = lambda m: [b.mlp.act for b in m.blocks]  # noqa: E731
    return norms, acts


def conservative_model(
    model: Any,
    attention: Callable,
    norms: Callable | None = None,
    activations: Callable | None = None,
) -> Any:
    """A copy of `model` whose backward pass is CP-LRP's; its forward is unchanged.

    The attention probabilities (at `attention`) are detached, the layer norms (at
    `norms`) have their normalisation detached and the activations (at
    `activations`) pass relevance through. `norms`/`activations` of `None` name
    the zoo ViT's modules. Gradient times input of the result is CP-LRP.

    **Arguments:**

    - `model`: the transformer.
    - `attention`: a `where` returning the modules whose outputs are the attention
        probabilities, one per block.
    - `norms`: a `where` returning the layer norms (`None`: the zoo ViT's).
    - `activations`: a `where` returning the activation modules (`None`: the zoo
        ViT's).

    **Returns:** a model with the same forward pass and CP-LRP's backward pass.

    ```python
    cp = xa.conservative_model(vit, lambda m: [b.attn.attn_drop for b in m.blocks])
    r = x * jax.grad(lambda x: cp(x)[3])(x)
    ```
    """
    if norms is None or activations is None:
        zoo_norms, zoo_acts = _zoo_wheres(model)
        norms = zoo_norms if norms is None else norms
        activations = zoo_acts if activations is None else activations
    resolve_layers(model, attention, "attention")
    model = _swap(model, attention, "attention", DetachedOutput)
    model = _swap(model, norms, "norms", _detached_norm)
    return _swap(model, activations, "activations", PassThrough)


class ConservativeLRP(AbstractAttribution):
    """CP-LRP: LRP through attention and layer norm by conservative propagation.

    Ali et al., *XAI for Transformers: Better Explanations through Conservative
    Propagation*, ICML 2022. The attention probabilities and layer norm's
    normalisation are treated as constants in the backward pass (AH and LN rules),
    element-wise activations pass relevance through, and LRP-0 runs through the
    rest, which is gradient times input of the rewritten model (see
    [`eqx_attr.conservative_model`][]). Relevance starts from the target's raw
    score; in a network without biases (and zero class/position embeddings) it
    sums exactly to that score, and through every block it is conserved. Not
    Achtibat et al.'s AttnLRP, whose rules differ.

    **Arguments:**

    - `model`: a vision transformer mapping one image to scores.
    - `attention`: a `where` returning the modules whose outputs are the attention
        probabilities, e.g. `lambda m: [b.attn.attn_drop for b in m.blocks]`.
    - `norms`: a `where` returning the layer norms; `None` (default) for the zoo
        ViT's (`norm1`, `norm2` of every block and the final `norm`).
    - `activations`: a `where` returning the element-wise activations; `None`
        (default) for the zoo ViT's GELUs (`mlp.act`). An empty list is allowed.

    **Returns:** the relevance, shaped like `x`.

    ```python
    attn = lambda m: [b.attn.attn_drop for b in m.blocks]
    r = xa.ConservativeLRP(vit, attn)(x, target=3)                # (1, 28, 28)
    ```
    """

    model: Callable[..., Any]
    attention: Callable = eqx.field(static=True)
    norms: Callable | None = eqx.field(static=True, default=None)
    activations: Callable | None = eqx.field(static=True, default=None)
    input_layout: InputLayout = input_layout_field()

    def __check_init__(self):
        for name in ("attention", "norms", "activations"):
            where = getattr(self, name)
            if where is not None and (
                not callable(where) or isinstance(where, eqx.Module)
            ):
                raise TypeError(
                    f"`{name}` must be a `where` function as for `eqx.tree_at`, "
                    f"got {type(where).__name__}."
                )
        if self.norms is None or self.activations is None:
            _zoo_wheres(self.model)

    def __call__(
        self, x: Image, target: Target = None, *, key: PRNGKeyArray | None = None
    ) -> Attribution:
        del key
        x = check_input(x)
        # A selected module computing its probabilities inside (an
        # `eqx.nn.MultiheadAttention`) has them exposed as a sub-module first.
        model, attention, _ = attention_view(self.model, self.attention, x)
        model = conservative_model(model, attention, self.norms, self.activations)
        f = scalar_function(model, x, target)
        return (x * jax.grad(f)(x)).astype(x.dtype)


ROWS = (
    MethodEntry(
        "conservative_lrp",
        ConservativeLRP,
        "transformer",
        "CP-LRP (Ali et al. 2022): LRP-0 with attention and layer norm detached",
        lambda c: ConservativeLRP(c.model, c.need("attention")),
        aliases=("cp_lrp",),
        needs=frozenset({"attention"}),
        differentiable=Differentiability(
            1, 1, "norms and attention are detached in its own backward pass only"
        ),
        benchmark=(
            None,
            "no installable peer: CP-LRP's reference code is not on PyPI; "
            "conservation is tested",
        ),
    ),
)
