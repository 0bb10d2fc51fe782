"""Pure layer access: activation and gradient of a layer named by `where`."""

import gc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, digit_like, small_cnn


def _reference(model, x, t):
    """SmallCNN's last feature map and d score_t / d feature map, by hand."""
    a = model.features(x)

    def head(a):
        return model.fc(jnp.mean(a, axis=(1, 2)))[t]

    return a, jax.grad(head)(a)


def test_conv2_matches_manual_split():
    m, x = small_cnn(), digit_like()
    act, grad = xa.layer_activation_and_gradient(m, lambda m: m.conv2, x, 3)
    a, g = _reference(m, x, 3)
    assert act.shape == (32, 7, 7)  # 4 * width channels at 28 / 4
    assert_close((act, grad), (a, g))
    assert not np.allclose(grad, 0)


def test_inner_layer_of_sequential():
    # `conv1[1]` is a ReLU Lambda; the same Python object sits at four positions
    # of the tree (conv1[1], conv1[4], conv2[1], conv2[3]), but `where` names one
    # position only.
    m, x = small_cnn(1), digit_like(1)
    act, grad = xa.layer_activation_and_gradient(m, lambda m: m.conv1[1], x, 7)
    h = jax.nn.relu(m.conv1[0](x))

    def rest(h):
        h = m.conv1[5](jax.nn.relu(m.conv1[3](m.conv1[2](h))))
        return m.fc(jnp.mean(m.conv2(h), axis=(1, 2)))[7]

    assert_close(act, h)
    assert_close(grad, jax.grad(rest)(h))
    # the caller's model is unchanged and still a plain SmallCNN
    assert isinstance(m.conv1[1], eqx.nn.Lambda)


def test_callable_target_and_activation_only():
    m, x = small_cnn(), digit_like()
    target = lambda s: jax.nn.log_softmax(s)[2]
    act, grad = xa.layer_activation_and_gradient(m, lambda m: m.conv2, x, target)
    a = m.features(x)
    g = jax.grad(lambda a: target(m.fc(jnp.mean(a, axis=(1, 2)))))(a)
    assert_close((act, grad), (a, g))
    assert_close(xa.layer_activation(m, lambda m: m.conv2, x), a)


def test_jit_vmap_batch_and_targets():
    m = small_cnn()
    xs = jnp.stack([digit_like(0), digit_like(1), digit_like(2)])
    ts = jnp.array([1, 5, 9])
    read = lambda x, t: xa.layer_activation_and_gradient(m, lambda m: m.conv2, x, t)
    acts, grads = jax.jit(jax.vmap(read))(xs, ts)
    for i in range(3):
        a, g = _reference(m, xs[i], int(ts[i]))
        assert_close((acts[i], grads[i]), (a, g))
    # many targets, one example
    acts, grads = jax.vmap(lambda t: read(xs[0], t))(jnp.arange(10))
    for t in (0, 4, 9):
        a, g = _reference(m, xs[0], t)
        assert_close((acts[t], grads[t]), (a, g))


def test_grad_through_layer_access():
    # Second order: differentiate a Grad-CAM-like quantity with respect to x and
    # compare with the same quantity written with the model split by hand.
    m, x = small_cnn(2), digit_like(2)
    ramp = jnp.linspace(-1.0, 1.0, 7).reshape(1, 1, 7)

    def via_layers(x):
        a, g = xa.layer_activation_and_gradient(m, lambda m: m.conv2, x, 3)
        return jnp.sum(jnp.mean(g, axis=(1, 2)).reshape(-1, 1, 1) * a * ramp)

    def by_hand(x):
        a, g = _reference(m, x, 3)
        return jnp.sum(jnp.mean(g, axis=(1, 2)).reshape(-1, 1, 1) * a * ramp)

    g1, g2 = jax.grad(via_layers)(x), jax.grad(by_hand)(x)
    assert_close(g1, g2)
    assert float(jnp.max(jnp.abs(g2))) > 0


def test_no_leaked_tracers():
    # JAX's leak checker fails if any tracer outlives its trace (e.g. one stored
    # by a hook in a Python list or on a module).
    m, x = small_cnn(), digit_like()
    layer = lambda m: m.conv2

    # Leaks happen while tracing, so tracing is all this runs (no compiles, no
    # op-by-op execution): under jit, under vmap, and under grad.
    def run():
        jax.make_jaxpr(jax.jit(lambda x: xa.GradCAM(m, layer)(x, 3)))(x)
        jax.make_jaxpr(
            jax.vmap(lambda t: xa.layer_activation_and_gradient(m, layer, x, t))
        )(jnp.arange(3))
        jax.make_jaxpr(jax.grad(lambda x: jnp.sum(xa.HiResCAM(m, layer)(x, 1))))(x)

    # Warm-up outside the checker: the first trace of `eqx.error_if` in a process
    # leaves its input tracer in one of Equinox's one-time caches, which JAX's
    # checker reports (seen with jax 0.10.2, equinox 0.13.8; not ours). The
    # checked run retraces everything (the checker is part of the jit cache key).
    run()
    # The checker collects garbage whenever a finished trace is still alive, and
    # this worker's heap holds every earlier test's caches: frozen, they are left
    # out of those collections (21-32 s of the suite, now a second). Tracers made
    # from here on are not frozen, so a leaked one is still found.
    gc.freeze()
    try:
        with jax.checking_leaks():
            run()
    finally:
        gc.unfreeze()


