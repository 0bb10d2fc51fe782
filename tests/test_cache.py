"""The weights cache: atomic saves, concurrent processes, corrupt and read-only.

Training itself is replaced by a stand-in that returns a known model at once:
these tests check the cache, not the optimiser (tests/test_training.py does that).
"""

import logging
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr import training

ROOT = pathlib.Path(__file__).resolve().parents[1]

XS = np.zeros((8, 1, 8, 8), np.float32)
YS = np.zeros(8, np.int32)
CONFIG = training.TrainConfig(epochs=1, batch_size=8, shift=0)


def _like():
    # An MLP: quick to build (no convolution to initialise); the cache only sees a
    # PyTree of arrays.
    return xa.models.MLP((1, 8, 8), width=4, depth=1, key=jax.random.key(0))


def _filled(model, value):
    return jax.tree_util.tree_map(
        lambda a: jnp.full_like(a, value) if eqx.is_inexact_array(a) else a, model
    )


def _arrays(model):
    return [
        np.asarray(a)
        for a in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    ]


@pytest.fixture
def fake_training(monkeypatch, tmp_path):
    """`train` returns the model filled with 1.0 and counts its calls."""
    calls = []

    def train(model, data, config=None, **kwargs):
        calls.append(1)
        return training.TrainResult(_filled(model, 1.0), np.zeros(1, np.float32), 0.0)

    monkeypatch.setattr(training, "train", train)
    monkeypatch.setenv("EQX_ATTR_CACHE", str(tmp_path / "cache"))
    return calls


def _cached():
    return training.cached_train(_like(), (XS, YS), CONFIG, name="c", progress=False)


def _cache_file(tmp_path) -> pathlib.Path:
    (path,) = (tmp_path / "cache").glob("c-*.safetensors")
    return path


def test_save_leaves_no_temporary_file_and_stores_a_checksum(tmp_path):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    xa.models.save(path, _filled(_like(), 2.0))
    xa.models.save(tmp_path / "m.npz", _filled(_like(), 2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz", "m.safetensors"]
    with safe_open(str(path), framework="numpy") as f:
        assert len(f.metadata()["sha256"]) == 64


def test_truncated_cache_file_is_retrained_with_a_warning(
    fake_training, tmp_path, caplog
):
    first = _cached()
    path = _cache_file(tmp_path)
    data = path.read_bytes()
    for cut in (len(data) // 2, 7):  # half the tensors, or half the header
        path.write_bytes(data[:cut])
        with caplog.at_level(logging.WARNING, logger="eqx_attr.training"):
            again = _cached()
        assert "unreadable cache file" in caplog.text and str(path) in caplog.text
        caplog.clear()
        rewritten = _arrays(xa.models.load(path, _like()))  # rewritten whole
        # Exact here and below: weights are filled, saved and loaded (copied, not
        # computed).
        assert all(np.all(a == 1.0) for a in rewritten)
        pairs = zip(_arrays(first), _arrays(again), strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs)
    assert len(fake_training) == 3
    _cached()  # the rewritten file loads without training
    assert len(fake_training) == 3


def test_altered_bytes_fail_the_checksum(fake_training, tmp_path, caplog):
    _cached()
    path = _cache_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a flipped bit in the last tensor: still a valid file
    path.write_bytes(bytes(data))
    with pytest.raises(xa.models.WeightsError, match="corrupt"):
        xa.models.load(path, _like())
    with caplog.at_level(logging.WARNING, logger="eqx_attr.training"):
        _cached()
    assert "checksum" in caplog.text and len(fake_training) == 2


def test_read_only_cache_folder_returns_the_model_with_a_warning(
    fake_training, tmp_path, monkeypatch, caplog
):
    # Policy: a cache that cannot be written is not an error; the trained model is
    # returned uncached, with a warning naming the folder and $EQX_ATTR_CACHE.
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):  # root ignores permissions: refuse as the
            # kernel would for anyone else
            def refuse(path, model):
                raise PermissionError(13, "Permission denied", str(path))

            monkeypatch.setattr(xa.models, "save", refuse)
        with caplog.at_level(logging.WARNING, logger="eqx_attr.training"):
            model = _cached()
        assert "cannot write the weights cache" in caplog.text
        assert "EQX_ATTR_CACHE" in caplog.text and str(folder) in caplog.text
        # Exact: the fake training fills the weights with 1.0 (copied, not computed).
        assert all(
            np.all(a == 1.0) for a in _arrays(eqx.filter(model, eqx.is_inexact_array))
        )
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)
    # A cache path below a regular file cannot be created by anyone (root too).
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("EQX_ATTR_CACHE", str(tmp_path / "file" / "cache"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="eqx_attr.training"):
        _cached()
    assert "cannot write the weights cache" in caplog.text


_WORKER = textwrap.dedent(
    """
    import os, pathlib, sys, time
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np
    from eqx_attr import models, training

    folder, role, shared = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    os.environ["EQX_ATTR_CACHE"] = str(folder / "cache")
    like = models.MLP((1, 8, 8), width=4, depth=1, key=jax.random.key(0))
    fill = lambda m, v: jax.tree_util.tree_map(
        lambda a: jnp.full_like(a, v) if eqx.is_inexact_array(a) else a, m)
    training.train = lambda model, data, config=None, **kw: training.TrainResult(
        fill(model, 1.0), np.zeros(1, np.float32), 0.0)
    # Start together: each announces itself, then waits for the other.
    (folder / f"ready{role}").write_text("")
    while not all((folder / f"ready{r}").exists() for r in (1, 2)):
        time.sleep(0.01)
    xs, ys = np.zeros((8, 1, 8, 8), np.float32), np.zeros(8, np.int32)
    config = training.TrainConfig(epochs=1, batch_size=8, shift=0)
    m = training.cached_train(like, (xs, ys), config, name="same", progress=False)
    assert all(np.all(np.asarray(a) == 1.0) for a in jax.tree_util.tree_leaves(
        eqx.filter(m, eqx.is_inexact_array)))
    mine = fill(like, float(role))
    for _ in range(150):
        models.save(shared, mine)
    """
)


def test_two_processes_writing_at_once_never_leave_a_partial_file(tmp_path):
    shared = tmp_path / "shared.safetensors"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(tmp_path), str(role), str(shared)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for role in (1, 2)
    ]
    like = _like()
    seen = set()
    # Read while both write: every read is one process's whole model, never a
    # mixture and never a partial file.
    # Exact comparisons: every weight is a filled constant, copied through files.
    while any(w.poll() is None for w in workers):
        if shared.exists():
            arrays = _arrays(xa.models.load(shared, like))
            values = {float(v) for a in arrays for v in np.unique(a)}
            assert values in ({1.0}, {2.0}), values
            seen |= values
        time.sleep(0.001)
    for w in workers:
        assert w.wait() == 0, w.stderr.read() if w.stderr else ""
    arrays = _arrays(xa.models.load(shared, like))
    assert {float(v) for a in arrays for v in np.unique(a)} in ({1.0}, {2.0})
    # Both trained "the same model" into one cache entry, which loads whole.
    (entry,) = (tmp_path / "cache").glob("same-*.safetensors")
    assert all(np.all(a == 1.0) for a in _arrays(xa.models.load(entry, like)))
    leftovers = [p.name for p in tmp_path.rglob(".*")]
    assert leftovers == [], leftovers
