"""XRAI: equal to PAIR's `saliency.core.XRAI` 0.2.1, and its mathematics by hand."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._region import _xrai_regions

from .helpers import assert_close, jcall

pytest.importorskip("skimage")


@functools.cache
def _photo(channels: int = 1, side: int = 28) -> np.ndarray:
    """A real photo (scikit-image's bundled camera / cat), (C, side, side) in [0, 1]."""
    from skimage import data, transform

    img = data.camera() if channels == 1 else data.chelsea()
    img = transform.resize(img / 255.0, (side, side), anti_aliasing=True)
    img = img[..., None] if img.ndim == 2 else img
    return np.moveaxis(img, -1, 0).astype(np.float32)


def _model(channels: int = 1):
    return xa.models.SmallCNN(width=8, in_channels=channels, key=jax.random.key(0))


def _hwc(a) -> np.ndarray:
    return np.moveaxis(np.asarray(a), 0, -1)


def _pair_call(model, target):
    """PAIR's call-model function on our JAX model: gradients of HWC batches."""
    import saliency.core as sc

    grads = jax.jit(jax.vmap(jax.grad(lambda z: model(z)[target])))

    def call(x_batch, call_model_args=None, expected_keys=None):
        g = grads(jnp.asarray(np.moveaxis(x_batch, -1, 1), jnp.float32))
        return {sc.base.INPUT_OUTPUT_GRADIENTS: np.moveaxis(np.asarray(g), 1, -1)}

    return call


# ---------------------------------------------------------------------------------
# Equality with PAIR


@pytest.mark.parametrize("channels", [1, 3])
def test_segments_equal_pair(channels):
    from saliency.core import xrai as pair_xrai

    x = _photo(channels, 32)
    ref = pair_xrai._get_segments_felzenszwalb(_hwc(x))
    ours = xa.XRAI(lambda z: z.sum()).segment_masks(jnp.asarray(x))
    assert ours.dtype == np.bool_ and ours.shape == (len(ref), 32, 32)
    # Exact: boolean masks from the same scikit-image calls on the same image.
    np.testing.assert_array_equal(ours, np.stack(ref))


@pytest.mark.parametrize(
    "algorithm, area", [("full", 1.0), ("full", 0.4), ("fast", 1.0)]
)
def test_regions_from_attribution_equal_pair(algorithm, area):
    import saliency.core as sc

    m, x = _model(), _photo()
    ours = xa.XRAI(m, algorithm=algorithm, area_threshold=area)
    # PAIR's `base_attribution`: our IG (and, below, random values) fed to both.
    ig = np.asarray(eqx.filter_jit(xa.IntegratedGradients(m, n_steps=8))(x, 3))
    noise = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    params = sc.XRAIParameters(
        algorithm=algorithm, area_threshold=area, return_xrai_segments=True
    )
    for attr in (ig, noise):
        ref = sc.XRAI().GetMaskWithDetails(
            _hwc(x), None, base_attribution=_hwc(attr), extra_parameters=params
        )
        heat, ranks = ours.from_attribution(jnp.asarray(x), jnp.asarray(attr))
        # Exact: the same attribution in, and the gains are PAIR's own NumPy
        # float32 means of the same pixels (host code, no XLA; the channel max
        # before it is exact), so the same floats and the same greedy choices.
        np.testing.assert_array_equal(np.asarray(heat), ref.attribution_mask)
        np.testing.assert_array_equal(np.asarray(ranks), ref.segments)
        assert ranks.max() >= 3  # several regions, so the order was tested


def _without_ties(model):
    """The model with its max pools as average pools of the same windows.

    IG's first node (alpha = 0) is the constant baseline image, on which a max
    pool's window holds values that are equal up to the convolution's rounding: its
    derivative then picks the unit that rounds largest, which differs between two
    programs and two CPUs. An average pool has no such choice.
    """
    is_pool = lambda node: isinstance(node, eqx.nn.MaxPool2d)  # noqa: E731
    pools = [n for n in jax.tree_util.tree_leaves(model, is_leaf=is_pool) if is_pool(n)]
    return eqx.tree_at(
        lambda m: [
            n for n in jax.tree_util.tree_leaves(m, is_leaf=is_pool) if is_pool(n)
        ],
        model,
        [eqx.nn.AvgPool2d(p.kernel_size, p.stride) for p in pools],
    )


def test_full_pipeline_equals_pair():
    import saliency.core as sc

    m, x, target, steps = _without_ties(_model()), _photo(), 3, 16
    params = sc.XRAIParameters(
        steps=steps, return_ig_attributions=True, return_xrai_segments=True
    )
    ref = sc.XRAI().GetMaskWithDetails(
        _hwc(x), _pair_call(m, target), batch_size=steps, extra_parameters=params
    )
    method = xa.XRAI(m, n_steps=steps)
    heat, ranks = method.heat_and_ranks(jnp.asarray(x), target)
    # The IG part: PAIR's mean over its min / max baselines, and ours.
    ig = np.asarray(jcall(method.integrated_gradients(), jnp.asarray(x), target))
    assert_close(_hwc(ig), np.mean(ref.ig_attribution, axis=0))
    # Exact although the two IGs differ by rounding (just above): each greedy step
    # picks a region whose gain beats the runner-up by over 1e-3 of max |IG| (or
    # ties it exactly, on the same pixels, broken by segment order in both).
    np.testing.assert_array_equal(np.asarray(ranks), ref.segments)
    assert_close(heat, ref.attribution_mask)
    # The heat map keeps IG's total (per pixel: the max over channels). Its IG is
    # the call's own, which agrees with `ig` per pixel to the policy's floor
    # rtol * max |IG| (asserted above): over the pixels, the sum to n times that.
    m_ig = ig.max(axis=0)
    assert_close(np.sum(heat), m_ig.sum(), scale=m_ig.size * np.abs(m_ig).max())


# ---------------------------------------------------------------------------------
# By hand


def _blocks():
    """16 x 16: top half, bottom half, and a 6 x 6 block inside the bottom half."""
    segs = np.zeros((3, 16, 16), bool)
    segs[0, :8] = True
    segs[1, 8:] = True
    segs[2, 9:15, 9:15] = True
    return segs


def test_hand_checked_ranking():
    segs = _blocks()
    attr = np.zeros((16, 16), np.float32)
    attr[segs[2]] = 1.0
    x = jnp.zeros((1, 16, 16))
    method = xa.XRAI(lambda z: z.sum(), segments=segs, min_pixel_diff=1)
    heat, ranks = method.from_attribution(x, attr)
    # The block first (gain 1), then the top half (gain 0, first of the tied
    # zeros in segment order), then what the bottom half adds.
    expected = np.where(segs[2], 1, np.where(segs[0], 2, 3))
    # Exact: integer ranks, and gains that are means of equal values (1.0 or 0.0),
    # exact in float32; the region masks are boolean.
    np.testing.assert_array_equal(ranks, expected)
    np.testing.assert_array_equal(heat, attr)
    masks = xa.XRAI.region_masks(ranks)
    np.testing.assert_array_equal(masks[0], segs[2])
    np.testing.assert_array_equal(masks[1], segs[0])
    # Stopping once 10% is covered: the block, then the uncovered rest.
    early = xa.XRAI(
        lambda z: z.sum(),
        segments=segs,
        min_pixel_diff=1,
        area_threshold=0.1,
    )
    heat, ranks = early.from_attribution(x, attr)
    np.testing.assert_array_equal(ranks, np.where(segs[2], 1, 2))
    # `fast` ranks whole segments by their own mean: the block, the bottom half
    # (36 / 128), then the top half.
    fast = xa.XRAI(
        lambda z: z.sum(),
        segments=segs,
        min_pixel_diff=1,
        algorithm="fast",
    )
    _, ranks = fast.from_attribution(x, attr)
    np.testing.assert_array_equal(ranks, np.where(segs[2], 1, np.where(segs[1], 2, 3)))


def test_positive_segment_of_the_photo_ranks_first():
    x = jnp.asarray(_photo())
    method = xa.XRAI(lambda z: z.sum())
    segs = method.segment_masks(x)
    k = int(np.argmax((segs.sum(axis=(1, 2)) >= 60) & (segs.sum(axis=(1, 2)) < 300)))
    attr = segs[k].astype(np.float32)
    heat, ranks = method.from_attribution(x, attr)
    first = np.asarray(ranks) == 1
    assert first.sum() >= 50 and np.all(segs[k][first])
    # Exact: the first region's gain is the NumPy mean of 1.0s, exactly 1.0.
    np.testing.assert_array_equal(np.asarray(heat)[first], 1.0)
    assert np.all(np.asarray(heat)[~first] < 1.0)


def test_regions_partition_the_image_and_heat_is_sorted():
    m, x = _model(), jnp.asarray(_photo())
    heat, ranks = xa.XRAI(m, n_steps=8).heat_and_ranks(x, 1)
    masks = xa.XRAI.region_masks(ranks)
    np.testing.assert_array_equal(masks.sum(axis=0), 1)  # disjoint, covering (ints)
    gains = [float(np.unique(np.asarray(heat)[r])[0]) for r in masks]
    assert all(np.unique(np.asarray(heat)[r]).size == 1 for r in masks)
    assert gains == sorted(gains, reverse=True)


def test_one_segmentation_for_many_targets(monkeypatch):
    calls = []
    label_images = _xrai_regions.label_images
    monkeypatch.setattr(
        _xrai_regions,
        "label_images",
        lambda *a, **k: calls.append(1) or label_images(*a, **k),
    )
    x = jnp.asarray(_photo(1, 20)) * 0.5  # an image no other test segments
    method = xa.XRAI(_model(), n_steps=4)
    per_class = jax.vmap(lambda t: method(x, t))(jnp.arange(4))
    assert len(calls) == 1 and per_class.shape == (4, 20, 20)
    assert_close(per_class[2], method(x, 2))  # vmapped over targets vs one call
    assert len(calls) == 1


def test_constant_image_is_one_region():
    x = jnp.full((1, 12, 12), 0.3)
    heat = xa.XRAI(_model(), n_steps=4)(x, 0)
    assert heat.shape == (12, 12) and np.all(np.isfinite(heat))
    assert np.unique(np.asarray(heat)).size == 1


# ---------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(n_steps=0), "n_steps"),
        (dict(algorithm="slow"), "algorithm"),
        (dict(area_threshold=1.5), "area_threshold"),
        (dict(min_pixel_diff=0), "min_pixel_diff"),
        (dict(scales=()), "scales"),
        (dict(scales=(50, -1)), "scales"),
        (dict(sigma=-1.0), "sigma"),
        (dict(min_size=0), "min_size"),
        (dict(resize=(224,)), "resize"),
        (dict(resize=(224, 0)), "resize"),
        (dict(dilation_radius=-1), "dilation_radius"),
        (dict(ig_method="simpson"), "ig_method"),
        (dict(segments=np.ones((4, 4), bool)), "segments"),
        (dict(segments=np.ones((1, 4, 4), np.float32)), "segments"),
    ],
)
def test_bad_options_name_the_argument(options, name):
    # Under the test run, jaxtyping may answer first, naming the parameter.
    with pytest.raises((ValueError, TypeError), match=f"`{name}|'{name}'"):
        xa.XRAI(_model(), **options)


def test_bad_inputs_name_the_argument():
    m = _model()
    method = xa.XRAI(m, n_steps=2)
    with pytest.raises(ValueError, match="`x`"):
        method(jnp.ones((28, 28)), 1)
    with pytest.raises(ValueError, match="`x`"):
        method.from_attribution(jnp.ones((1, 1, 28, 28)), jnp.ones((28, 28)))
    with pytest.raises(ValueError, match="`attribution`"):
        method.from_attribution(jnp.ones((1, 28, 28)), jnp.ones((27, 28)))
    with pytest.raises(TypeError, match="`attribution`"):
        method.from_attribution(jnp.ones((1, 28, 28)), np.ones((28, 28), int))
    with pytest.raises(ValueError, match="`segments`"):
        xa.XRAI(m, segments=np.ones((2, 8, 8), bool))(jnp.ones((1, 28, 28)), 1)
    with pytest.raises(ValueError, match="`ranks`"):
        xa.XRAI.region_masks(np.ones((2, 3, 3), np.int32))
