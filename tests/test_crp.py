"""LayerLRP, CRP, channel relevances and relevance maximisation (issue #34).

Against mathematics (conservation, additivity over channels, LRP's map when
conditioning on every channel, brute-force top-k), against Captum's `LayerLRP`
and against zennit-crp's `CondAttribution` / `ChannelConcept` on identical
weights.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
import eqx_attr._neuron
from eqx_attr._method_entry import BuildContext
from eqx_attr._registry import family_rows

from .helpers import assert_close, jcall

CONV2 = lambda m: m.conv2  # noqa: E731
# A traced target: one compiled program per method structure, for every class.
T2 = jnp.asarray(2)


class Net(eqx.Module):
    """Conv, ReLU, conv, ReLU, dense: Captum's LRP has a rule for each."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, key, bias=True):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 3, 3, padding=1, use_bias=bias, key=k1)
        self.conv2 = eqx.nn.Conv2d(3, 4, 3, padding=1, use_bias=bias, key=k2)
        self.fc = eqx.nn.Linear(4 * 6 * 6, 5, use_bias=bias, key=k3)

    def __call__(self, x):
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        return self.fc(h.reshape(-1))


class Proj(eqx.Module):
    weight: jax.Array

    def __call__(self, x):
        return x @ self.weight


class Tokens(eqx.Module):
    """(N, D) tokens: a per-token projection, ReLU, mean over tokens, dense."""

    proj: Proj
    head: jax.Array

    def __call__(self, x):
        h = jax.nn.relu(self.proj(x))
        return jnp.mean(h, axis=0) @ self.head


def _net(bias=True):
    return Net(jax.random.key(0), bias)


def _x(shape=(1, 6, 6), seed=1):
    return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


# ---------------------------------------------------------------------------------
# LayerLRP


def test_layer_lrp_is_conservative_on_a_bias_free_relu_net():
    model, x = _net(bias=False), _x()
    r = jcall(xa.LayerLRP(model, CONV2, rule=xa.lrp.Epsilon(1e-9)), x, T2)
    assert r.shape == (4, 6, 6)
    # Every rule between the output and conv2 conserves relevance up to epsilon.
    assert_close(jnp.sum(r), model(x)[2], scale=jnp.max(jnp.abs(r)) * r.size)


def torch_twin(model):
    """`Net` in torch (float64), with `model`'s weights."""
    import torch

    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
            self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(144, 5)
            self.r1, self.r2 = nn.ReLU(), nn.ReLU()

        def forward(self, z):
            h = self.r2(self.conv2(self.r1(self.conv1(z))))
            return self.fc(h.flatten(1))

    twin = Twin()
    with torch.no_grad():
        pairs = (
            (twin.conv1, model.conv1),
            (twin.conv2, model.conv2),
            (twin.fc, model.fc),
        )
        for t, e in pairs:
            assert t.bias is not None and e.bias is not None
            t.weight.copy_(torch.tensor(np.asarray(e.weight)))
            t.bias.copy_(torch.tensor(np.asarray(e.bias).reshape(-1)))
    return twin.double().eval()


def test_layer_lrp_equals_captum():
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    model, x = _net(), _x()
    twin = torch_twin(model)
    xt = torch.tensor(np.asarray(x, np.float64)[None], requires_grad=True)
    for target in (0, 2):
        expected = captum_attr.LayerLRP(twin, twin.conv2).attribute(xt, target=target)
        # Captum's LRP: the epsilon rule (1e-9) on every convolution and dense layer.
        method = xa.LayerLRP(model, CONV2, rule=xa.lrp.Epsilon(1e-9))
        got = jcall(method, x, jnp.asarray(target))  # one program for both
        assert_close(got, expected[0].detach().numpy(), dtype=np.float32)


def test_layer_lrp_under_vmap_over_inputs_and_targets():
    model = _net()
    xs = jnp.stack([_x(seed=s) for s in range(3)])
    ts = jnp.array([0, 3, 4])
    method = xa.LayerLRP(model, CONV2)
    got = eqx.filter_jit(eqx.filter_vmap(method))(xs, ts)
    for k in range(3):
        assert_close(got[k], jcall(method, xs[k], ts[k]))


# ---------------------------------------------------------------------------------
# CRP