def _iter_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if hasattr(sub, "eqns"):
                    yield from _iter_eqns(sub)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    yield from _iter_eqns(sub.jaxpr)


def _convs(fn, *args):
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    out = []
    for eqn in _iter_eqns(jaxpr):
        if eqn.primitive.name == "conv_general_dilated":
            shapes = [v.aval.shape for v in list(eqn.invars) + list(eqn.outvars)]
            out.append(shapes)
    return out


def test_vmap_over_targets_shares_the_forward_pass():
    # Layer conv1: the backward pass to it goes through conv2, so the jaxpr has
    # all four forward convolutions and backward ones. Under vmap over 10 targets
    # the forward ones must stay unbatched (no axis of size 10) and only the
    # backward ones carry the target axis; no convolution is added.
    m, x = small_cnn(), digit_like()
    gradcam = xa.GradCAM(m, lambda m: m.conv1)

    def batched(shapes):
        return any(d % 10 == 0 for s in shapes for d in s)

    single = _convs(lambda t: gradcam(x, t), jnp.int32(3))
    many = _convs(jax.vmap(lambda t: gradcam(x, t)), jnp.arange(10))
    assert not any(batched(s) for s in single)
    assert len(many) == len(single) > 3
    unbatched = [s for s in many if not batched(s)]
    # conv1[3], conv2[0], conv2[2]: the forward pass (conv1[0], one input channel,
    # is a thin convolution: on CPU it is computed without one, see
    # `_engine/_fast_conv.py`)
    assert len(unbatched) == 3
    assert all(s[0][0] == 1 for s in unbatched)  # Equinox's batch-of-one
    assert len(many) - len(unbatched) >= 1  # the batched backward pass


# ---------------------------------------------------------------------------------
# Errors


class _Twice(eqx.Module):
    block: eqx.nn.Linear
    head: eqx.nn.Linear
    unused: eqx.nn.Linear
    name: str = eqx.field(static=True, default="twice")

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.block = eqx.nn.Linear(4, 4, key=k1)
        self.head = eqx.nn.Linear(4, 3, key=k2)
        self.unused = eqx.nn.Linear(4, 4, key=k3)

    def __call__(self, x):
        h1 = jnp.tanh(self.block(x.reshape(-1)))
        h2 = jnp.tanh(self.block(h1))
        return self.head(h2)


def _x4():
    return jnp.linspace(-1.0, 1.0, 4).reshape(2, 2)


@pytest.mark.parametrize(
    "where, match",
    [
        (lambda m: m.conv3, "could not select"),
        (lambda m: m.conv1[9], "could not select"),
        (lambda m: m.fc.weight, "array of shape"),
        (lambda m: (m.conv1, m.conv2), "ONE sub-module"),
    ],
)
def test_where_that_names_no_module(where, match):
    m, x = small_cnn(), digit_like()
    with pytest.raises(ValueError, match=match):
        xa.layer_activation_and_gradient(m, where, x, 0)
    with pytest.raises(ValueError, match="`layer`"):
        xa.GradCAM(m, where)(x, 0)


@pytest.mark.filterwarnings("ignore:A JAX array is being set as static")
def test_where_names_a_non_callable():
    with pytest.raises(ValueError, match="not callable"):
        xa.layer_activation(_Twice(jax.random.key(0)), lambda m: m.name, _x4())
    # A common slip: passing the sub-module itself instead of a `where` function.
    m = small_cnn()
    with pytest.raises(TypeError, match="where"):
        xa.GradCAM(m, m.conv2)
    with pytest.raises(TypeError, match="where"):
        xa.layer_activation(m, m.conv2, digit_like())


def test_layer_never_called():
    m = _Twice(jax.random.key(0))
    with pytest.raises(ValueError, match="never calls"):
        xa.layer_activation_and_gradient(m, lambda m: m.unused, _x4(), 0)


def test_layer_called_twice_and_call_index():
    m, x = _Twice(jax.random.key(0)), _x4()
    with pytest.raises(ValueError, match=r"called 2 times.*call_index=k"):
        xa.layer_activation_and_gradient(m, lambda m: m.block, x, 1)
    with pytest.raises(ValueError, match="out of range"):
        xa.layer_activation_and_gradient(m, lambda m: m.block, x, 1, call_index=2)
    z1 = m.block(x.reshape(-1))
    z2 = m.block(jnp.tanh(z1))
    a0, g0 = xa.layer_activation_and_gradient(m, lambda m: m.block, x, 1, call_index=0)
    a1, g1 = xa.layer_activation_and_gradient(m, lambda m: m.block, x, 1, call_index=1)
    tail = lambda z: m.head(jnp.tanh(z))[1]
    assert_close((a0, a1), (z1, z2))
    assert_close(g1, jax.grad(tail)(z2))
    assert_close(g0, jax.grad(lambda z: tail(m.block(jnp.tanh(z))))(z1))


