"""Layer attributions: hand-derived values, axioms, transformations and errors.

Equality with Captum's classes of the same names: `test_layer_attr_captum.py`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close

# ---------------------------------------------------------------------------------
# A two-layer net derived by hand: h = W1 x + b1, out = W2 relu(h) + b2.
#   W1 = [[1, -1], [2, 1]], b1 = [0.5, -1], x = [1, 2]  ->  h = [-0.5, 3]
#   W2 = [[1, 2], [-1, 1]], b2 = [0, 1]                  ->  out = [6, 4]
# Target 0: d out0 / d h = W2[0] * relu'(h) = [0, 2].
# Baseline 0: h(0) = b1 = [0.5, -1], out0(0) = 0.5, so f(x) - f(b) = 5.5.
# Both the layer path (LayerIG) and the input path (conductance, influence) give
# h(a) = [0.5 - a, -1 + 4 a]: relu'(h0) = 1 for a < 1/2, relu'(h1) = 1 for a > 1/4.

W1, B1 = [[1.0, -1.0], [2.0, 1.0]], [0.5, -1.0]
W2, B2 = [[1.0, 2.0], [-1.0, 1.0]], [0.0, 1.0]
X = jnp.array([1.0, 2.0])
FIRST = lambda m: m.layers[0]  # noqa: E731


def _linear(w, b, key):
    lin = eqx.nn.Linear(2, 2, key=jax.random.key(key))
    return eqx.tree_at(lambda m: (m.weight, m.bias), lin, (jnp.array(w), jnp.array(b)))


def _mlp():
    relu = eqx.nn.Lambda(jax.nn.relu)
    return eqx.nn.Sequential([_linear(W1, B1, 0), relu, _linear(W2, B2, 1)])


def test_activation_and_gradient_x_activation_by_hand():
    net = _mlp()
    assert_close(net(X), jnp.array([6.0, 4.0]))
    assert_close(xa.LayerActivation(net, FIRST)(X), jnp.array([-0.5, 3.0]))
    # The target is checked and ignored.
    assert_close(xa.LayerActivation(net, FIRST)(X, 1), jnp.array([-0.5, 3.0]))
    assert_close(xa.LayerGradientXActivation(net, FIRST)(X, 0), jnp.array([0.0, 6.0]))
    grad = xa.LayerGradientXActivation(net, FIRST, multiply_by_inputs=False)
    assert_close(grad(X, 0), jnp.array([0.0, 2.0]))
    # At the layer's input (x itself): grad = W1^T [0, 2] = [4, 2].
    inp = xa.LayerGradientXActivation(net, FIRST, to_layer_input=True)
    assert_close(inp(X, 0), jnp.array([4.0, 4.0]))
    assert_close(xa.LayerActivation(net, FIRST, to_layer_input=True)(X), X)


def test_feature_ablation_by_hand():
    net = _mlp()
    # h0 -> 0 leaves relu(h0) = 0: no drop; h1 -> 0 drops the score from 6 to 0.
    assert_close(xa.LayerFeatureAblation(net, FIRST)(X, 0), jnp.array([0.0, 6.0]))
    # One group of both neurons: every element carries the group's drop.
    both = xa.LayerFeatureAblation(net, FIRST, layer_mask=jnp.array([3, 3]))
    assert_close(both(X, 0), jnp.array([6.0, 6.0]))
    # Baseline 3: h0 -> 3 raises the score to 9 (a drop of -3); h1 is already 3.
    three = xa.LayerFeatureAblation(net, FIRST, layer_baseline=3.0, chunk_size=1)
    assert_close(three(X, 0), jnp.array([-3.0, 0.0]))


def test_path_methods_by_hand():
    net = _mlp()
    # riemann_middle with 4 nodes (1/8, 3/8, 5/8, 7/8) integrates both indicator
    # functions exactly: mean gradients [1/2, 2 * 3/4]; times h - h(b) = [-1, 4].
    ig = xa.LayerIntegratedGradients(net, FIRST, n_steps=4, method="riemann_middle")
    a = ig(X, 0)
    assert_close(a, jnp.array([-0.5, 6.0]))
    assert_close(jnp.sum(a), jnp.array(5.5))  # completeness
    plain = xa.LayerIntegratedGradients(
        net, FIRST, n_steps=4, method="riemann_middle", multiply_by_inputs=False
    )
    assert_close(plain(X, 0), jnp.array([0.5, 1.5]))
    inf = xa.InternalInfluence(net, FIRST, n_steps=4, method="riemann_middle")
    assert_close(inf(X, 0), jnp.array([0.5, 1.5]))
    # Conductance on the trapezoid nodes 0, 1/3, 2/3, 1: gradients at the first
    # three, h0 steps by -1/3 (gradient 1, 1, 0), h1 by 4/3 (gradient 0, 2, 2).
    cond = xa.LayerConductance(net, FIRST, n_steps=3, method="riemann_trapezoid")
    assert_close(cond(X, 0), jnp.array([-2.0 / 3.0, 16.0 / 3.0]))


def test_deeplift_by_hand():
    net = _mlp()
    # Rescale on the ReLU after the layer: (relu(h) - relu(h0)) / (h - h0)
    # = [-0.5 / -1, 3 / 4]; multipliers [1 * 0.5, 2 * 0.75]; times [-1, 4].
    a = xa.LayerDeepLift(net, FIRST)(X, 0)
    assert_close(a, jnp.array([-0.5, 6.0]))
    m = xa.LayerDeepLift(net, FIRST, multiply_by_inputs=False)(X, 0)
    assert_close(m, jnp.array([0.5, 1.5]))
    # At the input: W1^T [0.5, 1.5] = [3.5, 1], times x - 0.
    a_in = xa.LayerDeepLift(net, FIRST, to_layer_input=True)(X, 0)
    assert_close(a_in, jnp.array([3.5, 2.0]))


class Deep(eqx.Module):
    lin1: eqx.nn.Linear
    lin2: eqx.nn.Linear
    lin3: eqx.nn.Linear

    def __call__(self, x):
        h = jax.nn.relu(self.lin1(x))
        return self.lin3(jax.nn.relu(self.lin2(h)))


def _deep(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    return Deep(
        eqx.nn.Linear(5, 6, key=k[0]),
        eqx.nn.Linear(6, 4, key=k[1]),
        eqx.nn.Linear(4, 3, key=k[2]),
    )


MID = lambda m: m.lin2  # noqa: E731
XD = jnp.array([0.9, -0.4, 1.3, 0.2, -1.1])
BD = jnp.array([0.1, 0.2, -0.1, 0.0, 0.3])


def test_completeness():
    net = _deep()
    gap = net(XD)[2] - net(BD)[2]
    # Everything passes through lin2 (and its input), so the layer methods that
    # claim completeness sum to f(x) - f(b).
    for to_input in (False, True):
        dl = xa.LayerDeepLift(net, MID, baseline=BD, to_layer_input=to_input)(XD, 2)
        assert_close(jnp.sum(dl), gap, scale=float(jnp.abs(dl).sum()))
        ig = xa.LayerIntegratedGradients(
            net, MID, n_steps=64, baseline=BD, to_layer_input=to_input
        )
        # Gauss-Legendre on a piecewise-constant gradient: a quadrature error
        # of a few percent of the gap at 64 nodes.
        assert_close(jnp.sum(ig(XD, 2)), gap, atol=0.03 * abs(float(gap)))
    cond = xa.LayerConductance(
        net, MID, n_steps=64, method="riemann_trapezoid", baseline=BD
    )
    # Trapezoid nodes include both ends: a Riemann sum of a piecewise-linear
    # path, its error bounded likewise.
    assert_close(jnp.sum(cond(XD, 2)), gap, atol=0.03 * abs(float(gap)))


def test_first_layer_input_forms_equal_the_input_methods():
    # The first layer's input is x itself: the layer methods at it are the
    # input-space methods (same path nodes, same draws for the same key).
    net = _deep()
    first = lambda m: m.lin1  # noqa: E731
    ig = xa.LayerIntegratedGradients(net, first, n_steps=8, to_layer_input=True)
    want = xa.IntegratedGradients(net, n_steps=8, chunk_size=None, parts=1)(XD, 1)
    assert_close(ig(XD, 1), want)
    bs = xa.baselines.Custom(jax.random.normal(jax.random.key(3), (3, 5)), True)
    key = jax.random.key(4)
    gs = xa.LayerGradientShap(
        net, first, baseline=bs, n_samples=4, stdev=0.1, to_layer_input=True
    )
    want = xa.GradientShap(net, baseline=bs, n_samples=4, stdev=0.1)(XD, 1, key=key)
    assert_close(gs(XD, 1, key=key), want)
    dl = xa.LayerDeepLift(net, first, baseline=BD, to_layer_input=True)(XD, 1)
    assert_close(dl, xa.DeepLift(net, baseline=BD)(XD, 1))


def test_jit_and_vmap_equal_the_loop():
    net = _deep()
    xs = jnp.stack([XD, BD])
    ts = jnp.array([0, 2])
    methods = [
        xa.LayerFeatureAblation(
            net, MID, layer_mask=jnp.array([0, 0, 1, 1]), chunk_size=1
        ),
        xa.LayerIntegratedGradients(net, MID, n_steps=4, chunk_size=3),
        xa.LayerDeepLift(net, MID, baseline=0.1, to_layer_input=True),
    ]
    for method in methods:
        batched = eqx.filter_jit(eqx.filter_vmap(method))(xs, ts)
        for i in range(2):
            assert_close(batched[i], method(xs[i], int(ts[i])))
    key = jax.random.key(6)
    gs = xa.LayerGradientShap(net, MID, baseline=0.0, n_samples=3, stdev=0.1)
    batched = eqx.filter_vmap(lambda x, t: gs(x, t, key=key))(xs, ts)
    assert_close(batched[1], gs(xs[1], 2, key=key))
    # A callable target (a softmax probability) works as for every method.
    soft = lambda s: jax.nn.softmax(s)[1]  # noqa: E731
    a = xa.LayerGradientXActivation(net, MID)(XD, soft)
    assert a.shape == (4,)


def test_errors_name_the_argument():
    net = _deep()
    x = XD
    with pytest.raises(ValueError, match="`where`"):
        xa.LayerGradientXActivation(net, lambda m: m.lin9)
    with pytest.raises(ValueError, match="ONE sub-module"):
        xa.LayerActivation(net, lambda m: [m.lin1, m.lin2])
    with pytest.raises(TypeError, match="where"):
        xa.LayerActivation(net, "conv2")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`n_steps`"):
        xa.LayerIntegratedGradients(net, MID, n_steps=0)
    with pytest.raises(ValueError, match="`method="):
        xa.LayerConductance(net, MID, method="simpson")
    with pytest.raises(TypeError, match="to_layer_input"):
        xa.LayerDeepLift(net, MID, to_layer_input=1)  # pyright: ignore
    bad = xa.LayerFeatureAblation(net, MID, layer_mask=jnp.zeros((3,), int))
    with pytest.raises(ValueError, match="`layer_mask` of shape"):
        bad(x, 0)
    with pytest.raises(TypeError, match="`layer_mask`"):
        xa.LayerFeatureAblation(net, MID, layer_mask=jnp.zeros((4,)))
    with pytest.raises(ValueError, match="PRNG key"):
        xa.LayerGradientShap(net, MID, baseline=0.0)(x, 0)
    with pytest.raises(ValueError, match="out of range"):
        xa.LayerIntegratedGradients(net, MID, n_steps=2)(x, 7)
    with pytest.raises(ValueError, match="out of range"):
        xa.LayerActivation(net, MID)(x, 7)
    bs = xa.baselines.Custom(jnp.zeros((2, 5)), draws=True)
    with pytest.raises(ValueError, match="one baseline"):
        xa.LayerDeepLift(net, MID, baseline=bs)(x, 0)


KEY = jax.random.key(9)


def test_registry_rows_build_and_run():
    from eqx_attr import _neuron
    from eqx_attr._method_entry import BuildContext
    from eqx_attr._neuron import _layer_basic, _layer_path
    from eqx_attr._registry import family_rows

    mine = {r.name for r in (*_layer_basic.ROWS, *_layer_path.ROWS)}
    rows = [r for r in family_rows(_neuron) if r.name in mine]
    assert len(rows) == 8
    net = _deep()
    x = XD
    ctx = BuildContext(net, layer=MID, options={"n_steps": 2, "n_samples": 2})
    for row in rows:
        assert row.family == "neuron" and row.output == "layer" and row.takes_target
        assert "layer" in row.needs
        a = row.build(ctx)(x, 1, key=KEY if row.random else None)
        assert a.shape == (4,), row.name
        assert np.isfinite(np.asarray(a)).all(), row.name
