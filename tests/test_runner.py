"""explain_dataset / evaluate_dataset in one process: values, stores, errors, CLI."""

import argparse
import functools
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import zarr

import eqx_attr as xa
from eqx_attr._cli import _explain_dataset as runner_cli
from eqx_attr._runner._store import StoreMismatchError, resolve_chunk_rows

from .helpers import assert_close

N = 7  # with batch_size=3: two full batches and a partial one


@functools.cache
def _model(seed=0):
    # Built under one jit: eagerly, its initialisation is dozens of compilations.
    return eqx.filter_jit(lambda k: xa.models.SmallCNN(width=4, key=k))(
        jax.random.key(seed)
    )


def _xs(n=N, seed=1):
    return np.random.default_rng(seed).uniform(size=(n, 1, 8, 8)).astype(np.float32)


def _targets(n=N):
    return (np.arange(n) * 3 % 10).astype(np.int32)


class CountingRows:
    """An array-like that records which row slices were read (a lazy data set)."""

    def __init__(self, data):
        self.data, self.reads = data, []
        self.shape, self.dtype = data.shape, data.dtype

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        if isinstance(index, slice):
            self.reads.append((index.start, index.stop))
        return self.data[index]


@eqx.filter_jit
def _one(method, x, t, k):
    return method(x, t) if k is None else method(x, t, key=k)


@eqx.filter_jit
def _logits(model, xs):
    return jax.vmap(model)(xs)


def per_example(method, xs, targets, keys=None):
    """The per-example loop, each call compiled once for the whole file."""
    keys = [None] * len(xs) if keys is None else keys
    return np.stack(
        [
            np.asarray(_one(method, jnp.asarray(x), jnp.int32(t), k), np.float32)
            for x, t, k in zip(xs, targets, keys, strict=True)
        ]
    )


def _meta(group):
    return dict(group.attrs["eqx_attr"])


def test_explain_equals_per_example_loop(tmp_path):
    model, xs, ts = _model(), _xs(), _targets()
    # Gradients: the method most tests here use, so its program compiles once.
    ig = xa.Gradients(model)
    g = xa.explain_dataset(
        ig, xs, ts, out=tmp_path / "s.zarr", batch_size=3, progress=False
    )
    expected = per_example(ig, xs, ts)
    assert_close(g["attributions"][:], expected)
    np.testing.assert_array_equal(g["targets"][:], ts)  # exact: integers copied
    scores = np.asarray(_logits(model, xs))[np.arange(N), ts]
    assert_close(g["scores"][:], scores)
    assert g["done"][:].all()
    # Default chunks of ~2 MiB: here the whole (tiny) data set in one chunk.
    assert g["attributions"].chunks == (7, 1, 8, 8) and g["done"].chunks == (7,)
    meta = _meta(g)
    assert meta["complete"] and meta["version"] == xa.__version__
    assert meta["identity"]["batch_size"] == 3
    assert meta["identity"]["chunk_rows"] == 9  # whole batches
    assert meta["identity"]["data"]["shape"] == [N, 1, 8, 8]
    assert meta["identity"]["method_class"] == "Gradients"
    assert meta["method_config"]["abs"] is False
    assert meta["rows_computed"] == N and meta["throughput_ex_per_s"] > 0
    assert meta["wall_time_s"] > 0 and meta["n_local_devices"] == 1


