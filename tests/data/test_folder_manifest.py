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
    assert made.empty_folders == []


def test_a_class_folder_without_readable_images_is_named(class_folder: Path, tmp_path: Path):
    (class_folder / "necrosis").mkdir()
    (class_folder / "necrosis" / "S09.svs").write_bytes(b"slide")  # a whole-slide image is no tile
    from typer.testing import CliRunner

    from histowsss.cli.app import app

    r = CliRunner().invoke(app, ["data", "manifest", str(class_folder), "--out", str(tmp_path / "m.csv"),
                                 "--patient-regex", r"/(S\d+)_"])
    assert r.exit_code == 0, r.output
    assert "warning: no image" in r.output and "necrosis" in r.output and "data tiles" in " ".join(r.output.split())


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


def test_masks_beside_the_images_are_not_images(class_folder: Path, tmp_path: Path):
    """tiles/<class>/S00_0.png + S00_0_mask.png, --masks tiles --mask-suffix _mask: masks are no rows of their own."""
    for img in sorted(class_folder.rglob("*.png")):
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(img.with_name(img.stem + "_mask.png"))
    made = manifest_from_folder(class_folder, tmp_path / "m.csv", masks=class_folder, mask_suffix="_mask",
                                patient_regex=r"/(S\d+)_")
    rows = _rows(tmp_path / "m.csv")
    assert len(rows) == 24 and made.masks_found == 24
    assert not any(r["image"].endswith("_mask.png") for r in rows)
    assert all(r["mask"] == r["image"][:-4] + "_mask.png" for r in rows)
    # --mask-suffix alone (no --masks) once listed every mask as an image of its own, silently
    from typer.testing import CliRunner

    from histowsss.cli.app import app

    r = CliRunner().invoke(app, ["data", "manifest", str(class_folder), "--out", str(tmp_path / "m2.csv"),
                                 "--mask-suffix", "_mask"])
    assert r.exit_code == 2 and "give --masks too" in " ".join(r.output.split()) and not (tmp_path / "m2.csv").exists()


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
    for split, cls in (("train", "tumour"), ("train", "normal"), ("test", "Tumour"), ("test", "normal")):
        _img(tmp_path / "cased" / split / cls / f"{split}_{cls}.png")
    with pytest.raises(FolderLayoutError, match=r"differ only in case.*'Tumour' / 'tumour'.*test/Tumour.*rename"):
        manifest_from_folder(tmp_path / "cased", tmp_path / "x.csv")  # (refused before the manifest is written)
    assert not (tmp_path / "x.csv").exists()


def test_a_finished_manifest_is_not_overwritten(class_folder: Path, tmp_path: Path):
    out = tmp_path / "m.csv"
    out.write_text("mine\n")
    with pytest.raises(FileExistsError, match="--overwrite"):
        manifest_from_folder(class_folder, out)
    assert out.read_text() == "mine\n"
    manifest_from_folder(class_folder, out, overwrite=True)
    assert len(_rows(out)) == 24


def test_label_vectors_in_file_names():
    from histowsss.data.folder_manifest import label_from_name

    names = ["TE", "NEC", "LYM", "TAS"]
    assert label_from_name("1031280-2300-27920-[1 0 0 1]", names) == ["TE", "TAS"]  # LUAD-HistoSeg
    assert label_from_name("TCGA-A1-A0SK-DX1_xmin45749+0[1101]", names) == ["TE", "NEC", "TAS"]  # BCSS-WSSS
    assert label_from_name("1003370-11223-11698-[1, 1, 0]", names[:3]) == ["TE", "NEC"]  # WSSS4LUAD
    assert label_from_name("test_image_7", names) is None
    with pytest.raises(ValueError, match="does not hold 4 zeros and ones"):
        label_from_name("a-[1 0 1]", names)
    with pytest.raises(ValueError, match="does not hold 4"):
        label_from_name("a-[1 0 2 1]", names)
    assert label_from_name("CMU-1 [d=2,x=4096,y=8192,w=512,h=512]", names) is None  # QuPath's tile corner