def test_crp_on_every_channel_is_lrp_and_partitions_add_up():
    model, x = _net(), _x()
    lrp = jcall(xa.LRP(model), x, T2)
    assert_close(jcall(xa.CRP(model, CONV2, jnp.arange(4)), x, T2), lrp)
    # Many concepts at once: a vmap over the ids (here the sets of a partition).
    crp_of = lambda c: xa.CRP(model, CONV2, c)(x, 2)  # noqa: E731
    parts = jnp.array([[3, 0], [1, 2]])
    per_part = eqx.filter_jit(eqx.filter_vmap(crp_of))(parts)
    assert per_part.shape == (2, 1, 6, 6)
    assert_close(per_part.sum(0), lrp)
    # One heatmap per channel (each id a set of one), the same partition finer.
    per_channel = eqx.filter_jit(eqx.filter_vmap(crp_of))(jnp.arange(4))
    assert per_channel.shape == (4, 1, 6, 6)
    assert_close(per_channel.sum(0), lrp)
    assert_close(per_channel[parts[0]].sum(0), per_part[0])


def test_crp_concepts_vmap_shares_the_forward_pass():
    model, x = _net(), _x()
    crp_of = lambda c: xa.CRP(model, CONV2, c).attribute(x, 2, None)  # noqa: E731
    text = str(jax.make_jaxpr(jax.vmap(crp_of))(jnp.arange(4)))
    # The forward convolutions (1 -> 3 -> 4 channels) are computed once, not once
    # per concept: only the backward pass is batched.
    assert "f32[1,3,6,6] = conv_general_dilated" in text
    assert "f32[1,4,6,6] = conv_general_dilated" in text
    assert "f32[4,4,6,6] = conv_general_dilated" not in text


def test_crp_token_layer_channel_axis_last():
    k1, k2 = jax.random.split(jax.random.key(2))
    model = Tokens(Proj(jax.random.normal(k1, (3, 6))), jax.random.normal(k2, (6, 4)))
    x = _x((5, 3))
    lrp = jcall(xa.LRP(model), x, 1)
    # The layer's output is (5 tokens, 6 features): the features are the channels.
    crp = lambda c: xa.CRP(model, lambda m: m.proj, c, channel_axis=-1)  # noqa: E731
    a, b = jcall(crp([0, 2, 4]), x, 1), jcall(crp([1, 3, 5]), x, 1)
    assert a.shape == x.shape
    assert_close(a + b, lrp)


def test_crp_and_channel_relevance_equal_zennit_crp():
    torch = pytest.importorskip("torch")
    from ._torchvision_stub import install

    install()
    crp_attribution = pytest.importorskip("crp.attribution")
    crp_concepts = pytest.importorskip("crp.concepts")
    import zennit.composites as zcomp

    model, x = _net(), _x()
    twin = torch_twin(model)
    xt = torch.tensor(np.asarray(x, np.float64)[None], requires_grad=True)
    attribution = crp_attribution.CondAttribution(twin)
    composite = xa.lrp.EpsilonPlusFlat()
    res = attribution(xt, [{"conv2": [0, 3], "y": [2]}], zcomp.EpsilonPlusFlat())
    got = jcall(xa.CRP(model, CONV2, [0, 3], composite), x, T2)
    # zennit-crp's heatmap is summed over the input's channels.
    assert_close(got.sum(0), res.heatmap[0].numpy(), dtype=np.float32)
    res = attribution(xt, [{"y": [2]}], zcomp.EpsilonPlusFlat(), record_layer=["conv2"])
    layer = res.relevances["conv2"]
    got = jcall(xa.LayerLRP(model, CONV2, composite), x, T2)
    assert_close(got, layer[0].numpy(), dtype=np.float32)
    expected = crp_concepts.ChannelConcept().attribute(layer, abs_norm=True)
    method = xa.ChannelRelevance(model, CONV2, composite, normalize=True)
    assert_close(jcall(method, x, T2), expected[0].numpy(), dtype=np.float32)


# ---------------------------------------------------------------------------------
# Channel scores and relevance maximisation


def test_channel_relevance_and_activation_reduce_the_layer():
    model, x = _net(), _x()
    layer = jcall(xa.LayerLRP(model, CONV2), x, T2)
    assert_close(jcall(xa.ChannelRelevance(model, CONV2), x, T2), layer.sum((1, 2)))
    act = eqx.filter_jit(xa.layer_activation)(model, CONV2, x)
    assert_close(jcall(xa.ChannelActivation(model, CONV2), x), act.max((1, 2)))
    got = jcall(xa.ChannelActivation(model, CONV2, reduce="sum"), x, T2)
    assert_close(got, act.sum((1, 2)))


