"""DecoyMNIST (Ross et al. 2017): the data set, and the penalty of its notebook."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa

from .helpers import assert_close


@pytest.fixture(scope="module")
def decoy():
    return xa.datasets.decoy_mnist(seed=0)


def test_decoy_patches_follow_the_paper(decoy):
    clean = xa.datasets.mnist()
    n_train, n_test = len(clean.y_train), len(clean.y_test)
    assert decoy.x_train.shape == (n_train, 1, 28, 28)
    assert decoy.mask_train.shape == (n_train, 28, 28)
    assert decoy.x_test.shape == (n_test, 1, 28, 28)
    assert decoy.mask_test.shape == (n_test, 28, 28)
    assert decoy.x_train.dtype == np.float32 and decoy.mask_train.dtype == bool
    # The digits and labels are mnist()'s (copied, so exact).
    assert np.array_equal(decoy.y_train, clean.y_train)
    assert np.array_equal(decoy.y_test, clean.y_test)
    for x, m, c in [
        (decoy.x_train, decoy.mask_train, clean.x_train),
        (decoy.x_test, decoy.mask_test, clean.x_test),
    ]:
        assert np.array_equal(np.where(m[:, None], 0, x), np.where(m[:, None], 0, c))
        # One 4x4 square per image, in one of the four corners.
        assert (m.sum((1, 2)) == 16).all()
        corners = np.stack(
            [m[:, :4, :4].all((1, 2)), m[:, :4, -4:].all((1, 2)),
             m[:, -4:, :4].all((1, 2)), m[:, -4:, -4:].all((1, 2))], 1
        )  # fmt: skip
        assert (corners.sum(1) == 1).all()
        assert (corners.sum(0) > len(m) // 8).all()  # every corner is used
    # Training shade 255 - 25 y (over 255), the same float32 expression: exact.
    shade = (255 - 25 * decoy.y_train.astype(np.float32)) / 255
    patch = decoy.x_train[:, 0][decoy.mask_train].reshape(n_train, 16)
    assert np.array_equal(patch, np.repeat(shade[:, None], 16, 1))
    # Test shades: the training shade of a random digit d, as the authors'
    # generator: one value per patch (copies: exact), (255 - 25 d) / 255 computed
    # by the same float32 expression (exact), with d unrelated to the label.
    patch = decoy.x_test[:, 0][decoy.mask_test].reshape(n_test, 16)
    assert (patch == patch[:, :1]).all()
    codes = (255 - 25 * np.arange(10, dtype=np.float32)) / 255
    d = np.argmin(np.abs(patch[:, :1] - codes[None]), axis=1)
    assert np.array_equal(patch[:, 0], codes[d])
    assert np.array_equal(np.unique(d), np.arange(10))
    assert np.mean(d == decoy.y_test) < 0.2  # chance: 0.1


def test_decoy_is_deterministic_per_seed(decoy):
    again = xa.datasets.decoy_mnist(seed=0)
    for u, v in zip(decoy, again, strict=True):
        assert np.array_equal(u, v)  # the same generator and arithmetic: exact
    other = xa.datasets.decoy_mnist(seed=1)
    assert not np.array_equal(decoy.mask_train, other.mask_train)
    with pytest.raises(TypeError, match="seed"):
        xa.datasets.decoy_mnist(seed=0.5)


def _summed_log_probs(out):
    return jnp.sum(jax.nn.log_softmax(out))


def test_gradient_penalty_through_a_method_is_rrr():
    # The notebook's generic penalty, sum over the mask of method(x, sum log p)^2,
    # with xa.Gradients is exactly Ross et al.'s penalty (two programs: assert_close).
    model = xa.models.MLP(
        in_shape=(1, 8, 8), n_classes=3, width=8, key=jax.random.key(0)
    )
    x = jax.random.uniform(jax.random.key(1), (1, 8, 8))
    mask = jnp.zeros((8, 8), bool).at[:4, :4].set(True)

    @eqx.filter_jit
    def both(model, x):
        a = xa.Gradients(model)(x, _summed_log_probs)
        generic = jnp.sum((mask * a[0]) ** 2)  # one channel, as the notebook
        rrr = xa.losses.right_for_the_right_reasons(model, x, None, mask)
        return generic, rrr

    generic, rrr = both(model, x)
    assert float(rrr) > 0
    assert_close(generic, rrr)
