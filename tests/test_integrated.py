"""Integrated Gradients against hand-derived values and the IG axioms."""

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._gradient._integrated import QUADRATURES, auto_chunk_size, quadrature

from .helpers import assert_close, close_mask, jcall, tree_allclose


@eqx.filter_jit
def _with_delta(ig, x, target):
    """`ig.attribute_with_delta(x, target)` compiled as one program (see `jcall`)."""
    return ig.attribute_with_delta(x, target)


def saturating(x):
    """f(x) = 1 - relu(1 - x): flat (zero gradient) for x > 1."""
    return 1.0 - jax.nn.relu(1.0 - x[0])


def test_sensitivity_counterexample():
    # At x = 2 the function saturates: the gradient is 0 although f(x) - f(0) = 1.
    x = jnp.array([2.0])
    # Exact: the ReLU is off, so its derivative is an exact 0 (times anything).
    assert float(jcall(xa.Gradients(saturating), x)[0]) == 0.0
    assert float(jcall(xa.GradientsXInput(saturating), x)[0]) == 0.0
    # IG recovers the whole difference. Path z = 2a: dz f = 1 for a < 1/2, else 0,
    # so IG = 2 * 1/2 = 1 exactly for any rule with half its weight below a = 1/2.
    for method in ("gausslegendre", "riemann_left", "riemann_middle"):
        a = jcall(xa.IntegratedGradients(saturating, n_steps=10, method=method), x)
        assert_close(a, np.array([1.0]))


def test_two_input_relu_net_exact():
    # f = relu(x1 - 1) + relu(x2 - 2) at x = (4, 4), baseline 0. Along z = a (4, 4)
    # the first unit is on for a > 1/4, the second for a > 1/2, so
    # IG = (4 * 3/4, 4 * 1/2) = (3, 2); riemann_middle with 8 nodes is exact here.
    def f(x):
        return jax.nn.relu(x[0] - 1.0) + jax.nn.relu(x[1] - 2.0)

    a = jcall(
        xa.IntegratedGradients(f, n_steps=8, method="riemann_middle"),
        jnp.array([4.0, 4.0]),
    )
    assert_close(a, np.array([3.0, 2.0]))


def test_max_network_exact():
    # max(x1, x2) = x2 + relu(x1 - x2); at (3, 1) from 0 the gradient is (1, 0) all
    # along the path, so IG = (3, 0).
    def f(x):
        return x[1] + jax.nn.relu(x[0] - x[1])

    a = jcall(xa.IntegratedGradients(f, n_steps=5), jnp.array([3.0, 1.0]))
    assert_close(a, np.array([3.0, 0.0]))


def test_ig_with_constant_baseline_hand_value():
    # f = x1 * x2, baseline (1, 1), x = (3, 2): path z = 1 + a (2, 1);
    # IG_1 = 2 * int (1 + a) da = 3, IG_2 = 1 * int (1 + 2a) da = 2; sum = 6 - 1.
    def f(x):
        return x[0] * x[1]

    a = jcall(xa.IntegratedGradients(f, n_steps=4, baseline=1.0), jnp.array([3.0, 2.0]))
    assert_close(a, np.array([3.0, 2.0]))


def smooth_net(key):
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (16, 12)) / 3
    w2 = jax.random.normal(k2, (16, 16)) / 4
    w3 = jax.random.normal(k3, (4, 16)) / 4

    def f(x):
        h = jnp.tanh(w1 @ x.reshape(-1))
        h = jax.nn.softplus(w2 @ h)
        return w3 @ h

    return f


@pytest.mark.parametrize("target", [0, 2])
def test_completeness_gauss_legendre_32(target):
    f = smooth_net(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (3, 4)) * 2
    ig = xa.IntegratedGradients(f, n_steps=32)
    a, delta = _with_delta(ig, x, target)
    fx, fb = jax.jit(lambda x: (f(x)[target], f(jnp.zeros_like(x))[target]))(x)
    gap = fx - fb
    assert abs(float(gap)) > 0.05
    # Both differ from the exact integral by GL-32's quadrature error on this
    # smooth net (atol, a bound the mathematics gives); rounding is relative to
    # the terms that cancelled (the scores and the attributions).
    scale = float(jnp.abs(a).sum() + abs(fx) + abs(fb))
    quad = 1e-4 * abs(float(gap))
    assert_close(delta, 0.0, scale=scale, atol=quad)
    assert_close(jnp.sum(a), gap, scale=scale, atol=quad)