def test_batches_dispatch_one_program_reused_across_runs(tmp_path):
    from eqx_attr._runner import _dispatch, _explain

    model, xs, ts = _model(), _xs(), _targets()
    # The method is split once per run; equal methods share a handle, so a
    # second run (another store, an equal method object) compiles nothing.
    a1, s1 = _dispatch.split(xa.Gradients(model))
    a2, s2 = _dispatch.split(xa.Gradients(model))
    assert s1 is s2 and all(x is y for x, y in zip(a1, a2, strict=True))
    assert _dispatch.split(xa.Gradients(model, abs=True))[1] is not s1
    rebuilt = s1.rebuild(a1)
    assert eqx.tree_equal(rebuilt, xa.Gradients(model))
    # An unhashable non-array leaf: a handle of its own, still correct.
    tree = ([1, 2], {"k": jnp.ones(2)})
    arrays, static = _dispatch.split(tree)
    assert len(arrays) == 1 and static.rebuild(arrays)[0] == [1, 2]

    run = functools.partial(xa.explain_dataset, batch_size=3, progress=False)
    run(xa.Gradients(model), xs, ts, out=tmp_path / "a.zarr")
    compiled = _explain._explain_batch._cache_size()
    g = run(xa.Gradients(model), xs, ts, out=tmp_path / "b.zarr")
    assert _explain._explain_batch._cache_size() == compiled
    expected = per_example(xa.Gradients(model), xs, ts)
    assert_close(g["attributions"][:], expected)


def test_predicted_targets_and_cam_maps(tmp_path):
    model, xs = _model(), _xs()
    cam = xa.GradCAM(model, lambda m: m.conv2)
    g = xa.explain_dataset(
        cam, xs, "predicted", out=tmp_path / "s.zarr", batch_size=4, progress=False
    )
    logits = np.asarray(_logits(model, xs))
    predicted = logits.argmax(-1)
    # Exact: integer argmaxes of logits whose top two are far apart (asserted),
    # so the rounding of two programs' forward passes cannot swap them.
    top2 = np.sort(logits, axis=-1)[:, -2:]
    assert np.all(top2[:, 1] - top2[:, 0] > 1e-3 * np.abs(logits).max())
    np.testing.assert_array_equal(g["targets"][:], predicted)
    expected = per_example(cam, xs, predicted)
    assert g["attributions"].shape == (N, 8, 8)
    assert_close(g["attributions"][:], expected)


def test_cam_scores_come_from_its_own_forward_pass(tmp_path):
    from eqx_attr._runner import _dispatch, _explain

    model, xs, ts = _model(), _xs(), _targets()
    cam = xa.GradCAM(model, lambda m: m.conv2)
    g = xa.explain_dataset(
        cam, xs, ts, out=tmp_path / "s.zarr", batch_size=4, progress=False
    )
    scores = np.asarray(_logits(model, xs))[np.arange(N), ts]
    assert_close(g["scores"][:], scores)
    expected = per_example(cam, xs, ts)
    assert_close(g["attributions"][:], expected)

    # Storing the scores adds no forward pass for a CAM that reads a gradient
    # (its forward pass gives the model's output); it adds one for Gradients.
    def convolutions(method, scores):
        arrays, static = _dispatch.split(method)
        lowered = _explain._explain_batch.lower(
            static, scores, True, arrays, xs[:4], ts[:4], None, None
        )
        return lowered.as_text().count("stablehlo.convolution")

    assert convolutions(cam, True) == convolutions(cam, False) > 0
    grads = xa.Gradients(model)
    assert convolutions(grads, True) > convolutions(grads, False)


def test_random_method_keys_do_not_depend_on_batching(tmp_path):
    model, xs, ts = _model(), _xs(), _targets()
    sg = xa.SmoothGrad(xa.Gradients(model), n_samples=2)
    key = jax.random.key(5)
    # Row i uses fold_in(key, i): the batching, devices and processes do not matter.
    a = xa.explain_dataset(
        sg, xs, ts, out=tmp_path / "a.zarr", batch_size=3, key=key, progress=False
    )
    keys = [jax.random.fold_in(key, i) for i in range(N)]
    expected = per_example(sg, xs, ts, keys)
    assert_close(a["attributions"][:], expected)


