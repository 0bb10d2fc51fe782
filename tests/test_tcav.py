"""TCAV and CAV fitting: hand-derived scores, the fit, Captum, the t-test, errors."""

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._neuron._tcav import t_test

from .helpers import assert_close


@functools.cache
def _tiny_cnn() -> Any:
    """SmallCNN at width 4, for 8x8 inputs (`conv2`: (16, 2, 2)); built as one
    compiled program, once."""
    return eqx.filter_jit(lambda k: xa.models.SmallCNN(width=4, key=k))(
        jax.random.key(0)
    )


class _Quadratic(eqx.Module):
    """`h = layer(x)`, scores `(|h|^2 / 2, sum h)`: the layer gradient of class 0
    is `h`, of class 1 all ones."""

    layer: eqx.nn.Linear

    def __call__(self, x):
        h = self.layer(x)
        return jnp.stack([0.5 * jnp.sum(h**2), jnp.sum(h)])


def _quadratic():
    lin = eqx.nn.Linear(3, 3, key=jax.random.key(0))
    lin = eqx.tree_at(lambda m: (m.weight, m.bias), lin, (jnp.eye(3), jnp.zeros(3)))
    return _Quadratic(lin)


def _cav(v, shape):
    v = jnp.asarray(v, jnp.float32)
    return xa.CAV(
        vector=v / jnp.linalg.norm(v, axis=-1, keepdims=True),
        bias=jnp.zeros(v.shape[:-1]),
        accuracy=jnp.full(v.shape[:-1], jnp.nan),
        shape=shape,
    )


XS = jnp.array([[1.0, 0, 0], [0, -2, 0], [3, 1, 0], [-1, -1, 0]])


def test_hand_derived_scores():
    tcav = xa.TCAV(_quadratic(), lambda m: m.layer)
    cav = _cav([1.0, 0, 0], (3,))
    # Class 0: derivative h . e1 = x_1 = (1, 0, 3, -1): two of four positive
    # (0 is not), magnitude (1 + 3) / (1 + 0 + 3 + 1), mean 3 / 4.
    s = tcav.scores(XS, 0, cav)
    assert_close(s.derivatives, jnp.array([1.0, 0, 3, -1]))
    assert_close(s.sign_count, 0.5)
    assert_close(s.magnitude, 0.8)
    assert_close(s.mean_derivative, 0.75)
    # Class 1: the gradient is all ones, the derivative 1 for every input.
    s1 = tcav.scores(XS, 1, cav)
    assert_close(s1.sign_count, 1.0)
    assert_close(s1.magnitude, 1.0)
    # Per-example targets, and several CAVs at once (one pass per input).
    both = _cav([[1.0, 0, 0], [0, -1, 0]], (3,))
    s2 = tcav.scores(XS, jnp.array([0, 0, 1, 1]), both)
    assert_close(s2.derivatives, jnp.array([[1.0, 0, 1, 1], [0, 2, -1, -1]]))
    assert_close(s2.sign_count, jnp.array([0.75, 0.25]))
    assert_close(s2.magnitude, jnp.array([1.0, 0.5]))
    # The per-example call: the layer gradient; jit and vmap over inputs.
    assert_close(tcav(XS[2], 0), XS[2])
    dd = eqx.filter_jit(
        eqx.filter_vmap(tcav.directional_derivative, in_axes=(0, None, None))
    )
    assert_close(dd(XS, 0, cav), jnp.array([1.0, 0, 3, -1]))
    assert_close(tcav.activations(XS), XS)
    # vmap over inputs and targets of the per-example call.
    grads = eqx.filter_jit(eqx.filter_vmap(tcav))(XS, jnp.array([0, 0, 1, 1]))
    assert_close(grads, jnp.stack([XS[0], XS[1], jnp.ones(3), jnp.ones(3)]))


def test_all_zero_derivatives_give_zero_magnitude():
    s = xa.TCAV(_quadratic(), lambda m: m.layer).scores(
        jnp.zeros((2, 3)), 0, _cav([1.0, 0, 0], (3,))
    )
    # exact: no positive derivative, and the 0/0 ratio is defined as 0
    assert float(s.sign_count) == 0.0 and float(s.magnitude) == 0.0


def _separable(key, n, d, sign):
    """Isotropic Gaussian noise off the direction `e_0`, and along it a uniform
    offset in [1, 3] (times `sign`): separable with a margin of 2; by symmetry
    the population's logistic-regression normal is `e_0`."""
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (n, d))
    return x.at[:, 0].set(sign * jax.random.uniform(k2, (n,), minval=1, maxval=3))


