"""The memory budget (`xa.set_memory_budget`) and `chunk_size="auto"`.

What the budget covers (eqx_attr/_memory.py): XLA's temporary buffers of the
call (`memory_analysis().temp_size_in_bytes`), not its arguments (parameters,
input) nor its outputs. Checked here on XLA's PLANNED memory, never on time, on
two architectures the rule was not tuned on (a small CNN and an MLP, both built
here) at two input sizes each.
"""

from typing import Any

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import pytest

import eqx_attr as xa
from eqx_attr._memory import (
    ENV_VAR,
    PLANNING_FACTOR,
    measure,
    parse_bytes,
    resolve_chunk_size,
)
from tests.helpers import assert_close

MiB = 2**20


class _CNN(eqx.Module):
    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    fc: eqx.nn.Linear

    def __init__(self, channels: int, width: int, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(channels, width, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(width, 2 * width, 3, padding=1, key=k2)
        self.fc = eqx.nn.Linear(2 * width, 10, key=k3)

    def __call__(self, x):
        h = jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))
        return self.fc(jnp.mean(h, axis=(1, 2)))


class _MLP(eqx.Module):
    layers: list

    def __init__(self, n_in: int, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.layers = [
            eqx.nn.Linear(n_in, 512, key=k1),
            eqx.nn.Linear(512, 512, key=k2),
            eqx.nn.Linear(512, 10, key=k3),
        ]

    def __call__(self, x):
        h = x.reshape(-1)
        for layer in self.layers[:-1]:
            h = jax.nn.relu(layer(h))
        return self.layers[-1](h)


@pytest.fixture(autouse=True)
def _default_budget():
    yield
    xa.set_memory_budget(None)


def test_parsing():
    assert parse_bytes("2GiB") == 2 * 2**30
    assert parse_bytes("512MB") == 512 * 10**6
    assert parse_bytes("1.5 KiB") == 1536
    assert parse_bytes("3mib") == 3 * MiB
    assert parse_bytes(4096) == 4096
    assert parse_bytes("100") == 100
    for bad in ("2 parsecs", "GiB", "-1MB", "", 0, -5, "1e9"):
        with pytest.raises(ValueError, match=r"`budget` must be.*\"2GiB\""):
            xa.set_memory_budget(bad)
    for bad in (True, 1.5):  # (the annotation already rejects these in the tests)
        with pytest.raises(ValueError, match=r"`budget` must be"):
            parse_bytes(bad)
    xa.set_memory_budget("64MiB")
    assert xa.memory_budget() == 64 * MiB
    xa.set_memory_budget(1000)
    assert xa.memory_budget() == 1000


def test_env_variable_and_default(monkeypatch):
    xa.set_memory_budget(None)
    monkeypatch.delenv(ENV_VAR, raising=False)
    default = xa.memory_budget()
    assert 0 < default <= 2 * 2**30  # CPU: at most 2 GiB
    monkeypatch.setenv(ENV_VAR, "3MiB")
    assert xa.memory_budget() == 3 * MiB
    xa.set_memory_budget("1MiB")  # set explicitly: wins over the variable
    assert xa.memory_budget() == MiB
    xa.set_memory_budget(None)
    assert xa.memory_budget() == 3 * MiB
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(ValueError, match=ENV_VAR):
        xa.memory_budget()


def test_bytes_per_point_counts_what_depends_on_the_point():
    w = jnp.ones((256, 256))

    def fn(p):  # (256,) float32 point: two activations of 1 KiB alive at most
        return jnp.tanh(w @ jnp.tanh(w @ p))

    per_point, out = measure(fn, jax.ShapeDtypeStruct((256,), jnp.float32))
    # The 256 KiB matrix is the same for every point: not counted.
    assert out == 1024 and per_point <= 3 * 1024
    xa.set_memory_budget(int(per_point * PLANNING_FACTOR * 10))  # room for 10 points
    xs = jnp.zeros((100, 256))
    assert resolve_chunk_size("auto", fn, xs, stacked=False) == 10
    assert (
        resolve_chunk_size(7, fn, xs) == 7 and resolve_chunk_size(None, fn, xs) is None
    )
    xa.set_memory_budget("1GiB")
    assert resolve_chunk_size("auto", fn, xs) is None  # everything fits
    # Under a vmap of 5 examples, each chunk holds 5 copies: a fifth as many points.
    xa.set_memory_budget(int(per_point * PLANNING_FACTOR * 10))
    got = []
    jax.vmap(lambda v: got.append(resolve_chunk_size("auto", fn, xs, stacked=False)))(
        jnp.zeros((5, 1))
    )
    assert got == [2]


def _methods(model, shape, cnn: bool, chunk: Any = "auto"):
    """(name, method, key) for the many-point methods checked here."""
    key, c = jax.random.key(2), {"chunk_size": chunk}
    window = (shape[0], 4, 4)
    rows = [
        ("ig", xa.IntegratedGradients(model, n_steps=64, **c), None),
        ("smoothgrad", xa.SmoothGrad(xa.Gradients(model), n_samples=24, **c), key),
        ("occlusion", xa.Occlusion(model, window=window, strides=2, **c), None),
        ("rise", xa.RISE(model, n_masks=96, cell_size=4, **c), key),
    ]
    if cnn:
        layer = lambda m: m.conv2  # noqa: E731
        rows.append(("scorecam", xa.ScoreCAM(model, layer, **c), None))  # pyright: ignore
    return rows


def _temp(fn, x) -> int:
    return jax.jit(fn).lower(x).compile().memory_analysis().temp_size_in_bytes  # pyright: ignore[reportOptionalMemberAccess]


def _loop_lengths(fn, x) -> list[int]:
    jaxpr = jax.make_jaxpr(fn)(x).jaxpr
    found = []

    def walk(j):
        for eqn in j.eqns:
            if eqn.primitive.name == "scan":
                found.append(eqn.params["length"])
            for v in eqn.params.values():
                for sub in v if isinstance(v, tuple | list) else (v,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(jaxpr)
    return found


# (architecture, input shape, methods): two architectures at two sizes each.
CASES = [
    ("cnn", (3, 16, 16), ("ig", "smoothgrad", "occlusion", "rise", "scorecam")),
    ("cnn", (1, 36, 36), ("ig", "occlusion", "scorecam")),
    ("mlp", (1, 28, 28), ("ig", "smoothgrad", "occlusion")),
    ("mlp", (3, 32, 32), ("ig", "occlusion")),
]


def _check_fits(name, call, whole_call, x, scale=None):
    """Budget = half of what the unchunked call plans, so the default call must
    chunk; it then plans at most 1.2x the budget, and equals the unchunked call.
    Returns `(name, budget, planned)`."""
    compiled = jax.jit(whole_call).lower(x).compile()
    budget = compiled.memory_analysis().temp_size_in_bytes  # pyright: ignore[reportOptionalMemberAccess] // 2
    xa.set_memory_budget(budget)
    # Chunked: some loop runs more than once (the chunk holds fewer points).
    assert any(n > 1 for n in _loop_lengths(call, x)), name
    chunked = jax.jit(call).lower(x).compile()
    planned = chunked.memory_analysis().temp_size_in_bytes  # pyright: ignore[reportOptionalMemberAccess]
    assert planned <= 1.2 * budget, (name, planned, budget)
    assert_close(chunked(x), compiled(x), scale=scale, err_msg=name)
    return name, budget, planned


@pytest.mark.parametrize(("arch", "shape", "names"), CASES)
def test_default_calls_fit_the_budget(arch, shape, names):
    key = jax.random.key(0)
    n_in = shape[0] * shape[1] * shape[2]
    model = _CNN(shape[0], 8, key) if arch == "cnn" else _MLP(n_in, key)
    x = jax.random.uniform(jax.random.key(1), shape)
    cnn = arch == "cnn"
    report = []
    for (name, method, k), (_, whole, _) in zip(
        _methods(model, shape, cnn),
        _methods(model, shape, cnn, chunk=None),
        strict=True,
    ):
        if name not in names:
            continue
        # Occlusion's values are differences of scores: rounding is relative to
        # the score (the policy's `scale`: the size of what cancelled).
        scale = float(jnp.abs(model(x)[3])) if name == "occlusion" else None
        report.append(
            _check_fits(
                f"{arch} {shape} {name}",
                lambda v, m=method, k=k: m(v, 3, key=k),
                lambda v, m=whole, k=k: m(v, 3, key=k),
                x,
                scale,
            )
        )
    print(arch, shape, [(n, b, p, round(p / b, 2)) for n, b, p in report])


def _inside(model, chunk: Any = "auto"):
    """Many-point methods inside the network, XRAI's IG and Smooth MPRT."""
    c, conv1 = {"chunk_size": chunk}, (lambda m: m.conv1)
    return {
        "layer_ig": xa.LayerIntegratedGradients(model, conv1, n_steps=64, **c),
        "layer_conductance": xa.LayerConductance(model, conv1, n_steps=64, **c),
        "layer_gradient_shap": xa.LayerGradientShap(
            model,
            conv1,
            baseline=xa.baselines.UniformNoise(n_draws=4),
            n_samples=32,
            **c,
        ),  # fmt: skip
        "layer_ablation": xa.LayerFeatureAblation(model, conv1, **c),
        "neuron_ig": xa.NeuronIntegratedGradients(model, conv1, 5, n_steps=64, **c),
        "xrai_ig": xa.XRAI(model, n_steps=64, **c).integrated_gradients(),
        "smooth_mprt": xa.metrics.SmoothMPRT(xa.Gradients(model), n_samples=48, **c),
    }


@pytest.mark.parametrize(
    "name", ["layer_ig", "layer_conductance", "layer_gradient_shap", "layer_ablation",
             "neuron_ig", "xrai_ig", "smooth_mprt"],
)  # fmt: skip
def test_inside_the_network_fits_the_budget(name):
    model = _CNN(3, 8, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 16, 16))
    method, whole = _inside(model)[name], _inside(model, None)[name]
    key = jax.random.key(2)
    if name == "smooth_mprt":  # (the metric's curve: one explanation per step)
        call = lambda v: method.curve(v, 3, key=key)  # noqa: E731
        whole_call = lambda v: whole.curve(v, 3, key=key)  # noqa: E731
    elif name.startswith("neuron"):
        call, whole_call = (lambda v: method(v)), (lambda v: whole(v))
    else:
        call = lambda v: method(v, 3, key=key)  # noqa: E731
        whole_call = lambda v: whole(v, 3, key=key)  # noqa: E731
    # Ablation's values are differences of scores (see the test above).
    scale = float(jnp.abs(model(x)[3])) if name == "layer_ablation" else None
    _check_fits(name, call, whole_call, x, scale)


def test_a_metric_fits_the_budget():
    model = _CNN(3, 8, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 16, 16))
    a = xa.Gradients(model)(x, 3)
    metric = xa.metrics.Deletion(model, n_steps=64)
    assert metric.chunk_size == "auto"
    whole = jax.jit(lambda v: xa.metrics.Deletion(model, 64, chunk_size=None)(v, 3, a))
    compiled = whole.lower(x).compile()
    budget = compiled.memory_analysis().temp_size_in_bytes  # pyright: ignore[reportOptionalMemberAccess] // 2
    xa.set_memory_budget(budget)
    call = lambda v: metric(v, 3, a)  # noqa: E731
    assert any(n > 1 for n in _loop_lengths(call, x))
    assert _temp(call, x) <= 1.2 * budget
    assert_close(jax.jit(call)(x), compiled(x))


