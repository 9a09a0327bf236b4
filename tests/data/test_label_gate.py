"""Pixel gates from patch labels: what each pixel may be, forced classes, grid sampling, config check."""

from __future__ import annotations

import numpy as np
import pytest
from histowsss.config import ClassMap, ConfigError, DataConfig, load_config
from histowsss.data.label_gate import force_single, cell_centres, patch_allowed, present_classes
from histowsss.data.patches import crop_padded, patch_labels_from_mask, tile_image


def _data(size: int = 16, stride: int = 8) -> DataConfig:
    return DataConfig(manifest="m.csv", classes=ClassMap(names=["background", "gland"], background="background"),
                      mask_mode="binary", mask_foreground_class="gland",
                      patches={"size": size, "stride": stride, "label_rule": "mask_fraction", "min_fraction": 0.05})


def _blobs(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    m = np.zeros((h, w), np.uint8)
    for _ in range(3):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 12)
        m[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 1
    return m


def test_uniform_patches_force_their_class_and_mixed_ones_allow_both():
    data = _data()
    mask = np.zeros((32, 48), np.uint8)
    mask[:, 24:] = 1  # left half background, right half gland
    allowed = patch_allowed(mask, data)
    assert allowed.shape == (2, 32, 48)
    # columns 0-7 lie only in all-background patches (x in 0..15), columns 40-47 only in all-gland ones
    assert not allowed[1, :, :8].any() and allowed[0, :, :8].all()
    assert not allowed[0, :, 40:].any() and allowed[1, :, 40:].all()
    # next to the edge the patches covering a pixel hold both classes, or one of them holds only its own
    assert allowed[:, :, 24].any(axis=0).all()


@pytest.mark.parametrize("seed", range(4))
def test_gate_contradicts_the_mask_only_within_the_patch_tolerance(seed):
    data = _data()
    mask = _blobs(seed)
    allowed = patch_allowed(mask, data)
    assert allowed.any(axis=0).all()
    wrong = ~np.take_along_axis(allowed, mask[None].astype(np.int64), axis=0)[0]
    # a pixel is refused its true class only inside a patch where that class covers <= min_fraction
    per_patch_limit = 0
    for p in tile_image(*mask.shape, data.patches):
        t = patch_labels_from_mask(crop_padded(mask, p), data.classes, 0.05)
        crop_wrong = wrong[p.y : p.y + p.size, p.x : p.x + p.size]
        for k in np.flatnonzero(t < 0.5):
            per_patch_limit += int((crop_padded(mask, p) == k).sum())
            assert (crop_padded(mask, p) == k).mean() <= 0.05
        assert crop_wrong.sum() <= p.size * p.size
    assert wrong.sum() <= per_patch_limit


def test_pixels_no_patch_covers_take_the_image_classes_not_every_class():
    """border: drop leaves strips no patch covers; an all-background image must stay background there."""
    data = _data()
    data.patches.border = "drop"
    mask = np.zeros((20, 20), np.uint8)
    allowed = patch_allowed(mask, data)
    assert allowed[0].all() and not allowed[1].any()
    assert present_classes(allowed, [0, 1]).tolist() == [True, False]
    mask[18:, 18:] = 1  # gland only in the uncovered corner: allowed there, as the image holds it
    allowed = patch_allowed(mask, data)
    assert allowed[1, 19, 19] and not allowed[1, :16, :16].any()


def test_unlabelled_patches_add_no_constraint_in_a_partly_labelled_image():
    """Pixels under all-ignore patches are covered (nothing is known there), not the strips border: drop leaves:
    any class may be there, not only those seen elsewhere in the image."""
    data = _data()
    mask = np.zeros((32, 32), np.uint8)
    mask[16:] = 255  # top half background, bottom half unlabelled
    allowed = patch_allowed(mask, data)
    assert allowed[:, 24:].all()


def test_all_ignore_patch_adds_no_constraint():
    data = _data()
    mask = np.full((16, 16), 255, np.uint8)
    assert patch_allowed(mask, data).all()


def test_force_single_and_grid_sampling():
    allowed = np.ones((2, 8, 8), bool)
    allowed[1, :4] = False  # top half: background only
    allowed[0, 6:] = False  # bottom rows: gland only
    lab = np.ones((8, 8), np.uint8)
    lab[5, 0] = 255
    out = force_single(lab, allowed)
    assert (out[:4] == 0).all() and (out[6:] == 1).all()
    assert out[5, 0] == 255 and out[4, 3] == 1  # ignore stays ignore where both are allowed
    lab0 = np.zeros((8, 8), np.uint8)
    out0 = force_single(lab0, allowed)
    assert (out0[4:6] == 0).all() and (out0[6:] == 1).all()
    g = cell_centres(allowed, (2, 2), 4)
    assert g.shape == (2, 2, 2) and not g[1, 0].any() and g[1, 1].all() and not g[0, 1].any()
    assert present_classes(allowed, [0, 1]).tolist() == [True, True]
    assert present_classes(allowed[:, :4], [1]).tolist() == [False]


def test_patch_gating_needs_patch_labels():
    with pytest.raises(ConfigError, match="label_gating=patch needs patch labels"):
        load_config("demo", ["eval_cam.label_gating=patch"])
    cfg = load_config("glas-gland", ["eval_cam.label_gating=patch"])
    assert cfg.eval_cam.label_gating == "patch" and cfg.data.patches.label_rule == "mask_fraction"


def test_an_image_smaller_than_a_patch_is_named():
    data = DataConfig.model_validate({"manifest": "m.csv", "label_column": None, "mask_mode": "binary",
                                      "mask_foreground_class": "gland",
                                      "classes": {"names": ["background", "gland"], "background": "background"},
                                      "patches": {"size": 112, "stride": 56, "label_rule": "mask_fraction"}})
    from histowsss.data.patches import PatchError

    with pytest.raises(PatchError, match="slides/a.png: image 150x100 is smaller than the patch size 112"):
        patch_allowed(np.zeros((100, 150), np.uint8), data, name="slides/a.png")