def test_fit_cav_separates_and_finds_the_direction():
    d = 10
    pos = _separable(jax.random.key(1), 600, d, 1.0)
    neg = _separable(jax.random.key(2), 600, d, -1.0)
    cav = xa.fit_cav(
        pos.reshape(600, 2, 5), neg.reshape(600, 2, 5), key=jax.random.key(0)
    )
    assert cav.shape == (2, 5)
    assert float(cav.accuracy) == 1.0  # exact: a fraction of correct held-out rows
    assert_close(jnp.linalg.norm(cav.vector), 1.0)
    assert float(cav.vector[0]) > 0.99
    # The same key gives the same CAV (exact: the same compiled program).
    again = xa.fit_cav(
        pos.reshape(600, 2, 5), neg.reshape(600, 2, 5), key=jax.random.key(0)
    )
    np.testing.assert_array_equal(again.vector, cav.vector)
    # NumPy input, and vmapped over stacked random sets and keys.
    negs = jnp.stack([neg, _separable(jax.random.key(3), 600, d, -1.0)])
    keys = jax.random.split(jax.random.key(0), 2)
    many = jax.vmap(lambda r, k: xa.fit_cav(pos, r, key=k))(negs, keys)
    assert many.vector.shape == (2, d) and bool(jnp.all(many.vector[:, 0] > 0.99))
    np_cav = xa.fit_cav(np.asarray(pos), np.asarray(neg), key=jax.random.key(0))
    assert float(np_cav.vector[0]) > 0.99


def test_t_test_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    a = jnp.array([0.8, 0.7, 0.9, 0.85, 0.75])
    b = jnp.array([0.5, 0.45, 0.6, 0.55, 0.4, 0.5])
    for equal_var in (True, False):
        t, p = t_test(a, b, equal_var=equal_var)
        ref = stats.ttest_ind(np.asarray(a), np.asarray(b), equal_var=equal_var)
        assert_close(t, ref.statistic)
        assert_close(p, ref.pvalue)
    t, p = t_test(b, b + 0.01)
    ref = stats.ttest_ind(np.asarray(b), np.asarray(b) + 0.01)
    assert_close(t, ref.statistic)
    assert_close(p, ref.pvalue)


def test_interpret_significance_on_a_known_concept():
    # Class 1's layer gradient is all ones: a concept along +ones has every
    # derivative positive (sign_count 1), random-vs-random CAVs point anywhere.
    tcav = xa.TCAV(_quadratic(), lambda m: m.layer)
    key = jax.random.key(0)
    noise = jax.random.normal(key, (6, 40, 3))
    concept = noise[0] * 0.3 + 2.0
    randoms = [noise[i] for i in range(1, 6)]
    r = tcav.interpret(XS, 1, concept, randoms, key=key)
    assert r.sign_count.shape == (4,) and r.random_sign_count.shape == (4,)
    assert_close(r.sign_count, jnp.ones(4))
    assert_close(r.magnitude, jnp.ones(4))
    assert bool(jnp.all(r.accuracy == 1.0))  # exact: separated by 2 / 0.3 sigmas
    assert 0.0 <= float(r.p_value) <= 1.0
    stats = pytest.importorskip("scipy.stats")
    ref = stats.ttest_ind(np.asarray(r.sign_count), np.asarray(r.random_sign_count))
    if np.isfinite(ref.pvalue):
        assert_close(r.p_value, ref.pvalue)
        assert bool(r.significant) == (ref.pvalue < 0.05)
    # Sets of unequal size are fitted one by one, with the same result shape.
    r2 = tcav.interpret(XS, 1, concept, [randoms[0][:30]] + randoms[1:], key=key)
    assert r2.sign_count.shape == (4,)


