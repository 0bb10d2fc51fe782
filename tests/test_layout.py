"""Channels-last images (issue 31): `input_layout` on every method.

The mathematics: a network written for `(H, W, C)` images that transposes its
input to `(C, H, W)` and then runs a conv net is the SAME function as that conv
net composed with a transpose. So every method on it, given an `(H, W, C)` image,
must equal the method on the channels-first net given the transposed image:
transposed back where the attribution is shaped like the input, unchanged where
it is an `(H, W)` map. The test runs every row of the registry (a new method is
covered automatically), with the layout inferred and explicit.
"""

import copy
import functools
import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._layout import (
    channel_axis,
    check_input_layout,
    resolve_input_layout,
    spatial_axes,
    spatial_shape,
)
from eqx_attr._registry import BuildContext, methods
from tests.helpers import assert_close


class TinyCNN(eqx.Module):
    """conv -> ReLU -> conv -> ReLU -> global mean -> linear, for `(C, H, W)`."""

    conv1: eqx.nn.Sequential
    conv2: eqx.nn.Sequential
    fc: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        relu = eqx.nn.Lambda(jax.nn.relu)
        self.conv1 = eqx.nn.Sequential(
            [eqx.nn.Conv2d(3, 2, 3, padding=1, key=k1), relu]
        )
        self.conv2 = eqx.nn.Sequential(
            [eqx.nn.Conv2d(2, 3, 3, padding=1, key=k2), relu]
        )
        self.fc = eqx.nn.Linear(3, 5, key=k3)

    def __call__(self, x):
        return self.fc(jnp.mean(self.conv2(self.conv1(x)), axis=(1, 2)))


class ChannelsLastCNN(TinyCNN):
    """TinyCNN for `(H, W, C)` images: the same modules after a transpose."""

    def __call__(self, x):
        return super().__call__(jnp.transpose(x, (2, 0, 1)))


class ChannelsLastViT(xa.models.ViT):
    """The ViT for `(H, W, C)` images: the same modules after a transpose."""

    def __call__(self, x, *args, **kwargs):
        return super().__call__(jnp.transpose(x, (2, 0, 1)), *args, **kwargs)


# The twins are built with the same keys, so they hold the same weights; their
# layers, classifier and attention modules are named as in the originals.
@functools.cache
def _cnn(cls=TinyCNN):
    return cls(jax.random.key(0))


@functools.cache
def _vit(cls=xa.models.ViT):
    # tests/_vit_reference.py's tiny_vit(1): (1, 8, 8) images, 5 classes.
    return eqx.filter_jit(
        lambda k: cls(
            image_size=8, patch_size=2, in_channels=1, n_classes=5, dim=16,
            depth=2, heads=2, key=k,
        )
    )(jax.random.key(1))  # fmt: skip


def _image(channels: int):
    return jax.random.uniform(jax.random.key(1), (channels, 8, 8), jnp.float32)


