"""Targets for any task and PyTree outputs, across the whole method registry.

Every registry method that takes a target is traced (`eqx.filter_eval_shape`:
the trace-time checks and the output shape, without compiling) with each
classifier target of `xa.targets` and with a callable on a model returning a
dict; the rule-based methods' definitions for a general target are checked by
hand: LRP starts from `out * dt/dout` and is linear in it, DeepLIFT is complete
for the target function.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr import targets as T
from eqx_attr._registry import BuildContext, methods

from ._vit_reference import tiny_vit
from .helpers import assert_close, digit_like


class Plain(eqx.Module):
    """The model as it is (a wrapper, so that the layer paths match `Dict`'s)."""

    inner: eqx.Module

    def __call__(self, x):
        return self.inner(x)


class Dict(eqx.Module):
    """The model's scores in a dict, beside a tuple of a float and an integer."""

    inner: eqx.Module

    def __call__(self, x):
        s = self.inner(x)
        return {"logits": s, "aux": (2.0 * s[:2], jnp.argmax(s))}


def in_dict(out):
    return out["logits"][3]


@functools.cache
def _cnn():
    # Built once, as one compiled program (eagerly, every initialiser compiles).
    return eqx.filter_jit(lambda k: xa.models.SmallCNN(width=2, key=k))(
        jax.random.key(0)
    )


@functools.cache
def _vit():
    return eqx.filter_jit(tiny_vit)()


ATTN = lambda m: [b.attn.attn_drop for b in m.inner.blocks]  # noqa: E731
NORMS = lambda m: (
    [n for b in m.inner.blocks for n in (b.norm1, b.norm2)]
    + [  # noqa: E731
        m.inner.norm
    ]
)
ACTS = lambda m: [b.mlp.act for b in m.inner.blocks]  # noqa: E731

# Methods that accept and ignore `target` (class-agnostic).
AGNOSTIC = {"eigencam", "randomcam", "sobelcam", "kpcacam", "attention_rollout"}


def _build(entry, model):
    if entry.name == "conservative_lrp":  # a wrapped ViT: name its norms
        return xa.ConservativeLRP(model, ATTN, NORMS, ACTS)
    ids = (np.arange(8) // 4)[:, None] * 2 + np.arange(8) // 4
    return entry.build(
        BuildContext(
            model=model,
            layer=lambda m: m.inner.conv2,
            classifier=lambda m: m.inner.fc,
            attention=ATTN,
            n_prefix_tokens=1,
            mask=jnp.asarray(ids[None], jnp.int32),
            options={"n_steps": 2, "n_samples": 4, "chunk_size": 2},
            input_shape=(1, 8, 8),
        )
    )


def _shape(entry, model, target):
    method = _build(entry, model)
    key = jax.random.key(0) if entry.random else None

    def call(x):
        return method(x, target) if key is None else method(x, target, key=key)

    return eqx.filter_eval_shape(call, digit_like(0, (1, 8, 8)))


TARGETS = (
    T.ClassIndex(3),
    T.LabelSet([1, 3]),
    T.Margin(3),
    T.LogSoftmax(3),
)
# Each method is traced with one classifier target, in turn, so that each target
# meets methods of every family: every method routes a callable target through
# the one `make_objective`, and a trace per pair would cost four times as much.
CASES = [(e, TARGETS[i % len(TARGETS)]) for i, e in enumerate(methods())]


@pytest.mark.parametrize(
    "entry,target", CASES, ids=[f"{e.name}-{type(t).__name__}" for e, t in CASES]
)
def test_every_method_takes_classifier_targets_and_pytree_outputs(entry, target):
    base = _vit() if "attention" in entry.needs else _cnn()
    expected = {"input": (1, 8, 8), "map": (8, 8)}.get(entry.output)
    if entry.output == "layer":
        x = digit_like(0, (1, 8, 8))
        layer = lambda m: m.conv2  # noqa: E731
        expected = eqx.filter_eval_shape(xa.layer_activation, base, layer, x).shape
    if not entry.takes_target:  # a neuron method: the neuron, whatever the output
        assert _shape(entry, Dict(base), None).shape == expected
        return
    assert _shape(entry, Plain(base), target).shape == expected
    assert _shape(entry, Dict(base), in_dict).shape == expected
    if entry.name not in AGNOSTIC:
        # An int target needs an array output: the error names the fix.
        with pytest.raises(ValueError, match="callable that maps that whole output"):
            _shape(entry, Dict(base), 3)


# ---------------------------------------------------------------------------------
# LRP: R_out = out * dt/dout


@jax.jit
def _lrp_cases(x):
    model = _cnn()
    lrp, lrp_dict = xa.LRP(Plain(model)), xa.LRP(Dict(model))
    per_class = jax.vmap(lambda c: lrp(x, c))(jnp.arange(10))  # R_out = f_c e_c
    return {
        "per_class": per_class,
        "lambda": lrp(x, lambda out: out[3]),
        "ClassIndex": lrp(x, T.ClassIndex(3)),
        "Margin": lrp(x, T.Margin(3)),
        "LogSoftmax": lrp(x, T.LogSoftmax(3)),
        "dict": lrp_dict(x, in_dict),
        "dict_aux": lrp_dict(x, lambda out: out["aux"][0][1]),
        "scores": model(x),
    }


def test_lrp_starts_from_out_times_the_targets_gradient():
    r = _lrp_cases(digit_like(0, (1, 8, 8)))
    pc, s = r["per_class"], np.asarray(r["scores"], np.float64)
    for name in ("lambda", "ClassIndex", "dict"):
        assert_close(r[name], pc[3], err_msg=name)
    # Every rule is linear in the relevance it gets: the result is
    # sum_i dt/dout_i * LRP(class i).
    assert_close(r["dict_aux"], 2.0 * pc[1])  # out["aux"][0][1] = 2 f_1
    rival = int(np.argmax(np.where(np.arange(10) == 3, -np.inf, s)))
    assert_close(r["Margin"], pc[3] - pc[rival])
    p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    weights = np.eye(10)[3] - p  # d log_softmax(s)[3] / ds
    assert_close(r["LogSoftmax"], np.tensordot(weights, pc, 1), scale=np.abs(pc).max())


# ---------------------------------------------------------------------------------
# DeepLIFT and guided backprop: the dict output is the logits model


@jax.jit
def _rule_cases(x):
    model = _cnn()
    dl = lambda m: xa.DeepLift(m, baseline=0.1, return_delta=True)  # noqa: E731
    linear = lambda out: out["logits"][3] - 0.5 * out["aux"][0][1]  # noqa: E731
    return {
        "deeplift": dl(Plain(model))(x, 3),
        "deeplift_dict": dl(Dict(model))(x, in_dict),
        "deeplift_linear": dl(Dict(model))(x, linear),
        "deeplift_1": dl(Plain(model))(x, 1),
        "guided": xa.GuidedBackprop(Plain(model))(x, 3),
        "guided_dict": xa.GuidedBackprop(Dict(model))(x, in_dict),
        "scores": (model(x), model(jnp.full_like(x, 0.1))),
    }


def test_rule_methods_on_dict_outputs_and_deeplift_completeness():
    r = _rule_cases(digit_like(1, (1, 8, 8)))
    for name in ("deeplift", "guided"):
        assert_close(r[f"{name}_dict"], r[name], err_msg=name)
    (a3, _), (a1, _) = r["deeplift"], r["deeplift_1"]
    # Linear in the output: the same combination of the classes' attributions.
    assert_close(r["deeplift_linear"][0], a3 - 1.0 * a1, scale=np.abs(a3).max())
    # Completeness for the target function: sum a = t(f(x)) - t(f(b)), with
    # t(out) = out["logits"][3] - 0.5 out["aux"][0][1] = s_3 - s_1.
    sx, sb = (np.asarray(v, np.float64) for v in r["scores"])
    a, delta = r["deeplift_linear"]
    scale = float(np.abs(sx).max() + np.abs(sb).max())
    total = np.sum(np.asarray(a, np.float64))
    assert_close(
        total, (sx[3] - sx[1]) - (sb[3] - sb[1]), dtype=np.float32, scale=scale
    )
    assert_close(delta, 0.0, dtype=np.float32, scale=scale)


# ---------------------------------------------------------------------------------
# Transformers


@jax.jit
def _transformer_cases(x):
    vit = _vit()
    out = {}
    for name, make in (
        ("chefer", lambda m: xa.CheferRelevance(m, ATTN, n_prefix_tokens=1)),
        ("cplrp", lambda m: xa.ConservativeLRP(m, ATTN, NORMS, ACTS)),
    ):
        out[name] = make(Plain(vit))(x, 3)
        out[name + "_dict"] = make(Dict(vit))(x, in_dict)
    return out


def test_transformer_methods_on_dict_outputs():
    r = _transformer_cases(digit_like(2, (1, 8, 8)))
    for name in ("chefer", "cplrp"):
        assert_close(r[name + "_dict"], r[name], err_msg=name)


# ---------------------------------------------------------------------------------
# The data-set runner: one target per row


class DictLogSoftmax(eqx.Module):
    c: jax.Array

    def __call__(self, out):
        return T.LogSoftmax(self.c)(out["logits"])


def test_explain_dataset_takes_a_stack_of_targets(tmp_path):
    model = _cnn()
    xs = np.asarray(digit_like(3, (5, 1, 8, 8)))
    labels = jnp.array([0, 3, 1, 2, 9])
    # A model returning a dict, with one target object per row that reads it.
    run = dict(batch_size=2, progress=False)
    grads = xa.Gradients(Dict(model))
    g = xa.explain_dataset(grads, xs, DictLogSoftmax(labels), out=tmp_path / "a", **run)
    assert "targets" not in g  # a stack of targets is not a column of indices
    plain = xa.Gradients(Plain(model))
    # The reference, one compiled program (eager vmap compiles op by op).
    expected, logp = jax.jit(
        jax.vmap(
            lambda x, c: (
                plain(x, T.LogSoftmax(c)),
                jax.nn.log_softmax(model(x))[c],
            )
        )
    )(xs, labels)
    assert_close(g["attributions"][:], expected)
    assert_close(g["scores"][:], logp)
    with pytest.raises(ValueError, match="leading axis of 5"):
        xa.explain_dataset(plain, xs, T.LogSoftmax(3), out=tmp_path / "b", **run)