def test_matches_captum_tcav_with_the_same_cav(tmp_path):
    pytest.importorskip("captum")
    torch = pytest.importorskip("torch")
    from captum.concept import TCAV as CaptumTCAV, Concept
    from captum.concept._utils.classifier import Classifier

    model = _tiny_cnn()
    twin = xa.torch_twins.to_torch(model).eval()
    xs = jax.random.uniform(jax.random.key(5), (32, 1, 8, 8))
    # conv1, not conv2: conv2 is average-pooled straight into the classifier, so
    # its gradient does not depend on x and every sign_count would be 0 or 1.
    tcav = xa.TCAV(model, lambda m: m.conv1)
    acts = tcav.activations(jax.random.uniform(jax.random.key(6), (24, 1, 8, 8)))
    cav = xa.fit_cav(acts[:12], acts[12:], key=jax.random.key(0))
    w = torch.tensor(np.asarray(cav.vector))

    class SameCAV(Classifier):
        """Returns our CAV: Captum's scores then differ from ours only by the
        layer gradient."""

        def __init__(self):
            pass

        def train_and_eval(self, dataloader, **kwargs):
            return {"accs": torch.tensor(1.0)}

        def weights(self):
            return torch.stack([w, -w])

        def classes(self):
            return [0, 1]

    batch = [torch.rand(4, 1, 8, 8)]
    # Captum iterates `data_iter` only: a list of batches serves.
    concepts = [
        Concept(0, "concept", batch),  # pyright: ignore[reportArgumentType]
        Concept(1, "random", batch),  # pyright: ignore[reportArgumentType]
    ]
    ref = CaptumTCAV(
        twin, layers=["conv1"], classifier=SameCAV(), save_path=str(tmp_path)
    )
    fractional = 0
    for target in range(10):
        got = tcav.scores(xs, target, cav)
        out = ref.interpret(torch.tensor(np.asarray(xs)), [concepts], target=target)
        out = out["0-1"]["conv1"]
        # sign_count is a count: equal unless a derivative is within rounding
        # of 0, which this CAV on random inputs does not produce.
        assert float(got.sign_count) == float(out["sign_count"][0])
        fractional += 0 < float(got.sign_count) < 1
        # Captum 0.9 returns the mean derivative as "magnitude".
        assert_close(got.mean_derivative, out["magnitude"][0].item())
        d = got.derivatives
        assert_close(got.magnitude, jnp.sum(jnp.maximum(d, 0)) / jnp.sum(jnp.abs(d)))
    assert fractional >= 3  # the comparison is not only of all-or-nothing


def test_cavs_from_an_explain_dataset_store(tmp_path):
    pytest.importorskip("zarr")
    model = _tiny_cnn()
    where = lambda m: m.conv2  # noqa: E731
    xs = np.asarray(jax.random.uniform(jax.random.key(7), (8, 1, 8, 8)))
    store = xa.explain_dataset(
        xa.LayerActivation(model, where),
        xs,
        np.zeros(8, np.int32),
        out=tmp_path / "acts.zarr",
        batch_size=4,
        progress=False,
        scores=False,
    )
    tcav = xa.TCAV(model, where)
    assert_close(store["attributions"][:], tcav.activations(jnp.asarray(xs)))
    # The Zarr array itself is accepted (read in blocks of rows).
    cav = xa.fit_cav(
        store["attributions"], -store["attributions"][:], key=jax.random.key(0)
    )
    assert cav.shape == (16, 2, 2) and float(cav.accuracy) == 1.0


def test_errors():
    tcav = xa.TCAV(_quadratic(), lambda m: m.layer)
    key = jax.random.key(0)
    ok = jnp.ones((6, 3))
    with pytest.raises(ValueError, match="same layer"):
        xa.fit_cav(ok, jnp.ones((6, 4)), key=key)
    with pytest.raises(ValueError, match="too few"):
        xa.fit_cav(ok[:2], ok, key=key)
    with pytest.raises(ValueError, match="PRNG key"):
        xa.fit_cav(ok, ok)
    with pytest.raises(TypeError, match="floating"):
        xa.fit_cav(ok.astype(jnp.int32), ok, key=key)
    with pytest.raises(TypeError, match="activations"):
        xa.fit_cav([[1.0]], ok, key=key)
    with pytest.raises(ValueError, match="shape"):
        xa.CAV(
            vector=jnp.ones(4), bias=jnp.zeros(()), accuracy=jnp.zeros(()), shape=(3,)
        )
    with pytest.raises(ValueError, match="fitted to activations of shape"):
        tcav.scores(XS, 0, _cav(jnp.ones(6), (6,)))
    with pytest.raises(ValueError, match="out of range"):
        tcav.scores(XS, 5, _cav(jnp.ones(3), (3,)))
    with pytest.raises(ValueError, match="one class per input"):
        tcav.scores(XS, jnp.array([0, 1]), _cav(jnp.ones(3), (3,)))
    with pytest.raises(ValueError, match="at least 3"):
        tcav.interpret(XS, 0, ok, [ok, ok], key=key)
    with pytest.raises(TypeError, match="where"):
        xa.TCAV(_quadratic(), "layer")  # pyright: ignore[reportArgumentType]
