"""Training with optax, accuracy, augmentation and the weights cache."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr import training

from .helpers import assert_close, tree_allclose


@pytest.fixture(scope="module")
def data():
    return xa.datasets.mnist()


def _short_config(**kw):
    base = dict(epochs=2, batch_size=50, learning_rate=1e-2, warmup=0.1, shift=1)
    base.update(kw)
    return training.TrainConfig(**base)


def test_train_is_adamw_on_smoothed_cross_entropy():
    # The training loop against a hand-written optax reference on identical data:
    # the documented batches (a fresh permutation per epoch from `seed`), shifts,
    # one-cycle schedule, AdamW and label smoothing. Exact mathematics, so it holds
    # on every machine, unlike a threshold on what training reaches.
    import optax

    rng = np.random.default_rng(0)
    xs = rng.uniform(size=(24, 1, 8, 8)).astype(np.float32)
    ys = rng.integers(0, 10, 24).astype(np.int32)
    model = xa.models.MLP((1, 8, 8), width=8, depth=1, key=jax.random.key(0))
    config = _short_config(batch_size=8, warmup=0.25, seed=3)
    result = training.train(model, (xs, ys), config, progress=False)
    assert result.loss.shape == (6,) and np.all(np.isfinite(result.loss))
    assert result.seconds > 0
    # The trained model has the original structure; only arrays changed.
    assert jax.tree_util.tree_structure(result.model) == jax.tree_util.tree_structure(
        model
    )

    lr = config.learning_rate
    schedule = optax.warmup_cosine_decay_schedule(
        lr / 25, lr, warmup_steps=1, decay_steps=6, end_value=lr / 1e3
    )
    optimizer = optax.adamw(schedule, weight_decay=config.weight_decay)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, xb, yb):
        def loss_fn(p):
            logits = jax.vmap(eqx.combine(p, static))(xb)
            labels = optax.smooth_labels(jax.nn.one_hot(yb, 10), 0.05)
            return jnp.mean(optax.softmax_cross_entropy(logits, labels))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    order = np.random.default_rng(config.seed)
    keys = jax.random.split(jax.random.key(config.seed), 6)
    losses = []
    for epoch in range(2):
        perm = order.permutation(24)
        for j in range(3):
            idx = perm[8 * j : 8 * (j + 1)]
            xb = training.random_shift(jnp.asarray(xs[idx]), keys[3 * epoch + j], 1)
            params, state, loss = step(params, state, xb, ys[idx])
            losses.append(float(loss))
    assert_close(result.loss, np.asarray(losses, np.float32))
    trained = eqx.filter(result.model, eqx.is_inexact_array)
    assert_close(trained, params)


def test_accuracy_and_predict_on_a_known_model():
    # A "model" whose logits are the input's first 3 pixels: the prediction is the
    # argmax of those pixels, so the accuracy is known by construction.
    model = lambda x: x.reshape(-1)[:3]
    xs = np.zeros((4, 1, 2, 2), np.float32)
    xs[0, 0, 0, 0] = 1.0  # -> 0
    xs[1, 0, 0, 1] = 1.0  # -> 1
    xs[2, 0, 1, 0] = 1.0  # -> 2
    xs[3, 0, 0, 1] = 1.0  # -> 1
    assert list(training.predict(model, xs)) == [0, 1, 2, 1]
    assert training.accuracy(model, xs, np.array([0, 1, 2, 2])) == 0.75
    with pytest.raises(ValueError, match="one label per image"):
        training.accuracy(model, xs, np.array([0, 1]))


def test_random_shift_is_a_zero_filled_translation():
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.uniform(size=(64, 2, 9, 9)), jnp.float32)
    out = np.asarray(training.random_shift(xs, jax.random.key(0), 2))
    seen = set()
    for x, y in zip(np.asarray(xs), out, strict=True):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                # Reference: np.roll, then zero the rows/columns that wrapped.
                ref = np.roll(x, (dy, dx), axis=(1, 2))
                if dy > 0:
                    ref[:, :dy] = 0
                if dy < 0:
                    ref[:, dy:] = 0
                if dx > 0:
                    ref[:, :, :dx] = 0
                if dx < 0:
                    ref[:, :, dx:] = 0
                # Exact: the shift is one-hot matrix products, x * 1 plus
                # zeros, exact in float32.
                if np.array_equal(ref, y):
                    matches.append((dy, dx))
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # different images get different shifts
    same = training.random_shift(xs, jax.random.key(0), 2)
    # Exact: same key, same shifts, the same compiled program on the same inputs.
    assert np.array_equal(np.asarray(same), out)


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        training.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="shift"):
        training.TrainConfig(shift=-1)
    with pytest.raises(ValueError, match="learning_rate"):
        training.TrainConfig(learning_rate=0.0)
    model = xa.models.MLP(width=4, depth=1, key=jax.random.key(0))
    xs, ys = np.zeros((10, 1, 28, 28), np.float32), np.zeros(10, np.int32)
    with pytest.raises(ValueError, match="batch_size"):
        training.train(model, (xs, ys), training.TrainConfig(batch_size=64))
    with pytest.raises(TypeError, match="floating"):
        training.train(model, (xs.astype(np.uint8), ys))
    with pytest.raises(ValueError, match="labels"):
        training.train(model, (xs, ys[:5]))


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("EQX_ATTR_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert training.cache_dir() == tmp_path / "xdg" / "eqx_attr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert training.cache_dir() == tmp_path / "home" / ".cache" / "eqx_attr"
    monkeypatch.setenv("EQX_ATTR_CACHE", str(tmp_path / "mine"))
    assert training.cache_dir() == tmp_path / "mine"


def test_cached_train_second_run_loads_without_training(monkeypatch, tmp_path, data):
    monkeypatch.setenv("EQX_ATTR_CACHE", str(tmp_path))
    xs, ys = data.x_train[:200], data.y_train[:200]
    config = _short_config(epochs=1)
    model = xa.models.MLP(width=4, depth=1, key=jax.random.key(0))

    def quick_training(model, data, config=None, **kwargs):
        # The cache is under test, not the optimiser (see the AdamW test above).
        moved = jax.tree_util.tree_map(
            lambda a: a + 0.5 if eqx.is_inexact_array(a) else a, model
        )
        return training.TrainResult(moved, np.zeros(1, np.float32), 0.0)

    monkeypatch.setattr(training, "train", quick_training)
    first = training.cached_train(model, (xs, ys), config, name="t", progress=False)
    files = list(tmp_path.glob("t-*.safetensors"))
    assert len(files) == 1
    assert not tree_allclose(
        eqx.filter(first, eqx.is_array), eqx.filter(model, eqx.is_array)
    )

    def no_training(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(training, "train", no_training)
    again = training.cached_train(model, (xs, ys), config, name="t", progress=False)
    arrays = lambda m: eqx.filter(m, eqx.is_array)
    # Exact: the weights read back from the cache file are copies.
    assert tree_allclose(arrays(first), arrays(again), rtol=0, atol=0)
    # Another architecture, config or data set is another cache entry (so it would
    # train): the key covers all three.
    for other in [
        (xa.models.MLP(width=5, depth=1, key=jax.random.key(0)), (xs, ys), config),
        (model, (xs, ys), _short_config(epochs=2)),
        (model, (xs[:100], ys[:100]), config),
    ]:
        with pytest.raises(AssertionError, match="cache"):
            training.cached_train(*other, name="t", progress=False)


def test_cache_key_is_the_same_in_every_process():
    # Non-array leaves (jax.nn.relu in a Lambda, max-pool's init value) are
    # described by name: a `repr` with a memory address would change the key in
    # every process, and the cache would never hit.
    # Shapes only (no initialisation to compute): the key reads no values.
    model = eqx.filter_eval_shape(xa.models.SmallCNN, width=4, key=jax.random.key(0))
    described = [
        training._describe(leaf)
        for leaf in jax.tree_util.tree_leaves(model)
        if not isinstance(leaf, jax.ShapeDtypeStruct)
    ]
    assert described and not any("0x" in d for d in described)
    assert any(d.endswith(":relu") for d in described)


def test_pretrained_cache_hit_reads_weights_into_shapes_alone(monkeypatch, tmp_path):
    # The key of a model's shapes (eqx.filter_eval_shape) is its built model's key,
    # so the zoo's cached models load without running any initialiser; a miss
    # builds the model as a user would (the same values) and trains that.
    monkeypatch.setenv("EQX_ATTR_CACHE", str(tmp_path))
    make = lambda key: xa.models.SmallCNN(width=2, key=key)
    built = make(jax.random.key(0))
    shapes = eqx.filter_eval_shape(make, jax.random.key(0))
    config = _short_config(epochs=1)
    assert training._fingerprint(shapes, config, {}) == training._fingerprint(
        built, config, {}
    )
    trained = []

    def fake_train(model, data, config=None, **kwargs):
        trained.append(model)
        moved = jax.tree_util.tree_map(
            lambda a: a + 0.5 if eqx.is_inexact_array(a) else a, model
        )
        return training.TrainResult(moved, np.zeros(1, np.float32), 0.0)

    monkeypatch.setattr(training, "train", fake_train)
    first = training.pretrained_small_cnn(width=2, config=config, progress=False)
    assert len(trained) == 1
    arrays = lambda m: eqx.filter(m, eqx.is_array)
    # Exact: the same initialiser on the same key, run the same (eager) way.
    assert tree_allclose(arrays(trained[0]), arrays(built), rtol=0, atol=0)

    real = xa.models.SmallCNN

    def shapes_only(*args, key, **kwargs):
        # Traced for its shapes (a tracer key), never run on a concrete key.
        assert isinstance(key, jax.core.Tracer), "a cache hit built the model"
        return real(*args, key=key, **kwargs)

    monkeypatch.setattr(xa.models, "SmallCNN", shapes_only)
    again = training.pretrained_small_cnn(width=2, config=config, progress=False)
    assert len(trained) == 1
    # Exact: the weights read back from the cache file are copies.
    assert tree_allclose(arrays(again), arrays(first), rtol=0, atol=0)
