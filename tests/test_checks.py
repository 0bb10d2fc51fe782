"""Run-time checks deferred by the runners (`eqx_attr._checks`).

`eqx.error_if` raises through a host callback, and JAX does not write a program
with a host callback to its persistent cache. The batch runner and the data-set
runner trace methods with their checks deferred (a failed check is a NaN), and
rerun a non-finite example with the checks raising: the program is cached, the
error is still the exact one.
"""

import functools
import os
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr._batch import batch_runner
from eqx_attr._checks import deferred_checks, error_if

from .helpers import digit_like
from .test_pytree_outputs import Plain

pytestmark = pytest.mark.xdist_group("checks")


@functools.cache
def _cnn():
    return eqx.filter_jit(lambda k: xa.models.SmallCNN(width=2, key=k))(
        jax.random.key(0)
    )


def _boom(x):
    return error_if(x, x[0] > 0, "boom")


def test_error_if_raises_or_poisons_values_and_derivatives():
    x = jnp.arange(3.0)
    with pytest.raises(Exception, match="boom"):
        jax.block_until_ready(jax.jit(_boom)(x + 1))
    with deferred_checks():
        poisoned = jax.jit(lambda x: _boom(x))(x + 1)
        grad = jax.grad(lambda x: _boom(x).sum())(x + 1)
        clean = jax.jit(lambda x: _boom(x))(x)
        with pytest.raises(Exception, match="an int"):  # no NaN for integers
            jax.block_until_ready(
                jax.jit(lambda i: error_if(i, i > 0, "an int"))(jnp.int32(1))
            )
        with deferred_checks(False):
            with pytest.raises(Exception, match="boom"):
                jax.block_until_ready(jax.jit(lambda x: _boom(x))(x + 1))
    assert np.isnan(np.asarray(poisoned)).all() and np.isnan(np.asarray(grad)).all()
    np.testing.assert_array_equal(clean, x)


def test_a_method_keeps_one_program_per_mode():
    ig = xa.IntegratedGradients(_cnn(), n_steps=4)
    x = digit_like(0, (1, 8, 8)).at[0, 2, 2].set(jnp.nan)
    with deferred_checks():
        assert np.isnan(np.asarray(ig(x, 3))).all()
    with pytest.raises(Exception, match="`x` contains NaN"):
        jax.block_until_ready(ig(x, 3))  # same class and shapes: not the NaN program
    with deferred_checks():
        assert np.isnan(np.asarray(ig(x, 3))).all()


def _pre_relu_cam():
    # conv2's last convolution, before its ReLU: a value check fails at run time.
    pre_relu = lambda m: m.inner.conv2.layers[2]  # noqa: E731
    return xa.CAM(Plain(_cnn()), pre_relu, classifier=lambda m: m.inner.fc)


@pytest.mark.parametrize(
    "case,match",
    [
        ("nan", "`x` contains NaN"),
        ("inf", "`x` contains NaN or inf"),
        ("target", "`target` is out of range"),
        ("cam", "global average pooling"),
    ],
)
def test_batch_runner_reports_the_exact_error(case, match):
    xs = jnp.stack([digit_like(i, (1, 8, 8)) for i in range(3)])
    ts = jnp.array([1, 2, 3])
    method = xa.Gradients(_cnn())
    if case in ("nan", "inf"):
        xs = xs.at[1, 0, 4, 4].set(jnp.nan if case == "nan" else jnp.inf)
    elif case == "target":
        ts = ts.at[2].set(10)
    else:
        method = _pre_relu_cam()
    with pytest.raises(Exception, match=match):
        batch_runner()(method, xs, ts)


def test_batch_runner_equals_the_per_example_calls():
    xs = jnp.stack([digit_like(i, (1, 8, 8)) for i in range(3)])
    ts = jnp.array([1, 2, 3])
    method = xa.GradCAM(_cnn(), lambda m: m.conv2)
    got = batch_runner()(method, xs, ts)
    for i in range(3):
        np.testing.assert_allclose(got[i], method(xs[i], ts[i]), rtol=1e-5, atol=1e-6)


def test_data_set_runner_reports_the_exact_error_and_keeps_earlier_rows(tmp_path):
    xs = np.stack([np.asarray(digit_like(i, (1, 8, 8))) for i in range(8)])
    out = tmp_path / "a.zarr"
    with pytest.raises(Exception, match="global average pooling"):
        xa.explain_dataset(
            _pre_relu_cam(), xs, np.full(8, 3), out=out, batch_size=4,
            chunk_rows=4, progress=False,
        )  # fmt: skip
    # The same data with a method whose checks hold: finite and complete.
    group = xa.explain_dataset(
        xa.Gradients(_cnn()), xs, np.full(8, 3), out=tmp_path / "b.zarr",
        batch_size=4, progress=False,
    )  # fmt: skip
    assert np.isfinite(group["attributions"][:]).all() and group["done"][:].all()


_SCRIPT = """
import logging, pathlib, sys
import jax, jax.numpy as jnp, numpy as np
import eqx_attr as xa
from eqx_attr._batch import batch_runner
xa.enable_compile_cache(sys.argv[1])
events = []
class Grab(logging.Handler):
    def emit(self, record):
        events.append(record.getMessage())
log = logging.getLogger("jax._src.compiler")
log.setLevel(logging.DEBUG)
log.addHandler(Grab())
model = xa.models.SmallCNN(width=2, key=jax.random.key(0))
xs = jnp.ones((4, 1, 8, 8))
batch_runner()(xa.IntegratedGradients(model, n_steps=4), xs, jnp.arange(4))
xa.explain_dataset(xa.GradCAM(model, lambda m: m.conv2), np.asarray(xs), np.arange(4),
                   out=sys.argv[2], batch_size=4, progress=False)
for name in ("jit_compiled", "jit__explain_batch"):
    hit = any("cache hit" in e and repr(name) in e for e in events)
    miss = any("MISS" in e and repr(name) in e for e in events)
    refused = any("Not writing" in e and repr(name) in e for e in events)
    print(name, hit, miss, refused)
"""


def test_runner_programs_are_written_to_the_persistent_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION")}

    def run(out):
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(tmp_path / "xla"),
             str(tmp_path / out)],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return {
            line.split()[0]: line.split()[1:]
            for line in done.stdout.splitlines()
            if line.startswith("jit_")
        }

    first, second = run("a.zarr"), run("b.zarr")  # a new store: computed
    for name in ("jit_compiled", "jit__explain_batch"):
        assert first[name] == ["False", "True", "False"], (name, first)  # written
        assert second[name] == ["True", "False", "False"], (name, second)  # loaded
    assert any(pathlib.Path(tmp_path / "xla").glob("jit__explain_batch-*"))
