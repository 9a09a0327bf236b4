"""The three mask encodings -> class-id maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histowsss.config import DataConfig
from histowsss.data.io import ImageReadError
from histowsss.data.manifest import Sample
from histowsss.data.masks import IGNORE, class_map_from_mask, load_class_mask, load_instance_mask

RAW = np.array([[0, 255, 255], [0, 0, 255]], np.uint8)


def _sample(labels=(), mask: Path | None = None) -> Sample:
    return Sample(name="x", image=Path("x.png"), split="train", patient="p", labels=tuple(labels), mask=mask)


def _cfg(**kw) -> DataConfig:
    return DataConfig.model_validate(dict(manifest="m.csv", **kw))


def test_class_ids_mode():
    cfg = _cfg(classes={"names": ["bg", "a", "b"]}, mask_mode="class_ids")
    raw = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    out = class_map_from_mask(raw, _sample(), cfg)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, raw)  # 255 kept as ignore


def test_class_ids_mode_rejects_non_ids_with_fix():
    cfg = _cfg(classes={"names": ["bg", "a"]}, mask_mode="class_ids")
    with pytest.raises(ImageReadError) as e:
        class_map_from_mask(np.array([[0, 1, 7, 128]], np.uint8), _sample(mask=Path("m/x.png")), cfg)
    msg = str(e.value)
    assert "m/x.png" in msg and "[7, 128]" in msg and "mask_mode" in msg and "binary" in msg
    # a signed label map: negative values are not class ids either (-1 is not a silent 255 = ignore)
    with pytest.raises(ImageReadError, match=r"\[-2, -1\]"):
        class_map_from_mask(np.array([[0, 1, -1, -2]], np.int16), _sample(mask=Path("m/x.png")), cfg)


def test_ignore_values_in_every_mode():
    # LUAD-HistoSeg / BCSS-WSSS: four tissues 0..3, value 4 = white background left out of their evaluation
    cfg = _cfg(classes={"names": ["te", "nec", "lym", "tas"]}, mask_mode="class_ids", mask_ignore_values=[4])
    out = class_map_from_mask(np.array([[0, 3, 4], [255, 1, 4]], np.uint8), _sample(), cfg)
    assert out.tolist() == [[0, 3, IGNORE], [IGNORE, 1, IGNORE]]
    with pytest.raises(ImageReadError, match="mask_ignore_values"):  # the fix is named when it is missing
        class_map_from_mask(np.array([[4]], np.uint8), _sample(), _cfg(classes={"names": ["te", "nec", "lym", "tas"]}))
    binary = _cfg(classes={"names": ["background", "gland"], "background": "background"}, mask_mode="binary",
                  mask_foreground_class="gland", mask_ignore_values=[128])
    assert class_map_from_mask(np.array([[0, 255, 128]], np.uint8), _sample(), binary).tolist() == [[0, 1, IGNORE]]


def test_binary_mode():
    cfg = _cfg(classes={"names": ["background", "gland"], "background": "background"}, mask_mode="binary",
               mask_foreground_class="gland")
    out = class_map_from_mask(RAW, _sample(), cfg)
    np.testing.assert_array_equal(out, (RAW > 0).astype(np.uint8))
    # foreground class need not be index 1, background need not be index 0
    cfg2 = _cfg(classes={"names": ["gland", "stroma", "background"], "background": "background"},
                mask_mode="binary", mask_foreground_class="gland")
    out2 = class_map_from_mask(RAW, _sample(), cfg2)
    np.testing.assert_array_equal(out2, np.where(RAW > 0, 0, 2))


def _bil_cfg() -> DataConfig:
    return _cfg(classes={"names": ["benign", "malignant", "serrated"], "background": "benign"},
                mask_mode="binary_image_label", multi_label=True)


def test_binary_image_label_malignant_image():
    out = class_map_from_mask(RAW, _sample(["malignant"]), _bil_cfg())
    np.testing.assert_array_equal(out, np.where(RAW > 0, 1, 0))


def test_binary_image_label_benign_image_is_all_background():
    cfg = _bil_cfg()
    for labels in (["benign"], []):
        out = class_map_from_mask(RAW, _sample(labels), cfg)
        assert out.dtype == np.uint8
        assert (out == 0).all(), labels  # gland pixels of benign images are background/normal


def test_binary_image_label_ambiguous_foreground_ignored():
    out = class_map_from_mask(RAW, _sample(["malignant", "serrated"]), _bil_cfg())
    np.testing.assert_array_equal(out, np.where(RAW > 0, IGNORE, 0))
    # background listed next to one class: the class wins
    out = class_map_from_mask(RAW, _sample(["benign", "serrated"]), _bil_cfg())
    np.testing.assert_array_equal(out, np.where(RAW > 0, 2, 0))


def test_load_class_mask_checks_size_and_scales(tmp_path):
    m = np.zeros((8, 12), np.uint8)
    m[2:6, 3:9] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    cfg = _cfg(classes={"names": ["background", "gland"], "background": "background"}, mask_mode="binary",
               mask_foreground_class="gland")
    s = _sample(mask=tmp_path / "m.png")
    out = load_class_mask(s, cfg, image_hw=(8, 12))
    np.testing.assert_array_equal(out, m > 0)
    with pytest.raises(ImageReadError, match="differs from its image"):
        load_class_mask(s, cfg, image_hw=(8, 13))
    half = load_class_mask(s, cfg.model_copy(update={"image_scale": 0.5}))
    assert half.shape == (4, 6) and set(np.unique(half).tolist()) == {0, 1}


def test_load_class_mask_without_mask_is_clear():
    cfg = _cfg(classes={"names": ["a", "b"]})
    with pytest.raises(ImageReadError, match=r"x\.png: no mask"):
        load_class_mask(_sample(), cfg)


def test_load_instance_mask_keeps_foreground_ids_and_names_a_size_mismatch(tmp_path):
    cc = np.zeros((8, 12), np.uint8)
    cc[1:4, 1:4], cc[5:8, 6:11] = 3, 7
    Image.fromarray(cc).save(tmp_path / "cc.png")
    cfg = DataConfig.model_validate(dict(manifest=str(tmp_path / "m.csv"), classes={"names": ["background", "gland"], "background": "background"}))
    s = Sample(name="x", image=Path("x.png"), split="test", patient="p", labels=(), extra={"mask_cc": "cc.png"})
    gt = (cc > 0).astype(np.uint8)
    gt[1, 1] = 0            # a ground-truth background pixel inside instance 3
    gt[6, 7] = IGNORE       # an ignored pixel inside instance 7
    out = load_instance_mask(s, cfg, gt, background=0)
    expected = cc.astype(np.int64)
    expected[1, 1] = expected[6, 7] = 0
    np.testing.assert_array_equal(out, expected)
    assert load_instance_mask(Sample(name="y", image=Path("y.png"), split="test", patient="p", labels=()),
                              cfg, gt, 0) is None  # no mask_cc: no object metrics
    with pytest.raises(ImageReadError, match=r"cc\.png: instance mask .* differs from the class mask"):
        load_instance_mask(s, cfg, gt[:, :10], background=0)
