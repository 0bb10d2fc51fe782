"""The rule engine: JAX internals it relies on, the handler table, tracked streams,
higher-order bodies, custom backward passes, errors, PyTree module swaps."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eqx_attr._engine import (
    _interpreter as it,
    _jax_internals as ji,
    _pytree as pt,
)

from .helpers import assert_close


def test_jax_internals_self_check():
    # Fails loudly when a JAX upgrade moves a primitive name, a param or a path.
    ji.self_check()


def _sin_model(x):
    # One `sin` in every kind of body the engine must reach.
    y = jnp.sin(x)
    y = jax.jit(jnp.sin)(y)
    y = jax.checkpoint(jnp.sin)(y)
    y, _ = jax.lax.scan(lambda c, _: (jnp.sin(c), None), y, None, length=2)
    y = jax.lax.cond(y[0] > -5.0, jnp.sin, jnp.cos, y)
    y = jax.lax.while_loop(lambda s: s[1] < 1, lambda s: (jnp.sin(s[0]), s[1] + 1),
                           (y, 0))[0]  # fmt: skip

    @jax.custom_jvp
    def f(v):
        return jnp.sin(v)

    f.defjvp(lambda p, t: (f(p[0]), t[0]))
    return f(y)


def _twice_sin(interp, eqn, invals):
    return it.map_streams(lambda v: [2.0 * jnp.sin(v[0])], invals)


def test_table_handler_reaches_every_body():
    x = jnp.array([0.3, -0.7, 1.1])
    traced = it.trace(_sin_model, x)
    interp = it.Interpreter({"sin": _twice_sin}, "test", fallback=it.bind_plain)
    (out,) = it.run(interp, traced, traced.leaves)
    want = x
    for _ in range(7):  # sin, jit, checkpoint, scan x2, cond, while ... custom_jvp
        want = 2.0 * jnp.sin(want)
    want = 2.0 * jnp.sin(want)
    assert_close(out, want)


def test_tracked_streams_and_constants():
    # Two streams: every primitive on both; weights stay shared constants.
    w = jnp.array([[1.0, 2.0], [3.0, -1.0]])

    def f(w, x):
        return jnp.tanh(w @ x) + jnp.sum(w)

    x, x0 = jnp.array([0.5, -1.0]), jnp.array([0.1, 0.2])
    traced = it.trace(f, w, x)
    linear = {"dot_general": it.on_streams, "add": it.on_streams}
    interp = it.Interpreter(linear, "test", streams=2, plain=frozenset({"tanh"}))
    pair = it.Act(jnp.stack([x, x0]))
    (out,) = it.run(interp, traced, [traced.leaves[0], pair])
    assert isinstance(out, it.Act)
    assert_close(out.streams[0], f(w, x))
    assert_close(out.streams[1], f(w, x0))


def test_unknown_primitive_raises_with_location_and_plain_opts_in():
    def model(x):
        return jnp.sin(x)  # the line the error must name

    line = model.__code__.co_firstlineno + 1
    x = jnp.ones(3)
    traced = it.trace(model, x)
    strict = it.Interpreter({}, "MyMethod", streams=1, hint="Pass plain=('sin',).")
    with pytest.raises(it.NoRuleError, match=rf"MyMethod has no rule for the `sin`.*"
                       rf"test_rules_engine.py:{line}.*plain=\('sin',\)"):  # fmt: skip
        it.run(strict, traced, [it.Act(x[None])])
    loose = it.Interpreter({}, "MyMethod", streams=1, plain=frozenset({"sin"}))
    (out,) = it.run(loose, traced, [it.Act(x[None])])
    assert_close(out.streams[0], jnp.sin(x))


def test_no_gradient_operations_need_no_rule():
    # Comparisons, argmax, integer ops carry no derivative: evaluated per stream.
    def model(x):
        return jnp.argmax(x) + (x > 0).sum()

    x = jnp.array([0.5, -1.0, 2.0])
    traced = it.trace(model, x)
    interp = it.Interpreter({}, "test", streams=1)
    (out,) = it.run(interp, traced, [it.Act(x[None])])
    assert int(out.streams[0]) == 2 + 2  # exact: an integer result


def test_rule_with_custom_backward():
    # A handler returning a custom_vjp value: the backward pass is the rule's.
    @jax.custom_vjp
    def straight(s):
        return jnp.tanh(s)

    straight.defvjp(lambda s: (jnp.tanh(s), None), lambda _, g: (g,))

    def handler(interp, eqn, invals):
        return [it.Act(straight(invals[0].streams))]

    def model(x):
        return jnp.sum(3.0 * jnp.tanh(x))

    linear = {"mul": it.on_streams, "reduce_sum": it.on_streams}
    interp = it.Interpreter({"tanh": handler, **linear}, "test", streams=1)

    def run(x):
        traced = it.trace(model, x)
        (out,) = it.run(interp, traced, [it.Act(x[None])])
        return out.streams[0]

    x = jnp.array([0.5, -2.0])
    assert_close(jax.grad(run)(x), np.array([3.0, 3.0], np.float32))
    assert_close(run(x), model(x))


def test_region_rule_sees_one_input():
    # jax.nn.gelu is not jitted: its equations form a region with one input.
    calls = []

    def match(interp, eqns, i, scope):
        if ji.nn_function(eqns[i], ("gelu",)) is None:
            return None
        n = 1
        while i + n < len(eqns) and ji.nn_function(eqns[i + n], ("gelu",)):
            n += 1

        def handler(interp, fn, invals):
            calls.append(n)
            return [fn(invals[0]) + 1.0]

        return it.Unit(handler, n, region=True)

    def model(x):
        return jax.nn.gelu(2.0 * x) * 3.0

    x = jnp.array([0.5, -1.0])
    traced = it.trace(model, x)
    interp = it.Interpreter({}, "test", match=match, fallback=it.bind_plain)
    (out,) = it.run(interp, traced, traced.leaves)
    assert calls and calls[0] > 1
    assert_close(out, (jax.nn.gelu(2.0 * x) + 1.0) * 3.0)


def test_swap_modules_by_type_and_path():
    key = jax.random.key(0)
    mlp = eqx.nn.MLP(3, 2, 4, 2, key=key)

    class Doubled(eqx.Module):
        inner: eqx.nn.Linear

        def __call__(self, x):
            return 2.0 * self.inner(x)

    new, n = pt.swap_modules(mlp, (eqx.nn.Linear,), Doubled)
    assert n == 3
    assert all(isinstance(layer, Doubled) for layer in new.layers)
    assert all(isinstance(layer, eqx.nn.Linear) for layer in mlp.layers)
    x = jnp.ones(3)
    h = x
    for i, layer in enumerate(mlp.layers):
        h = 2.0 * layer(h)
        h = jax.nn.relu(h) if i < 2 else h
    assert_close(new(x), h)
