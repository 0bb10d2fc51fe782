"""Every registry method on the six models of issue 31, written the way users write
them (tests/_user_models.py): it runs and returns the documented shape, or refuses
the model at trace time with a clear error. `REFUSED` is the table printed in
docs/models.md ("Your own models"); a test keeps the two in step.

Shapes are checked with `jax.eval_shape` (a trace, no compile); a handful of calls
run numerically: DeepLIFT's completeness on every model, Integrated Gradients'
completeness where its quadrature resolves the path, AttnLRP on the residual MLP
and the ViT, the channels-last model against its channels-first twin, and the
training-mode refusals.
"""

import functools
import pathlib
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._registry import methods

from ._user_models import (
    GALLERY,
    HW,
    ChannelsLastCNN,
    DropoutCNN,
    InlineCNN,
    build_context,
)
from .helpers import assert_close, jcall

_BY_NAME = {um.name: um for um in GALLERY}
_NO_GUIDED = "no guided or deconvnet variant"
_NOT_A_MAP = "needs the layer to output a 3-D feature map"

# (model, method) -> (error, words of its message). Everything else runs.
REFUSED: dict[tuple[str, str], tuple[type[Exception], str]] = {
    **{
        (model, method): (ValueError, _NO_GUIDED)
        for model in ("a_bn_gelu", "b_res_mlp", "d_vit")
        for method in ("guided_backprop", "deconvolution", "guided_gradcam")
    },
    **{
        (model, method): (ValueError, _NO_GUIDED)
        for model in ("a_bn_gelu", "d_vit")
        for method in ("neuron_guided_backprop", "neuron_deconvolution")
    },
    # The MLP's layer is its first: no activation before it to apply a rule to.
    **{
        ("b_res_mlp", method): (ValueError, "No ReLU found")
        for method in ("neuron_guided_backprop", "neuron_deconvolution")
    },
    **{
        ("b_res_mlp", e.name): (ValueError, _NOT_A_MAP)
        for e in methods("cam")
        if "layer" in e.needs
    },
}


@functools.cache
def _model(name: str):
    return _BY_NAME[name].make()


def _x(um, dtype=jnp.float32):
    return jax.random.uniform(jax.random.key(0), um.shape, dtype)


def _build(entry, um, model):
    # The brief's choices where the registry's default build does not fit.
    if um.name in ("b_res_mlp", "d_vit"):  # AttnLRP's rules for their products
        if entry.name == "lrp":
            return xa.LRP(model, composite=xa.lrp.AttnLRP())
        if entry.name == "layer_lrp":
            return xa.LayerLRP(model, um.where, composite=xa.lrp.AttnLRP())
        if entry.name == "crp":
            return xa.CRP(model, um.where, 0, composite=xa.lrp.AttnLRP())
    if entry.name == "conservative_lrp":
        return xa.ConservativeLRP(
            model,
            um.attention,
            norms=lambda m: [b.norm for b in m.blocks],
            activations=lambda m: [b.mlp.activation for b in m.blocks],
        )
    return entry.build(build_context(um, model))


def _applies(um, entry) -> bool:
    # The transformer family needs attention: only the ViT has it.
    return entry.family != "transformer" or um.transformer


CASES = [
    pytest.param(um.name, e.name, id=f"{um.name}-{e.name}")
    for um in GALLERY
    for e in methods()
    if _applies(um, e)
]


def _call(method, entry, x):
    kw = {"key": jax.random.key(1)} if entry.random else {}
    return method(x, 1 if entry.takes_target else None, **kw)


def _expected_shape(um, entry):
    if entry.output == "map":
        return (HW, HW)
    if entry.output == "layer":  # the layer family: shaped like um.where's output
        x = _x(um)
        model = _model(um.name)
        return eqx.filter_eval_shape(xa.layer_activation, model, um.where, x).shape
    return um.shape


@pytest.mark.parametrize("model_name, method_name", CASES)
def test_runs_or_refuses(model_name, method_name):
    um, entry = (
        _BY_NAME[model_name],
        next(e for e in methods() if e.name == method_name),
    )
    model, x = _model(model_name), _x(um)
    refused = REFUSED.get((model_name, method_name))
    if refused is not None:
        error, words = refused
        with pytest.raises(error, match=re.escape(words)):
            jax.eval_shape(lambda x: _call(_build(entry, um, model), entry, x), x)
        return
    out = jax.eval_shape(lambda x: _call(_build(entry, um, model), entry, x), x)
    assert out.shape == _expected_shape(um, entry), (method_name, out.shape)
    assert out.dtype == x.dtype


def _fx(model, x):
    return model(x)[1]


@pytest.mark.parametrize(
    "model_name",
    [um.name for um in GALLERY],
)
def test_deeplift_completeness(model_name):
    """DeepLIFT's attributions sum to f(x) - f(baseline) (DESIGN.md), on every
    model."""
    um, model = _BY_NAME[model_name], _model(model_name)
    x, b = _x(um), jnp.full(um.shape, 0.25)
    a = jcall(xa.DeepLift(model, baseline=b), x, 1)
    assert a.shape == um.shape and np.all(np.isfinite(a))
    fx, fb = _fx(model, x), _fx(model, b)
    # The sum cancels terms of the size of the scores.
    assert_close(jnp.sum(a), fx - fb, scale=abs(fx) + abs(fb))


