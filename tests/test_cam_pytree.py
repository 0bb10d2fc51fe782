"""The CAM family on PyTree outputs, CAM's architecture errors, and the ViT layer
whose patch tokens carry no gradient (issue 31).

- A model returning a dict is explained through a callable target that reads the
  whole output; each CAM that reads the output in its own way then gives the map
  of the same model returning the scores alone (class-agnostic ones ignore the
  target; tests/test_pytree_outputs.py traces every registry method on it), and
  CAM's weights are `d target / d z` on the classifier's output `z`: linear in
  the target.
- CAM's architecture conditions that hold or fail by structure raise a short
  `ValueError` at trace time (`eqx.filter_eval_shape` runs no computation); the
  one condition on values (global average pooling between `layer` and
  `classifier`) is an `eqx.error_if` with a short first line.
- Grad-CAM on the last block of a ViT that reads its class token: the patch
  tokens' gradient is zero, so the map would be all zero; it raises with the fix.
  On the block before, the map is the hand-derived token Grad-CAM.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close, digit_like
from .test_pytree_outputs import Dict, Plain
from .test_transformer_mha import GRID, MhaViT


class Scaled(eqx.Module):
    """Something after the classifier: twice the scores."""

    inner: eqx.Module

    def __call__(self, x):
        return 2.0 * self.inner(x)


def in_dict(out):
    return out["logits"][3]


def linear(out):
    # out["aux"][0][1] = 2 s_1, so this is s_3 - s_1.
    return out["logits"][3] - 0.5 * out["aux"][0][1]


@functools.cache
def _cnn():
    # conv1 (2 channels) -> conv2 (8 channels, 4x4 on an 8x8 input) -> GAP -> fc.
    return eqx.filter_jit(lambda k: xa.models.SmallCNN(width=2, key=k))(
        jax.random.key(0)
    )


LAYER = lambda m: m.inner.conv2  # noqa: E731
FC = lambda m: m.inner.fc  # noqa: E731
RAW = dict(relu=False, resize=None)


@eqx.filter_jit
def _cam_cases(net, x):
    plain, tree = Plain(net), Dict(net)
    cam = functools.partial(xa.CAM, layer=LAYER, classifier=FC, **RAW)
    key = jax.random.key(1)
    out = {
        "cam": (cam(plain)(x, 3), cam(tree)(x, in_dict)),
        "cam_linear": (cam(plain)(x, 3) - cam(plain)(x, 1), cam(tree)(x, linear)),
        "shapleycam": tuple(
            xa.ShapleyCAM(m, LAYER, **RAW)(x, t)
            for m, t in ((plain, 3), (tree, in_dict))
        ),
        # A callable target is explained as given: Grad-CAM of it.
        "finercam": (
            xa.GradCAM(plain, LAYER, **RAW)(x, 3),
            xa.FinerCAM(tree, LAYER, **RAW)(x, in_dict),
        ),
        "randomcam": tuple(
            xa.RandomCAM(m, LAYER, **RAW)(x, t, key=key)
            for m, t in ((plain, None), (tree, in_dict))
        ),
        "eigencam": (
            xa.EigenCAM(plain, LAYER, **RAW)(x),
            xa.EigenCAM(tree, LAYER, **RAW)(x, in_dict),
        ),
    }
    return out, net(x)


def test_cam_family_on_a_dict_output_equals_the_scores_model():
    x = digit_like(0, (1, 8, 8))
    cases, scores = _cam_cases(_cnn(), x)
    for name, (want, got) in cases.items():
        assert got.shape == want.shape, name
        assert_close(got, want, err_msg=name)
    # CAM's identity holds for the classifier inside the dict: mean + bias = s_3.
    net, cam = _cnn(), cases["cam"][1]
    mean, bias = float(jnp.mean(cam)), float(net.fc.bias[3])
    scale = abs(mean) + abs(bias)
    assert_close(mean + bias, float(scores[3]), dtype=np.float32, scale=scale)


def _traced(method, x, target):
    # Trace only: a trace-time error raises here, before any computation.
    return eqx.filter_eval_shape(lambda x: method(x, target), x)


def _first_line(e: BaseException) -> str:
    text = str(e)
    # Equinox prints its own header before the message of `eqx.error_if`.
    i = text.find("CAM:")
    return text[i:].splitlines()[0] if i >= 0 else text.splitlines()[0]


@pytest.mark.parametrize(
    "model,layer,classifier,match",
    [
        (Plain, lambda m: m.inner.conv1, FC, "`layer` has 4 channels, but"),
        (Plain, LAYER, lambda m: m.inner.conv2, "not a linear layer"),
        (Plain, LAYER, lambda m: m.inner.head, "could not select"),
        (Scaled, LAYER, FC, "not `classifier`'s output"),
    ],
    ids=["channels", "not-linear", "missing", "after-classifier"],
)
def test_cam_architecture_errors_at_trace_time(model, layer, classifier, match):
    cam = xa.CAM(model(_cnn()), layer, classifier=classifier)
    with pytest.raises(ValueError, match=match) as info:
        _traced(cam, digit_like(0, (1, 8, 8)), 3)
    # Short: the condition, and the fix on the same line or the next.
    assert len(str(info.value)) < 400, str(info.value)


class _Unused(eqx.Module):
    inner: eqx.Module
    spare: eqx.nn.Linear

    def __call__(self, x):
        return self.inner(x)


def test_cam_classifier_never_called_is_a_trace_time_error():
    net = _cnn()
    model = _Unused(net, net.fc)
    cam = xa.CAM(model, LAYER, classifier=lambda m: m.spare)
    with pytest.raises(ValueError, match="never calls"):
        _traced(cam, digit_like(0, (1, 8, 8)), 3)


def test_cam_value_condition_has_a_short_first_line():
    # conv2's last convolution, before its ReLU: the shapes fit, the values don't.
    pre_relu = lambda m: m.inner.conv2.layers[2]  # noqa: E731
    cam = eqx.filter_jit(xa.CAM(Plain(_cnn()), pre_relu, classifier=FC))
    _traced(cam, digit_like(0, (1, 8, 8)), 3)  # no trace-time error
    with pytest.raises(Exception, match="global average pooling") as info:
        jax.block_until_ready(cam(digit_like(0, (1, 8, 8)), 3))
    first = _first_line(info.value)
    assert first.startswith("CAM: `classifier`'s output is not") and len(first) < 100


# ---------------------------------------------------------------------------------
# A ViT on eqx.nn.MultiheadAttention (per-token norms in a vmap), class-token head.

TOKENS = dict(layout="tokens", n_prefix_tokens=1)


@functools.cache
def _vit():
    return eqx.filter_jit(MhaViT)(jax.random.key(0))


@eqx.filter_jit
def _vit_cases(m, x):
    t = m.embed(x).reshape(m.pos.shape[1], -1).T
    t0 = jnp.concatenate([m.cls, t]) + m.pos
    t1 = m.blocks[0](t0)
    g = jax.grad(lambda t: m.head(m.blocks[1](t)[0])[2])(t1)
    got = xa.GradCAM(m, lambda m: m.blocks[-2], **TOKENS, **RAW)(x, 2)
    return t1, g, got


def test_vit_gradcam_block_before_the_last_is_the_token_formula():
    t1, g, got = _vit_cases(_vit(), digit_like(1, (1, 8, 8)))
    a = np.asarray(t1[1:]).reshape(GRID, GRID, -1)  # patch tokens, row-major
    want = np.einsum("ijd,d->ij", a, np.asarray(g[1:]).mean(axis=0))
    assert float(np.abs(np.asarray(g[1:])).max()) > 0
    assert_close(got, want)


# One method per code path that reads the gradient (the gradient CAMs' template,
# Finer-CAM, Shapley-CAM); the model has 3 classes, Finer-CAM compares with one.
@pytest.mark.parametrize(
    "method,options",
    [("GradCAM", {}), ("FinerCAM", {"comparison": (1,)}), ("ShapleyCAM", {})],
)
def test_vit_last_block_output_is_refused_not_an_all_zero_map(method, options):
    last = lambda m: m.blocks[-1]  # noqa: E731
    cam = eqx.filter_jit(getattr(xa, method)(_vit(), last, **TOKENS, **options))
    with pytest.raises(Exception, match="depends only on the class token") as info:
        jax.block_until_ready(cam(digit_like(1, (1, 8, 8)), 2))
    assert "blocks[-1].norm1" in str(info.value)
    assert f"{method}: the target depends only" in str(info.value)


def test_vit_token_activation_without_token_layout_is_a_trace_time_error():
    cam = xa.GradCAM(_vit(), lambda m: m.blocks[-1])
    with pytest.raises(ValueError, match="layout='tokens'"):
        _traced(cam, digit_like(1, (1, 8, 8)), 2)
