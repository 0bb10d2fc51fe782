"""explain_dataset for real on 4 forced CPU devices, on 2 processes, and killed.

The subprocesses start together (module fixture) so their imports and compiles
overlap; every one imports this worktree's package and is killed on timeout.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import equinox as eqx
import jax
import numpy as np
import pytest
import zarr

import eqx_attr as xa

from .helpers import assert_close

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_runner_worker.py")
N, TIMEOUT = 7, 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _start(args, **env):
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runner_multi")
    model = eqx.filter_jit(lambda k: xa.models.SmallCNN(width=4, key=k))(
        jax.random.key(0)
    )
    xa.models.save(folder / "w.safetensors", model)
    rng = np.random.default_rng(0)
    np.save(folder / "xs.npy", rng.uniform(size=(N, 1, 8, 8)).astype(np.float32))
    np.save(folder / "ts.npy", (np.arange(N) * 3 % 10).astype(np.int32))
    port = _free_port()
    cli = [
        "-m", "eqx_attr", "explain-dataset", "--model", "small_cnn",
        "--weights", str(folder / "w.safetensors"), "--data", str(folder / "xs.npy"),
        "--targets", str(folder / "ts.npy"), "--method", "gradients",
        "--out", str(folder / "hosts.zarr"), "--batch-size", "3", "--no-progress",
        "--chunk-rows", "6",  # chunks [0, 6) (two batches) and [6, 7): one each
        "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
    ]  # fmt: skip
    procs = {
        "slow": _start([WORKER, "slow", str(folder)]),
        "devices": _start(
            [WORKER, "devices", str(folder)],
            XLA_FLAGS=os.environ["XLA_FLAGS"]
            + " --xla_force_host_platform_device_count=4",
        ),
        "host0": _start([*cli, "--process-id", "0"]),
        "host1": _start([*cli, "--process-id", "1"]),
    }
    yield folder, model, procs
    for p in procs.values():
        if p.poll() is None:
            p.kill()
        p.wait()


def _finish(proc, name):
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{name} timed out:\n{out[-3000:]}")
    assert proc.returncode == 0, f"{name} failed:\n{out[-3000:]}"
    return out


def _reference(folder, model):
    xs, ts = np.load(folder / "xs.npy"), np.load(folder / "ts.npy")
    group = xa.explain_dataset(
        xa.Gradients(model),
        xs,
        ts,
        out=folder / "single.zarr",
        batch_size=3,
        progress=False,
    )
    return group["attributions"][:], group["scores"][:]


def test_kill_and_resume(runs):
    folder, model, procs = runs
    proc, store = procs["slow"], folder / "killed.zarr"
    deadline = time.monotonic() + TIMEOUT
    done = np.zeros(N, bool)
    while time.monotonic() < deadline and proc.poll() is None:
        if (store / "done").exists():
            done = zarr.open_group(store, mode="r")["done"][:]
            if done.sum() >= 2:
                break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = zarr.open_group(store, mode="r")["done"][:]
    assert 2 <= done.sum() < N
    xs, ts = np.load(folder / "xs.npy"), np.load(folder / "ts.npy")

    class Counting:
        shape, dtype, reads = xs.shape, xs.dtype, []

        def __getitem__(self, index):
            if isinstance(index, slice):
                self.reads.append(index.start)
            return xs[index]

    counting = Counting()
    group = xa.explain_dataset(
        xa.Gradients(model),
        counting,
        ts,
        out=store,
        batch_size=1,
        chunk_rows=2,
        progress=False,
    )
    assert sorted(counting.reads) == list(np.flatnonzero(~done))
    expected, scores = _reference(folder, model)
    assert_close(group["attributions"][:], expected)
    assert_close(group["scores"][:], scores)
    assert group["done"][:].all() and dict(group.attrs["eqx_attr"])["complete"]


def test_four_forced_devices_equal_one(runs):
    folder, model, procs = runs
    _finish(procs["devices"], "devices")
    info = json.loads((folder / "devices.json").read_text())
    assert info["lazy_imports"] == {"zarr": False, "tqdm": False}
    assert info["n_devices"] == 4 and info["meta"]["n_local_devices"] == 4
    expected, scores = _reference(folder, model)
    group = zarr.open_group(folder / "devices.zarr", mode="r")
    assert_close(group["attributions"][:], expected)
    assert_close(group["scores"][:], scores)


def test_two_processes_equal_one(runs):
    folder, model, procs = runs
    out0 = _finish(procs["host0"], "host0")
    _finish(procs["host1"], "host1")
    assert "7 rows" in out0
    group = zarr.open_group(folder / "hosts.zarr", mode="r")
    meta = dict(group.attrs["eqx_attr"])
    assert meta["n_processes"] == 2 and meta["complete"]
    assert group["attributions"].chunks[0] == 6
    expected, scores = _reference(folder, model)
    assert_close(group["attributions"][:], expected)
    assert_close(group["scores"][:], scores)
