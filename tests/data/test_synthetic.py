"""Tests for the deterministic synthetic H&E demo data generator."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histowsss.data.synthetic import (
    MANIFEST_COLUMNS,
    _assign_patients,
    generate_synthetic_dataset,
)

SMALL = {"train": 4, "val": 2, "test": 2}
SIZE = 128


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == MANIFEST_COLUMNS
        return list(reader)


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    return generate_synthetic_dataset(out, SMALL, size=SIZE, seed=3, n_patients=4)


# --------------------------------------------------------------------------- data set files
def test_manifest_and_files(small_dataset: Path) -> None:
    root = small_dataset.parent
    rows = _read_manifest(small_dataset)
    assert [r["split"] for r in rows] == ["train"] * 4 + ["val"] * 2 + ["test"] * 2
    for split in SMALL:
        grades = [r["grade"] for r in rows if r["split"] == split]
        assert grades == ["benign", "malignant"] * (len(grades) // 2)
    for r in rows:
        assert r["label"] == ("1" if r["grade"] == "malignant" else "0")
        assert r["name"] == Path(r["image"]).stem
        assert r["image"] == f"images/{r['name']}.png"
        assert r["mask"] == f"masks/{r['name']}.png"
        assert r["mask_cc"] == f"masks_cc/{r['name']}.png"
        assert r["patient"].startswith("P")

        img = np.asarray(Image.open(root / r["image"]))
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        mask = np.asarray(Image.open(root / r["mask"]))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert 0.3 <= (mask > 0).mean() <= 0.6
        cc = np.asarray(Image.open(root / r["mask_cc"]))
        assert cc.dtype == np.uint16
        np.testing.assert_array_equal(cc > 0, mask > 0)
        assert cc.max() >= 3

    patients = {sp: {r["patient"] for r in rows if r["split"] == sp} for sp in SMALL}
    assert all(len(p) >= 1 for p in patients.values())
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"] or patients["val"] & patients["test"])
    assert set().union(*patients.values()) == {"P01", "P02", "P03", "P04"}
    params = json.loads((root / "synthetic.json").read_text())
    assert params["seed"] == 3 and params["size"] == SIZE and params["n_per_split"] == SMALL
    assert not [p for p in root.rglob(".*") if p.is_file()]  # no temp files left behind


def test_assign_patients_proportional_and_disjoint() -> None:
    pts = _assign_patients({"train": 24, "val": 8, "test": 16}, 8)
    assert [len(pts[s]) for s in ("train", "val", "test")] == [4, 1, 3]
    assert sum(pts.values(), []) == [f"P{i:02d}" for i in range(1, 9)]
    pts = _assign_patients({"train": 10, "val": 1, "test": 1}, 3)
    assert [len(pts[s]) for s in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(ValueError):
        _assign_patients({"train": 2, "val": 2, "test": 2}, 2)


def test_generation_is_deterministic(tmp_path: Path, small_dataset: Path) -> None:
    a = generate_synthetic_dataset(tmp_path / "a", SMALL, size=SIZE, seed=3, n_patients=4)
    assert _all_files(a.parent) == _all_files(small_dataset.parent)
    b = generate_synthetic_dataset(tmp_path / "b", {"train": 2}, size=SIZE, seed=4, n_patients=1)
    for name in ("syn_train_000.png", "syn_train_001.png"):
        assert (b.parent / "images" / name).read_bytes() != (a.parent / "images" / name).read_bytes()
    # image streams depend only on (seed, split, index): other split counts don't change them
    assert (a.parent / "images" / "syn_val_001.png").read_bytes() == (small_dataset.parent / "images" / "syn_val_001.png").read_bytes()


def test_reuse_existing_and_refuse_different(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    kw = dict(n_per_split={"train": 4, "val": 2}, size=64, seed=0, n_patients=3)
    manifest = generate_synthetic_dataset(out, **kw)
    img = out / "images" / "syn_train_000.png"
    stamp = img.stat().st_mtime_ns, manifest.stat().st_mtime_ns

    # same parameters: re-used without rewriting anything
    assert generate_synthetic_dataset(out, **kw) == manifest
    assert (img.stat().st_mtime_ns, manifest.stat().st_mtime_ns) == stamp

    # same parameters but a file is missing: regenerated
    content = img.read_bytes()
    img.unlink()
    generate_synthetic_dataset(out, **kw)
    assert img.read_bytes() == content

    # different parameters: refuse, unless overwrite=True
    with pytest.raises(FileExistsError, match=r"overwrite=True; on the command line --overwrite"):
        generate_synthetic_dataset(out, **{**kw, "seed": 1})
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(out, **{**kw, "n_per_split": {"train": 2, "val": 2}})

    generate_synthetic_dataset(out, **{**kw, "n_per_split": {"train": 2, "val": 2}}, overwrite=True)
    rows = _read_manifest(manifest)
    assert [r["name"] for r in rows] == ["syn_train_000", "syn_train_001", "syn_val_000", "syn_val_001"]
    assert not (out / "images" / "syn_train_003.png").exists()  # stale files removed
    assert json.loads((out / "synthetic.json").read_text())["n_per_split"]["train"] == 2


def test_manifest_without_params_is_refused(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text("image\n")
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(tmp_path, {"train": 2}, size=64, n_patients=1)


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, {"training": 2}, size=64)
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, {"train": -1}, size=64)
    with pytest.raises(ValueError):
        generate_synthetic_dataset(tmp_path, {"train": 2}, size=16)