def test_a_qupath_labelled_tile_export_becomes_a_manifest_and_a_config(tmp_path: Path):
    """QuPath's tile exporter: '<slide> [d=..,x=..,y=..]' image tiles beside '-labelled' label tiles (0 unannotated,
    then the labels in the order added) in one folder; the slide is the patient. Labels come from the label
    tiles, and init maps their values to the classes."""
    from histowsss.config_init import config_for_manifest
    from histowsss.data.folder_manifest import manifest_from_named_labels
    from histowsss.data.masks import load_class_mask
    from histowsss.data.manifest import read_manifest

    root = tmp_path / "export"
    for slide in range(6):
        for k in range(3):
            name = f"CMU-{slide} [d=2,x={4096 * k},y=8192,w=192,h=192]"
            _img(root / f"{name}.jpg", 120 + slide, size=96)
            lab = np.full((96, 96), 2, np.uint8)  # stroma
            lab[:10] = 0  # unannotated
            if (slide + k) % 2:
                lab[40:, 40:] = 1  # tumour
            Image.fromarray(lab).save(root / f"{name}-labelled.png")
    out = tmp_path / "qp.csv"
    manifest_from_named_labels(root, out, ["unannotated", "tumour", "stroma"], masks=[root],
                               mask_suffix="-labelled", mask_ignore=[0], patient_regex=r"^(.+?) \[")
    rows = _rows(out)
    assert len(rows) == 18 and not any("-labelled" in r["image"] for r in rows)
    assert {r["patient"] for r in rows} == {f"CMU-{s}" for s in range(6)}
    assert {r["label"] for r in rows} == {"stroma", "tumour;stroma"}
    splits = defaultdict(set)
    for r in rows:
        splits[r["patient"]].add(r["split"])
    assert all(len(v) == 1 for v in splits.values())  # each slide in one split
    from typer.testing import CliRunner

    from histowsss.cli.app import app

    r = CliRunner().invoke(app, ["data", "manifest", str(root), "--out", str(tmp_path / "cli.csv"), "--labels-in-name",
                                 "unannotated,tumour,stroma", "--mask-ignore", "0", "--masks", str(root),
                                 "--mask-suffix=-labelled", "--patient-regex", r"^(.+?) \["])
    assert r.exit_code == 0, r.output  # the next step it prints maps the values (no phantom 'unannotated' class)
    assert "--background none --mask-values tumour=1,stroma=2,ignore=0" in " ".join(r.output.split())
    cfg = config_for_manifest(out, background="none", mask_values={"tumour": 1, "stroma": 2, "ignore": 0}).config
    assert sorted(cfg.data.classes.names) == ["stroma", "tumour"]
    s = next(x for x in read_manifest(cfg.data) if "tumour" in x.labels)
    ids = load_class_mask(s, cfg.data)
    assert (ids[:10] == 255).all() and (ids[40:, 40:] == cfg.data.classes.index("tumour")).all()