@pytest.mark.parametrize("model_name", ["a_bn_gelu", "b_res_mlp", "d_vit"])
def test_integrated_gradients_completeness(model_name):
    """The registry's `completeness` axiom of IG, within its quadrature error.

    On these smooth models (GELU, SiLU, softmax; a ReLU kink slows the quadrature
    down) 32 Gauss-Legendre nodes resolve the path integral to 3e-7 of
    f(x) - f(b) (measured), so `atol`, the quadrature's error, is 1e-4 of it; the
    rounding floor is relative to the scores that cancelled.
    """
    (entry,) = [e for e in methods() if e.name == "integrated_gradients"]
    assert "completeness" in entry.axioms
    um, model = _BY_NAME[model_name], _model(model_name)
    x = _x(um)
    a = jcall(xa.IntegratedGradients(model, n_steps=32), x, 1)
    fx, fb = _fx(model, x), _fx(model, jnp.zeros_like(x))
    change = float(fx - fb)
    scale = abs(float(fx)) + abs(float(fb))
    assert_close(jnp.sum(a), change, scale=scale, atol=1e-4 * abs(change))


@pytest.mark.parametrize("model_name", ["b_res_mlp", "d_vit"])
def test_attn_lrp_runs(model_name):
    um, model = _BY_NAME[model_name], _model(model_name)
    a = jcall(xa.LRP(model, composite=xa.lrp.AttnLRP()), _x(um), 1)
    assert a.shape == um.shape and np.all(np.isfinite(a)) and np.any(a != 0)


def _channels_first_twin(model: ChannelsLastCNN) -> InlineCNN:
    twin = InlineCNN(jax.random.key(0))
    return eqx.tree_at(
        lambda m: (m.conv1, m.conv2, m.fc), twin, (model.conv1, model.conv2, model.fc)
    )


@pytest.mark.parametrize(
    "make, make_twin",
    [
        (xa.Gradients, xa.Gradients),
        (
            lambda m: xa.GradCAM(m, lambda m: m.conv2),
            lambda m: xa.GradCAM(m, lambda m: m.conv2),
        ),
        (
            lambda m: xa.Occlusion(m, window=(4, 4, 1), strides=(2, 2, 1)),
            lambda m: xa.Occlusion(m, window=(1, 4, 4), strides=(1, 2, 2)),
        ),
    ],
    ids=["Gradients", "GradCAM", "Occlusion"],
)
def test_channels_last_equals_channels_first(make, make_twin):
    """(e) on an (H, W, C) image is the same computation as its channels-first twin
    (the same layers on `(C, H, W)`): attributions are the twin's, transposed;
    maps are equal."""
    model = _model("e_channels_last")
    twin = _channels_first_twin(model)
    x = _x(_BY_NAME["e_channels_last"])
    x_chw = jnp.transpose(x, (2, 0, 1))
    assert_close(model(x), twin(x_chw))
    a = jcall(make(model), x, 1)
    b = jcall(make_twin(twin), x_chw, 1)
    if a.ndim == 3:
        b = jnp.transpose(b, (1, 2, 0))
    assert_close(a, b)


def test_cam_needs_the_pooled_map():
    """Classic CAM on a layer followed by an inline activation: stopped at run time
    (the check compares values), naming the fix, as docs/models.md says."""
    um = _BY_NAME["c_inline"]
    with pytest.raises(eqx.EquinoxRuntimeError, match="global average pooling"):
        xa.CAM(_model(um.name), um.where, classifier=um.classifier)(_x(um), 1)


def _bn_in_training_mode():
    from ._user_models import BNGeluCNN

    model, state = eqx.nn.make_with_state(BNGeluCNN)(jax.random.key(1))
    return xa.models.with_state(model, state, inference=False)


@pytest.mark.parametrize(
    "make",
    [lambda: DropoutCNN(jax.random.key(6)), _bn_in_training_mode],
    ids=["Dropout", "BatchNorm"],
)
def test_training_mode_is_refused(make):
    """(f) and (a) left in training mode: refused at trace time, naming the fix."""
    x = _x(_BY_NAME["f_dropout"])
    with pytest.raises(ValueError, match="inference_mode"):
        jax.eval_shape(lambda x: xa.Gradients(make())(x, 1), x)


def test_docs_table_matches():
    """docs/models.md's gallery table lists exactly the refusals above."""
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "models.md").read_text()
    section = doc.split("### A gallery of models as users write them", 1)[1].split(
        "\n## ", 1
    )[0]
    for model, method in REFUSED:
        rows = [line for line in section.splitlines() if f"`{method}`" in line]
        assert any(f"({model[0]})" in row for row in rows), (model, method)
