"""Training crops: box geometry under dihedral transforms, sizes, patch and random crop examples."""

from __future__ import annotations

import numpy as np
import pytest

from histowsss.config import TrainCamConfig
from histowsss.data.crops import (dihedral_box, fitted_sizes, image_targets, patch_examples, random_crop_examples,
                                  scaled_sizes,
                                  training_crop_size)
from histowsss.data.manifest import read_manifest
from histowsss.data.transforms import dihedral


@pytest.mark.parametrize("k", range(8))
def test_dihedral_box_agrees_with_dihedral(k):
    rng = np.random.default_rng(k)
    h, w = 11, 17
    arr = rng.integers(0, 1000, (h, w, 2))
    t = dihedral(arr, k)
    for _ in range(20):
        size = int(rng.integers(1, min(h, w) + 1))
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        ty, tx = dihedral_box(y, x, size, h, w, k)
        assert 0 <= ty and ty + size <= t.shape[0] and 0 <= tx and tx + size <= t.shape[1]
        np.testing.assert_array_equal(t[ty : ty + size, tx : tx + size], dihedral(arr[y : y + size, x : x + size], k))


def test_dihedral_box_rejects_bad_k():
    with pytest.raises(ValueError, match="0..7"):
        dihedral_box(0, 0, 1, 2, 2, 9)


def _two_images(builder, data_config, h=40, w=60, **kw):
    rows = [builder.row("a", label="benign", h=h, w=w), builder.row("b", label="malignant", h=h, w=w + 10)]
    return data_config(builder.manifest(rows), **kw)


def test_scaled_sizes(builder, data_config):
    cfg = _two_images(builder, data_config, image_scale=0.5)
    samples = read_manifest(cfg)
    assert scaled_sizes(samples, cfg) == [(20, 30), (20, 35)]
    assert scaled_sizes(samples, cfg, min_size=20) == [(20, 30), (20, 35)]


def test_scaled_sizes_image_smaller_than_crop_names_file_and_fix(builder, data_config):
    cfg = _two_images(builder, data_config, image_scale=0.5)
    samples = read_manifest(cfg)
    with pytest.raises(ValueError) as e:
        scaled_sizes(samples, cfg, min_size=32)
    msg = str(e.value)
    assert "images/a.png" in msg and "30x20" in msg and "32" in msg and "crop_size" in msg
    # padded patches accept small images
    padded = type(cfg).model_validate(dict(cfg.model_dump(), patches={"size": 32, "stride": 16, "border": "pad"}))
    assert scaled_sizes(samples, padded, min_size=32) == [(20, 30), (20, 35)]


def test_small_images_are_mirrored_to_the_crop_when_asked_but_unpadded_patches_still_refuse(builder, data_config):
    cfg = _two_images(builder, data_config, image_scale=0.5)
    samples = read_manifest(cfg)
    assert fitted_sizes(samples, cfg, 32, mirror=True) == ([(32, 32), (32, 35)], ["a", "b"])
    assert fitted_sizes(samples, cfg, 20, mirror=True) == ([(20, 30), (20, 35)], [])
    with pytest.raises(ValueError, match="small_images=mirror"):
        fitted_sizes(samples, cfg, 32, mirror=False)
    tiled = type(cfg).model_validate(dict(cfg.model_dump(), patches={"size": 32, "stride": 16, "border": "drop"}))
    with pytest.raises(ValueError, match="border=pad"):
        fitted_sizes(samples, tiled, 32, mirror=True)


def test_scaled_sizes_missing_image_is_clear(builder, data_config):
    rows = [dict(builder.row("a"), image="images/missing.png")]
    cfg = data_config(builder.manifest(rows))
    with pytest.raises(ValueError, match=r"missing\.png: file not found"):
        scaled_sizes(read_manifest(cfg), cfg)


def test_image_targets_from_labels(builder, data_config):
    cfg = _two_images(builder, data_config)
    np.testing.assert_array_equal(image_targets(read_manifest(cfg), cfg), [[1, 0], [0, 1]])


def test_patch_examples_mask_fraction(builder, data_config):
    # a binary gland mask in the left half of each image: left patches are gland (+background), right ones not
    m = np.zeros((32, 64), np.uint8)
    m[:, :24] = 255
    builder.image("g", 32, 64)
    builder.mask("g", values=m)
    rows = [{"image": "images/g.png", "mask": "masks/g.png", "split": "train", "patient": "p", "label": ""}]
    cfg = data_config(builder.manifest(rows), label_column=None,
                      classes={"names": ["background", "gland"], "background": "background"},
                      mask_mode="binary", mask_foreground_class="gland",
                      patches={"size": 32, "stride": 16, "border": "shift", "label_rule": "mask_fraction"})
    samples = read_manifest(cfg)
    ex = patch_examples(samples, cfg, scaled_sizes(samples, cfg))
    assert [(e.y, e.x) for e in ex] == [(0, 0), (0, 16), (0, 32)]
    assert [e.target.tolist() for e in ex] == [[1, 1], [1, 1], [1, 0]]
    np.testing.assert_array_equal(image_targets(samples, cfg), [[1, 1]])  # no label column: from the mask