def test_a_luad_histoseg_layout_becomes_a_manifest_and_a_config(tmp_path: Path):
    """training/<patient>-<x>-<y>-[a b c d].png with labels in the names; val|test/img + mask with class ids 0..3
    and 4 = white background: `data manifest --labels-in-name` -> `init --background none --mask-ignore 4`."""
    from typer.testing import CliRunner

    from histowsss.cli.app import app
    from histowsss.config import load_config

    root = tmp_path / "LUAD-HistoSeg"
    vectors = ["[1 0 0 1]", "[0 1 1 0]", "[1 1 0 0]", "[0 0 1 1]"]
    for p in range(4):
        for k, v in enumerate(vectors):
            _img(root / "training" / f"10{p}-{k * 224}-{p * 224}-{v}.png", 90 + 10 * k, size=64)
    for split, pid in (("val", 200), ("test", 300)):
        for k in range(3):
            _img(root / split / "img" / f"{pid + k}-0-0-{split}{k}.png", 120, size=64)
            m = np.full((64, 64), 4, np.uint8)  # white background: no class
            m[:32, :] = k
            m[32:, :32] = (k + 1) % 4
            (root / split / "mask").mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(root / split / "mask" / f"{pid + k}-0-0-{split}{k}.png")
    runner = CliRunner()
    man, cfg_path = tmp_path / "luad.csv", tmp_path / "luad.yaml"
    args = ["data", "manifest", str(root), "--out", str(man), "--labels-in-name", "TE,NEC,LYM,TAS",
            "--masks", str(root / "val" / "mask"), "--masks", str(root / "test" / "mask"), "--mask-ignore", "4",
            "--patient-regex", r"/(\d+)-"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "--classes TE,NEC,LYM,TAS --background none --mask-ignore 4" in r.output
    rows = {Path(x["image"]).stem: x for x in _rows(man)}
    assert len(rows) == 22 and {x["split"] for x in rows.values()} == {"training", "val", "test"}
    assert rows["100-0-0-[1 0 0 1]"]["label"] == "TE;TAS" and rows["100-0-0-[1 0 0 1]"]["patient"] == "100"
    assert rows["200-0-0-val0"]["label"] == "TE;NEC" and rows["302-0-0-test2"]["label"] == "LYM;TAS"  # from masks
    assert rows["201-0-0-val1"]["mask"].endswith("val/mask/201-0-0-val1.png")
    assert rows["100-0-0-[1 0 0 1]"]["mask"] == ""
    r = runner.invoke(app, ["init", str(man), "--out", str(cfg_path)])
    assert r.exit_code != 0 and "--background none" in r.output  # no background name: the fix is named
    r = runner.invoke(app, ["init", str(man), "--out", str(cfg_path), "--background", "none", "--mask-ignore", "4",
                            "--classes", "TE,NEC"])
    assert r.exit_code != 0 and "must name every class" in r.output
    r = runner.invoke(app, ["init", str(man), "--out", str(cfg_path), "--background", "none", "--mask-ignore", "4",
                            "--classes", "TE,NEC,LYM,TAS"])
    assert r.exit_code == 0, r.output
    cfg = load_config(str(cfg_path))
    # the vector order is the mask-value order: class 0 = TE, as LUAD-HistoSeg's masks are indexed
    assert cfg.data.classes.background is None and cfg.data.classes.names == ["TE", "NEC", "LYM", "TAS"]
    assert cfg.data.mask_ignore_values == [4] and cfg.data.mask_mode == "class_ids" and cfg.data.multi_label
    assert cfg.data.train_splits == ["training"] and cfg.data.test_splits == ["test"]
    r = runner.invoke(app, ["data", "check", str(man), "--config", str(cfg_path)])
    assert r.exit_code == 0, r.output


def test_colour_masks_give_the_classes_of_images_without_a_label_vector(tmp_path: Path):
    """Validation masks drawn in class colours (white = no class): `data manifest --labels-in-name` refuses them
    without `--mask-colors`, naming the option, reads their classes with it, and the suggested `init` line runs."""
    from typer.testing import CliRunner

    from histowsss.cli.app import app
    from histowsss.config import load_config

    root = tmp_path / "tissue"
    for p in range(3):
        for k, v in enumerate(["[1, 0, 1]", "[0, 1, 1]"]):
            _img(root / "training" / f"{p}-{k}-{v}.png", 90 + 10 * k, size=64)
    colours = {"TE": (255, 0, 0), "NEC": (0, 255, 0), "LYM": (0, 0, 255), "ignore": (255, 255, 255)}
    for split, pid in (("val", 10), ("test", 20)):
        for k in range(2):
            _img(root / split / "img" / f"{pid + k}-{split[0]}{k}.png", 120, size=64)
            m = np.full((64, 64, 3), 255, np.uint8)
            m[:32] = colours["TE"] if k == 0 else colours["LYM"]
            m[32:, :32] = colours["NEC"]
            (root / split / "mask").mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(root / split / "mask" / f"{pid + k}-{split[0]}{k}.png")
    runner = CliRunner()
    man, cfg_path = tmp_path / "t.csv", tmp_path / "t.yaml"
    base = ["data", "manifest", str(root), "--out", str(man), "--labels-in-name", "TE,NEC,LYM", "--masks",
            str(root / "val" / "mask"), "--masks", str(root / "test" / "mask"), "--patient-regex", r"/(\d+)-"]
    r = runner.invoke(app, base)
    assert r.exit_code != 0 and "--mask-colors" in r.output and "/mask/" in r.output and not man.exists()
    r = runner.invoke(app, [*base, "--mask-colors", "TE=#ff0000,NEC=#00ff00,TUM=#0000ff,ignore=#ffffff"])
    assert r.exit_code != 0 and "'TUM'" in r.output and not man.exists()  # not a class: named
    r = runner.invoke(app, [*base, "--mask-colors", "TE=#ff0000,NEC=#00ff00", "--mask-ignore", "4"])
    assert r.exit_code != 0 and "ignore=#rrggbb" in r.output
    cmap = "TE=#ff0000,NEC=#00ff00,LYM=#0000ff,ignore=#ffffff"
    r = runner.invoke(app, [*base, "--mask-colors", cmap])
    assert r.exit_code == 0, r.output
    rows = {Path(x["image"]).stem: x for x in _rows(man)}
    assert rows["10-v0"]["label"] == "TE;NEC" and rows["21-t1"]["label"] == "NEC;LYM"
    assert rows["0-1-[0, 1, 1]"]["label"] == "NEC;LYM"
    out = " ".join(r.output.split())
    assert f"--classes TE,NEC,LYM --background none --mask-colors '{cmap}'" in out  # quoted for the shell
    r = runner.invoke(app, ["init", str(man), "--out", str(cfg_path), "--classes", "TE,NEC,LYM", "--background",
                            "none", "--mask-colors", cmap])
    assert r.exit_code == 0, r.output
    cfg = load_config(str(cfg_path))
    assert cfg.data.mask_colors["LYM"] == "#0000ff" and cfg.data.classes.names == ["TE", "NEC", "LYM"]
    r = runner.invoke(app, ["data", "check", str(man), "--config", str(cfg_path)])
    assert r.exit_code == 0, r.output


def test_a_mask_suffix_that_matches_nothing_is_warned(class_folder: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from histowsss.cli.app import app

    masks = tmp_path / "masks"
    masks.mkdir()
    first = sorted(p for p in class_folder.rglob("*.png"))[0]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(masks / f"{first.stem}_mask.png")
    r = CliRunner().invoke(app, ["data", "manifest", str(class_folder), "--out", str(tmp_path / "m.csv"),
                                 "--masks", str(masks), "--mask-suffix", "_Mask"])
    out = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "--masks given, but no mask matched an image" in out and "check --mask-suffix (case matters)" in out
    assert f"'{first.stem}_mask.png'" in out


def test_every_bad_label_vector_is_listed_at_once(tmp_path: Path):
    root = tmp_path / "training"
    _img(root / "a-[1 0 1].png")
    _img(root / "b-[1 0].png")  # too short
    _img(root / "c-[0 0 0].png")  # no class
    _img(root / "d-[0 1 0].png")
    with pytest.raises(FolderLayoutError) as e:
        from histowsss.data.folder_manifest import manifest_from_named_labels

        manifest_from_named_labels(tmp_path / "training", tmp_path / "m.csv", ["TE", "NEC", "LYM"])
    text = str(e.value)
    assert text.startswith("2 of 4 image(s) cannot be listed:") and "b-[1 0].png: label vector [1 0]" in text
    assert "c-[0 0 0].png: no class in its label" in text and not (tmp_path / "m.csv").exists()


def test_split_folders_without_a_test_split_are_said(tmp_path: Path):
    """Only training/ (as BCSS-WSSS ships its labelled patches): the fractions are not used and there is no test
    split; the command says so, and how to draw one."""
    from typer.testing import CliRunner

    from histowsss.cli.app import app

    for cls in ("benign", "malignant"):
        for k in range(2):
            _img(tmp_path / "ds" / "training" / cls / f"{cls}_{k}.png")
    r = CliRunner().invoke(app, ["data", "manifest", str(tmp_path / "ds"), "--out", str(tmp_path / "m.csv")])
    out = " ".join(r.output.split())
    assert r.exit_code == 0 and "the split folders give only training: no test split" in out
    assert "histowsss data split" in out
