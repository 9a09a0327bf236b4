"""A manifest from a folder of class sub-folders (ImageFolder layout), with and without split folders."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histowsss.data.folder_manifest import FolderLayoutError, manifest_from_folder


def _img(path: Path, value: int = 128, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """tiles/<class>/<slide>_<k>.png: 6 patients, 4 tiles each, patients of both classes."""
    root = tmp_path / "tiles"
    for p in range(6):
        cls = "tumour" if p % 2 else "normal"
        for k in range(4):
            _img(root / cls / f"S{p:02d}_{k}.png", 100 + p)
    return root


def test_class_folders_give_labels_and_a_patient_grouped_split(class_folder: Path, tmp_path: Path):
    out = tmp_path / "data" / "manifest.csv"
    made = manifest_from_folder(class_folder, out, patient_regex=r"/(S\d+)_", fractions={"train": 0.5, "test": 0.5})
    rows = _rows(out)
    assert len(rows) == 24 and not made.splits_from_folders and made.patients_from_regex
    assert list(rows[0]) == ["image", "split", "patient", "label"]
    for r in rows:
        path = out.parent / r["image"]  # relative to the manifest's folder
        assert path.is_file() and path.parent.name == r["label"]
        assert path.name.startswith(r["patient"] + "_")
    splits_of = defaultdict(set)
    for r in rows:
        splits_of[r["patient"]].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())  # no patient in two splits
    for split in ("train", "test"):  # both classes in each split
        assert {r["label"] for r in rows if r["split"] == split} == {"normal", "tumour"}


def test_split_folders_are_kept_and_masks_matched_by_stem(tmp_path: Path):
    root = tmp_path / "ds"
    for split in ("train", "testA"):
        for cls in ("benign", "malignant"):
            for k in range(2):
                stem = f"{split}_{cls}_{k}"
                _img(root / split / cls / f"{stem}.jpg")
                if k == 0:
                    Image.fromarray(np.zeros((40, 40), np.uint8)).save(_img(root / "masks" / f"{stem}_anno.png"))
    (root / "masks" / "notes.png").write_bytes(b"")  # no '_anno' suffix: not a mask
    made = manifest_from_folder(root, root / "m.csv", masks=root / "masks", mask_suffix="_anno")
    rows = {Path(r["image"]).stem: r for r in _rows(root / "m.csv")}
    assert made.splits_from_folders and made.masks_found == 4 and len(rows) == 8
    assert rows["testA_malignant_1"]["split"] == "testA" and rows["testA_malignant_1"]["label"] == "malignant"
    assert rows["train_benign_0"]["mask"] == "masks/train_benign_0_anno.png" and rows["train_benign_1"]["mask"] == ""
    assert rows["train_benign_0"]["patient"] == "train_benign_0"  # no pattern: every image its own patient


def test_bad_layouts_name_the_folder_and_the_fix(class_folder: Path, tmp_path: Path):
    with pytest.raises(FolderLayoutError, match="directly in the folder.*sub-folder named after its class"):
        _img(tmp_path / "flat" / "a.png")
        manifest_from_folder(tmp_path / "flat", tmp_path / "x.csv")
    with pytest.raises(FolderLayoutError, match="matches no patient in 24 image"):
        manifest_from_folder(class_folder, tmp_path / "x.csv", patient_regex=r"patient-(\d+)")
    with pytest.raises(FolderLayoutError, match="not a valid regular expression"):
        manifest_from_folder(class_folder, tmp_path / "x.csv", patient_regex="(")
    _img(tmp_path / "one" / "tumour" / "a.png")
    with pytest.raises(FolderLayoutError, match="one class only"):
        manifest_from_folder(tmp_path / "one", tmp_path / "x.csv")
    _img(class_folder / "normal" / "deeper" / "S00_1.png")
    with pytest.raises(FolderLayoutError, match="two images named 'S00_1'"):
        manifest_from_folder(class_folder, tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError, match="folder not found"):
        manifest_from_folder(tmp_path / "nowhere", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_a_finished_manifest_is_not_overwritten(class_folder: Path, tmp_path: Path):
    out = tmp_path / "m.csv"
    out.write_text("mine\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        manifest_from_folder(class_folder, out)
    assert out.read_text() == "mine\n"
    manifest_from_folder(class_folder, out, overwrite=True)
    assert len(_rows(out)) == 24