def test_gauss_legendre_beats_riemann_on_smooth_net():
    f = smooth_net(jax.random.key(2))
    x = jax.random.normal(jax.random.key(3), (3, 4)) * 2
    err = {
        m: abs(
            float(_with_delta(xa.IntegratedGradients(f, n_steps=16, method=m), x, 1)[1])
        )
        for m in QUADRATURES
    }
    assert err["gausslegendre"] < min(v for k, v in err.items() if k != "gausslegendre")


@pytest.mark.parametrize("method", QUADRATURES)
def test_quadrature_integrates_polynomials(method):
    alphas, weights = quadrature(method, 7)
    assert_close(weights.sum(), 1.0)  # float64 NumPy: RTOL[float64]
    assert np.all((alphas >= 0) & (alphas <= 1))
    exact_degree = {"gausslegendre": 13, "riemann_trapezoid": 1, "riemann_middle": 1}
    for degree in range(exact_degree.get(method, 0) + 1):
        assert_close(np.sum(weights * alphas**degree), 1 / (degree + 1))


def test_implementation_invariance():
    # Two functionally equal networks with different weights: rescaled and
    # permuted hidden units. IG depends on the function only.
    k1, k2 = jax.random.split(jax.random.key(4))
    w1 = jax.random.normal(k1, (8, 6))
    w2 = jax.random.normal(k2, (3, 8))
    perm = jnp.array([3, 1, 7, 0, 2, 6, 4, 5])
    c = 2.5

    def net_a(x):
        return w2 @ jax.nn.relu(w1 @ x)

    def net_b(x):
        return (w2[:, perm] / c) @ jax.nn.relu((c * w1[perm]) @ x)

    x = jax.random.normal(jax.random.key(5), (6,))
    assert_close(jax.jit(net_a)(x), jax.jit(net_b)(x))

    @jax.jit
    def per_target(x):
        return [
            (
                xa.IntegratedGradients(net_a, n_steps=64)(x, t),
                xa.IntegratedGradients(net_b, n_steps=64)(x, t),
            )
            for t in range(3)
        ]

    for a, b in per_target(x):
        assert_close(a, b)


def test_linearity():
    f = smooth_net(jax.random.key(6))
    x = jax.random.normal(jax.random.key(7), (3, 4))
    ig = xa.IntegratedGradients(f, n_steps=16)
    combo = jcall(ig, x, lambda s: 2.0 * s[0] - 3.0 * s[2])
    ig0, ig2 = jcall(ig, x, 0), jcall(ig, x, 2)
    # Rounding relative to the two terms that may cancel.
    assert_close(
        combo, 2.0 * ig0 - 3.0 * ig2, scale=float(jnp.max(2 * abs(ig0) + 3 * abs(ig2)))
    )

    # And in the model: IG of f + g is IG of f plus IG of g.
    g = smooth_net(jax.random.key(8))
    ig_sum = jcall(xa.IntegratedGradients(lambda z: f(z) + g(z), n_steps=16), x, 1)
    ig_f = jcall(xa.IntegratedGradients(f, n_steps=16), x, 1)
    ig_g = jcall(xa.IntegratedGradients(g, n_steps=16), x, 1)
    assert_close(ig_sum, ig_f + ig_g, scale=float(jnp.max(abs(ig_f) + abs(ig_g))))


def test_chunked_equals_unchunked():
    f = smooth_net(jax.random.key(9))
    x = jax.random.normal(jax.random.key(10), (3, 4))
    full = jcall(xa.IntegratedGradients(f, n_steps=10), x, 2)
    for chunk in (1, 3, 10, 64):
        for unroll in (False, True):
            ig = xa.IntegratedGradients(
                f, n_steps=10, chunk_size=chunk, unroll_chunks=unroll
            )
            assert_close(jcall(ig, x, 2), full)


