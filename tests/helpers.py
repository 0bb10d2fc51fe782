"""Shared test helpers: the single list of all methods, and `tree_allclose`.

`METHODS` is every registry entry (`eqx_attr._registry.methods()`) built at test
size on SmallCNN, plus the variants listed by hand below (a hand-written spec
named like the entry's class replaces the entry's default build). Entries that
need what SmallCNN cannot offer (a transformer's attention) are listed in
`NOT_ON_SMALL_CNN`.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_attr as xa
from eqx_attr._registry import BuildContext, MethodEntry, methods


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
    # Class-agnostic methods (Eigen-CAM, attention rollout) accept and ignore
    # `target`; the fuzz tests then do not expect target errors from them.
    class_agnostic: bool = False
    # Methods whose options depend on the input's size (perturbation masks and
    # windows): `sized(model, input_shape)`; `build` then means the 28x28 digits.
    sized: Callable[[eqx.Module, tuple[int, ...]], xa.AbstractAttribution] | None = None

    def make(self, model: eqx.Module, shape: tuple[int, ...]):
        """The method for inputs of `shape`."""
        return self.build(model) if self.sized is None else self.sized(model, shape)

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


def _grid(shape: tuple[int, ...], per_side: int):
    """Feature ids: `per_side` x `per_side` cells over the input's (H, W)."""
    h, w = shape[-2:]
    return xa.masks.grid((h, w), (-(-h // per_side), -(-w // per_side)))


def _sized_specs(*rows) -> list[MethodSpec]:
    return [
        MethodSpec(
            name,
            lambda m, f=sized: f(m, (1, 28, 28)),
            output,
            random,
            sized=sized,
        )
        for name, random, output, sized in rows
    ]


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
    MethodSpec(
        "EigenCAM",
        lambda m: xa.EigenCAM(m, _conv2),
        output="map",
        class_agnostic=True,
    ),
    MethodSpec(
        "ScoreCAM", lambda m: xa.ScoreCAM(m, _conv2, chunk_size=8), output="map"
    ),
    MethodSpec(
        "AblationCAM", lambda m: xa.AblationCAM(m, _conv2, chunk_size=8), output="map"
    ),
    # --- rules family (DeepLIFT, GradientShap) ---
    MethodSpec("DeepLift", lambda m: xa.DeepLift(m, baseline=0.1)),
    MethodSpec(
        "DeepLiftShap",
        lambda m: xa.DeepLiftShap(
            m, baseline=xa.baselines.UniformNoise(n_draws=2), chunk_size=1
        ),
        random=True,
    ),
    MethodSpec(
        "GradientShap",
        lambda m: xa.GradientShap(
            m, baseline=xa.baselines.UniformNoise(n_draws=2), n_samples=3, stdev=0.1
        ),
        random=True,
    ),
    MethodSpec("LRP", lambda m: xa.LRP(m)),
    MethodSpec(
        "LRPGammaBox",
        lambda m: xa.LRP(m, composite=xa.lrp.EpsilonGammaBox(low=0.0, high=1.0)),
    ),
    # --- perturbation family (few, coarse features: the contract, not accuracy) ---
    *_sized_specs(
        (
            "Occlusion",
            False,
            "input",
            lambda m, s: xa.Occlusion(
                m,
                window=(1, s[-2] // 2, s[-1] // 2),
                strides=(1, s[-2] // 3, s[-1] // 3),
            ),
        ),
        (
            "FeatureAblation",
            False,
            "input",
            lambda m, s: xa.FeatureAblation(m, mask=_grid(s, 3)),
        ),
        (
            "ShapleyValues",
            False,
            "input",
            lambda m, s: xa.ShapleyValues(m, mask=_grid(s, 2), chunk_size=8),
        ),
        (
            "ShapleyValueSampling",
            True,
            "input",
            lambda m, s: xa.ShapleyValueSampling(m, _grid(s, 2), 2),
        ),
        (
            "KernelShap",
            True,
            "input",
            lambda m, s: xa.KernelShap(m, mask=_grid(s, 2), n_samples=8),
        ),
        (
            "Lime",
            True,
            "input",
            lambda m, s: xa.Lime(m, mask=_grid(s, 2), n_samples=8, alpha=0.0),
        ),
        (
            "RISE",
            True,
            "map",
            lambda m, s: xa.RISE(m, n_masks=8, cell_size=max(1, s[-1] // 4)),
        ),
    ),
    MethodSpec("BlurIG", lambda m: xa.BlurIG(m, max_sigma=4.0, steps=4)),
    MethodSpec("GuidedIG", lambda m: xa.GuidedIG(m, steps=4)),
]


# What SmallCNN offers a registry entry's build, at test size.
_OFFERED = frozenset({"layer", "classifier", "key", "baseline", "mask"})


def _cells(side: int = 28, cell: int = 7) -> np.ndarray:
    ids = (np.arange(side) // cell)[:, None] * (side // cell) + np.arange(side) // cell
    return ids[None].astype(np.int32)  # (1, 28, 28): 16 features


def _registry_spec(entry: MethodEntry) -> MethodSpec:
    def build(m):
        return entry.build(
            BuildContext(
                model=m,
                layer=_conv2,
                classifier=lambda m: _unwrap(m).fc,
                mask=jnp.asarray(_cells()),
                options={"n_steps": 8, "n_samples": 4, "chunk_size": 8},
                input_shape=(1, 28, 28),
            )
        )

    return MethodSpec(entry.cls.__name__, build, entry.output, entry.random)


NOT_ON_SMALL_CNN: list[str] = [e.name for e in methods() if not e.needs <= _OFFERED]
_NAMED = {spec.name for spec in METHODS}
METHODS += [
    _registry_spec(e)
    for e in methods()
    if e.needs <= _OFFERED and e.cls.__name__ not in _NAMED
]


def counting(model: eqx.Module, traces: list) -> eqx.Module:
    """The model, appending to `traces` each time it is traced."""

    class Counting(eqx.Module):
        inner: eqx.Module

        def __call__(self, x):
            traces.append(1)
            return self.inner(x)

    return Counting(model)


@functools.cache
def small_cnn(seed: int = 0) -> eqx.Module:
    # Built once per seed and process (modules are immutable), as one compiled
    # program: built eagerly, each initialiser op compiles on its own.
    return eqx.filter_jit(lambda k: xa.models.SmallCNN(width=8, key=k))(
        jax.random.key(seed)
    )


def digit_like(seed: int = 0, shape=(1, 28, 28)) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


@eqx.filter_jit
def jcall(method, x, target=None, key=None):
    """`method(x, target, key=key)` compiled as one program.

    Called eagerly, a method runs op by op, and each op of each new shape compiles
    on its own: seconds for a vmapped path. Tests that check values rather than
    eager behaviour call through this; one program per method structure, shared
    by every test in the worker. (`target` as a Python int is static.)
    """
    if key is None:
        return method(x, target)
    return method(x, target, key=key)


@eqx.filter_jit
def jmetric(metric, *args, fn="__call__", vmap=None, **kwargs):
    """`metric.fn(*args, **kwargs)` compiled as one program, like `jcall`.

    `fn` names the method to call (`"curve"`, `"perturbations"`); `metric` may
    also be a plain function (`spearman`). `vmap` is `jax.vmap`'s `in_axes` to
    map over a batch (keywords map over axis 0), or None for one example. Python
    ints, floats and strings are static; arrays (JAX or NumPy) are traced.
    """
    f = getattr(metric, fn)
    if vmap is not None:
        f = jax.vmap(f, in_axes=vmap)
    return f(*args, **kwargs)