def test_budget_under_vmap_covers_the_batch():
    # Each chunk holds the whole batch's copies: under a vmap of 4 examples the
    # chunk holds a quarter as many points, and the plan still fits.
    model = _CNN(3, 8, jax.random.key(0))
    xs = jax.random.uniform(jax.random.key(1), (4, 3, 16, 16))
    ig = xa.IntegratedGradients(model, n_steps=32)
    whole = xa.IntegratedGradients(model, n_steps=32, chunk_size=None)
    compiled = jax.jit(jax.vmap(lambda x: whole(x, 3))).lower(xs).compile()
    budget = compiled.memory_analysis().temp_size_in_bytes  # pyright: ignore[reportOptionalMemberAccess] // 2
    xa.set_memory_budget(budget)
    batched = jax.vmap(lambda x: ig(x, 3))
    assert any(n > 1 for n in _loop_lengths(batched, xs))
    assert _temp(batched, xs) <= 1.2 * budget
    assert_close(jax.jit(batched)(xs), compiled(xs))


def _convs_in_loops(fn, x) -> tuple[int, int]:
    """(convolutions inside scan bodies, convolutions outside) of `fn`'s program."""
    counts = [0, 0]

    def walk(j, inside):
        for eqn in j.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                counts[0 if inside else 1] += 1
            for v in eqn.params.values():
                for sub in v if isinstance(v, tuple | list) else (v,):
                    sub = getattr(sub, "jaxpr", sub)
                    if isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub, inside or eqn.primitive.name == "scan")

    walk(jax.make_jaxpr(fn)(x).jaxpr, False)
    return counts[0], counts[1]


@pytest.mark.parametrize("chunk", [None, 2])
def test_chunked_forward_passes_convolve_fast(chunk):
    # XLA:CPU runs a convolution in a loop body without its fast kernels (8-20x
    # slower); chunks of masked images, like chunks of gradients, get im2col
    # products there instead (the unchunked call keeps its convolutions).
    model = _CNN(3, 8, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 16, 16))
    occ = xa.Occlusion(model, window=(3, 4, 4), strides=4, chunk_size=chunk)
    inside, outside = _convs_in_loops(lambda v: occ(v, 3), x)
    assert outside >= 2  # the unperturbed score, at least
    if chunk is None:
        assert inside == 0 and outside >= 4
    elif jax.default_backend() == "cpu":
        assert inside == 0, "a convolution was left in the loop body"
    whole = xa.Occlusion(model, window=(3, 4, 4), strides=4, chunk_size=None)
    assert_close(occ(x, 3), whole(x, 3), scale=float(jnp.abs(model(x)[3])))
