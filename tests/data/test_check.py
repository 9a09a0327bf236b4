"""check_dataset: every problem listed, with its level and file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from histowsss.data.check import check_dataset
from histowsss.data.manifest import ManifestError, read_manifest


def test_clean_dataset_has_no_problems(clean_manifest, data_config):
    assert check_dataset(data_config(clean_manifest), progress=False) == []


def test_every_problem_listed(builder, data_config):
    rows = [builder.row("ok", "train", "p1", "benign"), builder.row("ok2", "train", "p6", "malignant")]
    rows.append(dict(builder.row("x1", "train", "p2"), image="images/missing.png"))
    rows.append(dict(builder.row("x2", "train", "p3"), mask="masks/missing_mask.png"))
    bad = builder.row("x3", "test", "p4")
    (builder.root / bad["image"]).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(50))
    rows.append(bad)
    rows.append(builder.row("x4", "test", "p5", "nonsense"))
    m = builder.manifest(rows)
    problems = check_dataset(data_config(m), progress=False)
    assert [p.level for p in problems] == ["error"] * 4
    text = [f"{p.file}: {p.message}" for p in problems]
    assert any("missing.png: file not found" in t for t in text)
    assert any("missing_mask.png: file not found" in t for t in text)
    assert any(t.startswith(str(builder.root / "images/x3.png")) and "corrupt" in t for t in text)
    assert any("unknown class 'nonsense'" in t for t in text)


def test_min_size_defaults_to_unpadded_patch_size(builder, data_config):
    m = builder.manifest([builder.row("a", "train", "p1", h=24, w=32), builder.row("b", "test", "p2", h=40, w=40)])
    tiles = {"size": 32, "stride": 16, "border": "shift"}
    problems = check_dataset(data_config(m, patches=tiles), progress=False)
    assert len(problems) == 1 and problems[0].file.endswith("a.png")
    assert "32x24" in problems[0].message and "32" in problems[0].message and "border=pad" in problems[0].message
    assert check_dataset(data_config(m, patches=dict(tiles, border="pad")), progress=False) == []
    # image_scale applies before the size check
    problems = check_dataset(data_config(m, image_scale=0.5), min_size=16, progress=False)
    assert [p.file.endswith("a.png") for p in problems] == [True]
    assert "16x12" in problems[0].message and "smaller than --min-size 16" in problems[0].message


def test_rgba_with_transparency_is_a_warning(builder, data_config):
    r = builder.row("a", "train", "p1")
    a = np.full((24, 32, 4), 180, np.uint8)
    a[:2, :2, 3] = 10
    Image.fromarray(a, "RGBA").save(builder.root / r["image"])
    r2 = builder.row("b", "test", "p2")
    builder.image("b", mode="RGBA")  # opaque: silently converted
    problems = check_dataset(data_config(builder.manifest([r, r2])), progress=False)
    assert [(p.level, p.file.endswith("a.png")) for p in problems] == [("warning", True)]
    assert "transparency" in problems[0].message


def test_grayscale_and_mask_problems(builder, data_config):
    g = builder.row("g", "train", "p1")
    builder.image("g", mode="L")
    mm = builder.row("mm", "test", "p2")
    builder.mask("mm", 24, 31)
    cm = builder.row("cm", "test", "p3")
    builder.mask("cm", values=np.full((24, 32), 7, np.uint8))  # fine for binary_image_label...
    m = builder.manifest([g, mm, cm])
    problems = check_dataset(data_config(m), progress=False)
    assert [(p.level, p.file.rsplit("/", 2)[-2:]) for p in problems] == [
        ("error", ["images", "g.png"]), ("error", ["masks", "mm.png"])]
    assert "grayscale" in problems[0].message
    assert "31x24" in problems[1].message and "images/mm.png" in problems[1].message
    # ...but not class ids for a two-class map
    cfg = data_config(m, mask_mode="class_ids")
    problems = check_dataset(cfg, progress=False)
    assert any(p.file.endswith("masks/cm.png") and "not class ids" in p.message for p in problems)


def test_patients_in_several_splits_and_empty_splits_warn(builder, data_config):
    rows = [builder.row("a", "train", "p1"), builder.row("b", "test", "p1"), builder.row("c", "train", "p2")]
    m = builder.manifest(rows)
    problems = check_dataset(data_config(m, val_splits=["val"]), progress=False)
    assert all(p.level == "warning" for p in problems)
    msgs = " | ".join(p.message for p in problems)
    assert "patient p1 appears in splits test, train" in msgs and "histowsss data split" in msgs
    assert "data.val_splits names split 'val'" in msgs


def test_missing_column_reported_once(builder, data_config):
    m = builder.manifest([builder.row("a")], columns=["image", "split", "label"])
    problems = check_dataset(data_config(m), progress=False)
    assert len(problems) == 1 and problems[0].file == str(m)
    assert "missing required column(s) 'patient'" in problems[0].message


def test_multi_label_empty_parts_ignored(builder, data_config):
    m = builder.manifest([builder.row("a", label="malignant;"), builder.row("b", label="benign; ")])
    samples = read_manifest(data_config(m, multi_label=True))
    assert [s.labels for s in samples] == [("malignant",), ("benign",)]
    m = builder.manifest([builder.row("a", label="malignant;"), builder.row("b", label=" ; ")], name="m2.csv")
    with pytest.raises(ManifestError, match=r"row 3 \(images/b.png\): missing label \(';'\)"):
        read_manifest(data_config(m, multi_label=True))  # no class at all: an error, not a normal image


def test_class_without_training_images_is_an_error(builder, data_config):
    """A class only in the test split cannot be learnt: the CAM classifier would see it as a negative only."""
    rows = [builder.row("a", "train", "p1", "benign"), builder.row("b", "test", "p2", "malignant")]
    problems = check_dataset(data_config(builder.manifest(rows)), progress=False)
    assert [p.level for p in problems] == ["error"]
    assert "class 'malignant' has no image in the training splits" in problems[0].message


def test_instance_masks_and_masks_that_training_labels_need_are_checked(builder, data_config):
    rows = [builder.row("a", "train", "p1", "benign"), builder.row("b", "train", "p2", "malignant"),
            builder.row("c", "test", "p3", "malignant")]
    rows[0]["mask_cc"] = "masks/nope.png"
    rows[1]["mask_cc"] = rows[1]["mask"]
    rows[2]["mask_cc"] = builder.mask("c_cc", 10, 10)
    m = builder.manifest(rows, columns=["image", "mask", "mask_cc", "split", "patient", "label"])
    problems = check_dataset(data_config(m), progress=False)
    text = sorted(f"{p.file}: {p.message}" for p in problems if p.level == "error")
    assert len(text) == 2, text
    assert any("nope.png: file not found" in t for t in text)
    assert any("c_cc.png: mask size 10x10" in t and "instance mask of" in t for t in text)
    # labels read from the masks (no label column): a training image without a mask cannot be labelled
    rows = [builder.row("a", "train", "p1", "benign"), builder.row("b", "train", "p2", "malignant", mask=False),
            builder.row("c", "test", "p3", "benign", mask=False)]
    m = builder.manifest(rows, name="nomask.csv")
    problems = check_dataset(data_config(m, label_column=None, mask_mode="class_ids"), progress=False)
    assert [(p.level, p.file.endswith("b.png")) for p in problems if p.level == "error"] == [("error", True)]
    assert "training image without a mask" in problems[0].message


def test_points_file_is_checked(builder, data_config):
    rows = [builder.row("a", "train", "p1", "benign"), builder.row("b", "train", "p2", "malignant")]
    m = builder.manifest(rows)
    clicks = builder.root / "clicks.csv"
    clicks.write_text("image,x,y,class\na,3,4,malignant\nb,99999,4,malignant\na.png,1,1,benign\n")
    problems = check_dataset(data_config(m), progress=False, points_file=clicks)
    text = {f"{p.level} {p.file}: {p.message}" for p in problems if "no image" not in p.message}
    # a click outside its image is left out (a warning, as `run` says it); clicks of images not in this manifest are
    # unused: a warning
    assert any(t.startswith(f"warning {builder.root / 'images' / 'b.png'}") and "99999" in t and "left out" in t
               for t in text), text
    assert any(t.startswith("warning") and "clicks for 1 image(s) not in the manifest" in t and "'a.png'" in t
               for t in text), text
    assert sum(t.startswith("error") for t in text) == 0
    clicks.write_text("image,x,y,class\na,3,4,tumour\n")
    problems = [p for p in check_dataset(data_config(m), progress=False, points_file=clicks) if p.level == "error"]
    assert len(problems) == 1 and "tumour" in problems[0].message
    # every problem at once: a bad class no longer hides a bad number, a click outside its image or an unknown name
    clicks.write_text("image,x,y,class\na,3,4,tumour\na,x,4,benign\nb,99999,4,malignant\nzz,1,1,benign\n")
    problems = check_dataset(data_config(m), progress=False, points_file=clicks)
    text = [f"{p.level} {p.message}" for p in problems if "no image" not in p.message]
    assert any("row 2: unknown class 'tumour'" in t for t in text), text
    assert any("row 3: x and y must be numbers" in t for t in text), text
    assert any(t.startswith("warning") and "99999" in t for t in text), text
    assert any(t.startswith("warning") and "'zz'" in t for t in text), text
    # the points file is the problem's file, not repeated in its message
    assert not any(str(clicks) in p.message for p in problems if p.file == str(clicks))


def test_a_test_split_that_is_also_trained_on_is_an_error(clean_manifest, data_config):
    problems = check_dataset(data_config(clean_manifest, train_splits=["train", "test"]), progress=False)
    assert [p.level for p in problems] == ["error"] and "both in data.test_splits" in problems[0].message


def test_class_id_masks_that_look_binary_are_warned_about(builder, data_config):
    """With mask_mode class_ids 255 is ignore: 0/255 masks would have no foreground pixel at all."""
    m = builder.manifest([builder.row("a", "train", "p1"), builder.row("b", "test", "p2")])  # 0/255 squares
    problems = check_dataset(data_config(m, mask_mode="class_ids"), progress=False)
    assert [p.level for p in problems] == ["warning"]
    assert "2 mask(s) hold only the values 0 and 255" in problems[0].message
    assert "mask_mode to binary" in problems[0].message
    assert check_dataset(data_config(m), progress=False) == []  # binary_image_label: as meant
    assert check_dataset(data_config(m, mask_mode="class_ids", mask_ignore_values=[255]), progress=False) == []


def test_a_mask_column_the_manifest_lacks_is_named(builder, data_config):
    m = builder.manifest([builder.row("a", "train", "p1"), builder.row("b", "test", "p2")])
    problems = check_dataset(data_config(m, mask_column="masks"), progress=False)
    assert [p.level for p in problems] == ["warning"]
    assert "data.mask_column 'masks' is not a column of the manifest" in problems[0].message
    assert "image, mask, split" in problems[0].message
    # labels read from the masks: an error
    problems = check_dataset(data_config(m, mask_column="masks", label_column=None, mask_mode="binary",
                                         mask_foreground_class="malignant"), progress=False)
    assert "error" in [p.level for p in problems]
    # the default column absent: a dataset without masks, nothing to say about it
    m2 = builder.manifest([builder.row("c", "train", "p3", mask=False), builder.row("d", "test", "p4", mask=False)],
                          name="nomask.csv", columns=("image", "split", "patient", "label"))
    assert check_dataset(data_config(m2), progress=False) == []


def test_the_files_of_rows_with_row_problems_are_opened_too(builder, data_config):
    """One pass lists every problem: a row left out for a typo still has its unreadable image reported."""
    bad = builder.row("x", "train", "p1", label="malignnat")
    (builder.root / bad["image"]).write_bytes(b"not an image")
    gray = builder.row("g", "train", "", label="benign")
    builder.image("g", mode="L")
    m = builder.manifest([bad, gray, builder.row("ok", "test", "p3")])
    text = [f"{p.level}: {p.file}: {p.message}" for p in check_dataset(data_config(m), progress=False)]
    assert any("unknown class 'malignnat'" in t for t in text)
    assert any("empty patient id" in t for t in text)
    assert any(t.startswith(f"error: {builder.root / 'images/x.png'}") and "decoded" in t for t in text)
    assert any(t.startswith(f"error: {builder.root / 'images/g.png'}") and "grayscale" in t for t in text)


def test_a_split_no_setting_names_is_warned_about(builder, data_config):
    m = builder.manifest([builder.row("a", "train", "p1"), builder.row("b", "test", "p2"),
                          builder.row("c", "Test", "p3")])
    problems = check_dataset(data_config(m), progress=False)
    assert [p.level for p in problems] == ["warning"]
    assert "split 'Test' (1 image(s)) is in none of data.train_splits / val_splits / test_splits" in \
        problems[0].message


def test_test_images_need_not_hold_a_patch(builder, data_config):
    """Only the images that are tiled (not the test splits) must hold a patch; --min-size applies to all."""
    m = builder.manifest([builder.row("a", "train", "p1", h=40, w=40), builder.row("b", "test", "p2", h=24, w=32)])
    tiles = {"size": 32, "stride": 16, "border": "shift"}
    assert check_dataset(data_config(m, patches=tiles), progress=False) == []
    problems = check_dataset(data_config(m), min_size=32, progress=False)
    assert [p.file.endswith("b.png") for p in problems] == [True]


def test_class_id_masks_that_disagree_with_their_labels_are_warned_about(builder, data_config):
    """Masks numbering the classes in another order than data.classes.names: their classes are not the labels."""
    rows = []
    for i, (label, value) in enumerate((("malignant", 1), ("malignant", 1), ("benign", 0))):
        r = builder.row(f"m{i}", "train" if i < 2 else "test", f"p{i}", label)
        v = np.zeros((24, 32), np.uint8)
        v[6:18, 8:24] = value
        r["mask"] = builder.mask(f"m{i}", values=v)
        rows.append(r)
    m = builder.manifest(rows)
    assert check_dataset(data_config(m, mask_mode="class_ids"), progress=False) == []
    swapped = data_config(m, mask_mode="class_ids", classes={"names": ["malignant", "benign"], "background": "benign"})
    problems = check_dataset(swapped, progress=False)
    assert [p.level for p in problems] == ["warning"]
    assert "1 of 3 masked image(s) hold classes their labels do not name" in problems[0].message  # the benign one
    assert "(malignant=0, benign=1)" in problems[0].message and "--classes" in problems[0].message


def test_a_large_image_is_a_warning_and_one_too_large_an_error(builder, data_config, monkeypatch):
    """Pillow's limit lowered to 1000 px: a 32 x 24 image (768 px) is far under it, 40 x 30 (1200 px) over it (one
    warning, none for its mask), 50 x 50 over twice it (an error naming the size and the fix)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    rows = [builder.row("small", "train", "p1", "benign"), builder.row("large", "train", "p2", h=30, w=40),
            builder.row("huge", "test", "p3", h=50, w=50)]
    problems = check_dataset(data_config(builder.manifest(rows)), progress=False)
    assert [(p.level, p.file.rsplit("/", 2)[-2:]) for p in problems] == [
        ("warning", ["images", "large.png"]), ("error", ["images", "huge.png"])]
    assert problems[0].message.startswith("large image, 40x30 pixels")
    assert problems[1].message.startswith("image of 50x50 pixels") and "too large to read whole" in problems[1].message
    assert "histowsss data tiles" in problems[1].message and "corrupt" not in problems[1].message


