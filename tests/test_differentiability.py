"""The differentiability contract of every registry method, against finite differences.

Each row of the method table states how often its map may be differentiated
with respect to the input and to the model's parameters
([`eqx_attr._method_entry.Differentiability`][]). For every row, on tiny smooth
models in float64, the directional derivative of `sum(map * w)` (fixed random
`w`) along random directions of the input and of every parameter, by reverse
mode, equals a central finite difference of the map; rows that claim second
order also check one second-order directional derivative (reverse over reverse)
against a finite difference of the first; rows that claim 0 are refused at
trace time with a `ValueError`. Rows that round to float32 inside compare
reverse mode with forward mode instead (`FLOAT32_INSIDE`). One float64
subprocess (`in_float64`) runs the whole table, so the process start and the
models' compilation are paid once. It loops over the registry: a new row is
covered automatically. `python -m tests.test_differentiability` (with
`JAX_ENABLE_X64=1`) prints the table of relative errors.

Rule-based rows (Guided Backprop, Deconvolution, DeepLIFT, LRP) run on a model
whose rules are defined everywhere (ReLU and tanh); their map is the modified
backward pass, a function of `x` and the parameters, and its derivative must
be the exact derivative of that computed map.
"""

from __future__ import annotations

import functools
import pathlib
import re
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._method_entry import BuildContext, Differentiability, MethodEntry
from eqx_attr._registry import methods

from .helpers import assert_close, in_float64

# Central differences in float64 with step 1e-5: truncation ~h^2 (third
# derivative) / 6 and rounding eps64 * |F| / h, relative to the derivative.
# Measured (`python -m tests.test_differentiability`): 1e-13 to 3e-7, and
# 1.1e-6 for the tiny ViT's CP-LRP along the parameters (truncation: the
# softmax's curvature), so 1e-5; every wrong derivative found was off by more
# than 1e-2. A map that is piecewise (a ReLU kink, an argmax) is smooth within
# +-h of a random point with probability ~1.
_H = 1e-5
_RTOL = 1e-5
# Second order: a difference of reverse-mode gradients, whose own rounding is
# ~eps64 * |grad| / h ~ 1e-11 relative (measured: 7e-9).
_RTOL2 = 1e-5
# Rows whose maps round to float32 inside whatever the input's dtype (scores,
# sums or noise drawn in float32, so that a bfloat16 call computes and draws the
# same): a finite difference of them in float64 measures that rounding
# (eps32 * |F| / h), not the derivative. For them reverse mode is checked against
# forward mode: both are exact derivatives of the computed map (a custom backward
# rule that is not the map's derivative makes them differ, or `jax.jvp` refuse),
# to the float32 rounding of the tangents that pass the casts.
FLOAT32_INSIDE = {
    "integrated_gradients": "the path's gradients are summed in float32",
    "smoothgrad": "the noise and the sum are float32",
    "gradient_shap": "the draws and the sum are float32",
    "blur_ig": "the blur path is float32",
    "occlusion": "scores are float32",
    "feature_ablation": "scores are float32",
    "shapley_values": "scores are float32",
    "shapley_value_sampling": "scores are float32",
    "kernel_shap": "scores and the regression are float32",
    "lime": "scores and the regression are float32",
    "rise": "scores and the sum are float32",
    "attention_rollout": "attention is read as float32",
    "chefer_relevance": "attention and its gradient are read as float32",
    "layer_integrated_gradients": "the path's gradients are summed in float32",
    "internal_influence": "the path's gradients are summed in float32",
    "neuron_integrated_gradients": "the path's gradients are summed in float32",
    "neuron_conductance": "the path's gradients are summed in float32",
    "neuron_gradient_shap": "the draws and the sum are float32",
}
_RTOL32 = 1e-4
# Blur IG's path derivative is a forward difference in sigma over 0.01 of two
# float32 blurs, blur(x, s + 0.01) - blur(x, s): the difference cancels to ~1e-2
# of the blurs and is divided by 0.01, so its rounding reaches ~1e-4 of the
# directional derivative's terms (measured 4e-3 on the x direction here).
_RTOL_ROW = {"blur_ig": 1e-2}
ROOT = pathlib.Path(__file__).resolve().parents[1]
_RULES = frozenset(
    {
        "guided_backprop",
        "deconvolution",
        "guided_gradcam",
        "deeplift",
        "deeplift_shap",
        "lrp",
        "layer_deeplift",
        "layer_lrp",
        "neuron_guided_backprop",
        "neuron_deconvolution",
        "neuron_deeplift",
        "crp",
    }
)
# The target and the random methods' key: with these every map but the ones in
# `_ZERO` is nonzero on the models below (so no check is vacuous).
_TARGET = 0
# Derivatives that are exactly 0 on the models below, and why.
_ZERO = {
    ("lime", "input"): "the lasso (alpha=0.01) zeroes every coefficient here",
    ("lime", "params"): "the lasso (alpha=0.01) zeroes every coefficient here",
    ("sobelcam", "params"): "the Sobel map of x does not involve the model",
    ("internal_influence", "input"): (
        "conv2 feeds a mean and a linear layer: its gradient does not depend on x"
    ),
}
_ATTENTION = lambda m: [b.attn.attn_drop for b in m.blocks]  # noqa: E731


