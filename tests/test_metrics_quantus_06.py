"""The metrics Quantus 0.6 added (Sufficiency, Consistency, ...) equal Quantus on
identical models, inputs and attributions."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr.torch_twins import to_torch

from ._quantus_import import quantus
from .helpers import assert_close, jmetric

M = xa.metrics
B, H = 8, 8


@pytest.fixture(scope="module")
def batch():
    # Inputs and seed chosen so that the random net predicts several classes.
    model = xa.models.SmallCNN(width=2, key=jax.random.key(2))
    xs = jax.random.normal(jax.random.key(1), (B, 1, H, H)) * 4
    # Two clusters of attributions (similar within), with two sign patterns on
    # the first five entries (shared discrete labels).
    centres = jax.random.normal(jax.random.key(2), (2, H * H))
    noise = jax.random.normal(jax.random.key(3), (B, H * H))
    flat = centres[jnp.arange(B) % 2] + 0.2 * noise
    signs = jnp.where(jnp.arange(B)[:, None] % 2 == 0, 1.0, -1.0) * jnp.ones((B, 5))
    flat = flat.at[:, :5].set(jnp.abs(flat[:, :5]) * signs)
    flat = flat.at[3, 4].multiply(-1.0)  # one example with a label of its own
    attrs = flat.reshape(B, 1, H, H)
    ys = np.asarray(jnp.argmax(jax.vmap(model)(xs), -1))
    return model, xs, attrs, ys, to_torch(model)


def _quantus(metric, batch):
    model, xs, attrs, ys, twin = batch
    out = metric(
        model=twin,
        x_batch=np.asarray(xs),
        y_batch=ys,
        a_batch=np.asarray(attrs),
        channel_first=True,
        device="cpu",
    )
    return np.asarray(out, np.float64)


@pytest.mark.parametrize("threshold, absolute", [(0.6, True), (0.5, False)])
def test_sufficiency_equals_quantus(batch, threshold, absolute):
    model, xs, attrs, *_ = batch
    q = quantus.Sufficiency(
        threshold=threshold, abs=absolute, normalise=False, disable_warnings=True
    )
    want = _quantus(q, batch)
    got = jmetric(M.Sufficiency(model, threshold=threshold, abs=absolute), xs, attrs)
    assert 0 < want.mean() < 1  # similar pairs, with different predictions
    assert_close(got, want, dtype=np.float32)


@pytest.mark.parametrize("absolute", [False, True])
def test_consistency_equals_quantus(batch, absolute):
    model, xs, attrs, *_ = batch
    q = quantus.Consistency(abs=absolute, normalise=False, disable_warnings=True)
    want = _quantus(q, batch)
    got = jmetric(M.Consistency(model, abs=absolute), xs, attrs)
    assert_close(got, want, dtype=np.float32)


def test_agreement_errors(batch):
    model, xs, attrs, *_ = batch
    with pytest.raises(ValueError, match="batches"):
        M.Sufficiency(model)(xs, attrs[:3])
    with pytest.raises(ValueError, match="two examples"):
        M.Consistency(model)(xs[:1], attrs[:1])
    with pytest.raises(ValueError, match="threshold"):
        M.Sufficiency(model, threshold=-1.0)
    with pytest.raises(ValueError, match="`n`"):
        M.Consistency(model, n=0)


def _torch_gradients(model, inputs, targets, **kwargs):
    import torch

    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32).requires_grad_()
    out = model(x)
    picked = out[torch.arange(len(x)), torch.as_tensor(np.asarray(targets))]
    (grad,) = torch.autograd.grad(picked.sum(), x)
    return grad.numpy()


@pytest.mark.parametrize("absolute", [False, True])
def test_efficient_mprt_equals_quantus(batch, monkeypatch, absolute):
    model, xs, attrs, ys, twin = batch
    metric = M.EfficientMPRT(xa.Gradients(model), abs=absolute)
    key = jax.random.key(5)
    # One key for the batch: one randomised model, as Quantus.
    shared = eqx.filter_jit(
        lambda m, xs, ts, k: jax.vmap(lambda x, t: m(x, t, key=k))(xs, ts)
    )
    got = shared(metric, xs, jnp.asarray(ys), key)
    # Quantus redraws the layers with torch's `reset_parameters`; it is handed the
    # twin of our fully randomised model instead (the same weights on both sides).
    method = metric.method
    weight_key, _ = jax.random.split(key)
    n = M._randomisation._layer_count(method)
    randomised = M._randomisation.randomise_layers(method, tuple(range(n)), weight_key)
    random_twin = to_torch(randomised.model)

    def layers(self, order="bottom_up", seed=42):
        for i in range(n):
            yield f"layer{i}", random_twin

    monkeypatch.setattr(
        quantus.helpers.model.pytorch_model.PyTorchModel,
        "get_random_layer_generator",
        layers,
    )
    q = quantus.EfficientMPRT(
        complexity_func_kwargs={"n_bins": 100}, abs=absolute, disable_warnings=True
    )
    want = np.asarray(
        q(
            model=twin,
            x_batch=np.asarray(xs),
            y_batch=ys,
            a_batch=np.asarray(attrs),
            channel_first=True,
            device="cpu",
            explain_func=_torch_gradients,
        ),
        np.float64,
    )
    # Gradients of two frameworks agree to rounding; a value rounding across a
    # histogram edge would move one count (not seen on these inputs).
    assert_close(got, want, dtype=np.float32)


@pytest.mark.parametrize("average", [False, True])
def test_smooth_mprt_equals_quantus(batch, monkeypatch, average):
    model, xs, attrs, ys, twin = batch
    n_samples = 4
    metric = M.SmoothMPRT(xa.Gradients(model), n_samples=n_samples, average=average)
    key = jax.random.key(6)
    shared = eqx.filter_jit(
        lambda m, xs, ts, k: jax.vmap(lambda x, t: m(x, t, key=k))(xs, ts)
    )
    got = shared(metric, xs, jnp.asarray(ys), key)
    # The same randomised models and the same noise on both sides: Quantus gets
    # the twins of our cumulative (bottom-up) randomisations and our standard
    # normal draws (one per sample, the same for every example, as a shared key).
    method = metric.method
    weight_key, noise_key, _ = jax.random.split(key, 3)
    n = M._randomisation._layer_count(method)
    twins = [
        to_torch(
            M._randomisation.randomise_layers(
                method, tuple(range(i + 1)), weight_key
            ).model
        )
        for i in range(n)
    ]
    z = np.asarray(metric.noise(xs[0], noise_key), np.float64)
    draws = iter(range(10**6))

    def randn(*shape):
        return np.broadcast_to(z[next(draws) % (n_samples - 1)], shape).copy()

    def layers(self, order="bottom_up", seed=42):
        yield from ((f"layer{i}", t) for i, t in enumerate(twins))

    monkeypatch.setattr(
        quantus.helpers.model.pytorch_model.PyTorchModel,
        "get_random_layer_generator",
        layers,
    )
    monkeypatch.setattr(np.random, "randn", randn)
    q = quantus.SmoothMPRT(
        nr_samples=n_samples,
        normalise=False,
        return_average_correlation=average,
        return_last_correlation=not average,
        disable_warnings=True,
    )
    want = np.asarray(
        q(
            model=twin,
            x_batch=np.asarray(xs),
            y_batch=ys,
            a_batch=None,
            channel_first=True,
            device="cpu",
            explain_func=quantus.explain,
            explain_func_kwargs={"method": "Gradient"},
        ),
        np.float64,
    )
    if average:
        # Quantus 0.6's average skips a key "orig" but stores "original": it also
        # averages the original's similarity with itself, 1 (same noise here).
        got = (1 + n * got) / (n + 1)
    # Ranks of two frameworks' gradients: a near-tie may swap (not seen here).
    assert_close(got, want, dtype=np.float32)


@pytest.mark.parametrize("absolute", [False, True])
def test_focus_equals_quantus(absolute):
    # Mosaics of 2x2 images (8x8 each) with 3 channels; two quadrants hold the
    # target in each.
    attrs = np.asarray(jax.random.normal(jax.random.key(7), (4, 3, 16, 16)))
    quadrants = np.array(
        [[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=bool
    )
    q = quantus.Focus(abs=absolute, normalise=False, disable_warnings=True)
    # Quantus asserts a model (unused by the score).
    twin = to_torch(xa.models.SmallCNN(3, width=2, key=jax.random.key(0)))
    want = q(
        model=twin,
        x_batch=np.zeros_like(attrs),
        y_batch=np.zeros(4, int),
        a_batch=attrs,
        custom_batch=[list(c.astype(int)) for c in quadrants],
        channel_first=True,
        device="cpu",
    )
    focus = M.Focus(abs=absolute)
    got = jmetric(focus, jnp.asarray(attrs), jnp.asarray(quadrants), vmap=0)
    assert_close(got, np.asarray(want, np.float64), dtype=np.float32)
    with pytest.raises(ValueError, match="quadrants"):
        focus(jnp.asarray(attrs[0]), jnp.ones(3, bool))


def test_irof_equals_quantus(monkeypatch):
    # Quantus 0.6 calls `np.trapz`, which NumPy 2 renamed `np.trapezoid`.
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    # Quantus's "mean" baseline averages the whole perturbed batch: compared on
    # batches of one, each example with Quantus's own SLIC segments.
    model = xa.models.SmallCNN(width=2, key=jax.random.key(0))
    twin = to_torch(model)
    xs = np.asarray(jax.random.uniform(jax.random.key(8), (2, 1, 16, 16)))
    attrs = np.asarray(jax.random.normal(jax.random.key(9), (2, 1, 16, 16)))
    for x, a in zip(xs, attrs, strict=True):
        y = int(jnp.argmax(model(jnp.asarray(x))))
        segs = quantus.helpers.utils.get_superpixel_segments(
            img=np.moveaxis(x, 0, -1).astype("double"), segmentation_method="slic"
        )
        n = len(np.unique(segs))
        assert n > 2 and segs.max() == n - 1
        q = quantus.IROF(normalise=False, return_aggregate=False, disable_warnings=True)
        want = q(
            model=twin,
            x_batch=x[None],
            y_batch=np.array([y]),
            a_batch=a[None],
            channel_first=True,
            device="cpu",
        )
        irof = M.IROF(model, n_segments=n)
        got = jmetric(irof, jnp.asarray(x), y, jnp.asarray(a), jnp.asarray(segs))
        # AOC = n - (a sum of n ratios of size 1): the rounding is relative to n.
        want = np.asarray(want[0], np.float64)
        assert_close(got, want, dtype=np.float32, scale=n)
    with pytest.raises(ValueError, match="segments"):
        irof(jnp.asarray(x), y, jnp.asarray(a), jnp.zeros((3, 3), jnp.int32))
