"""`xa.targets`: hand-derived values, every method that takes a target, vmap over
stacks of targets, PyTree outputs (segmentation, detection dicts) and errors."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_attr as xa
from eqx_attr import targets as T

from .helpers import assert_close, digit_like, jcall, small_cnn

S = jnp.array([1.0, 3.0, -2.0, 0.5])


# ---------------------------------------------------------------------------------
# Hand-derived values


def test_classification_targets_hand_values():
    s = np.array([1.0, 3.0, -2.0, 0.5])
    assert float(T.ClassIndex(1)(S)) == 3.0  # indexing copies, exact
    assert float(T.ClassIndex(jnp.array(2))(S)) == -2.0
    assert float(T.ClassIndex(np.int64(3))(S)) == 0.5
    assert_close(T.LabelSet([0, 2])(S), 1.0 - 2.0)
    assert_close(T.LabelSet(jnp.array([1, 1]))(S), 6.0)  # a repeated label counts twice
    assert_close(T.Margin(1)(S), 3.0 - 1.0)
    assert_close(T.Margin(2)(S), -2.0 - 3.0)
    lse = np.log(np.sum(np.exp(s)))
    assert_close(T.LogSoftmax(0)(S), np.float32(1.0 - lse))


def test_segmentation_region_hand_value():
    out = jnp.arange(12.0).reshape(2, 2, 3)  # class 1: [[6, 7, 8], [9, 10, 11]]
    mask = jnp.array([[True, False, True], [False, False, True]])
    assert_close(T.SegmentationRegion(1, mask)(out), 6.0 + 8.0 + 11.0)
    weights = jnp.array([[0.5, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert_close(T.SegmentationRegion(0, weights)(out), 0.5 * 0.0 + 2.0 * 4.0)


def test_embedding_similarity_hand_value():
    e = jnp.array([3.0, 4.0])
    assert_close(T.EmbeddingSimilarity(jnp.array([4.0, 3.0]))(e), 24.0 / 25.0)
    assert_close(T.EmbeddingSimilarity(jnp.array([0.0, 2.0]))(e), 8.0 / 10.0)
    assert float(T.EmbeddingSimilarity(jnp.array([0.0, 0.0]))(e)) == 0.0


def test_box_iou_hand_value():
    a = jnp.array([[0.0, 0, 2, 2]])
    b = jnp.array([[1.0, 0, 3, 2], [0.0, 0, 2, 2], [5.0, 5, 6, 6], [1.0, 1, 1, 1]])
    # overlap 1x2 = 2 of union 4 + 4 - 2; identical; disjoint; an empty box.
    assert_close(T.box_iou(a, b), np.array([[1 / 3, 1.0, 0.0, 0.0]]), scale=1.0)


DETECTIONS = {
    "boxes": jnp.array([[0.0, 0, 2, 2], [1.0, 0, 3, 2], [10.0, 10, 12, 12]]),
    "scores": jnp.array([0.9, 0.8, 0.7]),
    "labels": jnp.array([1, 2, 1]),
}


def test_box_score_hand_values():
    # grad-cam's FasterRCNNBoxScoreTarget: best IoU box, IoU > t and same label:
    # IoU + score.
    assert_close(T.BoxScore(jnp.array([0.0, 0, 2, 2]), label=1)(DETECTIONS), 1.9)
    # best match is box 1 (IoU 1) but its label is 2: no score.
    assert float(T.BoxScore(jnp.array([1.0, 0, 3, 2]), label=1)(DETECTIONS)) == 0.0
    # no label check: box 0 and box 1 tie at IoU 3/5; argmax takes the first.
    assert_close(T.BoxScore(jnp.array([0.5, 0, 2.5, 2]))(DETECTIONS), 0.6 + 0.9)
    # below the threshold: IoU 3/5 is not > 0.7.
    box = jnp.array([0.5, 0, 2.5, 2])
    assert float(T.BoxScore(box, iou_threshold=0.7)(DETECTIONS)) == 0.0
    # several reference boxes: the sum over those that match.
    boxes = jnp.array([[0.0, 0, 2, 2], [10.0, 10, 12, 12], [20.0, 20, 21, 21]])
    assert_close(T.BoxScore(boxes, label=1)(DETECTIONS), 1.9 + 1.7)
    # per-class scores (N, n_classes): the score of `label`.
    logits = {"boxes": DETECTIONS["boxes"], "scores": jnp.arange(9.0).reshape(3, 3)}
    assert_close(T.BoxScore(jnp.array([10.0, 10, 12, 12]), label=2)(logits), 1 + 8.0)
    # no predicted box: zero.
    empty = {"boxes": jnp.zeros((0, 4)), "scores": jnp.zeros((0,))}
    assert float(T.BoxScore(jnp.array([0.0, 0, 1, 1]))(empty)) == 0.0
    # another structure, read with `where`.
    pair = (DETECTIONS["boxes"], DETECTIONS["scores"])
    target = T.BoxScore(jnp.array([0.0, 0, 2, 2]), where=lambda o: (*o, None))
    assert_close(target(pair), 1.9)


# ---------------------------------------------------------------------------------
# Every method that takes a target


def _conv2(m):
    return m.conv2


METHODS = {
    "Gradients": lambda m: xa.Gradients(m),
    "IntegratedGradients": lambda m: xa.IntegratedGradients(m, n_steps=8),
    "GradCAM": lambda m: xa.GradCAM(m, _conv2),
    "Occlusion": lambda m: xa.Occlusion(m, window=(1, 7, 7), strides=(1, 7, 7)),
    "LRP": lambda m: xa.LRP(m),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_class_index_is_the_int_target(name):
    m, x = small_cnn(), digit_like()
    method = METHODS[name](m)
    assert_close(jcall(method, x, T.ClassIndex(3)), jcall(method, x, 3))
    assert_close(
        jcall(method, x, T.ClassIndex(jnp.array(5))),
        jcall(method, x, jnp.array(5)),
    )


@pytest.mark.parametrize(
    "name", ["Gradients", "IntegratedGradients", "Occlusion", "LRP"]
)
def test_label_set_is_the_sum_of_its_labels(name):
    # These attributions are linear in the target's score (for a fixed input),
    # so a label set's is the sum of its labels'.
    m, x = small_cnn(), digit_like()
    method = METHODS[name](m)
    a = jcall(method, x, T.LabelSet([2, 7]))
    a2, a7 = jcall(method, x, 2), jcall(method, x, 7)
    assert_close(a, a2 + a7, scale=float(jnp.abs(a2).max() + jnp.abs(a7).max()))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_target_runs_with_every_method(name):
    m, x = small_cnn(), digit_like()
    method = METHODS[name](m)
    for target in (T.Margin(3), T.LogSoftmax(3), T.EmbeddingSimilarity(m(x) + 1.0)):
        a = jcall(method, x, target)
        assert a.shape == (x.shape if name != "GradCAM" else x.shape[1:])
        assert bool(jnp.all(jnp.isfinite(a)))


def test_margin_and_log_softmax_gradients_by_hand():
    m, x = small_cnn(), digit_like()
    s = m(x)
    p = jax.nn.softmax(s)
    g = jax.jacrev(m)(x)  # (10, *x.shape)
    runner_up = int(jnp.argsort(jnp.where(jnp.arange(10) == 3, -jnp.inf, s))[-1])
    margin = jcall(xa.Gradients(m), x, T.Margin(3))
    assert_close(margin, g[3] - g[runner_up])
    log_softmax = jcall(xa.Gradients(m), x, T.LogSoftmax(3))
    assert_close(log_softmax, g[3] - jnp.tensordot(p, g, 1))


@pytest.mark.parametrize("name", ["Gradients", "GradCAM", "IntegratedGradients"])
def test_vmap_over_class_index_equals_the_loop(name):
    m, x = small_cnn(), digit_like()
    method = METHODS[name](m)
    stacked = eqx.filter_jit(jax.vmap(lambda t: method(x, t)))(
        T.ClassIndex(jnp.arange(10))
    )
    for c in range(10):
        assert_close(stacked[c], jcall(method, x, c))


def test_jit_does_not_retrace_for_other_classes():
    m, x = small_cnn(), digit_like()
    traces = []

    @eqx.filter_jit
    def f(t):
        traces.append(None)
        return xa.Gradients(m)(x, t)

    for c in (1, 4, 7):
        f(T.ClassIndex(jnp.asarray(c)))
    assert len(traces) == 1


# ---------------------------------------------------------------------------------
# PyTree and dense outputs


class TinySegmenter(eqx.Module):
    """(1, 8, 8) -> (3, 8, 8) logits: three 3x3 convolutions."""

    conv1: eqx.nn.Conv2d
    conv2: eqx.nn.Conv2d
    head: eqx.nn.Conv2d

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.conv1 = eqx.nn.Conv2d(1, 4, 3, padding=1, key=k1)
        self.conv2 = eqx.nn.Conv2d(4, 4, 3, padding=1, key=k2)
        self.head = eqx.nn.Conv2d(4, 3, 3, padding=1, key=k3)

    def __call__(self, x):
        h = jax.nn.relu(self.conv1(x))
        h = jax.nn.relu(self.conv2(h))
        return self.head(h)


def test_segmentation_region_with_gradients_and_cams():
    seg = TinySegmenter(jax.random.key(0))
    x = digit_like(1, (1, 8, 8))
    mask = jnp.zeros((8, 8), bool).at[2:6, 3:7].set(True)
    target = T.SegmentationRegion(2, mask)

    def region(z):
        return jnp.sum(jnp.where(mask, seg(z)[2], 0.0))

    assert_close(jcall(xa.Gradients(seg), x, target), jax.grad(region)(x))
    ig = jcall(xa.IntegratedGradients(seg, n_steps=8), x, target)
    assert ig.shape == x.shape
    cam = jcall(xa.GradCAM(seg, lambda m: m.conv2), x, target)
    assert cam.shape == (8, 8) and bool(jnp.all(jnp.isfinite(cam)))
    lrp = jcall(xa.LRP(seg), x, target)
    assert lrp.shape == x.shape and bool(jnp.all(jnp.isfinite(lrp)))


def detector(x):
    """A toy detector: two boxes whose corners and scores depend on `x` (2,)."""
    a, b = x[0], x[1]
    boxes = jnp.stack(
        [
            jnp.array([0.0, 0.0, 2.0, 2.0]) + a * jnp.array([0.0, 0.0, 1.0, 0.0]),
            jnp.array([5.0, 5.0, 7.0, 7.0]) + b,
        ]
    )
    scores = jax.nn.sigmoid(jnp.stack([a * b, a - b]))
    return {"boxes": boxes, "scores": scores, "labels": jnp.array([0, 1])}


def test_box_score_on_a_detector_dict_by_hand():
    x = jnp.array([0.5, 0.2])
    ref = jnp.array([0.0, 0.0, 2.0, 2.0])
    target = T.BoxScore(ref, label=0)

    def by_hand(z):
        # box 0 is (0, 0, 2 + a, 2): it contains the reference, IoU = 4 / (4 + 2a).
        a, b = z[0], z[1]
        return 4.0 / (4.0 + 2.0 * a) + jax.nn.sigmoid(a * b)

    assert_close(target(detector(x)), by_hand(x))
    assert_close(xa.Gradients(detector)(x, target), jax.grad(by_hand)(x))
    # label 1 does not match box 0, the best box: zero score, zero gradient.
    off = T.BoxScore(ref, label=1)
    assert float(off(detector(x))) == 0.0
    assert_close(xa.Gradients(detector)(x, off), np.zeros(2), scale=1.0)


class DictHead(eqx.Module):
    net: eqx.Module

    def __call__(self, x):
        s = self.net(x)
        return {"logits": s, "probs": jax.nn.softmax(s)}


def test_callable_targets_see_pytree_outputs():
    m, x = small_cnn(), digit_like()
    wrapped = DictHead(m)

    def pick(out):
        return out["logits"][3]

    assert_close(jcall(xa.Gradients(wrapped), x, pick), jcall(xa.Gradients(m), x, 3))
    ig, ig_plain = (
        xa.IntegratedGradients(wrapped, n_steps=8),
        METHODS["IntegratedGradients"](m),
    )
    assert_close(jcall(ig, x, pick), jcall(ig_plain, x, 3))
    cam = xa.GradCAM(wrapped, lambda w: w.net.conv2)
    assert_close(jcall(cam, x, pick), jcall(METHODS["GradCAM"](m), x, 3))
    occ = xa.Occlusion(wrapped, window=(1, 7, 7), strides=(1, 7, 7))
    assert_close(jcall(occ, x, pick), jcall(METHODS["Occlusion"](m), x, 3))
    with pytest.raises(ValueError, match="callable.*xa.targets"):
        xa.Gradients(wrapped)(x, 3)
    with pytest.raises(ValueError, match="callable.*xa.targets"):
        xa.GradCAM(wrapped, lambda w: w.net.conv2)(x, 3)


# ---------------------------------------------------------------------------------
# Errors that name the argument


def test_bad_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="`c`"):
        T.ClassIndex(-1)
    with pytest.raises(TypeError, match="[`']c[`']"):  # jaxtyping's check or ours
        T.ClassIndex(1.5)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`c=10` is out of range"):
        T.ClassIndex(10)(S)
    with pytest.raises(ValueError, match="`c=4` is out of range"):
        xa.Gradients(lambda z: z)(S, T.Margin(4))
    with pytest.raises(ValueError, match="`labels`"):
        T.LabelSet([])
    with pytest.raises(ValueError, match="`labels`"):
        T.LabelSet([0, 9])(S)
    with pytest.raises(ValueError, match="`mask`"):
        T.SegmentationRegion(0, jnp.ones(3, bool))
    with pytest.raises(ValueError, match="`mask`"):
        T.SegmentationRegion(0, jnp.ones((3, 3), bool))(jnp.ones((2, 4, 4)))
    with pytest.raises(ValueError, match="`box`"):
        T.BoxScore(jnp.ones(3))
    with pytest.raises(ValueError, match="`iou_threshold`"):
        T.BoxScore(jnp.ones(4), iou_threshold=1.5)
    with pytest.raises(ValueError, match="`where=lambda out"):
        T.BoxScore(jnp.ones(4))(S)
    with pytest.raises(ValueError, match="`ref`"):
        T.EmbeddingSimilarity(jnp.ones(3))(S)
    with pytest.raises(ValueError, match="one class"):
        T.ClassIndex(jnp.arange(3))(S)  # a stack is vmapped over, not called


def test_traced_out_of_range_class_is_a_run_time_error():
    f = jax.jit(lambda t: T.ClassIndex(t)(S))
    assert float(f(jnp.array(1))) == 3.0
    with pytest.raises(Exception, match="out of range"):
        f(jnp.array(7)).block_until_ready()
