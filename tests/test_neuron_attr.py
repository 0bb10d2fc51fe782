"""Neuron attributions (Captum's `Neuron*`): hand values, completeness, equality
with Captum on identical weights, many neurons in one vmap with one forward pass,
jit and vmap, and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._gradient._gradient_shap import gradient_shap_draws

from .helpers import assert_close

# ---------------------------------------------------------------------------------
# A tiny conv net, written in Equinox here and in torch for Captum


class Tiny(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __call__(self, x):
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        h = h.reshape(4, 4, 2, 4, 2).mean(axis=(2, 4))  # 2x2 average pool
        h = jax.nn.relu(self.fc1(h.reshape(-1)))
        return self.fc2(h)


def _tiny() -> Tiny:
    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    return Tiny(
        eqx.nn.Conv2d(1, 3, 3, padding=1, key=k1),
        eqx.nn.Conv2d(3, 4, 3, padding=1, key=k2),
        eqx.nn.Linear(64, 6, key=k3),
        eqx.nn.Linear(6, 5, key=k4),
    )


MODEL = _tiny()
X = jax.random.normal(jax.random.key(1), (1, 8, 8))
CONV2 = lambda m: m.conv2  # noqa: E731
FC1 = lambda m: m.fc1  # noqa: E731


def _t(a):
    import torch

    return torch.tensor(np.asarray(a))


def _twin():
    import torch

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 3, 3, padding=1)
            self.relu1 = torch.nn.ReLU()
            self.conv2 = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.relu2 = torch.nn.ReLU()
            self.pool = torch.nn.AvgPool2d(2)
            self.fc1 = torch.nn.Linear(64, 6)
            self.relu3 = torch.nn.ReLU()
            self.fc2 = torch.nn.Linear(6, 5)
            for name in ("conv1", "conv2", "fc1", "fc2"):
                ours, theirs = getattr(MODEL, name), getattr(self, name)
                theirs.weight.data = _t(ours.weight)
                theirs.bias.data = _t(ours.bias).reshape(-1)

        def forward(self, x):
            h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
            h = self.pool(h).reshape(x.shape[0], -1)
            return self.fc2(self.relu3(self.fc1(h)))

    return Twin()


# (our layer, our neuron, Captum's layer name, Captum's selector)
SELECTORS = {
    "int": (FC1, 4, "fc1", 4),
    "tuple": (CONV2, (2, 3, 5), "conv2", (2, 3, 5)),
    "callable": (CONV2, lambda a: a[1, 6, 2], "conv2", lambda a: a[:, 1, 6, 2]),
}


def _captum(name, kind, **kwargs):
    captum_attr = pytest.importorskip("captum.attr")
    twin = _twin()
    _, _, layer_name, selector = SELECTORS[kind]
    method = getattr(captum_attr, name)(twin, getattr(twin, layer_name))
    out = method.attribute(_t(X)[None], neuron_selector=selector, **kwargs)
    return out.detach().numpy()[0]


def _ours(cls, kind, **kwargs):
    where, neuron, _, _ = SELECTORS[kind]
    return cls(MODEL, where, neuron, **kwargs)


KINDS = ("int", "tuple", "callable")


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_guided_deconv_equal_captum(kind):
    for ours, theirs in (
        (xa.NeuronGradient, "NeuronGradient"),
        (xa.NeuronGuidedBackprop, "NeuronGuidedBackprop"),
        (xa.NeuronDeconvolution, "NeuronDeconvolution"),
    ):
        got = _ours(ours, kind)(X)
        assert_close(got, _captum(theirs, kind), err_msg=theirs)


@pytest.mark.parametrize("kind", KINDS)
def test_integrated_gradients_and_deeplift_equal_captum(kind):
    b = 0.2 * jax.random.normal(jax.random.key(2), X.shape)
    got = _ours(xa.NeuronIntegratedGradients, kind, n_steps=8, baseline=b)(X)
    want = _captum("NeuronIntegratedGradients", kind, baselines=_t(b)[None], n_steps=8)
    assert_close(got, want)
    got = _ours(xa.NeuronDeepLift, kind, baseline=b)(X)
    assert_close(got, _captum("NeuronDeepLift", kind, baselines=_t(b)[None]))


@pytest.mark.parametrize("kind", KINDS)
def test_conductance_equals_captum(kind):
    gl = {"n_steps": 6, "method": "gausslegendre"}
    got = _ours(xa.NeuronConductance, kind, **gl)(X, 2)
    assert_close(got, _captum("NeuronConductance", kind, target=2, **gl))
    if kind != "tuple":
        return
    # Captum's trapezoid weighs its n nodes 1/n (ends halved), which sum to
    # (n - 1)/n; ours 1/(n - 1), which sum to 1: the same nodes, scaled.
    got = _ours(xa.NeuronConductance, kind, n_steps=5)(X, 2)
    want = _captum("NeuronConductance", kind, target=2, n_steps=5)
    assert_close(got * 4 / 5, want)


@pytest.mark.parametrize("kind", KINDS)
def test_feature_ablation_equals_captum(kind):
    mask = xa.masks.grid((8, 8), 2)
    got = _ours(xa.NeuronFeatureAblation, kind, feature_mask=mask, baseline=0.5)(X)
    want = _captum(
        "NeuronFeatureAblation",
        kind,
        feature_mask=_t(np.asarray(mask))[None, None],
        baselines=0.5,
    )
    assert_close(got, want)
    if kind == "tuple":  # the default: every element its own feature
        got = _ours(xa.NeuronFeatureAblation, kind)(X)
        assert_close(got, _captum("NeuronFeatureAblation", kind))


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_shap_equals_captum_on_identical_draws(kind, monkeypatch):
    captum_nt = pytest.importorskip("captum.attr._core.noise_tunnel")
    bs = jax.random.normal(jax.random.key(3), (3, 1, 8, 8))
    n, stdev, key = 4, 0.1, jax.random.key(4)
    got = _ours(
        xa.NeuronGradientShap,
        kind,
        baseline=xa.baselines.Custom(bs, draws=True),
        n_samples=n,
        stdev=stdev,
    )(X, key=key)
    # The same draws GradientShap makes, handed to Captum in place of its own.
    _, k_draw = jax.random.split(key)
    idx, alpha, noise = gradient_shap_draws(k_draw, 3, n, X, stdev)
    monkeypatch.setattr(np.random, "choice", lambda k, size: np.asarray(idx))
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: np.asarray(alpha))
    monkeypatch.setattr(
        captum_nt.NoiseTunnel,
        "_add_noise_to_input",
        staticmethod(lambda inp, sd, k: inp.repeat_interleave(k, 0) + _t(noise)),
    )
    want = _captum(
        "NeuronGradientShap", kind, baselines=_t(bs), n_samples=n, stdevs=stdev
    )
    assert_close(got, want)


# ---------------------------------------------------------------------------------
# Hand values and completeness


class Mlp(eqx.Module):
    lin1: eqx.nn.Linear
    act: eqx.nn.Lambda
    lin2: eqx.nn.Linear

    def __call__(self, x):
        return jax.nn.relu(self.lin2(self.act(self.lin1(x))))


def _mlp() -> Mlp:
    # lin1: z = A x + c with A = [[1, -1], [2, 1]], c = [0, -0.5].
    lin1 = eqx.nn.Linear(2, 2, key=jax.random.key(0))
    lin1 = eqx.tree_at(
        lambda m: (m.weight, m.bias),
        lin1,
        (jnp.array([[1.0, -1.0], [2.0, 1.0]]), jnp.array([0.0, -0.5])),
    )
    lin2 = eqx.nn.Linear(2, 3, key=jax.random.key(1))
    return Mlp(lin1, eqx.nn.Lambda(jax.nn.relu), lin2)


def test_hand_values():
    # Neuron 1 of `act` at x = (1, 2): z = 2 + 2 - 0.5 = 3.5 > 0, n(x) = 3.5;
    # at the zero baseline z0 = -0.5, n(0) = 0.
    m, x, act = _mlp(), jnp.array([1.0, 2.0]), lambda m: m.act
    assert_close(xa.NeuronGradient(m, act, 1)(x), jnp.array([2.0, 1.0]))
    # Guided / deconvnet: the signal 1 is positive and the ReLU's input too;
    # the ReLU after the layer (relu(lin2)) plays no part.
    assert_close(xa.NeuronGuidedBackprop(m, act, 1)(x), jnp.array([2.0, 1.0]))
    assert_close(xa.NeuronDeconvolution(m, act, 1)(x), jnp.array([2.0, 1.0]))
    # DeepLIFT's Rescale: (3.5 - 0) / (3.5 - (-0.5)) = 7/8, times A[1] * x.
    assert_close(xa.NeuronDeepLift(m, act, 1)(x), 0.875 * jnp.array([2.0, 2.0]))
    # IG: the ReLU is open for alpha > 1/8, so (7/8) A[1] * x; the midpoint rule
    # on 8 nodes (2k + 1)/16 has one node below the kink and seven above: exact.
    ig = xa.NeuronIntegratedGradients(m, act, (1,), n_steps=8, method="riemann_middle")
    assert_close(ig(x), 0.875 * jnp.array([2.0, 2.0]))
    # Ablating x0 (baseline 0): z = 1.5, drop 2; ablating x1: z = 1.5, drop 2.
    assert_close(xa.NeuronFeatureAblation(m, act, 1)(x), jnp.array([2.0, 2.0]))


def test_completeness_of_ig_and_deeplift():
    b = 0.3 * jax.random.normal(jax.random.key(5), X.shape)
    layer = xa.layer_activation
    n = lambda z: layer(MODEL, CONV2, z)[2, 3, 5]  # noqa: E731
    diff = n(X) - n(b)
    dl = xa.NeuronDeepLift(MODEL, CONV2, (2, 3, 5), baseline=b)(X)
    assert_close(jnp.sum(dl), diff, scale=float(jnp.abs(dl).sum()))
    ig = xa.NeuronIntegratedGradients(MODEL, CONV2, (2, 3, 5), baseline=b)(X)
    # 50 Gauss-Legendre nodes on a piecewise-linear path: a quadrature error
    # of a few 1e-3 of |n(x) - n(b)| at the ReLUs' kinks.
    assert_close(jnp.sum(ig), diff, atol=1e-2 * float(jnp.abs(diff)))


# ---------------------------------------------------------------------------------
# Many neurons, jit and vmap


def _sub_jaxprs(params):
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(v, "eqns"):
                yield v
            elif hasattr(getattr(v, "jaxpr", None), "eqns"):  # a ClosedJaxpr
                yield v.jaxpr


def _count_convs(jaxpr, batch: int) -> tuple[int, int]:
    """(convolutions whose input has batch 1, those whose input has `batch`)."""
    one = many = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            lead = eqn.invars[0].aval.shape[0]
            one += lead == 1
            many += lead == batch
        for sub in _sub_jaxprs(eqn.params):
            a, b = _count_convs(sub, batch)
            one, many = one + a, many + b
    return one, many


def test_vmap_over_neurons_is_one_forward_pass():
    k = 5
    neurons = jnp.asarray(np.stack(np.unravel_index([7, 40, 99, 130, 255], (4, 8, 8))))
    neurons = neurons.T  # (k, 3): index tuples

    # Model and input are arguments (not constants that XLA would fold).
    def many(m, z, ns):
        return eqx.filter_vmap(lambda n: xa.NeuronGradient(m, CONV2, n)(z))(ns)

    def loop(m, z, ns):
        return jnp.stack([xa.NeuronGradient(m, CONV2, n)(z) for n in ns])

    assert_close(eqx.filter_jit(many)(MODEL, X, neurons), loop(MODEL, X, neurons))
    # The loop has k forward and k backward passes, all on batch 1.
    assert _count_convs(jax.make_jaxpr(many)(MODEL, X, neurons).jaxpr, k) == (2, 2)
    assert _count_convs(jax.make_jaxpr(loop)(MODEL, X, neurons).jaxpr, k) == (
        4 * k,
        0,
    )

    flat = jnp.arange(0, 256, 51)  # flat indices, and the path methods too
    ig = lambda n: xa.NeuronIntegratedGradients(MODEL, CONV2, n, n_steps=4)(X)  # noqa: E731
    got = eqx.filter_vmap(ig)(flat)
    assert_close(got, jnp.stack([ig(int(n)) for n in flat]))


def test_vmap_over_inputs_equals_loop():
    xs = jax.random.normal(jax.random.key(6), (3, 1, 8, 8))
    for method in (
        xa.NeuronGradient(MODEL, CONV2, (1, 2, 3)),
        xa.NeuronDeepLift(MODEL, FC1, 2),
        xa.NeuronConductance(MODEL, CONV2, (1, 2, 3), n_steps=4),
    ):
        target = 1 if isinstance(method, xa.NeuronConductance) else None
        got = eqx.filter_vmap(lambda x: method(x, target))(xs)  # noqa: B023
        assert_close(got, jnp.stack([method(x, target) for x in xs]))


def test_jit_does_not_retrace_for_a_new_neuron():
    traces = []

    @eqx.filter_jit
    def run(method, x):
        traces.append(None)
        return method(x)

    a = run(xa.NeuronGradient(MODEL, CONV2, (1, 2, 3)), X)
    b = run(xa.NeuronGradient(MODEL, CONV2, (3, 0, 7)), X)
    assert len(traces) == 1
    assert_close(a, xa.NeuronGradient(MODEL, CONV2, (1, 2, 3))(X))
    assert_close(b, xa.NeuronGradient(MODEL, CONV2, (3, 0, 7))(X))
    # A traced index out of range is a run-time error, not a clamped index.
    with pytest.raises(Exception, match="out of range"):
        jax.block_until_ready(run(xa.NeuronGradient(MODEL, CONV2, (4, 0, 0)), X))


# ---------------------------------------------------------------------------------
# Errors


def test_errors():
    g = xa.NeuronGradient
    with pytest.raises(ValueError, match="`target` must be None.*neuron"):
        g(MODEL, CONV2, 0)(X, 3)
    with pytest.raises(ValueError, match=r"`neuron`.*out of range.*\(4, 8, 8\)"):
        g(MODEL, CONV2, 256)(X)
    with pytest.raises(ValueError, match=r"`neuron`.*out of range.*\(4, 8, 8\)"):
        g(MODEL, CONV2, (0, 8, 0))(X)
    with pytest.raises(ValueError, match="`neuron` has 2 indices"):
        g(MODEL, CONV2, (0, 1))(X)
    with pytest.raises(ValueError, match="to a scalar"):
        g(MODEL, CONV2, lambda a: a[0])(X)
    for bad in (1.5, "3", True, jnp.zeros((2, 2), jnp.int32), jnp.zeros(3)):
        with pytest.raises(TypeError, match="`neuron`"):
            g(MODEL, CONV2, bad)
    with pytest.raises(ValueError, match="`where`"):
        g(MODEL, lambda m: m.conv9, 0)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        xa.NeuronGradientShap(MODEL, CONV2, 0, baseline=0.0)(X)
    with pytest.raises(ValueError, match="`target=None`"):
        xa.NeuronConductance(MODEL, CONV2, 0, n_steps=2)(X)


def test_guided_refuses_gelu_before_the_layer():
    class Gelu(eqx.Module):
        lin1: eqx.nn.Linear
        lin2: eqx.nn.Linear

        def __call__(self, x):
            return self.lin2(jax.nn.gelu(self.lin1(x)))

    m = Gelu(
        eqx.nn.Linear(2, 3, key=jax.random.key(0)),
        eqx.nn.Linear(3, 2, key=jax.random.key(1)),
    )
    with pytest.raises(ValueError, match="(?i)gelu"):
        xa.NeuronGuidedBackprop(m, lambda m: m.lin2, 0)(jnp.ones(2))


def test_registry_rows_build_and_run():
    from eqx_attr import _neuron
    from eqx_attr._method_entry import BuildContext
    from eqx_attr._neuron import _neuron_grad, _neuron_path

    rows = _neuron_grad.ROWS + _neuron_path.ROWS
    assert {r.cls for r in rows} == {getattr(xa, n) for n in _neuron_grad.__all__} | {
        getattr(xa, n) for n in _neuron_path.__all__
    }
    assert all(getattr(_neuron, r.cls.__name__) is r.cls for r in rows)
    ctx = BuildContext(MODEL, layer=CONV2, options={"neuron": (1, 2, 3), "n_steps": 2})
    for row in rows:
        method = row.build(ctx)
        assert row.family == "neuron" and row.output == "input"
        assert row.takes_target == (row.cls is xa.NeuronConductance)
        target = 1 if row.takes_target else None
        key = jax.random.key(0) if row.random else None
        assert method(X, target, key=key).shape == X.shape
