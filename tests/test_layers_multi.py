"""Several layers at once: one forward and one backward pass read them all."""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import eqx_attr as xa

from ._vit_reference import attention_and_gradients, tiny_vit
from .helpers import assert_close, digit_like, small_cnn

ATTN = lambda m: [b.attn.attn_drop for b in m.blocks]  # noqa: E731


def test_every_attention_and_gradient_of_a_vit():
    vit, x = tiny_vit(), digit_like(0, (1, 8, 8))

    @eqx.filter_jit
    def read(x):
        both = xa.layers_activation_and_gradient(vit, ATTN, x, 3)
        return both, xa.layers_activation(vit, ATTN, x), vit(x)

    (acts, grads), only, out = read(x)
    ref_a, ref_g, scores = attention_and_gradients(vit, x, 3)
    assert_close(out, scores)  # the reference is the model
    assert [a.shape for a in acts] == [(2, 17, 17)] * 2
    assert_close(acts, ref_a)
    assert_close(grads, ref_g)
    assert_close(only, ref_a)


def test_layers_of_different_shapes_match_single_reads():
    m, x = small_cnn(), digit_like()

    @eqx.filter_jit
    def read(x):
        many = xa.layers_activation_and_gradient(m, lambda m: (m.conv1, m.conv2), x, 4)
        ones = [
            xa.layer_activation_and_gradient(m, layer, x, 4)
            for layer in (lambda m: m.conv1, lambda m: m.conv2)
        ]
        return many, ones

    (acts, grads), ones = read(x)
    for i, (a, g) in enumerate(ones):
        assert_close((acts[i], grads[i]), (a, g))


def test_vmap_over_targets_and_inputs_under_jit():
    vit = tiny_vit(1)
    xs = jnp.stack([digit_like(i, (1, 8, 8)) for i in range(2)])
    read = lambda x, t: xa.layers_activation_and_gradient(vit, ATTN, x, t)  # noqa: E731
    acts, grads = jax.jit(jax.vmap(read))(xs, jnp.array([0, 4]))
    _, g, _ = attention_and_gradients(vit, xs[1], 4)
    assert_close([a[1] for a in grads], g)
    acts, grads = jax.jit(jax.vmap(lambda t: read(xs[0], t)))(jnp.arange(5))
    _, g, _ = attention_and_gradients(vit, xs[0], 2)
    assert_close([a[2] for a in grads], g)
    assert_close(acts[0][0], acts[0][4])  # the forward pass is shared


@pytest.mark.parametrize(
    "where, match",
    [
        (lambda m: [], "selects no module"),
        (lambda m: [m.blocks[0].attn.attn_drop, m.pos_embed], "array of shape"),
        (lambda m: [m.blocks[5]], "could not select"),
    ],
)
def test_bad_where(where, match):
    with pytest.raises(ValueError, match=match):
        xa.layers_activation_and_gradient(
            tiny_vit(), where, digit_like(0, (1, 8, 8)), 0
        )


class _Unused(eqx.Module):
    used: eqx.nn.Linear
    spare: eqx.nn.Linear

    def __call__(self, x):
        return self.used(x.reshape(-1))


def test_unused_layer_is_named():
    k1, k2 = jax.random.split(jax.random.key(0))
    m = _Unused(eqx.nn.Linear(4, 3, key=k1), eqx.nn.Linear(4, 3, key=k2))
    with pytest.raises(ValueError, match="item 1 of `layers` .* never calls"):
        xa.layers_activation(m, lambda m: [m.used, m.spare], jnp.ones((2, 2)))