def test_lazy_inputs_memmap_zarr_and_bfloat16(tmp_path):
    model, xs, ts = _model(), _xs(), _targets()
    grads = xa.Gradients(model)
    np.save(tmp_path / "xs.npy", xs)
    memmap = np.load(tmp_path / "xs.npy", mmap_mode="r")
    z = zarr.open_array(
        tmp_path / "xs.zarr",
        mode="w",
        shape=xs.shape,
        chunks=(2, 1, 8, 8),
        dtype=np.float32,
    )
    z[:] = xs
    expected = per_example(grads, xs, ts)
    for i, data in enumerate([memmap, z]):
        g = xa.explain_dataset(
            grads,
            data,
            ts,
            out=tmp_path / f"o{i}.zarr",
            batch_size=3,
            progress=False,
            scores=i == 0,
        )
        assert_close(g["attributions"][:], expected)
        assert ("scores" in g) == (i == 0)
    x16 = xs.astype(jnp.bfloat16)
    m16 = jax.tree.map(
        lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a, model
    )
    grads = xa.Gradients(m16)
    g = xa.explain_dataset(
        grads, x16, ts, out=tmp_path / "bf.zarr", batch_size=3, progress=False
    )
    assert g["attributions"].dtype == np.float32
    # bfloat16 has 8 bits of mantissa: compare in aggregate with float32.
    a, b = g["attributions"][:].ravel(), expected.ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.9


def test_finished_store_is_returned_and_partial_store_resumed(tmp_path):
    model, xs, ts = _model(), _xs(), _targets()
    grads = xa.Gradients(model)
    out = tmp_path / "s.zarr"
    full = xa.explain_dataset(grads, xs, ts, out=out, batch_size=3, progress=False)
    reference = full["attributions"][:]
    counting = CountingRows(xs)
    xa.explain_dataset(grads, counting, ts, out=out, batch_size=3, progress=False)
    assert counting.reads == []  # finished: nothing read, nothing computed
    # Forget the middle batch (rows 3..5) as a crash before its `done` write would.
    group = zarr.open_group(out, mode="r+")
    group["done"][3:6] = False
    group["attributions"][3:6] = 0.0
    group.attrs["eqx_attr"] = {**_meta(group), "complete": False}
    counting = CountingRows(xs)
    g = xa.explain_dataset(grads, counting, ts, out=out, batch_size=3, progress=False)
    assert counting.reads == [(3, 6)]
    # Exact: rows 0..2 and 6 are kept as written, and rows 3..5 are recomputed as
    # the same batch by the same compiled program on the same inputs.
    np.testing.assert_array_equal(g["attributions"][:], reference)
    assert _meta(g)["complete"] and _meta(g)["rows_computed"] == 3


def test_store_killed_while_being_created_is_never_half_there(tmp_path, monkeypatch):
    # A run killed after some arrays of a new store were created (here: an error
    # raised in place of the `done` array) leaves no store at `out`: a restart
    # creates it whole and finishes, rather than resuming a store without `done`.
    from eqx_attr._runner import _store

    model, xs, ts = _model(), _xs(), _targets()
    grads = xa.Gradients(model)
    out = tmp_path / "s.zarr"
    real = zarr.Group.create_array

    def killed(self, name, **kwargs):
        if name == _store.DONE:
            raise KeyboardInterrupt("killed")
        return real(self, name, **kwargs)

    monkeypatch.setattr(zarr.Group, "create_array", killed)
    with pytest.raises(KeyboardInterrupt):
        xa.explain_dataset(grads, xs, ts, out=out, batch_size=3, progress=False)
    assert not (out / "zarr.json").exists()
    monkeypatch.setattr(zarr.Group, "create_array", real)
    group = xa.explain_dataset(grads, xs, ts, out=out, batch_size=3, progress=False)
    assert_close(group["attributions"][:], per_example(grads, xs, ts))
    assert _meta(group)["complete"]


