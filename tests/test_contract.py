"""The call contract, for every method of the registry (`tests/helpers.METHODS`).

Shape and dtype; one compile for repeated calls; vmap over inputs and over
targets equals the loop (batch-size invariance, to the suite's one tolerance
policy: `tests/helpers.assert_close`); the caller's model is untouched; bad
target, shape and dtype raise at trace time, naming the argument. The
transformer entries, which SmallCNN cannot run, get the same batch checks on a
tiny ViT. (Half precision, for every registry row, is checked against float32 by
tests/test_half_precision.py.)
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqx_attr as xa
from eqx_attr._registry import BuildContext, get, methods

from ._vit_reference import tiny_vit
from .helpers import (
    METHODS,
    NOT_ON_SMALL_CNN,
    MethodSpec,
    assert_close,
    counting,
    digit_like,
    small_cnn,
)

# ------------------------------------------------------------------------------
# The contract, for every method in the one list.


def _call(spec: MethodSpec, method, x, t, key):
    # A neuron method explains the neuron it was built for: no target.
    t = t if spec.takes_target else None
    return method(x, t, key=key) if spec.random else method(x, t)


def _expected_shape(spec: MethodSpec, x):
    if spec.output == "layer":  # shaped like the layer's output (conv2)
        layer = lambda m: m.conv2  # noqa: E731
        return eqx.filter_eval_shape(xa.layer_activation, small_cnn(), layer, x).shape
    return x.shape if spec.output == "input" else x.shape[-2:]


# One test per method shares its compiled programs between the checks (compiling
# is most of what they cost): the jitted single call serves the retrace count and
# the loops that the two vmaps are compared with.
@pytest.mark.parametrize("spec", METHODS, ids=repr)
def test_jit_vmap_and_dtypes(spec):
    traces: list = []
    model = small_cnn()
    before = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    method = spec.build(counting(model, traces))
    one = eqx.filter_jit(lambda x, t, k: _call(spec, method, x, t, k))
    xs = jax.random.uniform(jax.random.key(7), (3, 1, 28, 28))
    ts = jnp.array([1, 5, 9])
    keys = jax.random.split(jax.random.key(8), 3)

    # Jitted once: new inputs, targets and keys never retrace the model.
    singles = [one(xs[i], ts[i], keys[i]) for i in range(3)]
    n_first = len(traces)
    assert n_first > 0
    for seed, t in ((1, 4), (2, 7)):
        one(digit_like(seed), jnp.asarray(t, jnp.int32), keys[0])
    assert len(traces) == n_first
    # The caller's model is untouched: the same arrays, not copies or updates.
    after = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    assert all(a is b for a, b in zip(before, after, strict=True))

    # Shape, dtype and finiteness of the float32 result.
    for out in singles:
        assert out.shape == _expected_shape(spec, xs[0])
        assert out.dtype == jnp.float32
        assert bool(jnp.all(jnp.isfinite(out)))

    # vmap over inputs (and keys) equals the per-example loop.
    batched = eqx.filter_jit(eqx.filter_vmap(one))(xs, ts, keys)
    assert batched.shape == (3, *_expected_shape(spec, xs[0]))
    for i in range(3):
        # The batch changes the budget's chunking, so the program: rounding is
        # relative to the map's scale, or to the scores whose differences a
        # perturbation method returns, not to each element.
        scale = jnp.maximum(
            jnp.max(jnp.abs(singles[i])), jnp.max(jnp.abs(model(xs[i])))
        )
        assert_close(
            batched[i], singles[i], rtol=spec.rtol, scale=float(scale),
            err_msg=f"vmap over inputs, row {i}",
        )  # fmt: skip

    if spec.neuron_build is not None:
        _vmap_over_neurons(spec, model, xs[0], keys[0], singles[0])
        return
    # vmap over targets (one input, one key) equals the loop over classes.
    per_class = eqx.filter_jit(
        eqx.filter_vmap(one, in_axes=(None, 0, None))
    )(xs[0], jnp.arange(10), keys[0])  # fmt: skip
    for t in (0, 4, 9):
        want = one(xs[0], jnp.asarray(t, jnp.int32), keys[0])
        assert_close(
            per_class[t], want, rtol=spec.rtol, err_msg=f"vmap over targets, class {t}"
        )
    assert_close(
        per_class[1], singles[0], rtol=spec.rtol, err_msg="vmap over targets, class 1"
    )


def _vmap_over_neurons(spec: MethodSpec, model, x, key, first):
    # Many neurons are a vmap over the method's build; a new neuron index never
    # retraces; neuron 0 is the registry build's default.
    assert spec.neuron_build is not None
    traces: list = []
    counted = counting(model, traces)
    one = eqx.filter_jit(
        lambda n, x, k: _call(spec, spec.neuron_build(counted, n), x, None, k)
    )
    singles = {n: one(jnp.asarray(n, jnp.int32), x, key) for n in (0, 4, 9)}
    n_first = len(traces)
    one(jnp.asarray(5, jnp.int32), x, key)
    assert len(traces) == n_first
    per_neuron = eqx.filter_jit(eqx.filter_vmap(one, in_axes=(0, None, None)))(
        jnp.arange(10, dtype=jnp.int32), x, key
    )
    for n, want in singles.items():
        assert_close(per_neuron[n], want, rtol=spec.rtol, err_msg=f"neuron {n}")
    assert_close(singles[0], first, rtol=spec.rtol, err_msg="neuron 0, the default")


_ATTENTION = lambda m: [b.attn.attn_drop for b in m.blocks]  # noqa: E731


@pytest.mark.parametrize("name", NOT_ON_SMALL_CNN)
def test_transformer_entries_batch_like_the_loop(name):
    # The entries SmallCNN cannot run, on a tiny ViT: vmap over inputs and over
    # targets equals the loop, one compile for repeated calls, float32 out.
    entry = get(name)
    vit = tiny_vit(2)
    ctx = BuildContext(vit, attention=_ATTENTION, n_prefix_tokens=1)
    method = entry.build(ctx)
    traces: list = []

    @eqx.filter_jit
    def one(x, t):
        traces.append(1)
        return method(x, t)

    xs = jax.random.uniform(jax.random.key(3), (3, 1, 8, 8))
    ts = jnp.array([1, 3, 4])
    singles = [one(xs[i], ts[i]) for i in range(3)]
    assert len(traces) == 1
    shape = xs[0].shape if entry.output == "input" else xs[0].shape[-2:]
    assert all(s.shape == shape and s.dtype == jnp.float32 for s in singles)
    batched = eqx.filter_jit(jax.vmap(one))(xs, ts)
    for i in range(3):
        assert_close(batched[i], singles[i], err_msg=f"vmap over inputs, row {i}")
    per_class = eqx.filter_jit(jax.vmap(one, in_axes=(None, 0)))(xs[0], jnp.arange(5))
    for t in (0, 1, 4):
        want = one(xs[0], jnp.asarray(t, jnp.int32))
        assert_close(per_class[t], want, err_msg=f"vmap over targets, class {t}")


@pytest.mark.parametrize("spec", METHODS, ids=repr)
def test_methods_are_attributions_and_random_ones_need_a_key(spec):
    # (That calls leave the model untouched is checked in the test above.)
    method = spec.build(small_cnn())
    assert isinstance(method, xa.AbstractAttribution)
    if spec.random:
        with pytest.raises(ValueError, match="key"):
            method(digit_like(), 1 if spec.takes_target else None)


@pytest.mark.parametrize("spec", METHODS, ids=repr)
def test_bad_target_shape_and_dtype_raise(spec):
    method = spec.build(small_cnn())
    x, key = digit_like(), jax.random.key(0)
    if spec.takes_target:
        with pytest.raises(ValueError, match="target"):
            _call(spec, method, x, 10, key)  # out of range for 10 classes
        with pytest.raises(ValueError, match="target"):
            _call(spec, method, x, jnp.array([1, 2]), key)  # not a single class
    else:  # the neuron is the method's; any target is refused
        kw = {"key": key} if spec.random else {}
        with pytest.raises(ValueError, match="target"):
            method(x, 1, **kw)
    with pytest.raises((ValueError, TypeError), match="x|input|shape"):
        _call(spec, method, jnp.ones((2, 28, 28)), 1, key)  # wrong channels
    with pytest.raises(TypeError, match="dtype|float"):
        _call(spec, method, jnp.ones((1, 28, 28), jnp.int32), 1, key)


def test_every_registry_method_is_covered():
    # The contract above runs every registry entry (or a hand-written variant of
    # its class); entries that SmallCNN cannot run are named, never dropped.
    names = {spec.name for spec in METHODS}
    for entry in methods():
        assert entry.cls.__name__ in names or entry.name in NOT_ON_SMALL_CNN, entry
    assert all(issubclass(e.cls, xa.AbstractAttribution) for e in methods())