def test_activation_field_called_twice_inside_a_vmap():
    # eqx.nn.MLP applies its `activation` field after every hidden layer, and each
    # time inside a vmap over neurons: both are reported.
    m = xa.models.MLP((2, 2), n_classes=3, width=4, depth=2, key=jax.random.key(0))
    where = lambda m: m.mlp.activation
    with pytest.raises(ValueError, match="called 2 times"):
        xa.layer_activation(m, where, _x4())
    with pytest.raises(ValueError, match="inside a transformation"):
        xa.layer_activation(m, where, _x4(), call_index=1)


class _Tokens(eqx.Module):
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(jax.vmap(self.norm)(x).reshape(-1))


def test_layer_called_inside_vmap_within_the_model():
    m = _Tokens(eqx.nn.LayerNorm(2), eqx.nn.Linear(4, 3, key=jax.random.key(0)))
    with pytest.raises(ValueError, match=r"inside a transformation.*blocks\[-2\]"):
        xa.layer_activation_and_gradient(m, lambda m: m.norm, _x4(), 0)


class _Scanned(eqx.Module):
    cell: eqx.nn.Linear
    head: eqx.nn.Linear

    def __call__(self, x):
        def step(h, _):
            return jnp.tanh(self.cell(h)), None

        h, _ = jax.lax.scan(step, x.reshape(-1), None, length=3)
        return self.head(h)


class _Detached(eqx.Module):
    lin: eqx.nn.Linear

    def __call__(self, x):
        return jax.lax.stop_gradient(self.lin(x.reshape(-1)))


def test_runtime_check_layer_reached_once():
    k1, k2 = jax.random.split(jax.random.key(0))
    scanned = _Scanned(eqx.nn.Linear(4, 4, key=k1), eqx.nn.Linear(4, 2, key=k2))
    # Traced once inside the scan body, executed three times: caught at run time.
    with pytest.raises(Exception, match="exactly once"):
        jax.block_until_ready(
            xa.layer_activation_and_gradient(scanned, lambda m: m.cell, _x4(), 0)
        )
    detached = _Detached(eqx.nn.Linear(4, 2, key=k1))
    with pytest.raises(Exception, match="exactly once"):
        jax.block_until_ready(
            xa.layer_activation_and_gradient(detached, lambda m: m.lin, _x4(), 0)
        )


class _Pair(eqx.Module):
    lin: eqx.nn.Linear

    def __call__(self, x):
        return self.lin(x.reshape(-1))


class _TupleOut(eqx.Module):
    pair: _Pair
    head: eqx.nn.Linear

    def __call__(self, x):
        return self.head(self.pair.lin(x.reshape(-1)))


def test_layer_must_return_one_float_array():
    class Split(eqx.Module):
        def __call__(self, h):
            return h[:2], h[2:]

    class M(eqx.Module):
        split: Split
        head: eqx.nn.Linear

        def __call__(self, x):
            a, b = self.split(x.reshape(-1))
            return self.head(a * b)

    m = M(Split(), eqx.nn.Linear(2, 3, key=jax.random.key(0)))
    with pytest.raises(ValueError, match="single array"):
        xa.layer_activation(m, lambda m: m.split, _x4())


def test_bad_input_and_target():
    m = small_cnn()
    with pytest.raises(ValueError, match="rejected input"):
        xa.layer_activation(m, lambda m: m.conv2, jnp.zeros((28, 28)))
    with pytest.raises(ValueError, match="out of range"):
        xa.layer_activation_and_gradient(m, lambda m: m.conv2, digit_like(), 10)


# ---------------------------------------------------------------------------------
# Replacing a layer's output


def test_replace_layer_output():
    m, x = small_cnn(), digit_like()
    value = jax.random.normal(jax.random.key(5), (32, 7, 7))
    m2 = xa.replace_layer_output(m, lambda m: m.conv2, value)
    assert_close(m2(x), m.fc(jnp.mean(value, axis=(1, 2))))
    # vmap over values: one forward of the rest of the network per value
    values = jnp.stack([value, 2 * value])
    outs = jax.vmap(lambda v: xa.replace_layer_output(m, lambda m: m.conv2, v)(x))(
        values
    )
    assert_close(outs[1], m.fc(jnp.mean(2 * value, axis=(1, 2))))
    with pytest.raises(ValueError, match="shape"):
        xa.replace_layer_output(m, lambda m: m.conv2, value[:3])(x)
    t = _Twice(jax.random.key(0))
    with pytest.raises(ValueError, match="called 2 times"):
        xa.replace_layer_output(t, lambda m: m.block, jnp.zeros(4))(_x4())
    with pytest.raises(ValueError, match="never calls"):
        xa.replace_layer_output(t, lambda m: m.unused, jnp.zeros(4))(_x4())
    second = xa.replace_layer_output(t, lambda m: m.block, jnp.ones(4), call_index=1)
    assert_close(second(_x4()), t.head(jnp.tanh(jnp.ones(4))))