def test_chunks_of_several_batches_written_and_resumed_by_batch(tmp_path):
    model, xs, ts = _model(), _xs(), _targets()
    grads = xa.Gradients(model)
    expected = per_example(grads, xs, ts)
    out = tmp_path / "s.zarr"
    # chunks [0, 6) (two batches) and [6, 7): NaN in row 4, the second batch.
    nan = xs.copy()
    nan[4, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="`xs` row 4 contains NaN"):
        xa.explain_dataset(
            grads, nan, ts, out=out, batch_size=3, chunk_rows=6, progress=False
        )
    g = zarr.open_group(out)
    assert g["attributions"].chunks == (6, 1, 8, 8) and g["done"].chunks == (6,)
    # The batch computed before the error is written (half a chunk), then marked.
    np.testing.assert_array_equal(g["done"][:], [True] * 3 + [False] * 4)  # bools
    assert_close(g["attributions"][:3], expected[:3])
    assert not g["attributions"][3:].any()
    # Resuming that store (same identity: rebuild it with clean data) computes
    # only the batches not done, and keeps the rows already in the chunk.
    full = xa.explain_dataset(
        grads, xs, ts, out=tmp_path / "r.zarr", batch_size=3, chunk_rows=6,
        progress=False,
    )  # fmt: skip
    assert_close(full["attributions"][:], expected)
    group = zarr.open_group(tmp_path / "r.zarr", mode="r+")
    group["done"][3:7] = False
    group["attributions"][3:7] = 0.0
    group.attrs["eqx_attr"] = {**_meta(group), "complete": False}
    counting = CountingRows(xs)
    g = xa.explain_dataset(
        grads, counting, ts, out=tmp_path / "r.zarr", batch_size=3, chunk_rows=6,
        progress=False,
    )  # fmt: skip
    assert counting.reads == [(3, 6), (6, 7)]
    assert_close(g["attributions"][:], expected)
    assert g["done"][:].all() and _meta(g)["rows_computed"] == 4


def test_chunk_rows_default_and_errors():
    image = {"attributions": ((28, 28), np.float32), "targets": ((), np.int32)}
    # ~2 MiB: 3,137 bytes a row (with `done`) -> 669 rows, in whole batches.
    assert resolve_chunk_rows(None, 100_000, 16, image) == 672
    assert resolve_chunk_rows(None, 100_000, 64, image) == 704
    big = {"attributions": ((3, 224, 224), np.float32)}
    assert resolve_chunk_rows(None, 100_000, 64, big) == 64  # one batch
    assert resolve_chunk_rows(None, 100_000, 5, big) == 5
    tiny = {"values": ((), np.float32)}
    assert resolve_chunk_rows(None, 100_000, 64, tiny) == 2048  # the row cap
    assert resolve_chunk_rows(None, 7, 3, image) == 9  # no more than the data
    assert resolve_chunk_rows(None, 0, 3, image) == 3
    assert resolve_chunk_rows(12, 100, 3, image) == 12
    assert resolve_chunk_rows(300, 100, 3, image) == 102
    with pytest.raises(ValueError, match=r"`chunk_rows=10` must be a positive "
                       r"multiple of `batch_size=3` \(e.g. 9\)"):  # fmt: skip
        resolve_chunk_rows(10, 100, 3, image)
    with pytest.raises(ValueError, match="`chunk_rows` must be an integer >= 1"):
        resolve_chunk_rows(0, 100, 3, image)
    with pytest.raises((TypeError, ValueError), match="chunk_rows"):  # or beartype
        resolve_chunk_rows(6.0, 100, 3, image)


