"""The PyTree side of LRP: batch-norm merging, rule overrides and pooling modules.

(`eqx.nn.BatchNorm`, whose statistics live in an `eqx.nn.State`, is merged in the
traced program instead: see `_lrp_bn`.)

- `merge_batch_norms`: every [`eqx_attr.models.FrozenBatchNorm2d`][] that directly
  follows a convolution is folded into it (Zennit's `SequentialMergeBatchNorm`):
  "directly follows" means the next element of a list/tuple (`eqx.nn.Sequential`)
  or the next field of a module (`conv1`, `bn1` in the zoo's ResNet blocks), the
  order Zennit uses too. A batch norm that follows no convolution raises.
- `attach_rules`: `overrides` (`where`, rule) wrap the named sub-modules in a
  [`RuleOp`][], and average-pooling modules (the zoo's `AdaptiveAvgPool2d`,
  `eqx.nn.AvgPool*`, `eqx.nn.AdaptiveAvgPool*`) get the composite's norm rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ..models._blocks import AdaptiveAvgPool2d, FrozenBatchNorm2d
from ._lrp_rules import AbstractRule, apply_rule

_POOLS = (
    AdaptiveAvgPool2d,
    eqx.nn.AvgPool1d,
    eqx.nn.AvgPool2d,
    eqx.nn.AvgPool3d,
    eqx.nn.AdaptiveAvgPool1d,
    eqx.nn.AdaptiveAvgPool2d,
    eqx.nn.AdaptiveAvgPool3d,
)


class Shifted(eqx.Module):
    """A bias-free convolution followed by the bias of a merged batch norm."""

    layer: eqx.nn.Conv
    bias: Any

    def __call__(self, x: Any, *, key: Any = None) -> Any:
        return self.layer(x) + self.bias


def _fold(conv: Any, bn: FrozenBatchNorm2d) -> Any:
    scale = bn.weight * jax.lax.rsqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    shape = (-1,) + (1,) * (conv.weight.ndim - 1)
    weight = conv.weight * scale.reshape(shape)
    out_shape = (-1,) + (1,) * (conv.weight.ndim - 2)
    if conv.bias is None:
        layer = eqx.tree_at(lambda c: c.weight, conv, weight)
        return Shifted(layer, shift.reshape(out_shape))
    bias = conv.bias * scale.reshape(out_shape) + shift.reshape(out_shape)
    return eqx.tree_at(lambda c: (c.weight, c.bias), conv, (weight, bias))


def _merge_run(values: list) -> list:
    values = list(values)
    for k in range(1, len(values)):
        if isinstance(values[k], FrozenBatchNorm2d) and isinstance(
            values[k - 1], eqx.nn.Conv
        ):
            values[k - 1] = _fold(values[k - 1], values[k])
            values[k] = eqx.nn.Identity()
    return values


def merge_batch_norms(node: Any) -> Any:
    """Fold each batch norm into the convolution just before it (see module doc)."""
    if isinstance(node, (list, tuple)):
        merged = _merge_run([merge_batch_norms(v) for v in node])
        return type(node)(merged) if isinstance(node, list) else tuple(merged)
    if not isinstance(node, eqx.Module) or isinstance(node, FrozenBatchNorm2d):
        return node
    names = [
        f.name
        for f in dataclasses.fields(node)
        if not f.metadata.get("static", False) and hasattr(node, f.name)
    ]
    old = [getattr(node, n) for n in names]
    new = _merge_run([merge_batch_norms(v) for v in old])
    changed = [k for k in range(len(names)) if new[k] is not old[k]]
    if not changed:
        return node
    for k in changed:
        node = eqx.tree_at(
            lambda m, n=names[k]: getattr(m, n),
            node,
            new[k],
            is_leaf=lambda v: v is None,
        )
    return node


def check_no_batch_norm(model: Any) -> None:
    """Raise if a batch norm is left that no canonizer could merge."""
    # `eqx.nn.BatchNorm` keeps its statistics in an `eqx.nn.State`: it is merged in
    # the traced program instead (`_lrp_bn`).
    is_bn = lambda n: isinstance(n, FrozenBatchNorm2d)
    stop = lambda n: is_bn(n) or isinstance(n, RuleOp)
    for path, leaf in jax.tree_util.tree_flatten_with_path(model, is_leaf=stop)[0]:
        if is_bn(leaf):
            where = "model" + jax.tree_util.keystr(path)
            raise ValueError(
                f"LRP cannot merge the batch norm at `{where}`: it does not directly "
                "follow a convolution. LRP "
                "rules assume batch norm folded into the preceding layer; put the "
                "batch norm right after its convolution, or give it a rule with "
                f"`overrides=((lambda m: m{jax.tree_util.keystr(path)}, "
                "xa.lrp.Pass()),)`."
            )


def _layer_params(node: Any) -> tuple[Callable, Any, Any] | None:
    """`(fn, weight, bias)` of a dense or convolutional layer, else None.

    A rule may drop the bias (`b=None`): the layer then runs with a zero bias.
    """
    if isinstance(node, Shifted):
        inner = node.layer

        def shifted(x, w, b):
            y = eqx.tree_at(lambda c: c.weight, inner, w)(x)
            return y if b is None else y + b

        return shifted, inner.weight, node.bias
    if not isinstance(node, (eqx.nn.Linear, eqx.nn.Conv)):
        return None
    if node.bias is None:
        return (
            (lambda x, w, b: eqx.tree_at(lambda c: c.weight, node, w)(x)),
            (node.weight),
            None,
        )
    shape = node.bias.shape  # not the array: a traced value must not be closed over

    def layer(x, w, b):
        b = jnp.zeros(shape, w.dtype) if b is None else b
        return eqx.tree_at(lambda c: (c.weight, c.bias), node, (w, b))(x)

    return layer, node.weight, node.bias


class RuleOp(eqx.Module):
    """A sub-module whose backward pass maps relevance by `rule`.

    The forward pass is the module's. For a dense or convolutional layer the rule
    sees its weight and bias; for any other module, its arrays (if any) as weights.
    """

    module: Any
    rule: AbstractRule

    def __call__(self, x: Any, *, key: Any = None) -> Any:
        params = _layer_params(self.module)
        if params is not None:
            fn, w, b = params
            return apply_rule(self.rule, fn, x, w, b, layer=True)
        dyn, static = eqx.partition(self.module, eqx.is_array)
        fn = lambda x_, w, b: eqx.combine(w, static)(x_)
        return apply_rule(self.rule, fn, x, dyn)


def attach_rules(model: Any, overrides: tuple, pool_rule: AbstractRule) -> Any:
    """Wrap the overridden sub-modules and the average pools in `RuleOp`s."""
    for k, (where, rule) in enumerate(overrides):
        try:
            model = eqx.tree_at(
                where, model, replace_fn=lambda n, rule=rule: RuleOp(n, rule)
            )
        except Exception as e:
            raise ValueError(
                f"`overrides[{k}]`'s `where` could not be applied to the model: "
                f"{type(e).__name__}: {e}. It must name sub-modules, e.g. "
                "`lambda m: m.features[0]`."
            ) from e
    stop = lambda n: isinstance(n, (RuleOp, *_POOLS))
    pools = [
        path
        for path, leaf in jax.tree_util.tree_flatten_with_path(model, is_leaf=stop)[0]
        if isinstance(leaf, _POOLS)
    ]
    if not pools:
        return model

    def where(m):
        found = dict(jax.tree_util.tree_flatten_with_path(m, is_leaf=stop)[0])
        return [found[p] for p in pools]

    return eqx.tree_at(where, model, replace_fn=lambda n: RuleOp(n, pool_rule))


def prepare(model: Any, overrides: tuple, pool_rule: AbstractRule) -> Any:
    """Canonize `model` and attach the PyTree rules (see the module doc)."""
    model = merge_batch_norms(model)
    model = attach_rules(model, overrides, pool_rule)
    check_no_batch_norm(model)
    return model