class _TinyCNN(eqx.Module):
    """conv(1->3), act, conv(3->4), out: mean over space, linear(4->5)."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Sequential
    fc: eqx.nn.Linear
    act: eqx.nn.Lambda

    def __init__(self, act, out, *, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 3, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Sequential(
            [eqx.nn.Conv2d(3, 4, 3, padding=1, key=k2), eqx.nn.Lambda(out)]
        )
        self.fc = eqx.nn.Linear(4, 5, key=k3)
        self.act = eqx.nn.Lambda(act)

    def __call__(self, x):
        a = self.conv2(self.act(self.conv1(x)))
        return self.fc(jnp.mean(a, axis=(1, 2)))


def _f64(tree):
    return jax.tree.map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree
    )


@functools.cache
def _models() -> dict[str, eqx.Module]:
    """The three float64 models, each built as one compiled program (built
    eagerly, every initialiser op would compile on its own)."""
    from ._vit_reference import tiny_vit

    def build(key):
        return {
            "smooth": _TinyCNN(jax.nn.softplus, jax.nn.softplus, key=key),
            "rules": _TinyCNN(jax.nn.relu, jnp.tanh, key=key),
            "vit": tiny_vit(2, depth=1, dim=8),
        }

    return _f64(eqx.filter_jit(build)(jax.random.key(0)))


def _setup(entry: MethodEntry):
    """(model, context, input) for a row, in float64."""
    if entry.family == "transformer":
        model = _models()["vit"]
        ctx = dict(attention=_ATTENTION, n_prefix_tokens=1)
    else:
        model = _models()["rules" if entry.name in _RULES else "smooth"]
        ids = (np.arange(8) // 4)[:, None] * 2 + np.arange(8) // 4
        ctx = dict(
            layer=lambda m: m.conv2,
            classifier=lambda m: m.fc,
            mask=jnp.asarray(ids[None], jnp.int32),
        )
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8), jnp.float64, 0.1, 1.0)
    return model, ctx, x


def _build(entry: MethodEntry, model, ctx):
    return entry.build(
        BuildContext(
            model=model,
            options={"n_steps": 4, "n_samples": 4},
            input_shape=(1, 8, 8),
            **ctx,
        )
    )


def _normal(seed, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    return jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, a.shape, a.dtype)
            for k, a in zip(keys, leaves, strict=True)
        ],
    )


def _dot(a, b):
    return sum(
        jnp.vdot(u, v)
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _problem(entry: MethodEntry):
    """The scalar F(params, x) = sum(map * w), its parameters and directions."""
    model, ctx, x = _setup(entry)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    key = jax.random.key(0)
    shape = x.shape if entry.output == "input" else x.shape[-2:]
    if entry.output == "layer":  # the layer family: shaped like the layer's output
        layer = ctx["layer"]
        shape = eqx.filter_eval_shape(xa.layer_activation, model, layer, x).shape
    w = jax.random.normal(jax.random.key(3), shape, jnp.float64)
    target = _TARGET if entry.takes_target else None  # a neuron method: its neuron

    def F(p, x):
        method = _build(entry, eqx.combine(p, static), ctx)
        out = method(x, target, key=key) if entry.random else method(x, target)
        return jnp.sum(out * w)

    return F, params, x, _normal(4, params), _normal(5, x)


def _relative(analytic, fd):
    return float(abs(analytic - fd) / max(abs(fd), 1e-300))


def _first_order(entry: MethodEntry, h: float = _H) -> dict[str, tuple[float, float]]:
    """{wrt: (reverse mode, central difference)} for the input and the parameters."""
    F, params, x, dp, dx = _problem(entry)

    @eqx.filter_jit
    def both(params, x):
        # One program: the gradients, and the four shifted maps as one vmapped
        # call (the method is traced twice, not five times).
        gp, gx = jax.grad(F, argnums=(0, 1))(params, x)
        sp = jnp.array([h, -h, 0.0, 0.0])
        sx = sp[::-1]
        ps = jax.tree.map(
            lambda a, d: a + sp.reshape(-1, *[1] * a.ndim) * d, params, dp
        )
        xs = x + sx.reshape(-1, *[1] * x.ndim) * dx
        v = jax.vmap(F)(ps, xs)
        return (
            _dot(gx, dx),
            (v[3] - v[2]) / (2 * h),
            _dot(gp, dp),
            (v[0] - v[1]) / (2 * h),
        )

    ax, fx, ap, fp = map(float, both(params, x))
    return {"input": (ax, fx), "params": (ap, fp)}


def _forward_and_reverse(entry: MethodEntry) -> dict[str, tuple[float, ...]]:
    """{wrt: (reverse mode, forward mode, sum |gradient * direction|)}.

    Both modes are derivatives of the computed map; the last entry is the size
    of the terms that cancel in the directional derivative, the scale of its
    rounding."""
    F, params, x, dp, dx = _problem(entry)

    @eqx.filter_jit
    def both(params, x):
        gp, gx = jax.grad(F, argnums=(0, 1))(params, x)
        # Both tangents as one vmapped forward-mode call.
        tp = jax.tree.map(lambda d: jnp.stack([jnp.zeros_like(d), d]), dp)
        tx = jnp.stack([dx, jnp.zeros_like(dx)])
        jx, jp = jax.vmap(lambda t, u: jax.jvp(F, (params, x), (t, u))[1])(tp, tx)
        terms = lambda g, d: _dot(jax.tree.map(jnp.abs, g), jax.tree.map(jnp.abs, d))  # noqa: E731
        return _dot(gx, dx), jx, terms(gx, dx), _dot(gp, dp), jp, terms(gp, dp)

    rx, fx, sx, rp, fp, sp = map(float, both(params, x))
    return {"input": (rx, fx, sx), "params": (rp, fp, sp)}


def _second_order(entry: MethodEntry) -> dict[str, tuple[float, float]]:
    """{wrt: (u' H v by reverse over reverse, central difference of the gradient)}
    for the input and the parameters, in one program."""
    F, params, x, dp, dx = _problem(entry)
    up, ux = _normal(6, params), _normal(7, x)

    def g_dot_u(p, z):  # <grad F(p, z), (up, ux)>
        gp, gx = jax.grad(F, argnums=(0, 1))(p, z)
        return _dot(gp, up), _dot(gx, ux)

    @eqx.filter_jit
    def both(params, x):
        hp = jax.grad(lambda p: g_dot_u(p, x)[0])(params)
        hx = jax.grad(lambda z: g_dot_u(params, z)[1])(x)
        sp = jnp.array([_H, -_H, 0.0, 0.0])
        sx = sp[::-1]
        ps = jax.tree.map(
            lambda a, d: a + sp.reshape(-1, *[1] * a.ndim) * d, params, dp
        )
        xs = x + sx.reshape(-1, *[1] * x.ndim) * dx
        vp, vx = jax.vmap(g_dot_u)(ps, xs)
        return (
            _dot(hx, dx),
            (vx[3] - vx[2]) / (2 * _H),
            _dot(hp, dp),
            (vp[0] - vp[1]) / (2 * _H),
        )

    ax, fx, ap, fp = map(float, both(params, x))
    return {"input": (ax, fx), "params": (ap, fp)}


def _refused(entry: MethodEntry, wrt: str) -> None:
    F, params, x, _, _ = _problem(entry)
    with pytest.raises(ValueError, match=entry.cls.__name__) as info:
        jax.grad(F, argnums=0 if wrt == "params" else 1)(params, x)
    assert "differentiab" in str(info.value)


def _check_row(entry: MethodEntry) -> None:
    """One row against its contract (in float64)."""
    contract = entry.differentiable
    orders = {"input": contract.input, "params": contract.params}
    for wrt in [w for w, o in orders.items() if o == 0]:
        _refused(entry, wrt)
    if not any(orders.values()):
        return
    if entry.name in FLOAT32_INSIDE:
        pairs = _forward_and_reverse(entry)
        rtol = _RTOL_ROW.get(entry.name, _RTOL32)
    else:
        pairs = {k: (*v, None) for k, v in _first_order(entry).items()}
        rtol = _RTOL
    for wrt, (analytic, reference, scale) in pairs.items():
        if orders[wrt]:
            label = f"{entry.name} wrt {wrt}"
            assert_close(analytic, reference, rtol=rtol, scale=scale, err_msg=label)
            assert (reference == 0) == ((entry.name, wrt) in _ZERO), label
    if max(orders.values()) >= 2:
        for wrt, (analytic, fd) in _second_order(entry).items():
            if orders[wrt] >= 2:
                label = f"{entry.name} wrt {wrt}, second order"
                assert_close(analytic, fd, rtol=_RTOL2, err_msg=label)


def _check_every_row_float64(layer_family: bool) -> None:
    """Every row of the table (the layer and neuron family's, or every other)
    against its contract; reports every failing row."""
    failures = []
    for entry in methods():
        if (entry.family == "neuron") != layer_family:
            continue
        start = time.process_time()
        try:
            _check_row(entry)
        except Exception as e:  # noqa: BLE001 - collected, then raised together
            failures.append(f"{entry.name}: {type(e).__name__}: {e}")
        print(f"{entry.name}: {time.process_time() - start:.1f} s CPU", flush=True)
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("layer_family", [False, True], ids=["inputs", "inside"])
def test_derivatives_equal_finite_differences(layer_family):
    # One float64 process per half of the table (a process start and the models'
    # compilation, paid once each; the two halves run on two workers); every row
    # of the registry, so a new row is covered.
    in_float64(_check_every_row_float64, layer_family)


def test_every_row_states_its_contract_and_the_docs_table_agrees():
    # The docs' table ("Differentiating explanations" in docs/losses.md) lists every
    # row with its orders, as the registry states them.
    text = (ROOT / "docs" / "losses.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", text, re.M))
    for entry in methods():
        assert isinstance(entry.differentiable, Differentiability), entry.name
        assert rows.get(entry.name) == entry.differentiable.describe(), entry.name
    assert set(rows) == {e.name for e in methods()}
    # (Under the suite's jaxtyping checks the Literal annotation refuses it first.)
    with pytest.raises((TypeError, ValueError), match="input"):
        Differentiability(3, 1)  # type: ignore[arg-type]


def _while_loop_step(x, g, xi, xb, alpha, max_dist, l1_total, l1_target, fraction):
    """GuidedIG's inner loop before issue 33: a `lax.while_loop` (not reverse-mode
    differentiable), kept here as the reference for the fixed-count loop."""
    diff = xi - xb
    alpha_min = jnp.maximum(alpha - max_dist, 0.0)
    alpha_max = jnp.minimum(alpha + max_dist, 1.0)
    x_min, x_max = xb + diff * alpha_min, xb + diff * alpha_max
    k = int(np.floor(fraction * (g.size - 1)))
    tol = 1e-6 * l1_total

    def body(state):
        x, attr, _, it = state
        x_old = x
        safe = jnp.where(diff != 0, diff, 1.0)
        x_alpha = jnp.where(diff != 0, (x - xb) / safe, alpha_max)
        x = jnp.where(x_alpha < alpha_min, x_min, x)
        l1_current = jnp.sum(jnp.abs(x - xi))
        reached = jnp.abs(l1_current - l1_target) <= tol
        g_sel = jnp.where(x == x_max, jnp.inf, jnp.abs(g))
        s = (g_sel <= jnp.sort(g_sel.ravel())[k]) & (g_sel != jnp.inf)
        l1_s = jnp.sum(jnp.abs(x - x_max) * s)
        gamma = jnp.where(l1_s > 0, (l1_current - l1_target) / l1_s, jnp.inf)
        moved = jnp.where(gamma > 1.0, x_max, x + gamma * (x_max - x))
        x = jnp.where(s & ~reached, moved, x)
        done = reached | (gamma <= 1.0) | (l1_s <= 0)
        return x, attr + (x - x_old) * g, done, it + 1

    init = (x, jnp.zeros_like(x), jnp.array(False), jnp.array(0))
    cond = lambda st: ~st[2] & (st[3] < x.size + 2)  # noqa: E731
    x, attr, _, _ = jax.lax.while_loop(cond, body, init)
    return x, attr


def test_guided_ig_fixed_loop_equals_the_while_loop(monkeypatch):
    # The fixed number of inner iterations (`inner_iterations`) is enough: the
    # results equal the old `while_loop`'s (which equalled PAIR's, as the new
    # loop does at PAIR's defaults: tests/test_perturbation.py) with many inner
    # iterations per step (a small `fraction`, a wide `max_dist`).
    fraction = 0.1
    import eqx_attr as xa
    from eqx_attr._gradient import _guided_ig

    model = eqx.filter_jit(lambda k: _TinyCNN(jax.nn.softplus, jnp.tanh, key=k))(
        jax.random.key(0)
    )
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8), jnp.float32, 0.1, 1.0)
    method = xa.GuidedIG(model, steps=4, fraction=fraction, max_dist=0.2)
    new = eqx.filter_jit(lambda m, x: m(x, 0))(method, x)
    monkeypatch.setattr(_guided_ig, "_guided_step", _while_loop_step)
    old = eqx.filter_jit(lambda m, x: m(x, 0))(method, x)
    assert_close(new, old)


def _table_float64(*names: str) -> None:
    """Print, per row, the relative error of reverse mode against a central
    difference (step 1e-5) and, for the rows in `FLOAT32_INSIDE`, against
    forward mode (what the test checks for them)."""
    print(f"{'method':24} {'x':>8} {'params':>8} {'x fwd':>8} {'p fwd':>8}")
    for entry in methods():
        if names and entry.name not in names:
            continue
        try:
            errs = _first_order(entry)
            cells = [f"{_relative(*errs[w]):8.1e}" for w in ("input", "params")]
            if entry.name in FLOAT32_INSIDE:
                errs = _forward_and_reverse(entry)
                cells += [
                    f"{_relative(*errs[w][:2]):8.1e}" for w in ("input", "params")
                ]
        except Exception as e:  # noqa: BLE001 - a table of what fails
            cells = [f"{type(e).__name__}: {str(e)[:60]}"]
        print(f"{entry.name:24} {' '.join(cells)}", flush=True)


if __name__ == "__main__":
    import sys

    _table_float64(*sys.argv[1:])
