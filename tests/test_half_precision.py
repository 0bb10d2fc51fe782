"""Half precision (issue 31): every method on a bfloat16 model and input agrees with
the same method in float32, within bfloat16's rounding.

The model runs in the input's dtype; scores are differenced, summed and regressed
in float32 (perturbation drops, IG's and SmoothGrad's sums, the Shapley/KernelSHAP/
LIME solves, RISE's sums, Score-CAM's and Ablation-CAM's weights, LRP's ratios);
results come back in x's dtype. Both sides run on the same bfloat16-rounded weights
and input (the float32 side is their exact upcast), so only the arithmetic differs.

The CNN is one linear piece (`all_active`: no biases, non-negative kernels, a
non-negative image), so no ReLU flips between the two runs: otherwise a
half-precision pre-activation of 1e-3 on the other side of 0 changes a gradient
discontinuously, which is the model's rounding, not the method's. Methods that
pick (Finer-CAM's classes, XRAI's regions, Random-CAM's draws) see the same picks
on this model, so they are compared whole. The perturbation methods' values are
differences of two scores, each rounded to bfloat16 by the model itself: their
rounding floor is relative to the score |f(x)| (the terms that cancelled), not to
the attribution (the policy's `scale`).
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._registry import methods

from ._user_models import GALLERY, HW, all_active, build_context, without_biases
from .helpers import assert_close

_CNN = next(u for u in GALLERY if u.name == "c_inline")
_VIT = next(u for u in GALLERY if u.name == "d_vit")


def _cast(tree, dtype):
    return jax.tree.map(
        lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree
    )


@functools.cache
def _pair(transformer: bool, dtype_name: str):
    """(um, low-precision model, its float32 upcast, low x, float32 x)."""
    um = _VIT if transformer else _CNN
    model = without_biases(um.make()) if transformer else all_active(um.make())
    dtype = jnp.dtype(dtype_name)
    low = _cast(model, dtype)
    x = jax.random.uniform(jax.random.key(0), um.shape).astype(dtype)
    return um, low, _cast(low, jnp.float32), x, x.astype(jnp.float32)


def _build(entry, um, model):
    return entry.build(build_context(um, model))


@eqx.filter_jit
def _family(family, um_name, low, high, x_low, x_high, key):
    # One compiled program per family for both precisions: at this size a
    # program's fixed compile cost dominates, so a family compiles once.
    um = next(u for u in GALLERY if u.name == um_name)
    out = {}
    for entry in methods(family):
        if entry.name in _NOT_BUILT:
            continue
        kw = {"key": key} if entry.random else {}
        t = 1 if entry.takes_target else None  # a neuron method: its neuron
        out[entry.name] = (
            _build(entry, um, low)(x_low, t, **kw),
            _build(entry, um, high)(x_high, t, **kw),
        )
    return out, high(x_high)[1]


# Score differences: the rounding of each score is relative to the score.
_DIFFERENCES = {"occlusion", "feature_ablation", "shapley_values"}
_DIFFERENCES |= {"shapley_value_sampling", "kernel_shap", "lime", "ablationcam"}
_DIFFERENCES |= {"layer_feature_ablation", "neuron_feature_ablation"}
# ConservativeLRP's registry build needs the zoo ViT's norms (see
# test_user_models.py for the ViT of Equinox modules); it is run there in float32.
_NOT_BUILT = {"conservative_lrp"}


@pytest.mark.parametrize("family", sorted({e.family for e in methods()}))
def test_bfloat16_matches_float32(family):
    """Every registry method of `family` (compiled together), each checked."""
    um, low, high, x_low, x_high = _pair(family == "transformer", "bfloat16")
    outs, fx = _family(family, um.name, low, high, x_low, x_high, jax.random.key(1))
    expected = {e.name for e in methods(family)} - _NOT_BUILT
    assert set(outs) == expected
    for name, (a_low, a_high) in outs.items():
        assert a_low.dtype == jnp.bfloat16, f"{name}: results come back in x's dtype"
        assert a_high.dtype == jnp.float32, name
        assert np.all(np.isfinite(np.asarray(a_low, np.float32))), name
        scale = None
        if name in _DIFFERENCES:
            scale = max(float(np.max(np.abs(a_high))), abs(float(fx)))
        assert_close(
            np.asarray(a_low, np.float32), a_high, dtype=jnp.bfloat16, scale=scale,
            err_msg=name,
        )  # fmt: skip


@functools.cache
def _float16_compiles() -> bool:
    """Whether XLA can compile a float16 conversion here: without F16C (an
    SSE4.2-only instruction set) XLA:CPU misses the conversion's runtime symbol."""
    try:
        jax.jit(lambda v: (v.astype(jnp.float16) * 2).astype(jnp.float32))(
            jnp.ones(2)
        ).block_until_ready()
    except jax.errors.JaxRuntimeError as e:
        if "materialize symbols" in str(e):
            return False
        raise
    return True