def test_foreign_store_refused_left_intact_and_overwritten(tmp_path):
    model, xs, ts = _model(), _xs(), _targets()
    out = tmp_path / "s.zarr"
    g = xa.explain_dataset(
        xa.Gradients(model), xs, ts, out=out, batch_size=3, progress=False
    )
    before = g["attributions"][:]
    foreign = [
        dict(method=xa.GradientsXInput(model)),  # another method
        dict(method=xa.Gradients(_model(9))),
        dict(xs=_xs(seed=2)),  # other data
        dict(ts=_targets()[::-1].copy()),  # other targets
        dict(batch_size=4),  # another configuration
        dict(chunk_rows=3),  # another layout
    ]
    for change in foreign:
        with pytest.raises(StoreMismatchError, match="overwrite=True"):
            xa.explain_dataset(
                change.get("method", xa.Gradients(model)),
                change.get("xs", xs),
                change.get("ts", ts),
                out=out,
                batch_size=change.get("batch_size", 3),
                chunk_rows=change.get("chunk_rows"),
                progress=False,
            )
    # Exact: the refused runs wrote nothing; the stored values are read back.
    np.testing.assert_array_equal(zarr.open_group(out)["attributions"][:], before)
    g = xa.explain_dataset(
        xa.GradientsXInput(model),
        xs,
        ts,
        out=out,
        batch_size=3,
        overwrite=True,
        progress=False,
    )
    assert_close(g["attributions"][:], before * xs)


def test_bad_input(tmp_path):
    model, xs, ts = _model(), _xs(), _targets()
    grads = xa.Gradients(model)
    with pytest.raises(ValueError, match=r"7 rows but `targets` has 5"):
        xa.explain_dataset(grads, xs, ts[:5], out=tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="batch_size"):
        xa.explain_dataset(grads, xs, ts, out=tmp_path / "a.zarr", batch_size=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="existing file"):
        xa.explain_dataset(grads, xs, ts, out=tmp_path / "file")
    with pytest.raises(ValueError, match="cannot be written"):
        xa.explain_dataset(grads, xs, ts, out=tmp_path / "file" / "s.zarr")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a Zarr store"):
        xa.explain_dataset(grads, xs, ts, out=tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="'predicted'"):
        xa.explain_dataset(grads, xs, "labels", out=tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="row 4 is 12"):
        bad = ts.copy()
        bad[4] = 12
        xa.explain_dataset(
            grads, xs, bad, out=tmp_path / "t.zarr", batch_size=3, progress=False
        )
    nan = xs.copy()
    nan[4, 0, 2, 2] = np.nan
    out = tmp_path / "nan.zarr"
    with pytest.raises(ValueError, match="`xs` row 4 contains NaN"):
        xa.explain_dataset(grads, nan, ts, out=out, batch_size=3, progress=False)
    g = zarr.open_group(out)
    np.testing.assert_array_equal(g["done"][:], [True] * 3 + [False] * 4)  # bools
    expected = per_example(grads, xs[:3], ts[:3])
    assert_close(g["attributions"][:3], expected)
    assert not g["attributions"][3:].any()  # rows not yet written read as 0


def test_progress_bar_reports_examples_per_second(tmp_path, capsys):
    model, xs, ts = _model(), _xs(), _targets()
    xa.explain_dataset(
        xa.Gradients(model),
        xs,
        ts,
        out=tmp_path / "s.zarr",
        batch_size=3,
        progress=True,
    )
    assert "ex/s" in capsys.readouterr().err


class AbsMass(eqx.Module):
    def __call__(self, a):
        return jnp.sum(jnp.abs(a))


class MassInMask(eqx.Module):
    def __call__(self, a, mask):
        return jnp.sum(jnp.where(mask, a.sum(0), 0.0)) / jnp.sum(a)


class CompletenessGap(eqx.Module):
    model: eqx.Module

    def __call__(self, x, target, a, *, key=None):
        noise = 0.0 if key is None else jax.random.normal(key, ()) * 0.0 + 1.0
        return (jnp.sum(a) - self.model(x)[target]) * noise


