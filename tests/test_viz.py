"""Pictures: normalisation, heat maps, overlays and grids (Agg backend)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import eqx_attr as xa  # noqa: E402

from .helpers import assert_close  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_normalize_clips_at_the_percentile():
    a = np.arange(1001, dtype=np.float64)  # |a| percentiles are known exactly
    p = np.percentile(a, 99.5)  # 995.0 for 0..1000 with linear interpolation
    assert_close(p, 995.0)
    n = xa.viz.normalize(a, percentile=99.5)
    assert_close(n[:995], a[:995] / 995.0)
    # Exact (here and below): clipping returns the bounds themselves, and 0 / s = 0.
    assert np.all(n[995:] == 1.0)  # the outliers are clipped, not the rest squashed
    # Signed: the scale comes from |a|, negatives clip at -1, 0 stays at 0.
    both = np.concatenate([-a, a])
    s = xa.viz.normalize(both, signed=True, percentile=99.5)
    assert s.min() == -1.0 and s.max() == 1.0 and s[0] == 0.0
    assert_close(s[1001 + 500], 500 / np.percentile(np.abs(both), 99.5))
    # Unsigned: magnitudes in [0, 1].
    u = xa.viz.normalize(-a, signed=False, percentile=100)
    assert_close(u, a / 1000.0)


def test_normalize_all_zero_and_sparse_maps():
    z = xa.viz.normalize(np.zeros((28, 28)))
    assert np.all(z == 0) and not np.any(np.isnan(z))
    # Three non-zero pixels out of 784: the 99.5th percentile of |a| is 0, so the
    # scale falls back to the max instead of dividing by zero.
    a = np.zeros((28, 28))
    a[3, 4], a[5, 6], a[7, 8] = 2.0, -4.0, 1.0
    n = xa.viz.normalize(a)
    # Exact: 2 / 4 and the clip bound -1 are exact.
    assert np.all(np.isfinite(n)) and n[5, 6] == -1.0 and n[3, 4] == 0.5
    with pytest.raises(ValueError, match="NaN"):
        xa.viz.normalize(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="percentile"):
        xa.viz.normalize(a, percentile=0)


def test_to_2d_channel_reductions():
    a = np.array([[[1.0, -2.0]], [[-3.0, 1.0]]])  # (C=2, H=1, W=2)
    # Exact: sums and maxima of small integers.
    np.testing.assert_array_equal(xa.viz.to_2d(a), [[-2.0, -1.0]])
    np.testing.assert_array_equal(xa.viz.to_2d(a, "abs"), [[4.0, 3.0]])
    np.testing.assert_array_equal(xa.viz.to_2d(a, "max_abs"), [[3.0, 2.0]])
    with pytest.raises(ValueError, match="reduce"):
        xa.viz.to_2d(a, "mean")
    with pytest.raises(ValueError, match="shape"):
        xa.viz.to_2d(np.zeros((1, 1, 2, 2)))


def test_heatmap_signed_uses_diverging_colormap_centred_at_zero(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(1, 28, 28))
    path = tmp_path / "sub" / "signed.png"
    fig = xa.viz.heatmap(a, path=path, title="IG")
    assert isinstance(fig, Figure) and _is_png(path)
    image = fig.axes[0].images[0]
    assert image.get_cmap().name == "bwr" and image.get_clim() == (-1.0, 1.0)
    # The drawn data is the normalised map: white (0) where a == 0.
    data = np.asarray(image.get_array())
    assert_close(data, xa.viz.normalize(a[0]))
    assert fig.axes[0].get_title() == "IG"
    # abs=True shows magnitudes with a sequential colormap on [0, 1].
    fig = xa.viz.heatmap(a, abs=True, colorbar=False)
    image = fig.axes[0].images[0]
    assert image.get_clim() == (0.0, 1.0) and image.get_cmap().name == "jet"
    assert np.all(np.asarray(image.get_array()) >= 0)
    # A non-negative map is unsigned by default.
    fig = xa.viz.heatmap(np.abs(a)[0])
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)


def test_heatmap_of_zero_map_draws_without_nan(tmp_path):
    fig = xa.viz.heatmap(np.zeros((28, 28)), path=tmp_path / "z.png")
    data = np.asarray(fig.axes[0].images[0].get_array())
    assert np.all(data == 0) and _is_png(tmp_path / "z.png")


def test_overlay_draws_map_over_grey_image(tmp_path):
    x = np.zeros((3, 8, 8))
    x[0] = 1.0  # a red image
    h = np.zeros((8, 8))
    h[2:4, 2:4] = 1.0
    fig = xa.viz.overlay(x, h, alpha=0.3, cmap="viridis", path=tmp_path / "o.png")
    under, over = fig.axes[0].images
    assert under.get_cmap().name == "gray" and over.get_alpha() == 0.3
    assert over.get_cmap().name == "viridis"
    # The image is shown in grey: pure red has luma 0.299 (ITU-R BT.601).
    assert_close(np.asarray(under.get_array()), 0.299)
    assert _is_png(tmp_path / "o.png")
    with pytest.raises(ValueError, match="resize"):
        xa.viz.overlay(x, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="alpha"):
        xa.viz.overlay(x, h, alpha=1.5)


def test_image_for_display_layouts():
    rng = np.random.default_rng(1)
    chw = rng.uniform(size=(3, 5, 6))
    hwc = xa.viz.image_for_display(chw)
    assert hwc.shape == (5, 6, 3) and hwc.min() == 0.0 and hwc.max() == 1.0
    assert xa.viz.image_for_display(chw[:1]).shape == (5, 6)
    assert xa.viz.image_for_display(np.moveaxis(chw, 0, -1)).shape == (5, 6, 3)
    assert np.all(xa.viz.image_for_display(np.ones((4, 4))) == 0)
    with pytest.raises(ValueError, match="image"):
        xa.viz.image_for_display(np.zeros((2, 5, 5)))


def test_grid_layout_titles_and_overlay_choice(tmp_path):
    rng = np.random.default_rng(2)
    xs = rng.uniform(size=(3, 1, 10, 10))
    signed = rng.normal(size=(3, 1, 10, 10))
    heat = rng.uniform(size=(3, 10, 10))
    maps = {"Gradients": signed, "Grad-CAM": heat}
    fig = xa.viz.grid(xs, maps, row_labels=["a", "b", "c"], path=tmp_path / "g.png")
    assert _is_png(tmp_path / "g.png")
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_title() for ax in axes[0]] == ["input", "Gradients", "Grad-CAM"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b", "c"]
    # Signed input-shaped maps: one diverging image; (H, W) >= 0 maps: overlay.
    assert len(axes[1, 1].images) == 1
    assert axes[1, 1].images[0].get_cmap().name == "bwr"
    assert len(axes[1, 2].images) == 2
    assert axes[1, 2].images[1].get_cmap().name == "jet"
    # Transposed: rows are input + methods, columns are images.
    fig = xa.viz.grid(xs, maps, transpose=True, overlay=False)
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["input", "Gradients", "Grad-CAM"]
    assert len(axes[2, 0].images) == 1  # overlay=False
    with pytest.raises(ValueError, match="one map per image"):
        xa.viz.grid(xs, {"x": signed[:2]})
    with pytest.raises(ValueError, match="row_labels"):
        xa.viz.grid(xs, maps, row_labels=["a"])