def _conv_scores(groups: int = 1, wrap=lambda f: f):
    """A one-convolution "model" for any `(C, H, W)` input: 4 scores."""

    def model(v):
        w = jnp.ones((4, v.shape[0] // groups, 3, 3), v.dtype)
        conv = lambda v: jax.lax.conv_general_dilated(
            v[None], w, (1, 1), "SAME", feature_group_count=groups
        )
        return wrap(conv)(v).mean(axis=(2, 3))[0]

    return model


def test_auto_chunks_follow_the_memory_budget():
    # "auto" (the default): as many path points as fit the budget, over the whole
    # batch under vmap; all at once (None) when every point fits.
    # (tests/test_memory_budget.py checks XLA's planned memory against it.)
    digit = jnp.zeros((1, 28, 28))
    conv = _conv_scores()

    def chunk(batch, n_points=50):
        got = []
        jax.vmap(lambda v: got.append(auto_chunk_size(conv, v, n_points)) or v)(
            jnp.stack([digit] * batch)
        )
        return got[0]

    try:
        xa.set_memory_budget("1GiB")
        assert auto_chunk_size(conv, digit, 50) is None and chunk(8) is None
        xa.set_memory_budget("1MiB")
        one = auto_chunk_size(conv, digit, 50)
        assert one is not None and 1 <= one < 50
        # Twice the batch: about half the points per chunk (at least one).
        assert chunk(2) == max(1, one // 2) and chunk(64) == 1
        xa.set_memory_budget(1)
        assert auto_chunk_size(conv, digit, 50) == 1  # never an empty chunk
    finally:
        xa.set_memory_budget(None)


def test_auto_chunks_agree_with_unchunked():
    model = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    xs = jax.random.uniform(jax.random.key(1), (4, 1, 28, 28))
    ts = jnp.arange(4) % 10
    run = eqx.filter_jit(
        lambda ig, xs, ts: eqx.filter_vmap(lambda x, t: ig(x, t))(xs, ts)
    )
    auto = xa.IntegratedGradients(model, n_steps=12)
    assert auto.chunk_size == "auto"
    try:
        xa.set_memory_budget("2MiB")
        batched = jax.make_jaxpr(lambda xs: jax.vmap(lambda x: auto(x, 3))(xs))(xs)
        assert "scan" in _primitives(batched.jaxpr)
        a = np.asarray(run(auto, xs, ts))
    finally:
        xa.set_memory_budget(None)
    whole = xa.IntegratedGradients(model, n_steps=12, chunk_size=None)
    b = np.asarray(run(whole, xs, ts))
    # Chunked against unchunked conv IG differ by rounding: the loop body's
    # convolutions are im2col products, and a ReLU within an ulp of 0 may flip;
    # equal up to rounding but for the few pixels a flipped ReLU may touch.
    assert close_mask(a, b).mean() > 0.999
    # Caught by the beartype check in the test run (a TypeError), else by ours.
    with pytest.raises((ValueError, TypeError), match="chunk_size"):
        xa.IntegratedGradients(model, chunk_size="fast")  # pyright: ignore


def test_auto_steps_equal_the_fixed_trapezoid_rule():
    # rtol=0 never converges: the refinement runs to the cap, and each level
    # equals the fixed-step trapezoid rule with that many points.
    f = smooth_net(jax.random.key(5))
    x = jax.random.normal(jax.random.key(6), (3, 4))
    for cap, expected in ((9, 9), (17, 17), (40, 33), (65, 65)):
        ig = xa.IntegratedGradients(f, n_steps="auto", rtol=0.0, max_steps=cap)
        a, steps, residual = jcall(ig.attribute_with_info, x, 1)
        assert int(steps) == expected  # the cap: the largest 8 * 2^k + 1 <= cap
        fixed = xa.IntegratedGradients(
            f, n_steps=expected, method="riemann_trapezoid", chunk_size=None
        )
        assert_close(a, jcall(fixed, x, 1))
        # The residual, by hand: |sum(a) - (f(x) - f(0))|.
        by_hand = jnp.abs(jnp.sum(a) - (f(x)[1] - f(jnp.zeros_like(x))[1]))
        assert_close(residual, by_hand, scale=float(jnp.abs(f(x)[1])))
    assert jcall(xa.IntegratedGradients(f, n_steps="auto"), x, 1).shape == x.shape


def test_auto_steps_stop_early_and_at_the_cap():
    w = jax.random.normal(jax.random.key(7), (3, 12))
    linear = lambda v: w @ v.reshape(-1)  # noqa: E731
    x = jax.random.normal(jax.random.key(8), (3, 4))
    ig = xa.IntegratedGradients(linear, n_steps="auto", rtol=1e-3)
    a, steps, residual = jcall(ig.attribute_with_info, x, 0)
    assert int(steps) == 9  # level 0 is exact on a linear model
    assert float(residual) <= 1e-3 * abs(float(linear(x)[0]))
    # A ReLU net converges slowly: the cap is honoured.
    net = smooth_net(jax.random.key(9))
    relu = lambda v: net(jax.nn.relu(v) - jax.nn.relu(-v - 0.3))  # noqa: E731
    capped = xa.IntegratedGradients(relu, n_steps="auto", rtol=0.0, max_steps=33)
    assert int(jcall(capped.attribute_with_info, x, 0)[1]) == 33
    # Refinement reaches the tolerance, under jit and vmap: one count per example.
    smooth = xa.IntegratedGradients(net, n_steps="auto", rtol=1e-4)
    xs = jnp.stack([x, 2 * x, 0.1 * x])
    attrs, steps, residuals = jax.jit(
        jax.vmap(lambda v: smooth.attribute_with_info(v, 0))
    )(xs)
    assert attrs.shape == xs.shape and steps.shape == (3,)
    for v, s, r in zip(xs, steps, residuals, strict=True):
        diff = abs(float(net(v)[0] - net(jnp.zeros_like(v))[0]))
        assert int(s) == 257 or float(r) <= 1e-4 * diff
        alone = jcall(smooth.attribute_with_info, v, 0)
        assert int(alone[1]) == int(s)
    # The int form reports its own steps and |delta|.
    fixed = xa.IntegratedGradients(net, n_steps=16)
    _, s16, r16 = jcall(fixed.attribute_with_info, x, 0)
    assert int(s16) == 16
    assert_close(r16, jnp.abs(jcall(fixed.attribute_with_delta, x, 0)[1]))


def test_bad_auto_steps_options():
    with pytest.raises(ValueError, match="nest"):
        xa.IntegratedGradients(saturating, n_steps="auto", method="riemann_middle")
    with pytest.raises((ValueError, TypeError), match="rtol"):
        xa.IntegratedGradients(saturating, n_steps="auto", rtol=-1.0)
    with pytest.raises(ValueError, match="max_steps"):
        xa.IntegratedGradients(saturating, n_steps="auto", max_steps=5)


def test_parts_split_the_points_and_agree():
    # Independent slices of the path points (even and uneven, more parts than
    # points), with multi-draw baselines whose draws straddle the slices.
    f = smooth_net(jax.random.key(9))
    x = jax.random.normal(jax.random.key(10), (3, 4))
    draws = xa.baselines.Custom(jnp.stack([x * 0, 0.5 * x, 1 - x]), draws=True)
    one = xa.IntegratedGradients(f, n_steps=5, baseline=draws, parts=1)
    full = jcall(one, x, 2)
    sizes = []
    for parts in (1, 2, 4, 7, 15, 40):
        ig = xa.IntegratedGradients(f, n_steps=5, baseline=draws, parts=parts)
        sizes.append(len(jax.make_jaxpr(lambda x: ig(x, 2))(x).jaxpr.eqns))
        assert_close(jcall(ig, x, 2), full)
    # Every slice is its own backward pass, up to one per point (3 x 5 = 15).
    assert sizes[:5] == sorted(set(sizes[:5]))
    assert sizes[5] == sizes[4]

    # With chunks (scanned or unrolled), each chunk's points are split the same
    # way: up to one slice per point of a chunk (15 points: 3 chunks of 5).
    for unroll in (False, True):
        sizes = []
        for parts in (1, 2, 5, 9):
            ig = xa.IntegratedGradients(
                f, n_steps=5, baseline=draws, chunk_size=5, unroll_chunks=unroll,
                parts=parts,
            )  # fmt: skip
            sizes.append(len(str(jax.make_jaxpr(lambda x: ig(x, 2))(x))))
            assert_close(jcall(ig, x, 2), full)
        assert sizes[:3] == sorted(set(sizes[:3]))
        assert sizes[3] == sizes[2]


def _primitives(jaxpr) -> set[str]:
    """Every primitive of a closed jaxpr, nested bodies included."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            names |= _primitives(sub)
    return names


def test_unrolled_chunks_are_sequenced_and_bounded():
    # Unrolled chunks: no loop in the program, one barrier per chunk; with multi-
    # draw baselines (chunks then straddle draws) equal to the scan.
    model = xa.models.SmallCNN(width=4, key=jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (1, 12, 12))
    draws = xa.baselines.Custom(jnp.stack([x * 0, x * 0.5, 1 - x]), draws=True)

    def ig(n_steps, chunk, unroll):
        # One slice per chunk (`parts=1`): what is measured is the chunks' order.
        return xa.IntegratedGradients(
            model, n_steps=n_steps, baseline=draws, chunk_size=chunk,
            unroll_chunks=unroll, parts=1,
        )  # fmt: skip

    scan = jax.make_jaxpr(lambda x: ig(8, 5, False)(x, 3))(x)
    unrolled = jax.make_jaxpr(lambda x: ig(8, 5, True)(x, 3))(x)
    assert "scan" in _primitives(scan.jaxpr)
    assert "scan" not in _primitives(unrolled.jaxpr)
    # (The max pools' first-maximum indices have barriers of their own: integers.)
    barriers = [
        e
        for e in unrolled.jaxpr.eqns
        if e.primitive.name == "optimization_barrier"
        and jnp.issubdtype(e.invars[0].aval.dtype, jnp.floating)
    ]
    assert len(barriers) == 5  # 3 draws x 8 steps = 24 points: 5 chunks of 5
    assert_close(jcall(ig(8, 5, True), x, 3), jcall(ig(8, 5, False), x, 3))

    # The chunks run one after another, so XLA's buffers hold one chunk: the same
    # temporary memory for 4x the steps. (XLA:CPU's concurrency-optimised
    # scheduler keeps every chunk's buffers: the option the docstring names.)
    def temp_bytes(n_steps, chunk):
        # Unchunked: every point in one slice (`parts=1`), all alive at once.
        method = (
            ig(n_steps, chunk, True)
            if chunk is not None
            else xa.IntegratedGradients(model, n_steps=n_steps, baseline=draws, parts=1)
        )
        compiled = (
            jax.jit(
                lambda x: method(x, 3),
                compiler_options={
                    "xla_cpu_enable_concurrency_optimized_scheduler": False
                },
            )
            .lower(x)
            .compile()
        )
        stats = compiled.memory_analysis()
        assert stats is not None
        return stats.temp_size_in_bytes

    # 4x the steps adds under a quarter of what holding all 32 steps' buffers at
    # once (`whole`) adds. (Not exactly flat: XLA keeps a few small per-chunk
    # buffers, such as each chunk's last pooled activations.)
    small, large, whole = temp_bytes(8, 6), temp_bytes(32, 6), temp_bytes(32, None)
    assert large - small < 0.25 * (whole - small)
    assert whole > 3 * large


def test_multi_draw_baseline_is_mean_over_draws():
    f = smooth_net(jax.random.key(11))
    x = jax.random.normal(jax.random.key(12), (3, 4))
    draws = jax.random.uniform(jax.random.key(13), (3, 3, 4))
    multi = xa.IntegratedGradients(
        f, n_steps=8, baseline=xa.baselines.Custom(draws, draws=True)
    )
    single = [
        jcall(xa.IntegratedGradients(f, n_steps=8, baseline=d), x, 0) for d in draws
    ]
    assert_close(jcall(multi, x, 0), np.mean(single, axis=0))
    # Completeness holds against the mean baseline output, up to the quadrature
    # error of 8 Gauss-Legendre nodes (atol: a bound, not rounding).
    a, delta = _with_delta(multi, x, 0)
    scores = jax.jit(jax.vmap(lambda z: jnp.abs(f(z)[0])))(jnp.stack([x, *draws]))
    assert_close(delta, 0.0, scale=float(jnp.abs(a).sum() + scores.sum()), atol=1e-3)


def test_uniform_noise_baseline_uses_key():
    f = smooth_net(jax.random.key(14))
    x = jax.random.normal(jax.random.key(15), (3, 4))
    base = xa.baselines.UniformNoise(n_draws=4, low=-1.0, high=1.0)
    ig = xa.IntegratedGradients(f, n_steps=8, baseline=base)
    k = jax.random.key(16)
    same = xa.IntegratedGradients(
        f,
        n_steps=8,
        baseline=xa.baselines.Custom(
            jax.random.uniform(k, (4, 3, 4), minval=-1.0, maxval=1.0), draws=True
        ),
    )
    assert_close(jcall(ig, x, 1, k), jcall(same, x, 1))
    assert tree_allclose(jcall(ig, x, 1, k), jcall(ig, x, 1, k))
    assert not tree_allclose(jcall(ig, x, 1, k), jcall(ig, x, 1, jax.random.key(17)))
    with pytest.raises(ValueError, match="key"):
        ig(x, 1)


def test_return_delta_and_vmap_gives_per_example_delta():
    f = smooth_net(jax.random.key(18))
    xs = jax.random.normal(jax.random.key(19), (5, 3, 4))
    ts = jnp.array([0, 1, 2, 3, 0])
    ig = xa.IntegratedGradients(f, n_steps=32, return_delta=True)
    attrs, deltas = eqx.filter_jit(eqx.filter_vmap(ig))(xs, ts)
    assert attrs.shape == xs.shape and deltas.shape == (5,)
    scores = jax.jit(lambda x, t: (f(x)[t], f(jnp.zeros((3, 4)))[t]))
    xs_host, ts_host = np.asarray(xs), np.asarray(ts)
    for i in range(5):
        a, d = _with_delta(ig, xs_host[i], int(ts_host[i]))
        assert_close(attrs[i], a)
        fx, fb = scores(xs_host[i], ts_host[i])
        # A completeness residual: rounding relative to the terms that cancelled.
        scale = float(jnp.abs(a).sum() + abs(fx) + abs(fb))
        assert_close(deltas[i], jnp.sum(a) - (fx - fb), scale=scale)


def test_ig_bfloat16():
    f = smooth_net(jax.random.key(20))
    x = jax.random.normal(jax.random.key(21), (3, 4))
    a32 = jcall(xa.IntegratedGradients(f, n_steps=16), x, 0)
    a16 = jcall(xa.IntegratedGradients(f, n_steps=16), x.astype(jnp.bfloat16), 0)
    assert a16.dtype == jnp.bfloat16 and a16.shape == x.shape
    assert_close(np.asarray(a16, np.float32), a32, dtype=jnp.bfloat16)


@pytest.mark.parametrize("n_steps", [0, -3, 2.5])
def test_bad_n_steps(n_steps):
    # A float is caught by the beartype check in the test run, else by ours.
    with pytest.raises((ValueError, TypeError), match="n_steps"):
        xa.IntegratedGradients(saturating, n_steps=n_steps)


def test_bad_method_and_chunk():
    with pytest.raises(ValueError, match="method.*gausslegendre"):
        xa.IntegratedGradients(saturating, method="simpson")
    with pytest.raises(ValueError, match="riemann_trapezoid.*n_steps >= 2"):
        xa.IntegratedGradients(saturating, n_steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="chunk_size"):
        xa.IntegratedGradients(saturating, chunk_size=0)
    with pytest.raises(TypeError, match="unroll_chunks"):
        xa.IntegratedGradients(saturating, chunk_size=2, unroll_chunks=1)  # pyright: ignore
    with pytest.raises(ValueError, match="parts"):
        xa.IntegratedGradients(saturating, parts=0)


def test_bad_baseline_shape():
    f = smooth_net(jax.random.key(22))
    x = jnp.ones((3, 4))
    with pytest.raises(ValueError, match="baseline.*broadcast"):
        xa.IntegratedGradients(f, baseline=jnp.ones((4, 3)))(x, 0)
    with pytest.raises(TypeError, match="baseline"):
        xa.IntegratedGradients(f, baseline="black")
    # A per-channel baseline broadcasts.
    jcall(xa.IntegratedGradients(f, n_steps=2, baseline=jnp.ones((3, 1))), x, 0)