def test_image_labels_from_masks_keep_a_class_one_patch_carries(builder, data_config):
    """A small gland focus (1 % of the image, 10 % of the patches around it): the patches carry 'gland', so the
    image label does too (the whole-image rule would drop it, and the label gate would erase it from the image)."""
    from histowsss.data.crops import mask_image_label

    m = np.zeros((200, 200), np.uint8)
    m[90:110, 90:110] = 255
    builder.image("f", 200, 200)
    builder.mask("f", values=m)
    rows = [{"image": "images/f.png", "mask": "masks/f.png", "split": "train", "patient": "p", "label": ""}]
    patches = {"size": 64, "stride": 32, "border": "shift", "label_rule": "mask_fraction", "min_fraction": 0.05}
    cfg = data_config(builder.manifest(rows), label_column=None,
                      classes={"names": ["background", "gland"], "background": "background"},
                      mask_mode="binary", mask_foreground_class="gland", patches=patches)
    samples = read_manifest(cfg)
    assert any(e.target[1] for e in patch_examples(samples, cfg, scaled_sizes(samples, cfg)))
    np.testing.assert_array_equal(image_targets(samples, cfg), [[1, 1]])
    small = cfg.model_copy(update={"patches": cfg.patches.model_copy(update={"size": 256})})
    np.testing.assert_array_equal(mask_image_label(m.clip(0, 1), small), [1, 0])  # no patch fits: the whole image


def test_patches_with_no_labelled_pixel_are_left_out(builder, data_config):
    """A class-id mask with an ignore (255) block: a patch wholly inside it has no label, not "no class present"."""
    m = np.zeros((32, 64), np.uint8)
    m[:, 32:] = 255
    m[:, :8] = 1
    builder.image("g", 32, 64)
    builder.mask("g", values=m)
    rows = [{"image": "images/g.png", "mask": "masks/g.png", "split": "train", "patient": "p", "label": ""}]
    cfg = data_config(builder.manifest(rows), label_column=None,
                      classes={"names": ["background", "gland"], "background": "background"}, mask_mode="class_ids",
                      patches={"size": 32, "stride": 16, "border": "shift", "label_rule": "mask_fraction"})
    samples = read_manifest(cfg)
    ex = patch_examples(samples, cfg, scaled_sizes(samples, cfg))
    assert [(e.x, e.target.tolist()) for e in ex] == [(0, [1, 1]), (16, [1, 0])]  # the patch at x 32: all ignore


def test_patch_examples_image_rule(builder, data_config):
    cfg = _two_images(builder, data_config, h=32, w=32,
                      patches={"size": 16, "stride": 16, "border": "drop", "label_rule": "image"})
    samples = read_manifest(cfg)
    ex = patch_examples(samples, cfg, scaled_sizes(samples, cfg))
    assert len(ex) == 4 + 4  # 32x32 and 32x42 (drop: the last 10 columns are not tiled)
    assert all(e.target.tolist() == ([1, 0] if e.image == 0 else [0, 1]) for e in ex)
    assert training_crop_size(cfg, TrainCamConfig()) == 16


def test_patch_examples_mask_of_wrong_size_is_clear(builder, data_config):
    builder.image("g", 32, 64)
    builder.mask("g", 32, 60)
    rows = [{"image": "images/g.png", "mask": "masks/g.png", "split": "train", "patient": "p", "label": "malignant"}]
    cfg = data_config(builder.manifest(rows), patches={"size": 16, "stride": 16, "label_rule": "mask_fraction"})
    samples = read_manifest(cfg)
    with pytest.raises(ValueError, match=r"g\.png.*differs from its image"):
        patch_examples(samples, cfg, scaled_sizes(samples, cfg))


def test_random_crop_examples_inside_images():
    targets = np.eye(2, dtype=np.float32)
    sizes = [(50, 80), (20, 100)]
    ex = random_crop_examples(targets, sizes, crop=32, per_image=10, rng=np.random.default_rng(0))
    assert len(ex) == 20
    for e in ex:
        h, w = sizes[e.image]
        assert e.size == min(32, h, w) and 0 <= e.y <= h - e.size and 0 <= e.x <= w - e.size
        np.testing.assert_array_equal(e.target, targets[e.image])
    assert training_crop_size(type("D", (), {"patches": None})(), TrainCamConfig(crop_size=96)) == 96
