"""The CNN-vs-ViT comparison: every ViT method scored by the metrics, exactly."""

import importlib.util
import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._cli import _compare

from ._vit_reference import tiny_vit
from .helpers import assert_close

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "cnn_vs_vit.py"


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
    # score_all reports the mean and the standard error over the examples (Python
    # floats of float32 results, hence dtype=)
    d0 = deletion_metric(xs[0], 3, jnp.asarray(chosen["CP-LRP"][0]))
    f32 = dict(dtype=np.float32)
    assert_close(scores["CP-LRP"]["deletion"][0], float(d0 + deletion) / 2, **f32)
    assert_close(scores["CP-LRP"]["sparseness"][0], float(np.mean(sparse)), **f32)
    # The standard error of two values, |s0 - s1| / 2, cancels terms of size |s|.
    size = float(np.mean(np.abs(sparse)))
    assert_close(
        scores["CP-LRP"]["sparseness"][1], float(np.std(sparse)), scale=size, **f32
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


def _predicting(model, cls):
    # An untrained model whose classifier's bias makes every digit class `cls`.
    where = (lambda m: m.head.bias) if hasattr(model, "head") else lambda m: m.fc.bias
    bias = where(model)
    return eqx.tree_at(where, model, bias + 100.0 * jax.nn.one_hot(cls, bias.size))


@pytest.mark.slow
def test_benchmark_script_fast_run(tmp_path):
    # benchmarks/cnn_vs_vit.py end to end (picture, scores, report) on tiny models
    # that call every digit a 3, and digits all labelled 3: every row is scored.
    spec = importlib.util.spec_from_file_location("cnn_vs_vit", BENCH)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cnn = _predicting(xa.models.SmallCNN(width=4, key=jax.random.key(0)), 3)
    vit = _predicting(tiny_vit(0, image=28, patch=7, depth=1, dim=16, classes=10), 3)
    mnist = xa.datasets.mnist()
    data = mnist._replace(x_test=mnist.x_test[:8], y_test=np.full(8, 3, np.int32))
    out, png = tmp_path / "r.md", tmp_path / "r.png"
    lines = script.main(
        ["--fast", "--n", "6", "--out", str(out), "--png", str(png)],
        models=(cnn, vit),
        data=data,
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.read_text() == "\n".join(lines)
    assert "CNN 1.000, ViT 1.000" in lines[0]
    table = [line for line in "\n".join(lines).splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 9  # header, rule, 8 methods and Random
    # n/a: Guided Backprop on the ViT, the attention methods on the CNN.
    assert sum(line.count("n/a") for line in table) == 3 + 3 * 3
