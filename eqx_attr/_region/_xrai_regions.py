"""XRAI's host side: multi-scale Felzenszwalb segments and greedy region ranking.

Everything here is NumPy / scikit-image and runs on the host (XRAI calls it
through `jax.pure_callback`). It follows PAIR's `saliency.core.XRAI` (0.2.1) step
by step, so that the same image and attribution give the same regions:

1. the image (H, W, C) is rescaled to [-1, 1] and resized to 224 x 224 (cubic,
   anti-aliased); Felzenszwalb segments it at scales 50, 100, 150, 250, 500, 1200
   (sigma 0.8, at least 150 pixels of the 224 x 224 image per segment); each label
   image is resized back (nearest) and every label from the smallest to the
   largest becomes one boolean mask (scale by scale), dilated by a disk of radius 5;
2. the "full" algorithm repeatedly adds the mask whose not yet covered pixels
   have the largest mean attribution, skipping masks that would add fewer than
   `min_pixel_diff` pixels, until the covered area exceeds `area_threshold` or no
   mask is left; the "fast" one ranks the masks once by their own mean and adds
   them in that order.

Masks are kept sparse (their pixel indices), so a greedy step costs the pixels it
covers rather than masks x pixels. Ties are broken as PAIR does (the first mask
in segment order wins), and the gains are PAIR's float means, so near-ties
resolve the same way.
"""

from __future__ import annotations

import collections
import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

SCALES = (50.0, 100.0, 150.0, 250.0, 500.0, 1200.0)
SIGMA = 0.8
MIN_SIZE = 150
RESIZE = (224, 224)
VALUE_RANGE = (-1.0, 1.0)
DILATION_RADIUS = 5
MIN_PIXEL_DIFF = 50


def _skimage():
    try:
        from skimage import morphology, segmentation, transform
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "XRAI segments the image with scikit-image: `pip install eqx_attr[masks]`."
        ) from e
    return morphology, segmentation, transform


# ---------------------------------------------------------------------------------
# Segmentation


def label_images(
    image: np.ndarray,
    scales: Sequence[float] = SCALES,
    sigma: float = SIGMA,
    min_size: int = MIN_SIZE,
    resize: tuple[int, int] | None = RESIZE,
) -> list[np.ndarray]:
    """One Felzenszwalb label image `(H, W)` per scale, of an `(H, W, C)` image."""
    _, segmentation, transform = _skimage()
    image = np.nan_to_num(np.asarray(image))
    lo, hi = np.min(image), np.max(image)
    span = hi - lo
    # A constant image would divide by zero (PAIR gets NaN): map it to the low end.
    unit = (image - lo) / span if span > 0 else np.zeros_like(image)
    im = unit * (VALUE_RANGE[1] - VALUE_RANGE[0]) + VALUE_RANGE[0]
    if resize is not None:
        im = transform.resize(
            im,
            resize,
            order=3,
            mode="constant",
            preserve_range=True,
            anti_aliasing=True,
        )
    labels = []
    for scale in scales:
        seg = segmentation.felzenszwalb(im, scale=scale, sigma=sigma, min_size=min_size)
        if resize is not None:
            seg = transform.resize(
                seg,
                image.shape[:2],
                order=0,
                preserve_range=True,
                mode="constant",
                anti_aliasing=False,
            ).astype(int)
        labels.append(seg)
    return labels


