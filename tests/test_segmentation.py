"""The zoo's segmenter and segmentation targets: Grad-CAM, IG and LRP maps of a
region, their axioms (IG completeness, LRP conservation) and the digit masks.

The mathematics is checked on a randomly initialised segmenter; one test runs
the same methods on the trained one, asserting only what holds for any weights.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr import targets as T
from eqx_attr.models import model_spec, spec_of

from .helpers import assert_close, digit_like


@functools.cache
def _segmenter():
    # Built once, as one compiled program (eagerly, every initialiser compiles).
    return eqx.filter_jit(lambda k: xa.models.SmallSegmenter(width=2, key=k))(
        jax.random.key(0)
    )


def test_digit_masks_hand_values():
    images = np.zeros((2, 1, 2, 3), np.float32)
    images[0, 0] = [[0.9, 0.5, 0.0], [0.51, 1.0, 0.2]]  # 0.5 is not above 0.5
    images[1, 0, 1, 2] = 0.7
    ys = xa.models.digit_masks(images, np.array([7, 0]))
    np.testing.assert_array_equal(  # exact: integers
        ys, [[[8, 0, 0], [8, 8, 0]], [[0, 0, 0], [0, 0, 1]]]
    )
    with pytest.raises(ValueError, match="`images` must be"):
        xa.models.digit_masks(images[:, 0], np.array([7, 0]))


def test_segmenter_spec_and_shapes():
    spec = model_spec("small_segmenter")
    seg = _segmenter()
    assert spec_of(seg) is spec
    assert spec.layer()(seg) is seg.context
    assert spec.config(seg) == dict(in_channels=1, n_classes=11, width=2)
    sd = xa.models.to_torch_state_dict(seg)
    assert spec.read_config({k: tuple(v.shape) for k, v in sd.items()}) == dict(
        n_classes=11, in_channels=1, width=2
    )
    out = eqx.filter_eval_shape(seg, jnp.zeros((1, 28, 28)))
    assert out.shape == (11, 28, 28)
    with pytest.raises(ValueError, match="multiples of 4"):
        seg(jnp.zeros((1, 10, 10)))


MASK = np.zeros((28, 28), bool)
MASK[8:20, 10:18] = True
# Four pixels of the region, one per mask, and the four together.
PIXELS = np.zeros((4, 28, 28), bool)
PIXELS[np.arange(4), 8, 10 + np.arange(4)] = True


@eqx.filter_jit
def _maps(seg, x):
    region = T.SegmentationRegion(3, MASK)
    ig = xa.IntegratedGradients(seg, n_steps=16, return_delta=True)
    lrp = xa.LRP(seg, rule=xa.lrp.Epsilon(1e-9))
    return {
        "score": region(seg(x)),
        "score_b": region(seg(jnp.zeros_like(x))),
        "gradcam": xa.GradCAM(seg, lambda m: m.context)(x, region),
        "ig": ig(x, region),
        "lrp": lrp(x, region),
        "lrp_pixels": jax.vmap(lambda m: lrp(x, T.SegmentationRegion(3, m)))(PIXELS),
        "lrp_four": lrp(x, T.SegmentationRegion(3, PIXELS.any(0))),
    }


def _checks(r):
    assert r["gradcam"].shape == (28, 28)
    assert r["ig"][0].shape == r["lrp"].shape == (1, 28, 28)
    # IG explains the region's score: its attributions sum to
    # t(f(x)) - t(f(0)) up to the quadrature error, which is its delta.
    a, delta = (np.asarray(v, np.float64) for v in r["ig"])
    change = float(r["score"] - r["score_b"])
    scale = float(np.abs(a).sum() + abs(r["score"]) + abs(r["score_b"]))
    assert_close(a.sum() - delta, change, dtype=np.float32, scale=scale)


def test_region_maps_and_axioms_by_hand():
    seg = _segmenter()
    x = digit_like(0)
    r = _maps(seg, x)
    _checks(r)
    # LRP starts from out * dt/dout = the region's logits; the rules are linear
    # in the relevance, so a region's map is the sum of its pixels' maps.
    assert_close(r["lrp_four"], r["lrp_pixels"].sum(0), scale=np.abs(r["lrp"]).max())
    # Epsilon with a tiny stabiliser on a ReLU net with zero biases is
    # gradient x input, which sums to the score (ReLU nets are homogeneous).
    assert_close(np.sum(np.asarray(r["lrp"], np.float64)), float(r["score"]),
                 dtype=np.float32, scale=float(np.abs(r["lrp"]).sum()))  # fmt: skip


def test_trained_segmenter_region_maps():
    # A short run (one epoch of the narrowest net, seconds): the checks hold for
    # any weights; the docs' figure uses the default, longer one.
    config = xa.training.TrainConfig(epochs=1, batch_size=128, shift=0)
    seg = xa.training.pretrained_mnist_segmenter(
        width=2, config=config, progress=False, verbose=False
    )
    assert isinstance(seg, xa.models.SmallSegmenter)
    x = jnp.asarray(xa.datasets.mnist().x_test[0])
    _checks(_maps(seg, x))