def test_top_k_references_equals_a_brute_force_sort():
    rng = np.random.default_rng(0)
    # Small integers: many ties, which must keep the lower index first.
    scores = rng.integers(-3, 4, size=(23, 5)).astype(np.float32)
    order = np.argsort(-scores, axis=0, kind="stable")[:4].T
    for chunk_rows in (1, 3, 7, None):
        idx, val = xa.top_k_references(scores, 4, chunk_rows=chunk_rows)
        np.testing.assert_array_equal(idx, order)  # exact: integer indices
        # exact: values copied, not computed
        np.testing.assert_array_equal(val, np.take_along_axis(scores.T, order, 1))


def test_top_k_references_on_an_explain_dataset_store(tmp_path):
    pytest.importorskip("zarr")
    model = _net()
    xs = np.asarray(jax.random.uniform(jax.random.key(4), (7, 1, 6, 6)))
    ts = np.array([0, 1, 2, 4, 4, 3, 2])
    method = xa.ChannelRelevance(model, CONV2)
    group = xa.explain_dataset(
        method, xs, ts, out=tmp_path / "rel.zarr", batch_size=3, progress=False
    )
    scores = group["attributions"]
    assert scores.shape == (7, 4)
    for k in (0, 3):
        assert_close(scores[k], jcall(method, jnp.asarray(xs[k]), jnp.asarray(ts[k])))
    idx, val = xa.top_k_references(scores, 3)
    order = np.argsort(-np.asarray(scores[:]), axis=0, kind="stable")[:3].T
    np.testing.assert_array_equal(idx, order)  # exact: integer indices
    acts = xa.explain_dataset(
        xa.ChannelActivation(model, CONV2),
        xs,
        ts,
        out=tmp_path / "act.zarr",
        batch_size=4,
        progress=False,
    )["attributions"]
    idx, _ = xa.top_k_references(acts, 2, chunk_rows=2)
    assert idx.shape == (4, 2)


# ---------------------------------------------------------------------------------
# Errors and the registry


def test_bad_arguments_raise_clear_errors():
    model, x = _net(), _x()
    with pytest.raises(ValueError, match="4 channels"):
        xa.CRP(model, CONV2, 4)(x, 3)
    with pytest.raises(ValueError, match="4 channels"):
        xa.CRP(model, CONV2, [-1, 2])(x, 3)
    with pytest.raises(TypeError, match="integer channel ids"):
        xa.CRP(model, CONV2, jnp.array([1.0]))
    with pytest.raises(TypeError):
        xa.CRP(model, CONV2, "conv")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`where`"):
        xa.LayerLRP(model, lambda m: m.nope)(x, 3)
    with pytest.raises(TypeError, match="`where`"):
        xa.CRP(model, model.conv2, 0)
    with pytest.raises(ValueError, match="channel_axis=3"):
        xa.ChannelRelevance(model, CONV2, channel_axis=3)(x, 3)
    with pytest.raises(ValueError, match="reduce"):
        xa.ChannelRelevance(model, CONV2, reduce="mean")
    with pytest.raises(ValueError, match="out of range"):
        xa.CRP(model, CONV2, 0)(x, 5)
    with pytest.raises(ValueError, match="exceeds"):
        xa.top_k_references(np.zeros((3, 2)), 4)
    with pytest.raises(ValueError, match="2-D"):
        xa.top_k_references(np.zeros(3), 1)


def test_registry_rows_build_and_run():
    rows = {
        r.name: r
        for r in family_rows(eqx_attr._neuron)
        if r.cls in (xa.LayerLRP, xa.CRP)
    }
    assert set(rows) == {"layer_lrp", "crp"}
    model, x = _net(), _x()
    ctx = BuildContext(model=model, layer=CONV2, options={"concepts": 1})
    layer = rows["layer_lrp"].build(ctx)
    assert rows["layer_lrp"].output == "layer"
    assert_close(jcall(layer, x, T2), jcall(xa.LayerLRP(model, CONV2), x, T2))
    crp = rows["crp"].build(ctx)
    assert rows["crp"].output == "input" and "layer" in rows["crp"].needs
    per_channel = eqx.filter_vmap(lambda c: xa.CRP(model, CONV2, c)(x, 2))
    assert_close(jcall(crp, x, T2), eqx.filter_jit(per_channel)(jnp.arange(4))[1])
    with pytest.raises(ValueError, match="needs `layer`"):
        rows["crp"].build(BuildContext(model=model))
