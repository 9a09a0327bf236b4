"""H&E augmentation: HED stain jitter and the 8 dihedral transforms."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from histowsss.config import AugmentConfig
from histowsss.data.transforms import augment_image, dihedral, hed_jitter, random_dihedral_index


def _img(h=9, w=13, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (h, w, 3), dtype=np.uint8)


def test_hed_jitter_sigma_zero_is_identity():
    img = _img()
    out = hed_jitter(img, np.random.default_rng(0), 0.0)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_hed_jitter_tiny_sigma_changes_nothing():
    img = _img()
    np.testing.assert_array_equal(hed_jitter(img, np.random.default_rng(0), 1e-7), img)


def test_hed_jitter_output_uint8_same_shape_and_changes_colour():
    img = _img(16, 20)
    out = hed_jitter(img, np.random.default_rng(1), 0.05)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert not np.array_equal(out, img)
    assert np.abs(out.astype(int) - img.astype(int)).mean() < 40  # a perturbation, not a different image
    # deterministic for a generator state
    np.testing.assert_array_equal(out, hed_jitter(img, np.random.default_rng(1), 0.05))


def test_dihedral_gives_the_8_distinct_transforms():
    a = np.arange(3 * 5).reshape(3, 5)
    outs = [dihedral(a, k) for k in range(8)]
    assert len({(o.shape, o.tobytes()) for o in outs}) == 8
    expected = [a, np.rot90(a, 1), np.rot90(a, 2), np.rot90(a, 3)]
    expected += [np.fliplr(e) for e in expected]
    for k in range(8):
        np.testing.assert_array_equal(outs[k], expected[k])
        assert outs[k].flags.c_contiguous
    # channels follow the pixels
    rgb = np.dstack([a, a + 100, a + 200])
    for k in range(8):
        np.testing.assert_array_equal(dihedral(rgb, k)[..., 1], outs[k] + 100)


def test_dihedral_group_closure():
    a = np.arange(4 * 4).reshape(4, 4)
    results = {dihedral(dihedral(a, i), j).tobytes() for i in range(8) for j in range(8)}
    assert len(results) == 8


@pytest.mark.parametrize("k", [-1, 8])
def test_dihedral_index_out_of_range(k):
    with pytest.raises(ValueError, match="0..7"):
        dihedral(np.zeros((2, 2)), k)


def test_random_dihedral_index_respects_config():
    rng = np.random.default_rng(0)
    assert {random_dihedral_index(rng, AugmentConfig(flips=False, rot90=False)) for _ in range(20)} == {0}
    assert {random_dihedral_index(rng, AugmentConfig(flips=True, rot90=False)) for _ in range(50)} == {0, 4}
    assert {random_dihedral_index(rng, AugmentConfig(flips=True, rot90=True)) for _ in range(200)} == set(range(8))


def test_augment_image_keeps_dtype():
    img = _img(8, 8)
    out = augment_image(img, np.random.default_rng(0), AugmentConfig())
    assert out.dtype == np.uint8 and out.shape == img.shape


def test_data_layer_does_not_need_torch():
    import subprocess

    code = ("import sys; import histowsss.data.transforms, histowsss.data.crops, histowsss.data.check; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_mirror_pad_reflects_at_the_bottom_right_only_where_needed():
    from histowsss.data.transforms import mirror_pad

    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = mirror_pad(img, 5)
    assert out.shape == (5, 5, 3)
    np.testing.assert_array_equal(out[:2, :3], img)  # the image stays at the top left
    np.testing.assert_array_equal(out[2, :3], img[1])  # the first mirrored row repeats the last row
    np.testing.assert_array_equal(out[:2, 3], img[:, 2])
    assert out.shape == (5, 5, 3) and mirror_pad(img, 9).shape == (9, 9, 3)  # more than the image itself
    assert mirror_pad(img, 2) is img
    assert mirror_pad(img[..., 0], 4).shape == (4, 4)  # 2-D arrays too