class SparseMasks:
    """Boolean masks over `n_pixels` pixels, stored as sorted pixel indices.

    `ptr[k]:ptr[k + 1]` slices mask `k`'s pixels out of `pix`; the transposed
    index (`pixel_ptr`, `pixel_mask`) lists the masks holding each pixel.
    """

    def __init__(self, pixel_lists: list[np.ndarray], n_pixels: int):
        sizes = np.array([len(p) for p in pixel_lists], np.int64)
        self.n_masks = len(pixel_lists)
        self.n_pixels = n_pixels
        self.ptr = np.concatenate([[0], np.cumsum(sizes)])
        self.pix = (
            np.concatenate(pixel_lists).astype(np.int64)
            if pixel_lists
            else np.zeros(0, np.int64)
        )
        owner = np.repeat(np.arange(self.n_masks), sizes)
        order = np.argsort(self.pix, kind="stable")
        self.pixel_mask = owner[order]
        counts = np.bincount(self.pix, minlength=n_pixels)
        self.pixel_ptr = np.concatenate([[0], np.cumsum(counts)])

    def pixels(self, k: int | np.integer) -> np.ndarray:
        return self.pix[self.ptr[k] : self.ptr[k + 1]]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.ptr, self.pix, self.pixel_mask))

    @classmethod
    def from_dense(cls, masks: np.ndarray) -> SparseMasks:
        """From a `(K, H, W)` boolean array."""
        flat = np.asarray(masks, bool).reshape(masks.shape[0], -1)
        return cls([np.flatnonzero(m) for m in flat], flat.shape[1])

    def to_dense(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros((self.n_masks, self.n_pixels), bool)
        out[np.repeat(np.arange(self.n_masks), np.diff(self.ptr)), self.pix] = True
        return out.reshape(self.n_masks, *shape)


def masks_from_labels(labels: list[np.ndarray], dilation_radius: int) -> SparseMasks:
    """Every label from min to max of each label image, dilated, as sparse masks.

    Each mask is dilated on a crop around its bounding box widened by the radius:
    pixels farther away cannot change, so this equals dilating the whole image.
    """
    from scipy import ndimage

    morphology, _, _ = _skimage()
    h, w = labels[0].shape
    r = int(dilation_radius)
    footprint = morphology.disk(r) if r else None
    pixel_lists = []
    for seg in labels:
        lo, hi = int(seg.min()), int(seg.max())
        boxes = ndimage.find_objects(seg - lo + 1, max_label=hi - lo + 1)
        for offset, box in enumerate(boxes):
            if box is None:  # a label lost when resizing back: an empty mask
                pixel_lists.append(np.zeros(0, np.int64))
                continue
            r0, r1 = max(box[0].start - r, 0), min(box[0].stop + r, h)
            c0, c1 = max(box[1].start - r, 0), min(box[1].stop + r, w)
            crop = seg[r0:r1, c0:c1] == lo + offset
            if footprint is not None:
                crop = morphology.dilation(crop, footprint=footprint)
            rows, cols = np.nonzero(crop)
            pixel_lists.append(np.sort((rows + r0) * w + cols + c0))
    return SparseMasks(pixel_lists, h * w)


class _Cache:
    """A small LRU of segmentations by image content, bounded in bytes.

    Explaining several classes of one image (or calling twice) segments it once.
    """

    def __init__(self, max_entries: int = 16, max_bytes: int = 64 << 20):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.data: collections.OrderedDict[Any, SparseMasks] = collections.OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: Any) -> SparseMasks | None:
        with self.lock:
            value = self.data.get(key)
            if value is not None:
                self.data.move_to_end(key)
            return value

    def put(self, key: Any, value: SparseMasks) -> None:
        with self.lock:
            self.data[key] = value
            while len(self.data) > self.max_entries or (
                len(self.data) > 1
                and sum(v.nbytes() for v in self.data.values()) > self.max_bytes
            ):
                self.data.popitem(last=False)


_CACHE = _Cache()


def image_masks(
    image: np.ndarray,
    scales: Sequence[float] = SCALES,
    sigma: float = SIGMA,
    min_size: int = MIN_SIZE,
    resize: tuple[int, int] | None = RESIZE,
    dilation_radius: int = DILATION_RADIUS,
) -> SparseMasks:
    """The XRAI masks of an `(H, W, C)` image (cached by content and options)."""
    image = np.ascontiguousarray(image)
    key = (
        hashlib.sha1(image.tobytes()).hexdigest(),
        image.shape,
        str(image.dtype),
        tuple(scales),
        sigma,
        min_size,
        resize,
        dilation_radius,
    )
    masks = _CACHE.get(key)
    if masks is None:
        labels = label_images(image, scales, sigma, min_size, resize)
        masks = masks_from_labels(labels, dilation_radius)
        _CACHE.put(key, masks)
    return masks


# ---------------------------------------------------------------------------------
# Greedy ranking


def _mean(values: np.ndarray) -> Any:
    """PAIR's gain: the mean attribution of a pixel set, -inf for an empty one."""
    return values.mean() if values.size else -np.inf


