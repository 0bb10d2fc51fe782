"""The CNN-vs-ViT comparison: every ViT method scored by the metrics, exactly."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._transformer import _compare

from ._vit_reference import tiny_vit


def test_vit_methods_scored_like_direct_metric_calls():
    vit = tiny_vit(0, image=28, patch=7, depth=1, dim=16, classes=10)
    xs = jax.random.uniform(jax.random.key(0), (2, 1, 28, 28))
    ts = jnp.array([3, 7])
    methods = _compare.vit_methods(vit, n_steps=2)
    assert set(methods) == {
        "Gradients", "Gradients x Input", "Integrated Gradients", "Grad-CAM",
        "Attention rollout", "Chefer relevance", "CP-LRP",
    }  # fmt: skip
    chosen = {k: methods[k] for k in ("Chefer relevance", "CP-LRP")}
    chosen = _compare.explain_all(chosen, xs, ts)
    assert all(a.shape == (2, 1, 28, 28) for a in chosen.values())
    scores = _compare.score_all(vit, chosen, xs, ts, n_steps=4)
    # The direct calls, each compiled as one program (eagerly, every op compiles)
    a = jnp.asarray(chosen["CP-LRP"][1])
    deletion_metric = eqx.filter_jit(xa.metrics.Deletion(vit, n_steps=4, baseline=0.0))
    deletion = deletion_metric(xs[1], 7, a)
    sparseness = eqx.filter_jit(xa.metrics.Sparseness())
    sparse = [sparseness(jnp.asarray(m)) for m in chosen["CP-LRP"]]
    # score_all reports the mean and the standard error over the examples
    d0 = deletion_metric(xs[0], 3, jnp.asarray(chosen["CP-LRP"][0]))
    assert scores["CP-LRP"]["deletion"][0] == pytest.approx(
        float(d0 + deletion) / 2, rel=1e-5
    )
    assert scores["CP-LRP"]["sparseness"][0] == pytest.approx(
        float(np.mean(sparse)), rel=1e-5
    )
    assert scores["CP-LRP"]["sparseness"][1] == pytest.approx(
        float(np.std(sparse)), rel=1e-4
    )
    table = _compare.comparison_markdown({"ViT": scores})
    assert table.splitlines()[0].startswith("| method | deletion ↓ ViT")
    assert len(table.splitlines()) == 4


def test_no_digit_correct_is_an_error():
    vit = tiny_vit(0, image=28, patch=7, depth=1, dim=16, classes=10)
    cnn = xa.models.SmallCNN(width=8, key=jax.random.key(0))
    xs = jnp.zeros((1, 1, 28, 28))
    wrong = (xa.training.predict(cnn, xs) + 1) % 10
    with pytest.raises(ValueError, match="classified correctly by both"):
        _compare.compare_cnn_vit(cnn, vit, xs, wrong)
