"""Shared test helpers: the single list of all methods, and `tree_allclose`."""

from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_attr as xa


def tree_allclose(a, b, *, rtol=1e-5, atol=1e-6) -> bool:
    """True when two PyTrees have the same structure and allclose leaves."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(
        np.allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol, atol)
        for x, y in zip(la, lb, strict=True)
    )


@dataclass(frozen=True)
class MethodSpec:
    """How to build one method on SmallCNN, and what it returns."""

    name: str
    build: Callable[[eqx.Module], xa.AbstractAttribution]
    output: str = "input"  # "input": shaped like x; "map": (H, W) like the input
    random: bool = False

    def __repr__(self):
        return self.name


def _unwrap(m):
    # Layer methods name SmallCNN's layers by `where`; tests that wrap the model
    # (a module with an `inner` field, e.g. to count traces) keep those paths valid.
    return getattr(m, "inner", m)


def _conv1(m):
    return _unwrap(m).conv1


def _conv2(m):
    return _unwrap(m).conv2


# The one list of every public method, used by parametrised tests. Methods that
# need a layer use SmallCNN's last feature map.
METHODS: list[MethodSpec] = [
    MethodSpec("Gradients", lambda m: xa.Gradients(m)),
    MethodSpec("GradientsAbs", lambda m: xa.Gradients(m, abs=True)),
    MethodSpec("GradientsXInput", lambda m: xa.GradientsXInput(m)),
    MethodSpec("IntegratedGradients", lambda m: xa.IntegratedGradients(m, n_steps=8)),
    MethodSpec(
        "IntegratedGradientsChunked",
        lambda m: xa.IntegratedGradients(m, n_steps=8, chunk_size=3),
    ),
    MethodSpec(
        "IntegratedGradientsNoise",
        lambda m: xa.IntegratedGradients(
            m, n_steps=4, baseline=xa.baselines.UniformNoise(n_draws=2)
        ),
        random=True,
    ),
    MethodSpec(
        "SmoothGrad",
        lambda m: xa.SmoothGrad(xa.Gradients(m), n_samples=4),
        random=True,
    ),
    MethodSpec(
        "VarGrad",
        lambda m: xa.SmoothGrad(xa.Gradients(m), n_samples=4, kind="vargrad"),
        random=True,
    ),
    MethodSpec("GuidedBackprop", lambda m: xa.GuidedBackprop(m)),
    MethodSpec("Deconvolution", lambda m: xa.Deconvolution(m)),
    MethodSpec(
        "CAM",
        lambda m: xa.CAM(m, _conv2, classifier=lambda m: _unwrap(m).fc),
        output="map",
    ),
    MethodSpec("GradCAM", lambda m: xa.GradCAM(m, _conv2), output="map"),
    MethodSpec("GuidedGradCAM", lambda m: xa.GuidedGradCAM(m, _conv2)),
    MethodSpec("GradCAMPlusPlus", lambda m: xa.GradCAMPlusPlus(m, _conv2), "map"),
    MethodSpec("XGradCAM", lambda m: xa.XGradCAM(m, _conv2), output="map"),
    MethodSpec("HiResCAM", lambda m: xa.HiResCAM(m, _conv1), output="map"),
    MethodSpec("LayerCAM", lambda m: xa.LayerCAM(m, _conv1), output="map"),
    MethodSpec("EigenCAM", lambda m: xa.EigenCAM(m, _conv2), output="map"),
    MethodSpec(
        "ScoreCAM", lambda m: xa.ScoreCAM(m, _conv2, chunk_size=8), output="map"
    ),
    MethodSpec(
        "AblationCAM", lambda m: xa.AblationCAM(m, _conv2, chunk_size=8), output="map"
    ),
    MethodSpec("LRP", lambda m: xa.LRP(m)),
    MethodSpec(
        "LRPGammaBox",
        lambda m: xa.LRP(m, composite=xa.lrp.EpsilonGammaBox(low=0.0, high=1.0)),
    ),
]


def small_cnn(seed: int = 0) -> eqx.Module:
    return xa.models.SmallCNN(width=8, key=jax.random.key(seed))


def digit_like(seed: int = 0, shape=(1, 28, 28)) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)
