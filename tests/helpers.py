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
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import eqx_attr as xa
from eqx_attr._registry import BuildContext, MethodEntry, methods

# ------------------------------------------------------------------------------
# The one tolerance policy.
#
# Two different programs that compute the same mathematics (batched and looped,
# jitted and eager, chunked and whole, ours and Captum's) agree only up to
# rounding, and XLA:CPU rounds differently from one CPU to the next: it picks its
# vector width (SSE, AVX2, AVX-512) and so its summation order and fusions from
# the machine. An element's rounding error is relative to the size of the terms
# that produced it, not to the element itself: an attribution pixel of 1e-5
# next to pixels of 1 may be a sum of terms of size 1 that cancelled, and carries
# their absolute error. So every comparison allows
#
#     |actual - desired| <= rtol * |desired| + rtol * scale + atol,
#
# with `rtol` the dtype's rounding tolerance (RTOL: about 80 ulps of float32,
# which covers the reassociation of a few thousand-term sums and a deep net's
# accumulated rounding), `scale` the magnitude of the compared values (default
# max |desired|, the size of the largest term), and `atol` zero unless the two
# sides differ by more than rounding: a quadrature or sampling error that the
# mathematics bounds, said in a comment where it is passed. A comparison against
# an exactly-zero expectation must name its `scale` (the size of the quantities
# that cancelled), because max |desired| is then 0.
#
# Comparisons that stay exact (`assert_array_equal`, `==`) say in a comment why
# they are exact on every CPU: the same compiled program on the same inputs,
# integer or boolean results, a power-of-two rescale, values copied not computed.
RTOL = {
    np.dtype(np.float64): 1e-12,
    np.dtype(np.float32): 1e-5,
    np.dtype(jnp.bfloat16): 4e-2,
    np.dtype(np.float16): 5e-3,
}


def _working_dtype(*arrays) -> np.dtype:
    # The least precise floating dtype among the sides: a float32 program checked
    # against a float64 hand value is only as exact as float32.
    dts = [np.dtype(a.dtype) for a in arrays if np.issubdtype(a.dtype, np.inexact)]
    if not dts:
        return np.dtype(np.float64)
    return max(dts, key=lambda d: RTOL.get(d, 1e-5))


def close_mask(actual, desired, *, dtype=None, rtol=None, scale=None, atol=0.0):
    """Elementwise: where `actual` equals `desired` under the tolerance policy."""
    a = np.asarray(actual)
    d = np.asarray(desired)
    if dtype is None:
        dtype = _working_dtype(a, d)
    if rtol is None:
        rtol = RTOL[np.dtype(dtype)]
    a64, d64 = a.astype(np.float64), d.astype(np.float64)
    if scale is None:
        # All-zero `desired`: the floor is 0 and only exact zeros pass, unless the
        # caller names the size of the terms that cancelled (`scale=`).
        scale = float(np.max(np.abs(d64))) if d64.size else 0.0
    return np.abs(a64 - d64) <= rtol * np.abs(d64) + rtol * scale + atol


def assert_close(
    actual, desired, *, dtype=None, rtol=None, scale=None, atol=0.0, err_msg=""
):
    """Assert `actual` equals `desired` up to rounding, under the policy above.

    **Arguments:**

    - `actual`, `desired`: arrays (or PyTrees of arrays) of the same shape.
    - `dtype`: the precision both were computed in; default the least precise
      floating dtype among the two.
    - `rtol`: the relative tolerance; default `RTOL[dtype]`. Pass a larger one
      only with a comment saying what amplifies rounding (a division by a small
      stabiliser, a long recurrence).
    - `scale`: the magnitude that the rounding floor is relative to; default
      `max |desired|`.
    - `atol`: an extra absolute tolerance for an error the mathematics bounds
      (quadrature, sampling); zero for pure rounding.
    """
    la, ta = jax.tree_util.tree_flatten(actual)
    ld, td = jax.tree_util.tree_flatten(desired)
    assert ta == td, f"structures differ: {ta} vs {td}"
    for a, d in zip(la, ld, strict=True):
        a, d = np.asarray(a), np.asarray(d)
        assert a.shape == d.shape or d.shape == () or a.shape == (), (
            f"shapes differ: {a.shape} vs {d.shape}"
        )
        dt = np.dtype(dtype) if dtype is not None else _working_dtype(a, d)
        rt = RTOL[dt] if rtol is None else rtol
        ok = close_mask(a, d, dtype=dt, rtol=rt, scale=scale, atol=atol)
        if not np.all(ok):
            if scale is None and atol == 0.0 and not np.any(d):
                err_msg += (
                    "\n`desired` is all zeros, so the rounding floor rtol * max"
                    "|desired| is 0: pass scale= (the size of the terms that "
                    "cancelled) or atol= (a bound the mathematics gives)."
                )
            bad = np.argwhere(
                ~np.broadcast_to(ok, np.broadcast_shapes(a.shape, d.shape))
            )
            diff = np.abs(a.astype(np.float64) - d.astype(np.float64))
            raise AssertionError(
                f"{err_msg}\n{(~ok).sum()} of {ok.size} elements differ beyond the "
                f"tolerance policy (dtype={dt}, rtol={rt}, scale={scale}, "
                f"atol={atol}); max |diff| {diff.max():.3g}, max |desired| "
                f"{np.abs(d).max():.3g}; first at {tuple(bad[0])}"
            )