# A 2 x 2 grid of 4 x 4 cells: an (H, W) mask, one id per pixel for all channels.
_MASK = jnp.asarray((np.arange(8)[:, None] // 4) * 2 + np.arange(8) // 4, jnp.int32)
_OPTIONS = {
    "n_steps": 4,
    "n_samples": 4,
    "n_masks": 8,
    "n_permutations": 2,
    "chunk_size": 16,
}


def _contexts(entry):
    """The context of the channels-first net and of its channels-last twin."""
    if "attention" in entry.needs:
        net, twin, shape = _vit(), _vit(ChannelsLastViT), (1, 8, 8)
        chw = dict(
            attention=lambda m: [b.attn.attn_drop for b in m.blocks],
            n_prefix_tokens=1,
        )
    else:
        net, twin, shape = _cnn(), _cnn(ChannelsLastCNN), (3, 8, 8)
        chw = dict(layer=lambda m: m.conv2, classifier=lambda m: m.fc)
    hwc = dict(chw)
    # Fixed baselines, transposed for the twin (a random baseline draws values
    # shaped like `x`, which differ between the layouts).
    b = jax.random.uniform(jax.random.key(3), (2, *shape), jnp.float32)
    b_hwc = jnp.transpose(b, (0, 2, 3, 1))
    if entry.baselines == "many":
        chw["baseline"] = xa.baselines.Custom(b, draws=True)
        hwc["baseline"] = xa.baselines.Custom(b_hwc, draws=True)
    else:
        chw["baseline"], hwc["baseline"] = b[0], b_hwc[0]
    common = dict(mask=_MASK, options=_OPTIONS)
    hwc_shape = (*shape[1:], shape[0])
    return (
        BuildContext(net, input_shape=shape, **chw, **common),
        BuildContext(twin, input_shape=hwc_shape, **hwc, **common),
    )


def _with_layout(method, layout):
    """`method` as its constructor builds it with `input_layout=layout` (the
    registry's builds leave the default, `None`: inferred)."""
    out = copy.copy(method)
    object.__setattr__(out, "input_layout", layout)
    return out


def _call(method, x, key, target=3):
    return method(x, target) if key is None else method(x, target, key=key)


@eqx.filter_jit
def _both(chw, hwc, x, key, target):
    """The channels-first method on `x` and the channels-last one (inferred and
    explicit) on `x` transposed, as ONE compiled program (one compile per
    method keeps the file cheap; XLA merges the two identical channels-last
    computations)."""
    x_hwc = jnp.transpose(x, (1, 2, 0))
    explicit = _with_layout(hwc, "hwc")
    return (
        _call(chw, x, key, target),
        _call(hwc, x_hwc, key, target),
        _call(explicit, x_hwc, key, target),
    )


def _rtol(name):
    # Blur IG's path derivative is a forward difference in sigma with step 0.01,
    # which multiplies the blurred images' rounding by 100 (as in tests/helpers).
    return 1e-3 if name == "blur_ig" else None


@pytest.mark.parametrize("entry", methods(), ids=lambda e: e.name)
def test_channels_last_equals_channels_first_transposed(entry):
    ctx_chw, ctx_hwc = _contexts(entry)
    chw, hwc = entry.build(ctx_chw), entry.build(ctx_hwc)
    x = _image(ctx_chw.input_shape[0])
    key = jax.random.key(2) if entry.random else None
    # The channels-last layout inferred from (8, 8, C), and explicit; a neuron
    # method explains its neuron (no target). A layer's output is the same in
    # both nets (the twin transposes before its first layer).
    target = 3 if entry.takes_target else None
    want, inferred, explicit = _both(chw, hwc, x, key, target)
    if entry.output == "input":
        assert want.shape == x.shape
        want = jnp.transpose(want, (1, 2, 0))
    elif entry.output == "map":
        assert want.shape == x.shape[1:]
    for layout, got in (("inferred", inferred), ("explicit", explicit)):
        assert got.shape == want.shape, layout
        assert_close(got, want, rtol=_rtol(entry.name), err_msg=layout)


_MAPS = [e for e in methods() if e.output == "map"]


@pytest.mark.parametrize("entry", _MAPS, ids=lambda e: e.name)
def test_explicit_layout_is_honoured_by_every_map(entry):
    # The twin's (8, 8, C) input, which `None` reads as (H, W, C), read as
    # channels first as the user asked: an (8, C) map, never re-inferred. Shapes
    # only (traced, not compiled).
    _, ctx_hwc = _contexts(entry)
    x_hwc = jnp.transpose(_image(ctx_hwc.input_shape[-1]), (1, 2, 0))
    method = _with_layout(entry.build(ctx_hwc), "chw")
    key = jax.random.key(2) if entry.random else None
    assert eqx.filter_eval_shape(_call, method, x_hwc, key).shape == x_hwc.shape[1:]


@pytest.mark.parametrize("entry", methods(), ids=lambda e: e.name)
def test_every_method_takes_input_layout(entry):
    # A keyword of every constructor, checked at construction.
    params = inspect.signature(entry.cls).parameters
    assert "input_layout" in params, entry.name
    assert params["input_layout"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["input_layout"].default is None


@pytest.mark.parametrize(
    "shape, layout",
    [
        ((32, 32, 3), "hwc"),
        ((8, 8, 1), "hwc"),
        ((28, 28, 4), "hwc"),
        ((3, 32, 32), "chw"),
        ((1, 28, 28), "chw"),
        ((3, 32, 3), "chw"),  # ambiguous: channels first unless told
        ((4, 4, 4), "chw"),  # ambiguous
        ((4, 5, 6), "chw"),  # no axis looks like channels
        ((8, 8), None),  # no channel axis
        ((2, 3, 8, 8), "chw"),  # other ranks: the last two axes are spatial
    ],
)
def test_inference_rule(shape, layout):
    assert resolve_input_layout(shape, None) == layout
    for explicit in ("chw", "hwc"):
        if len(shape) == 3:  # an explicit layout is never re-inferred
            assert resolve_input_layout(shape, explicit) == explicit


def test_axes_of_each_layout():
    assert spatial_axes(3, "chw") == (1, 2) and channel_axis(3, "chw") == 0
    assert spatial_axes(3, "hwc") == (0, 1) and channel_axis(3, "hwc") == 2
    assert spatial_axes(2, None) == (0, 1) and channel_axis(2, None) is None
    x = jnp.zeros((6, 7, 3))
    assert spatial_shape(x, None, "test") == (6, 7)
    assert spatial_shape(x, "chw", "test") == (7, 3)


def _sum_model(x):
    # Any layout: two scores from the sums of the input and of its first slice.
    return jnp.stack([jnp.sum(x), jnp.sum(x[0])])


def test_explicit_chw_on_a_channels_last_shape_is_honoured():
    # (8, 8, 3) would be inferred channels-last; `input_layout="chw"` reads it
    # as 8 channels of 8 x 3 pixels, and no method re-infers it.
    x = _image(3).transpose(1, 2, 0)
    key = jax.random.key(0)
    rise = xa.RISE(_sum_model, n_masks=4, cell_size=2)
    assert rise(x, 0, key=key).shape == (8, 8)
    rise_chw = xa.RISE(_sum_model, n_masks=4, cell_size=2, input_layout="chw")
    assert rise_chw(x, 0, key=key).shape == (8, 3)
    assert xa.SobelCAM(_sum_model)(x, 0).shape == (8, 8)
    assert xa.SobelCAM(_sum_model, input_layout="chw")(x, 0).shape == (8, 3)
    # An (8, 3) mask is an (H, W) mask of the explicit layout: `mask[None]`.
    mask = jnp.arange(24, dtype=jnp.int32).reshape(8, 3) // 6
    a = xa.FeatureAblation(_sum_model, mask, input_layout="chw")(x, 0)
    assert_close(a, xa.FeatureAblation(_sum_model, mask[None])(x, 0))
    # An (8, 8) mask is an (H, W) mask of the inferred layout, `mask[..., None]`,
    # and does not fit the explicit one.
    grid = _MASK
    b = xa.FeatureAblation(_sum_model, grid)(x, 0)
    assert_close(b, xa.FeatureAblation(_sum_model, grid[..., None])(x, 0))
    with pytest.raises(ValueError, match=r"mask\[None\]"):
        xa.FeatureAblation(_sum_model, grid, input_layout="chw")(x[:, :, :1], 0)


def test_hw_mask_covers_every_channel_in_either_layout():
    # An (H, W) mask on (C, H, W) or (H, W, C): each pixel's channels share one
    # feature, so on a sum model every element of a feature carries its drop.
    x = _image(3)
    a = xa.FeatureAblation(_sum_model, _MASK)(x, 0)
    b = xa.FeatureAblation(_sum_model, _MASK)(x.transpose(1, 2, 0), 0)
    cells = jnp.stack([jnp.sum(x * (_MASK == i)[None]) for i in range(4)])
    assert_close(a, jnp.broadcast_to(cells[_MASK], x.shape))
    assert_close(b, jnp.transpose(a, (1, 2, 0)))


def test_bad_input_layout_errors():
    # A ValueError naming the fix (beartype, in the test run, may refuse the
    # value against the `Literal` annotation first: a TypeError naming it).
    with pytest.raises((ValueError, TypeError), match="input_layout"):
        xa.Gradients(_sum_model, input_layout="nhwc")
    with pytest.raises((ValueError, TypeError), match="input_layout"):
        xa.GradCAM(_cnn(), lambda m: m.conv2, input_layout="CHW")
    with pytest.raises(ValueError, match="input_layout='hwc'"):
        check_input_layout("nhwc")
    # An explicit layout needs a 3-D image.
    with pytest.raises(ValueError, match="input_layout='hwc'.*3-D"):
        xa.RISE(_sum_model, n_masks=2, cell_size=2, input_layout="hwc")(
            jnp.ones((8, 8)), 0, key=jax.random.key(0)
        )
    # A mask that fits neither layout names the fix for the inferred one.
    with pytest.raises(ValueError, match=r"mask\[None\]"):
        xa.FeatureAblation(_sum_model, jnp.zeros((5, 5), jnp.int32))(_image(3), 0)


def test_localisation_metrics_sum_the_channels_of_either_layout():
    a = jax.random.normal(jax.random.key(4), (3, 8, 8))
    mask = _MASK == 0
    for metric in (xa.metrics.RelevanceMassAccuracy(), xa.metrics.PointingGame()):
        want = metric(a, mask)
        assert_close(metric(jnp.transpose(a, (1, 2, 0)), mask), want)