def _rank_full(
    attr: np.ndarray, masks: SparseMasks, area_threshold: float, min_pixel_diff: int
) -> list[tuple[np.ndarray, Any]]:
    """PAIR's full XRAI: the added pixels and gain of each greedy step, in order."""
    n = masks.n_pixels
    a64 = attr.astype(np.float64)
    sizes = np.diff(masks.ptr)
    owner = np.repeat(np.arange(masks.n_masks), sizes)
    # Uncovered pixels and their attribution sum, per mask, updated as pixels
    # get covered; float64 sums only shortlist candidates, whose exact gains are
    # then PAIR's float means.
    counts = sizes.copy()
    sums = np.bincount(owner, weights=a64[masks.pix], minlength=masks.n_masks)
    alive = np.ones(masks.n_masks, bool)
    covered = np.zeros(n, bool)
    tol = 1e-5 * float(np.max(np.abs(a64), initial=0.0))
    steps = []
    while covered.mean() <= area_threshold:
        alive &= counts >= min_pixel_diff
        if not alive.any():
            break
        idx = np.flatnonzero(alive)
        approx = sums[idx] / counts[idx]
        best, best_gain = -1, -np.inf
        for k in idx[approx >= approx.max() - tol]:
            pix = masks.pixels(k)
            gain = _mean(attr[pix[~covered[pix]]])
            if gain > best_gain:
                best, best_gain = k, gain
        pix = masks.pixels(best)
        added = pix[~covered[pix]]
        steps.append((added, best_gain))
        covered[added] = True
        alive[best] = False
        # The masks holding each newly covered pixel, flattened.
        lens = np.diff(masks.pixel_ptr)[added]
        starts = np.repeat(masks.pixel_ptr[added] - np.cumsum(lens) + lens, lens)
        holders = masks.pixel_mask[starts + np.arange(lens.sum())]
        weights = np.repeat(a64[added], lens)
        counts = counts - np.bincount(holders, minlength=masks.n_masks)
        sums = sums - np.bincount(holders, weights=weights, minlength=masks.n_masks)
    return steps


def _rank_fast(
    attr: np.ndarray, masks: SparseMasks, min_pixel_diff: int
) -> list[tuple[np.ndarray, Any]]:
    """PAIR's fast XRAI: masks ranked once by their own mean, overlaps ignored."""
    gains = [_mean(attr[masks.pixels(k)]) for k in range(masks.n_masks)]
    order = sorted(range(masks.n_masks), key=lambda k: -gains[k])
    covered = np.zeros(masks.n_pixels, bool)
    steps = []
    for k in order:
        pix = masks.pixels(k)
        added = pix[~covered[pix]]
        if added.size < min_pixel_diff:
            continue
        steps.append((added, _mean(attr[added])))
        covered[pix] = True
    return steps


def rank_regions(
    attr: np.ndarray,
    masks: SparseMasks,
    algorithm: str = "full",
    area_threshold: float = 1.0,
    min_pixel_diff: int = MIN_PIXEL_DIFF,
) -> tuple[np.ndarray, np.ndarray]:
    """XRAI's heat map and region ranks for an `(H, W)` attribution.

    **Returns:** `(heat, ranks)`, both `(H, W)`: `heat` holds each region's gain
    (the mean attribution of the pixels it added; pixels no region reached get
    their own mean), `ranks` numbers the regions 1 (largest gain) to N, the
    uncovered rest last. A non-finite attribution gives a NaN map and ranks 0.
    """
    shape = attr.shape
    flat = np.ascontiguousarray(attr).reshape(-1)
    if not np.all(np.isfinite(flat)):
        return np.full(shape, np.nan, np.float32), np.zeros(shape, np.int32)
    if algorithm == "full":
        steps = _rank_full(flat, masks, area_threshold, min_pixel_diff)
    else:
        steps = _rank_fast(flat, masks, min_pixel_diff)
    heat = np.full(flat.shape, -np.inf)
    for added, gain in steps:
        heat[added] = gain
    rest = heat == -np.inf
    if rest.any():
        heat[rest] = _mean(flat[rest])
    order = sorted(range(len(steps)), key=lambda i: -steps[i][1])
    ranks = np.zeros(flat.shape, np.int32)
    for rank, i in enumerate(order, start=1):
        ranks[steps[i][0]] = rank
    if rest.any():
        ranks[rest] = len(steps) + 1
    return heat.reshape(shape).astype(np.float32), ranks.reshape(shape)