def tree_allclose(a, b, **tolerances) -> bool:
    """True when two PyTrees have the same structure and leaves equal under the
    tolerance policy (`assert_close`'s keywords)."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    if ta != tb:
        return False
    return all(
        bool(np.all(close_mask(x, y, **tolerances)))
        for x, y in zip(la, lb, strict=True)
    )


@dataclass(frozen=True)
class MethodSpec:
    """How to build one method on SmallCNN, and what it returns."""

    name: str
    build: Callable[[eqx.Module], xa.AbstractAttribution]
    output: str = "input"  # "input": like x; "map": (H, W); "layer": like conv2
    random: bool = False
    # Class-agnostic methods (Eigen-CAM, attention rollout) accept and ignore
    # `target`; the fuzz tests then do not expect target errors from them.
    class_agnostic: bool = False
    # Methods whose options depend on the input's size (perturbation masks and
    # windows): `sized(model, input_shape)`; `build` then means the 28x28 digits.
    sized: Callable[[eqx.Module, tuple[int, ...]], xa.AbstractAttribution] | None = None
    # Rounding tolerance of two programs computing this method (batched and
    # looped): None is the policy's default for the dtype; a larger one comes
    # with what amplifies rounding.
    rtol: float | None = None
    # Methods that explain a neuron named at construction take `target=None`
    # only; `neuron_build(model, neuron)` builds one for another neuron (an int
    # array, so that many neurons are a vmap over the build).
    takes_target: bool = True
    neuron_build: Callable[[eqx.Module, Any], xa.AbstractAttribution] | None = None

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


def _neuron_ablation(m, shape: tuple[int, ...], neuron):
    return xa.NeuronFeatureAblation(m, _conv2, neuron, feature_mask=_grid(shape, 4))


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
        "RandomCAM",
        lambda m: xa.RandomCAM(m, _conv2),
        output="map",
        random=True,
        class_agnostic=True,
    ),
    MethodSpec(
        "KPCACAM",
        lambda m: xa.KPCACAM(m, _conv2),
        output="map",
        class_agnostic=True,
    ),
    MethodSpec("SobelCAM", lambda m: xa.SobelCAM(m), "map", class_agnostic=True),
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
    # BlurIG's path derivative is a forward difference in sigma with step 0.01:
    # the blurred images' rounding (relative 1e-7 of pixels of size 1) is divided
    # by 0.01, so two programs agree to 100x the float32 default.
    MethodSpec("BlurIG", lambda m: xa.BlurIG(m, max_sigma=4.0, steps=4), rtol=1e-3),
    MethodSpec("GuidedIG", lambda m: xa.GuidedIG(m, steps=4)),
    # Its feature mask is made for the input's size; the neuron is conv2's first.
    MethodSpec(
        "NeuronFeatureAblation",
        lambda m: _neuron_ablation(m, (1, 28, 28), 0),
        sized=lambda m, s: _neuron_ablation(m, s, 0),
        takes_target=False,
        neuron_build=lambda m, n: _neuron_ablation(m, (1, 28, 28), n),
    ),
]


# What SmallCNN offers a registry entry's build, at test size.
_OFFERED = frozenset({"layer", "classifier", "key", "baseline", "mask"})


def _cells(side: int = 28, cell: int = 7) -> np.ndarray:
    ids = (np.arange(side) // cell)[:, None] * (side // cell) + np.arange(side) // cell
    return ids[None].astype(np.int32)  # (1, 28, 28): 16 features


def _registry_spec(entry: MethodEntry) -> MethodSpec:
    def build(m, **options):
        return entry.build(
            BuildContext(
                model=m,
                layer=_conv2,
                classifier=lambda m: _unwrap(m).fc,
                mask=_cells(),  # NumPy: concrete even when built inside jit
                options={"n_steps": 8, "n_samples": 4, "chunk_size": 8, **options},
                input_shape=(1, 28, 28),
            )
        )

    return MethodSpec(
        entry.cls.__name__,
        build,
        entry.output,
        entry.random,
        # The layer's activation does not depend on the class it is given.
        class_agnostic=entry.name == "layer_activation",
        takes_target=entry.takes_target,
        neuron_build=(None if entry.takes_target else lambda m, n: build(m, neuron=n)),
    )


def registry_specs(
    entries: tuple[MethodEntry, ...], named: set[str]
) -> list[MethodSpec]:
    """A spec per registry entry SmallCNN can run, unless `named` (the hand-written
    specs' names) already has its class."""
    return [
        _registry_spec(e)
        for e in entries
        if e.needs <= _OFFERED and e.cls.__name__ not in named
    ]


NOT_ON_SMALL_CNN: list[str] = [e.name for e in methods() if not e.needs <= _OFFERED]
METHODS += registry_specs(methods(), {spec.name for spec in METHODS})


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


def in_float64(fn: Callable, *args) -> None:
    """Run `fn(*args)` in a fresh Python process with `JAX_ENABLE_X64=1`.

    Float64 checks (finite differences, double-precision references) run in a
    process of their own instead of switching `jax.enable_x64` inside the
    long-lived test worker, which would mix both modes in one process's
    compilation caches (a worker of the suite once crashed in XLA's compiler
    with such tests in it; not reproduced alone). `fn` is a module-level function
    of a test module; `args` are plain Python values (their `repr` is passed).
    """
    import os
    import pathlib
    import subprocess
    import sys

    code = f"from {fn.__module__} import {fn.__name__} as f\nf(*{args!r})"
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
        text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, (
        f"{fn.__name__}{args!r} failed in float64:\n{done.stdout[-3000:]}"
        f"\n{done.stderr[-8000:]}"
    )