def test_evaluate_dataset_three_call_shapes(tmp_path):
    model, xs, ts = _model(), _xs(), _targets()
    grads = xa.Gradients(model)
    attrs = xa.explain_dataset(
        grads, xs, ts, out=tmp_path / "a.zarr", batch_size=3, progress=False
    )
    a = attrs["attributions"][:]
    g = xa.evaluate_dataset(
        AbsMass(), None, None, a, out=tmp_path / "m1.zarr", batch_size=3, progress=False
    )
    assert_close(g["values"][:], np.abs(a).sum((1, 2, 3)))
    masks = np.zeros((N, 8, 8), bool)
    masks[:, 2:5, 1:6] = True
    g = xa.evaluate_dataset(
        MassInMask(),
        None,
        None,
        a,
        masks=masks,
        out=tmp_path / "m2.zarr",
        batch_size=3,
        progress=False,
    )
    s = a.sum(1)
    inside, total = (s * masks).sum((1, 2)), s.sum((1, 2))
    # A ratio of two sums of signed values: each sum's rounding is relative to its
    # terms' |sum|, and dividing by the total amplifies it by sum|s| / |sum s|.
    ratio = inside / total
    spread = np.abs(s * masks).sum((1, 2)) + np.abs(ratio) * np.abs(s).sum((1, 2))
    assert_close(g["values"][:], ratio, scale=spread / np.abs(total))
    # targets read from the explain store; the metric needs x, target and a
    g = xa.evaluate_dataset(
        CompletenessGap(model),
        xs,
        None,
        attrs,
        key=jax.random.key(0),
        out=tmp_path / "m3.zarr",
        batch_size=4,
        progress=False,
    )
    scores = np.asarray(_logits(model, xs))[np.arange(N), ts]
    # A residual: the size of the terms that cancelled, per row.
    cancelled = np.abs(a).sum((1, 2, 3)) + np.abs(scores)
    assert_close(g["values"][:], a.sum((1, 2, 3)) - scores, scale=cancelled)
    assert dict(g.attrs["eqx_attr"])["identity"]["metric_class"] == "CompletenessGap"
    with pytest.raises(ValueError, match="needs `masks`"):
        xa.evaluate_dataset(MassInMask(), None, None, a, out=tmp_path / "m4.zarr")
    with pytest.raises(ValueError, match="7 rows but `masks` has 2"):
        xa.evaluate_dataset(
            MassInMask(), None, None, a, masks=masks[:2], out=tmp_path / "m4.zarr"
        )


def _cli_args(tmp_path, **over):
    parser = argparse.ArgumentParser()
    runner_cli.add_parser(parser.add_subparsers(dest="command"))
    opts = dict(
        model="small_cnn",
        weights=str(tmp_path / "w.safetensors"),
        data=str(tmp_path / "xs.npy"),
        method="gradcam",
        out=str(tmp_path / "cli.zarr"),
        batch_size="3",
    )
    opts.update(over)
    argv = ["explain-dataset"]
    for k, v in opts.items():
        argv += [f"--{k.replace('_', '-')}", v] if v is not True else [f"--{k}"]
    return parser.parse_args(argv + ["--no-progress"])


def test_cli_run(tmp_path, capsys):
    model, xs, ts = _model(), _xs(), _targets()
    xa.models.save(tmp_path / "w.safetensors", model)
    np.save(tmp_path / "xs.npy", xs)
    np.save(tmp_path / "ts.npy", ts)
    assert runner_cli.run(_cli_args(tmp_path, targets=str(tmp_path / "ts.npy"))) == 0
    assert "7 rows, 7 computed" in capsys.readouterr().out
    g = zarr.open_group(tmp_path / "cli.zarr")
    cam = xa.GradCAM(model, lambda m: m.conv2)
    expected = per_example(cam, xs, ts)
    assert_close(g["attributions"][:], expected)
    bad = [
        (dict(weights=str(tmp_path / "missing.safetensors")), "weights file not found"),
        (dict(batch_size="0"), "--batch-size must be >= 1"),
        (dict(method="nope"), "nknown method"),
        (dict(data=str(tmp_path / "none.npy")), "no such file"),
        (dict(coordinator="127.0.0.1:1"), "go together"),
        (dict(method="gradients"), "StoreMismatchError"),
    ]
    for change, message in bad:
        assert runner_cli.run(_cli_args(tmp_path, **change)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert os.path.isdir(tmp_path / "cli.zarr")
