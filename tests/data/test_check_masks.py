"""data check on masks whose labels change without an error: non-binary masks in a binary mode, JPEG masks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from histowsss.data.check import check_dataset

BINARY = {"binary": dict(mask_mode="binary", mask_foreground_class="malignant"),
          "binary_image_label": dict(mask_mode="binary_image_label")}


def _disk(h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return ((((x - w / 2) ** 2 + (y - h / 2) ** 2) < (h / 3) ** 2) * 255).astype(np.uint8)


def _row(builder, name: str, mask: np.ndarray | None = None, suffix: str = ".png", **save) -> dict:
    """A test-split row (48 x 64 image) whose mask file holds ``mask`` (saved as ``suffix``)."""
    r = builder.row(name, "test", name, "malignant", h=48, w=64)
    if mask is not None:
        rel = f"masks/{name}{suffix}"
        Image.fromarray(mask).save(builder.root / rel, **save)
        r["mask"] = rel
    return r


def _mask_problems(problems, name: str) -> list:
    return [p for p in problems if "/masks/" in p.file.replace("\\", "/") and f"/{name}." in p.file]


@pytest.mark.parametrize("mode", list(BINARY))
def test_a_jpeg_binary_mask_is_a_warning_naming_the_file_values_rule_and_fix(builder, data_config, mode):
    rows = [_row(builder, "jpg", _disk(), ".jpg", quality=75), _row(builder, "png", _disk())]
    problems = check_dataset(data_config(builder.manifest(rows), **BINARY[mode]), progress=False)
    found = _mask_problems(problems, "jpg")
    assert [p.level for p in found] == ["warning"] and found[0].file.endswith("masks/jpg.jpg")
    msg = found[0].message
    n = len(np.unique(np.asarray(Image.open(builder.root / "masks/jpg.jpg"))))
    assert n > 2 and f"binary mask with {n} distinct values" in msg
    assert f"data.mask_mode={mode} takes mask > 0 as foreground" in msg and "JPEG" in msg
    assert "losslessly as PNG with 0 / 1 or 0 / 255" in msg
    assert _mask_problems(problems, "png") == []  # the same mask saved as a 0/255 PNG: nothing to say


@pytest.mark.parametrize("mode", list(BINARY))
def test_a_photo_as_a_binary_mask_is_an_error(builder, data_config, mode):
    photo = np.random.default_rng(0).integers(60, 240, (48, 64), dtype=np.uint8)  # grey image, no pixel at 0
    problems = check_dataset(data_config(builder.manifest([_row(builder, "photo", photo)]), **BINARY[mode]),
                             progress=False)
    found = _mask_problems(problems, "photo")
    assert [p.level for p in found] == ["error"]
    assert "not a mask" in found[0].message and "100.0% of it foreground" in found[0].message
    assert "mask > 0 as foreground" in found[0].message


def test_few_values_in_a_binary_mode_warn_and_ignored_values_do_not_count(builder, data_config):
    three = np.zeros((48, 64), np.uint8)
    three[10:20] = 1
    three[30:40] = 2  # class ids, say: binary mode makes 1 and 2 one foreground
    both = np.where(_disk() > 0, 2, 1).astype(np.uint8)  # no 0: all foreground
    ignored = three.copy()
    ignored[ignored == 2] = 4
    rows = [_row(builder, "three", three), _row(builder, "both", both), _row(builder, "ign", ignored)]
    problems = check_dataset(data_config(builder.manifest(rows), mask_ignore_values=[4], **BINARY["binary"]),
                             progress=False)
    found = _mask_problems(problems, "three")
    assert [p.level for p in found] == ["warning"]
    assert "3 distinct values (0, 1, 2)" in found[0].message and "class_ids" in found[0].message
    found = _mask_problems(problems, "both")
    assert [p.level for p in found] == ["warning"] and "values 1 and 2 are both over 0" in found[0].message
    assert _mask_problems(problems, "ign") == []  # 0 / 1 and the ignored value 4


def test_a_jpeg_mask_is_a_warning_in_class_ids_mode_too(builder, data_config):
    zeros = np.zeros((48, 64), np.uint8)  # no edge, so no value changed: only the file type is said
    rows = [_row(builder, "jpg", zeros, ".jpg"), _row(builder, "png", zeros)]
    problems = check_dataset(data_config(builder.manifest(rows), mask_mode="class_ids"), progress=False)
    found = _mask_problems(problems, "jpg")
    assert [p.level for p in found] == ["warning"]
    assert found[0].message.startswith("JPEG mask: ") and "losslessly as PNG" in found[0].message
    assert _mask_problems(problems, "png") == []


def test_a_class_ids_mask_is_not_held_to_two_values(builder, data_config):
    ids = np.zeros((48, 64), np.uint8)
    ids[10:20] = 1
    ids[30:40] = 255  # ignore
    problems = check_dataset(data_config(builder.manifest([_row(builder, "ids", ids)]), mask_mode="class_ids"),
                             progress=False)
    assert _mask_problems(problems, "ids") == []


def test_a_jpeg_instance_mask_is_a_warning(builder, data_config):
    ids = np.zeros((48, 64), np.uint8)
    ids[5:20, 5:30], ids[25:40, 30:60] = 1, 2
    rows = [_row(builder, "a", _disk()), _row(builder, "b", _disk())]
    Image.fromarray(ids).save(builder.root / "masks/a_cc.jpg", quality=75)
    Image.fromarray(ids).save(builder.root / "masks/b_cc.png")
    rows[0]["mask_cc"], rows[1]["mask_cc"] = "masks/a_cc.jpg", "masks/b_cc.png"
    m = builder.manifest(rows, columns=["image", "mask", "mask_cc", "split", "patient", "label"])
    problems = check_dataset(data_config(m, mask_mode="binary_image_label"), progress=False)
    found = [p for p in problems if "_cc." in p.file]
    assert [(p.level, p.file.endswith("a_cc.jpg")) for p in found] == [("warning", True)]
    assert found[0].message.startswith("JPEG instance mask: ") and "(instance mask of " in found[0].message
