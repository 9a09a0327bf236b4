"""Tiling (shift / drop / pad), reflect-padded crops, and the OEEM patch-label rule."""

from __future__ import annotations

import numpy as np
import pytest

from histowsss.config import ClassMap, PatchConfig
from histowsss.data.patches import (Patch, PatchError, crop_padded, patch_labels_from_mask, tile_image,
                                    tile_positions)

CASES = [(775, 112, 56), (522, 112, 56), (112, 112, 56), (113, 112, 56), (300, 64, 64), (300, 64, 17), (20, 7, 3)]


def _covered(starts: list[int], size: int, length: int) -> np.ndarray:
    cov = np.zeros(length, bool)
    for s in starts:
        cov[s : s + size] = True
    return cov


@pytest.mark.parametrize("length, size, stride", CASES)
def test_shift_covers_without_crossing(length, size, stride):
    starts = tile_positions(length, size, stride, "shift")
    assert starts == sorted(set(starts)) and starts[0] == 0
    assert all(0 <= s and s + size <= length for s in starts)
    assert starts[-1] + size == length
    assert _covered(starts, size, length).all()
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("length, size, stride", CASES)
def test_drop_stays_inside_and_misses_less_than_a_stride(length, size, stride):
    starts = tile_positions(length, size, stride, "drop")
    assert starts == list(range(0, starts[-1] + 1, stride))
    assert all(s + size <= length for s in starts)
    assert length - (starts[-1] + size) < stride


@pytest.mark.parametrize("length, size, stride", CASES + [(50, 112, 56), (1, 16, 8)])
def test_pad_covers_with_regular_stride(length, size, stride):
    starts = tile_positions(length, size, stride, "pad")
    assert starts == [i * stride for i in range(len(starts))]
    assert starts[-1] + size >= length and starts[-1] < max(length, 1)  # the last patch still sees the image
    assert _covered(starts, size, max(length, starts[-1] + size))[:length].all()


@pytest.mark.parametrize("length, size, stride", [(300, 112, 150), (17, 16, 21), (100, 10, 35)])
def test_pad_with_a_stride_beyond_the_size_starts_every_patch_inside(length, size, stride):
    """stride > size samples with gaps; no patch may start past the border (it would be all reflection)."""
    starts = tile_positions(length, size, stride, "pad")
    assert starts == list(range(0, length, stride))
    assert all(s < length for s in starts)


def test_glas_tiling_count():
    # GlaS 775 x 522 with 112 px patches, stride 56, shifted last row/column: 13 x 9 patches
    patches = tile_image(522, 775, PatchConfig(size=112, stride=56, border="shift"))
    assert len(patches) == 13 * 9
    assert {(p.y + p.size, p.x + p.size) for p in patches} >= {(522, 775)}


@pytest.mark.parametrize("border", ["shift", "drop"])
def test_image_smaller_than_patch_names_image_and_fix(border):
    with pytest.raises(PatchError) as e:
        tile_image(100, 300, PatchConfig(size=112, stride=56, border=border), name="images/small.png")
    msg = str(e.value)
    assert "images/small.png" in msg and "300x100" in msg and "112" in msg and "border=pad" in msg


def test_small_image_with_pad_gives_one_padded_patch():
    patches = tile_image(100, 50, PatchConfig(size=112, stride=56, border="pad"))
    assert patches == [Patch(0, 0, 112)]


def test_crop_padded_inside_and_reflected():
    img = np.arange(5 * 7 * 3).reshape(5, 7, 3)
    np.testing.assert_array_equal(crop_padded(img, Patch(1, 2, 3)), img[1:4, 2:5])
    out = crop_padded(img, Patch(3, 4, 4))
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out, np.pad(img, [(0, 2), (0, 1), (0, 0)], mode="reflect")[3:7, 4:8])
    # 2-D label maps too, and padding larger than the image reflects again, as the training crops of the pixels are
    # padded (it once fell back to edge values there, so a patch's label counted other pixels than the network saw)
    m = np.array([[1, 2], [3, 4]])
    out = crop_padded(m, Patch(0, 0, 5))
    assert out.shape == (5, 5)
    np.testing.assert_array_equal(out, np.pad(m, [(0, 3), (0, 3)], mode="reflect"))
    pixels = np.arange(2 * 2 * 3).reshape(2, 2, 3)
    as_trained = np.pad(pixels, ((0, 3), (0, 3), (0, 0)), mode="reflect")  # crop_sources' padding of pixel crops
    np.testing.assert_array_equal(crop_padded(pixels, Patch(0, 0, 5)), as_trained)


def test_oeem_rule_on_handmade_mask():
    classes = ClassMap(names=["background", "gland"], background="background")
    m = np.zeros((112, 112), np.uint8)  # 12544 px; 5 % = 627.2 px
    m.ravel()[:627] = 1
    np.testing.assert_array_equal(patch_labels_from_mask(m, classes, 0.05), [1, 0])  # 627 px gland: not > 5 %
    m.ravel()[:628] = 1
    np.testing.assert_array_equal(patch_labels_from_mask(m, classes, 0.05), [1, 1])  # both classes
    m[:] = 1
    m.ravel()[:628] = 0
    np.testing.assert_array_equal(patch_labels_from_mask(m, classes, 0.05), [1, 1])
    m.ravel()[:628] = 1
    m.ravel()[:627] = 0
    np.testing.assert_array_equal(patch_labels_from_mask(m, classes, 0.05), [0, 1])  # gland only


def test_oeem_rule_ignores_unlabelled_pixels():
    classes = ClassMap(names=["background", "gland"], background="background")
    m = np.full((10, 10), 255, np.uint8)
    np.testing.assert_array_equal(patch_labels_from_mask(m, classes, 0.05), [0, 0])
    m[0, :5] = 1
    m[0, 5:] = 0
    np.testing.assert_array_equal(patch_labels_from_mask(m, classes, 0.45), [1, 1])  # 50 % of labelled pixels


@pytest.mark.parametrize("h, w, size, stride", [(60, 128, 48, 40), (128, 128, 48, 40), (30, 20, 48, 16)])
def test_padding_to_the_patches_gives_every_padded_crop(h, w, size, stride):
    """With border: pad, the image padded as far as its patches reach holds each patch's crop_padded window, so
    cached features of a patch past the border come from the pixels its label counts (they came from a window
    moved back inside the image)."""
    from histowsss.data.patches import pad_to_patches

    img = np.random.default_rng(0).integers(0, 255, (h, w, 3)).astype(np.uint8)
    cfg = PatchConfig(size=size, stride=stride, border="pad", label_rule="mask_fraction")
    padded = pad_to_patches(img, cfg)
    for p in tile_image(h, w, cfg):
        np.testing.assert_array_equal(padded[p.y : p.y + p.size, p.x : p.x + p.size], crop_padded(img, p))
    shift = PatchConfig(size=min(size, h, w), stride=stride, border="shift", label_rule="mask_fraction")
    assert pad_to_patches(img, shift) is img and pad_to_patches(img, None) is img
