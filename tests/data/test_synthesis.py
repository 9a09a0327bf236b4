"""Synthetic crops stitched from single-class patches (data/synthesis.py): exact masks, fitting pieces, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from histowsss.config import load_config
from histowsss.data.synthesis import RegionPools, Region, SynthesisError, bezier_shape, cut_sizes, synthesize

COLOURS = {0: (200, 30, 30), 1: (30, 30, 200), 2: (30, 200, 30)}


def _solid_pools(n_classes: int = 2, size: int = 16) -> tuple[list[np.ndarray], RegionPools]:
    """One image per class, every pixel the class's colour, each tiled into single-class patches."""
    images = [np.tile(np.array(COLOURS[c], np.uint8), (48, 48, 1)) for c in range(n_classes)]
    pools = {c: [Region(c, y, x, size, size) for y in range(0, 33, 8) for x in range(0, 33, 8)]
             for c in range(n_classes)}
    return images, RegionPools(pools, size)


@pytest.mark.parametrize("length, most", [(10, 16), (40, 16), (200, 112), (17, 16), (640, 112)])
def test_cut_sizes_fill_the_side_with_pieces_that_fit_a_patch(length: int, most: int):
    for seed in range(20):
        parts = cut_sizes(length, most, np.random.default_rng(seed))
        assert sum(parts) == length and min(parts) >= 1 and max(parts) <= most


def test_bezier_shape_is_one_smooth_blob_inside_its_square():
    from scipy import ndimage

    for seed in range(10):
        m = bezier_shape(64, np.random.default_rng(seed))
        assert m.shape == (64, 64) and 0.1 < m.mean() < 0.8
        assert ndimage.label(ndimage.binary_opening(m))[1] >= 1
        assert ndimage.label(m)[1] <= 3  # a closed curve: one region (a thin pinch may split off a sliver)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_synthetic_masks_are_exact(n_classes: int):
    """Every pixel of a synthetic crop comes from a patch of the class its mask names, and borders show up."""
    images, pools = _solid_pools(n_classes)
    seen = np.zeros(n_classes)
    mixed = 0
    for seed in range(30):
        img, lab = synthesize(images, pools, 40, np.random.default_rng(seed))
        assert img.shape == (40, 40, 3) and lab.shape == (40, 40) and img.dtype == lab.dtype == np.uint8
        for c in range(n_classes):
            assert (img[lab == c] == COLOURS[c]).all()
            seen[c] += (lab == c).mean()
        mixed += len(np.unique(lab)) > 1
    assert (seen > 0.2 * 30 / n_classes).all() and mixed >= 25


def test_synthesis_is_deterministic_per_seed():
    images, pools = _solid_pools()
    a = synthesize(images, pools, 40, np.random.default_rng(3))
    b = synthesize(images, pools, 40, np.random.default_rng(3))
    assert all((x == y).all() for x, y in zip(a, b))


def test_pools_need_mask_fraction_patch_labels_and_two_classes(tmp_path):
    from histowsss.data.synthesis import single_class_pools

    cfg = load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}"])
    with pytest.raises(SynthesisError, match="label_rule: mask_fraction"):
        single_class_pools([], cfg.data, [])
    with pytest.raises(Exception, match="synthetic_fraction: synthetic crops need regions known to be one class"):
        load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}", "train_seg.synthetic_fraction=0.25"])


def test_single_class_images_of_multi_label_tissue_data_are_a_source(tmp_path):
    """Patch data sets labelled with the tissues present (WSSS4LUAD style, no background class): an image labelled
    with one class is all that class; mixed images are left out; pieces fit the smallest such image."""
    from PIL import Image

    from histowsss.data.synthesis import single_class_pools, synthesis_source
    from histowsss.steps.common import samples_for

    rows = ["image,split,patient,label"]
    for i, (lab, colour, (h, w)) in enumerate([("A", COLOURS[0], (40, 56)), ("A", COLOURS[0], (48, 48)),
                                               ("B", COLOURS[1], (36, 60)), ("A;B", COLOURS[2], (48, 48))]):
        Image.fromarray(np.tile(np.array(colour, np.uint8), (h, w, 1))).save(tmp_path / f"p{i}.png")
        rows.append(f"p{i}.png,train,{i},{lab}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    over = [f"data.manifest={tmp_path / 'm.csv'}", "data.label_column=label", "data.multi_label=true",
            "data.classes.names=[A,B]", "data.classes.background=null", "data.mask_column=null",
            "data.classes.colors={}", "data.val_splits=[]", "data.test_splits=[]", "data.mask_mode=class_ids"]
    cfg = load_config("demo", [*over, "train_seg.synthetic_fraction=0.3"])
    assert synthesis_source(cfg.data) == "images"
    samples = samples_for(cfg, ["train"])
    from histowsss.data.loading import load_image

    images = [load_image(s.image, cfg.data) for s in samples]
    pools = single_class_pools(samples, cfg.data, [im.shape[:2] for im in images])
    assert pools.counts() == {0: 2, 1: 1} and pools.most == 36
    for seed in range(10):
        img, lab = synthesize(images, pools, 64, np.random.default_rng(seed))
        assert (img[lab == 0] == COLOURS[0]).all() and (img[lab == 1] == COLOURS[1]).all()
        assert not (img == COLOURS[2]).all(-1).any()  # nothing from the mixed image
    with pytest.raises(Exception, match="regions known to be one class"):  # a background class is implicit
        load_config("demo", [*over, "data.classes.background=A", "train_seg.synthetic_fraction=0.3"])