def test_a_patient_id_written_two_ways_is_named_and_its_split_leak_found(builder, data_config):
    """'2' in train and '2.0' in test (a spreadsheet's rewrite) are one patient: the leak is not hidden."""
    rows = [builder.row("a", "train", "2", "benign"), builder.row("b", "test", "2.0", "malignant"),
            builder.row("c", "train", "p3", "malignant"), builder.row("d", "test", "p4", "benign")]
    problems = check_dataset(data_config(builder.manifest(rows)), progress=False)
    text = [p.message for p in problems if p.level == "warning"]
    assert any("patient id written 2 ways ('2', '2.0'): read as one patient ('2')" in t for t in text), text
    assert any("patient 2 appears in splits test, train" in t for t in text), text


def test_an_image_turned_by_its_exif_tag_while_its_mask_is_not_is_warned_about(builder, data_config):
    """A half turn (or any turn of a square image) keeps the sizes equal: only the tags tell image and mask apart."""
    r = builder.row("a", "train", "p1", h=32, w=32)
    exif = Image.Exif()
    exif[0x0112] = 3  # turned 180 degrees on reading
    rgb = np.random.default_rng(0).integers(60, 240, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(builder.root / "images" / "a.jpg", exif=exif)
    r["image"] = "images/a.jpg"
    problems = check_dataset(data_config(builder.manifest([r, builder.row("b", "test", "p2")])), progress=False)
    turned = [p for p in problems if "EXIF orientation 3" in p.message]
    assert len(turned) == 1 and turned[0].level == "warning" and turned[0].file.endswith("a.jpg")
    assert "its mask does not" in turned[0].message and "exif_transpose" in turned[0].message


def test_symlinks_to_one_image_in_two_splits_are_one_image(builder, data_config):
    a = builder.row("a", "train", "p1")
    (builder.root / "images" / "link.png").symlink_to(builder.root / a["image"])
    b = dict(a, image="images/link.png", split="test", patient="p2")
    problems = check_dataset(data_config(builder.manifest([a, b])), progress=False)
    assert any("the same image file as row 2 (split train, through a link)" in p.message for p in problems)


def test_a_manifest_whose_paths_are_all_missing_says_what_they_are_relative_to(builder, data_config):
    rows = [dict(builder.row(n, s, n), image=f"elsewhere/{n}.png") for n, s in (("a", "train"), ("b", "test"))]
    problems = check_dataset(data_config(builder.manifest(rows)), progress=False)
    hint = [p for p in problems if "none of the manifest's 2 image(s) is found" in p.message]
    assert len(hint) == 1 and f"relative paths are read from {builder.root}" in hint[0].message
    assert "data.root" in hint[0].message
