"""Layer attributions equal Captum's classes of the same names on identical weights.

A tiny conv net written twice (Equinox and `torch.nn`, the weights copied), one
1x8x8 input, the layer `conv2`: its output, and its input (Captum's
`attribute_to_layer_input=True`).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._gradient._gradient_shap import gradient_shap_draws

from .helpers import assert_close

captum_attr = pytest.importorskip("captum.attr")
torch = pytest.importorskip("torch")


class Net(eqx.Module):
    conv1: eqx.nn.Conv2d
    relu1: eqx.nn.Lambda
    conv2: eqx.nn.Conv2d
    relu2: eqx.nn.Lambda
    fc: eqx.nn.Linear

    def __call__(self, x):
        h = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        # 2x2 average pooling, then the classifier on the flattened (4, 4, 4).
        h = h.reshape(4, 4, 2, 4, 2).mean(axis=(2, 4))
        return self.fc(h.ravel())


def _t(a):
    return torch.tensor(np.asarray(a))


def _nets():
    k = jax.random.split(jax.random.key(0), 3)
    relu = eqx.nn.Lambda(jax.nn.relu)
    net = Net(
        eqx.nn.Conv2d(1, 3, 3, padding=1, key=k[0]),
        relu,
        eqx.nn.Conv2d(3, 4, 3, padding=1, key=k[1]),
        relu,
        eqx.nn.Linear(64, 3, key=k[2]),
    )
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
    )
    pairs = [(twin[0], net.conv1), (twin[2], net.conv2), (twin[6], net.fc)]
    with torch.no_grad():
        for t, m in pairs:
            t.weight.copy_(_t(m.weight))
            t.bias.copy_(_t(m.bias).reshape(-1))
    return net, twin.eval()


@pytest.fixture(scope="module")
def setup():
    net, twin = _nets()
    x = jax.random.normal(jax.random.key(1), (1, 8, 8))
    b = 0.3 * jax.random.normal(jax.random.key(2), (1, 8, 8))
    return net, twin, x, b


def _want(out):
    return np.asarray(out.detach().numpy()[0])


CONV2 = lambda m: m.conv2  # noqa: E731
FORMS = [False, True]


@pytest.mark.parametrize("to_input", FORMS)
def test_activation_gradient_and_ablation_equal_captum(setup, to_input):
    net, twin, x, _ = setup
    assert_close(net(x), _want(twin(_t(x)[None])))
    tx, kw = _t(x)[None], {"attribute_to_layer_input": to_input}
    got = xa.LayerActivation(net, CONV2, to_layer_input=to_input)(x)
    want = captum_attr.LayerActivation(twin, twin[2]).attribute(tx, **kw)
    assert_close(got, _want(want))
    for mul in (True, False):
        got = xa.LayerGradientXActivation(
            net, CONV2, multiply_by_inputs=mul, to_layer_input=to_input
        )(x, 1)
        cap = captum_attr.LayerGradientXActivation(
            twin, twin[2], multiply_by_inputs=mul
        )
        assert_close(got, _want(cap.attribute(tx, target=1, **kw)))
    # Groups: one per channel (broadcast over the spatial axes), baseline 0.5.
    n_ch = 3 if to_input else 4
    mask = jnp.arange(n_ch).reshape(n_ch, 1, 1)
    got = xa.LayerFeatureAblation(
        net, CONV2, layer_mask=mask, layer_baseline=0.5, to_layer_input=to_input
    )(x, 2)
    want = captum_attr.LayerFeatureAblation(twin, twin[2]).attribute(
        tx, layer_baselines=0.5, target=2, layer_mask=_t(mask)[None], **kw
    )
    assert_close(got, _want(want))


@pytest.mark.parametrize("to_input", FORMS)
def test_path_methods_equal_captum(setup, to_input):
    net, twin, x, b = setup
    tx, tb = _t(x)[None], _t(b)[None]
    kw = {"attribute_to_layer_input": to_input}
    # Not "riemann_trapezoid": Captum weighs its n nodes 1/n (halved at the
    # ends, summing to 1 - 1/n); ours, as `xa.IntegratedGradients`, 1/(n-1).
    for method, n in (("gausslegendre", 6), ("riemann_middle", 5)):
        opts = {"n_steps": n, "method": method}
        got = xa.LayerIntegratedGradients(
            net, CONV2, baseline=b, to_layer_input=to_input, **opts
        )(x, 0)
        want = captum_attr.LayerIntegratedGradients(twin, twin[2]).attribute(
            tx, baselines=tb, target=0, **opts, **kw
        )
        assert_close(got, _want(want))
    opts = {"n_steps": 5, "method": "gausslegendre"}
    for ours, theirs in (
        (xa.LayerConductance, captum_attr.LayerConductance),
        (xa.InternalInfluence, captum_attr.InternalInfluence),
    ):
        got = ours(net, CONV2, baseline=b, to_layer_input=to_input, **opts)(x, 0)
        want = theirs(twin, twin[2]).attribute(tx, baselines=tb, target=0, **opts, **kw)
        assert_close(got, _want(want))


@pytest.mark.parametrize("to_input", FORMS)
def test_deeplift_equals_captum(setup, to_input):
    net, twin, x, b = setup
    tx, tb = _t(x)[None], _t(b)[None]
    for mul in (True, False):
        got = xa.LayerDeepLift(
            net, CONV2, baseline=b, multiply_by_inputs=mul, to_layer_input=to_input
        )(x, 2)
        cap = captum_attr.LayerDeepLift(twin, twin[2], multiply_by_inputs=mul)
        want = cap.attribute(tx, tb, target=2, attribute_to_layer_input=to_input)
        assert_close(got, _want(want))
    # At the input of a ReLU layer, ours applies that ReLU's Rescale rule too and
    # stays complete; Captum passes the plain gradient there (its multipliers at
    # a ReLU's input are the gradient), so it is not complete: a known difference.
    relu2 = lambda m: m.relu2  # noqa: E731
    got = xa.LayerDeepLift(net, relu2, baseline=b, to_layer_input=True)(x, 2)
    gap = net(x)[2] - net(b)[2]
    assert_close(jnp.sum(got), gap, scale=float(jnp.abs(got).sum()))
    cap = captum_attr.LayerDeepLift(twin, twin[3], multiply_by_inputs=False)
    want = cap.attribute(tx, tb, target=2, attribute_to_layer_input=True)
    plain = xa.LayerGradientXActivation(
        net, relu2, multiply_by_inputs=False, to_layer_input=True
    )
    assert_close(plain(x, 2), _want(want))


@pytest.mark.parametrize("to_input", FORMS)
def test_gradient_shap_equals_captum_on_identical_draws(setup, to_input, monkeypatch):
    net, twin, x, _ = setup
    bs = jax.random.normal(jax.random.key(3), (3, 1, 8, 8))
    n, key = 4, jax.random.key(4)
    gs = xa.LayerGradientShap(
        net,
        CONV2,
        baseline=xa.baselines.Custom(bs, draws=True),
        n_samples=n,
        to_layer_input=to_input,
    )
    got = gs(x, 1, key=key)
    # The draws ours makes, handed to Captum in place of its own (no noise:
    # Captum adds its noise to the input it also uses for the layer difference).
    _, k_draw = jax.random.split(key)
    idx, alpha, _ = gradient_shap_draws(k_draw, 3, n, x, 0.0)
    monkeypatch.setattr(np.random, "choice", lambda k, size: np.asarray(idx))
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, size: np.asarray(alpha))
    want = captum_attr.LayerGradientShap(twin, twin[2]).attribute(
        _t(x)[None],
        baselines=_t(bs),
        n_samples=n,
        stdevs=0.0,
        target=1,
        attribute_to_layer_input=to_input,
    )
    assert_close(got, _want(want))