@pytest.mark.parametrize(
    "make",
    [
        lambda m: xa.Occlusion(m, window=(1, 4, 4), strides=(1, 2, 2)),
        lambda m: xa.IntegratedGradients(m, n_steps=8),
        lambda m: xa.KernelShap(m, mask=xa.masks.grid((HW, HW), (4, 4)), n_samples=16),
    ],
    ids=["Occlusion", "IntegratedGradients", "KernelShap"],
)
def test_float16_matches_float32(make):
    if not _float16_compiles():
        pytest.skip(
            "XLA:CPU cannot compile float16 conversions for this instruction set "
            "(with --xla_cpu_max_isa=SSE4_2: 'Failed to materialize symbols ... "
            "convert_element_type'); bfloat16 covers half precision here"
        )
    um, low, high, x_low, x_high = _pair(False, "float16")
    key = jax.random.key(2)

    @eqx.filter_jit
    def run(low, high):
        kw = {"key": key} if isinstance(make(low), xa.KernelShap) else {}
        return make(low)(x_low, 1, **kw), make(high)(x_high, 1, **kw), high(x_high)[1]

    a_low, a_high, fx = run(low, high)
    assert a_low.dtype == jnp.float16
    scale = max(float(np.max(np.abs(a_high))), abs(float(fx)))
    assert_close(np.asarray(a_low, np.float32), a_high, dtype=jnp.float16, scale=scale)


def _metrics(model, x, a, key):
    m = xa.metrics
    return {
        "Deletion": m.Deletion(model, n_steps=8)(x, 1, a),
        "Insertion": m.Insertion(model, n_steps=8)(x, 1, a),
        "Infidelity": m.Infidelity(model, n_samples=8, stdev=0.1)(x, 1, a, key=key),
        "Completeness": m.Completeness(model)(x, 1, a),
    }


def test_bfloat16_metrics_match_float32():
    """The perturbation metrics' curves and sums in float32 on a bfloat16 model.

    The attribution is bfloat16-exact on both sides, so the pixel orders agree;
    the curves are softmax probabilities (scale 1), Completeness is a score
    difference (scale |f(x)|) and Infidelity, a mean of squares dominated by this
    random attribution's dot products, is compared relative to itself.
    """
    um, low, high, x_low, x_high = _pair(False, "bfloat16")
    a = jax.random.normal(jax.random.key(3), um.shape).astype(jnp.bfloat16)
    key = jax.random.key(4)
    got = eqx.filter_jit(_metrics)(low, x_low, a, key)
    want = eqx.filter_jit(_metrics)(high, x_high, a.astype(jnp.float32), key)
    fx = abs(float(high(x_high)[1]))
    scales = {"Deletion": 1.0, "Insertion": 1.0, "Completeness": fx}
    scales["Infidelity"] = None
    for name, value in got.items():
        assert value.dtype == jnp.float32, name
        assert_close(
            value, want[name], dtype=jnp.bfloat16, scale=scales[name], err_msg=name
        )
