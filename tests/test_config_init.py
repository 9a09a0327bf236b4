"""`config_for_manifest` / `histowsss init`: a config fitted to a user's manifest, and a user's folder trained on."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from histowsss.cli.app import app
from histowsss.config import ConfigError, load_config
from histowsss.config_init import NETWORK_MPP, config_for_manifest
from histowsss.data.synthetic import generate_synthetic_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), {"train": 6, "val": 2, "test": 4}, size=128)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [edit(dict(r)) for r in rows]
    with open(dst, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return dst


def test_config_fits_the_manifest(synth: Path, tmp_path: Path):
    made = config_for_manifest(synth, label_column="grade")
    cfg = made.config
    assert cfg.data.classes.names == ["benign", "malignant"] and cfg.data.classes.background == "benign"
    assert (cfg.data.train_splits, cfg.data.val_splits, cfg.data.test_splits) == (["train"], ["val"], ["test"])
    assert cfg.data.mask_mode == "binary_image_label"  # benign glands in benign images are not malignant
    assert cfg.data.image_scale == 1.0  # small images are read at full size
    assert cfg.train_cam.crop_size == cfg.train_seg.crop_size == cfg.train_irn.crop_size == 128
    assert cfg.upper_bound and cfg.sem_seg.exp_times == 4 and not cfg.eval_seg.image_gate
    # the text is the config: loading it gives the same model
    (tmp_path / "c.yaml").write_text(made.text)
    assert load_config(tmp_path / "c.yaml") == cfg
    assert made.text.startswith("# histowsss config for") and "mask_mode binary_image_label" in made.text


def test_label_codes_named_by_another_column_take_the_names(synth: Path):
    """The synthetic (and GlaS) manifest codes its grade as a 0/1 'label' beside a 'grade' column of names: without
    --label-column, init takes the names and says so; --label-column label keeps the codes."""
    made = config_for_manifest(synth)
    assert made.config.data.label_column == "grade" and made.config.data.classes.names == ["benign", "malignant"]
    assert "the names of the 'label' column's codes" in made.notes[0]
    with pytest.raises(ConfigError, match="cannot tell which class is background"):
        config_for_manifest(synth, label_column="label")
    # a patient column that happens to pair with the codes (one slide per class) is no class name
    rows = [{"image": "a.png", "split": "train", "patient": "TCGA-A1", "label": "0"},
            {"image": "b.png", "split": "train", "patient": "TCGA-B7", "label": "1"}]
    from histowsss.data.manifest_facts import code_names_column

    assert code_names_column(list(rows[0]), rows, "label", ["0", "1"]) is None


def test_resolution_follows_the_images_mpp_and_the_profile(synth: Path):
    cpu = config_for_manifest(synth, label_column="grade", mpp=0.62).config
    gpu = config_for_manifest(synth, label_column="grade", mpp=0.62, profile="gpu").config
    assert cpu.data.image_scale == pytest.approx(0.62 / NETWORK_MPP["cpu"]) == 0.5 and cpu.data.mpp == 0.62
    assert gpu.data.image_scale == 1.0
    assert cpu.train_cam.crop_size == 64 and gpu.train_cam.crop_size == 128  # crops fit the 64 / 128 px images
    assert gpu.train_seg.epochs > cpu.train_seg.epochs  # the GPU profile's longer schedule
    with pytest.raises(ConfigError, match="too small to train on"):  # 128 px * 0.25 = 32 px
        config_for_manifest(synth, label_column="grade", image_scale=0.25)


def test_what_cannot_be_guessed_is_asked_for(synth: Path, tmp_path: Path):
    odd = _rewrite(synth, synth.parent / "odd.csv", lambda r: {**r, "grade": {"benign": "a", "malignant": "b"}[r["grade"]]})
    with pytest.raises(ConfigError, match="pass --background NAME"):
        config_for_manifest(odd, label_column="grade")
    assert config_for_manifest(odd, label_column="grade", background="a").config.data.classes.names == ["a", "b"]
    with pytest.raises(ConfigError, match="'nope' is not one of the manifest's classes"):
        config_for_manifest(synth, label_column="grade", background="nope")
    with pytest.raises(ConfigError, match="no 'colour' column.*--label-column"):
        config_for_manifest(synth, label_column="colour")
    nosplit = _rewrite(synth, synth.parent / "nosplit.csv", lambda r: {**r, "split": ""})
    with pytest.raises(ConfigError, match="histowsss data split"):
        config_for_manifest(nosplit, label_column="grade")
    other = _rewrite(synth, synth.parent / "other.csv", lambda r: {**r, "split": "fold1"})
    with pytest.raises(ConfigError, match="'fold1' is not train"):
        config_for_manifest(other, label_column="grade")
    with pytest.raises(FileNotFoundError, match="histowsss data manifest"):
        config_for_manifest(tmp_path / "missing.csv")


def test_class_id_masks_and_multi_label(tmp_path: Path):
    rows = ["image,split,patient,label,mask"]
    for i, (split, labels) in enumerate([("train", "normal"), ("train", "tumour;necrosis"), ("test", "tumour"),
                                         ("test", "normal;necrosis")]):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        Image.fromarray(np.arange(96 * 96).reshape(96, 96).astype(np.uint8) % 3).save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,{split},p{i},{labels},m{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = config_for_manifest(tmp_path / "m.csv").config
    assert cfg.data.multi_label and cfg.data.mask_mode == "class_ids"
    assert cfg.data.classes.names == ["normal", "necrosis", "tumour"]  # background first: mask value 0
    assert cfg.train_cam.crop_size == 96


@pytest.mark.parametrize("sep", [",", "|"])
def test_the_label_separator_is_found_in_the_labels(tmp_path: Path, sep: str):
    """Cells like 'TE,NEC' are sets of classes, not classes of their own; a name holding the character alone is not."""
    rows = ["image,split,patient,label"]
    for i, (split, labels) in enumerate([("train", ["TE", "NEC"]), ("train", ["NEC", "STR"]), ("train", ["TE"]),
                                         ("test", ["STR", "TE"])]):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        rows.append(f'i{i}.png,{split},p{i},"{sep.join(labels)}"')
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    made = config_for_manifest(tmp_path / "m.csv", background="none")
    assert made.config.data.multi_label and made.config.data.label_separator == sep
    assert sorted(made.config.data.classes.names) == ["NEC", "STR", "TE"]
    one = tmp_path / "one.csv"  # one label per image, names with a comma: kept whole
    one.write_text('image,split,patient,label\ni0.png,train,p0,"adenoma, low grade"\ni1.png,train,p1,'
                   '"adenoma, high grade"\ni2.png,test,p2,normal\n')
    cfg = config_for_manifest(one).config
    assert not cfg.data.multi_label and "adenoma, low grade" in cfg.data.classes.names


def test_tissue_types_without_a_background_class(tmp_path: Path):
    rows = ["image,split,patient,label,mask"]
    for i, (split, labels) in enumerate([("train", "stroma;tumour"), ("train", "tumour;necrosis"),
                                         ("test", "tumour"), ("test", "stroma;necrosis")]):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        Image.fromarray(np.arange(96 * 96).reshape(96, 96).astype(np.uint8) % 3).save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,{split},p{i},{labels},m{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match="--background none"):  # no name says background: the fix is named
        config_for_manifest(tmp_path / "m.csv")
    made = config_for_manifest(tmp_path / "m.csv", background="none")
    cfg = made.config
    assert cfg.data.classes.background is None and cfg.data.multi_label and cfg.data.mask_mode == "class_ids"
    assert sorted(cfg.data.classes.names) == ["necrosis", "stroma", "tumour"]
    assert cfg.train_cam.background_mode == "class" and "no background class" in made.text
    assert set(cfg.data.classes.colors) == set(cfg.data.classes.names)
    # the clean-up suggested is the one that works without background (holes and cuts are background), and the
    # config refuses the others rather than ignoring them
    text = " ".join(made.text.split())
    assert "tune RUN --object-areas 0,400,1600`" in text and "--hole-areas" not in text and "mask_cc" in text
    from histowsss.config import validate_config

    raw = cfg.model_dump(mode="json")
    from histowsss.engine.pipeline import plan_steps
    from histowsss.engine.run_dir import RunDir

    for key, value in (("max_hole_area", 400), ("split_h", 12.0)):
        loaded = validate_config({**raw, "eval_seg": {**raw["eval_seg"], key: value}})  # a run folder still loads
        with pytest.raises(ConfigError, match=rf"eval_seg.{key}={value} needs a background class"):
            plan_steps(loaded, RunDir(tmp_path / "run", loaded))  # but nothing runs with it
    ok = validate_config({**raw, "eval_seg": {**raw["eval_seg"], "min_object_area": 400}})
    assert plan_steps(ok, RunDir(tmp_path / "run", ok))
    # --classes with a named background keeps the given order and says which class is background
    named = config_for_manifest(tmp_path / "m.csv", background="stroma", classes=["tumour", "stroma", "necrosis"])
    assert named.config.data.classes.names == ["tumour", "stroma", "necrosis"]
    assert "(background / normal: stroma) in the order given by --classes" in named.text
    assert set(named.config.data.classes.colors) == {"tumour", "stroma", "necrosis"}


def test_a_folder_of_labelled_tiles_trains(synth: Path, tmp_path: Path):
    """The whole on-ramp through the CLI: folder -> `data manifest` -> `init` -> `run` (CAM stage)."""
    with open(synth, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # the layout tile datasets ship in: tiles/<class>/<patient>_<tile>.png, masks elsewhere
        stem = f"{r['patient']}_{Path(r['image']).stem}"
        (tmp_path / "tiles" / r["grade"]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "masks").mkdir(exist_ok=True)
        shutil.copy(synth.parent / r["image"], tmp_path / "tiles" / r["grade"] / f"{stem}.png")
        shutil.copy(synth.parent / r["mask"], tmp_path / "masks" / f"{stem}.png")
    runner = CliRunner()
    manifest, config = tmp_path / "my data" / "manifest.csv", tmp_path / "mine.yaml"  # a space: hints are quoted
    r = runner.invoke(app, ["data", "manifest", str(tmp_path / "tiles"), "--out", str(manifest), "--masks",
                            str(tmp_path / "masks"), "--patient-regex", r"/(P\d+)_", "--train", "0.5", "--val", "0",
                            "--test", "0.5"])
    assert r.exit_code == 0, r.output
    assert "patients" in r.output and "warning" not in r.output
    assert f"next: histowsss init '{manifest}'" in " ".join(r.output.split()).replace(" /", "/")
    r = runner.invoke(app, ["init", str(manifest), "--out", str(config)])
    assert r.exit_code == 0, r.output
    assert f"histowsss data check '{manifest}'" in r.output.replace("\n", "")
    r = runner.invoke(app, ["init", str(manifest), "--out", str(config)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    fast = ["train_cam.epochs=2", "train_cam.crops_per_image=4", "train_cam.cache_copies=1",
            "train_cam.cache_scales=[1.0]", "train_cam.head_channels=32", "make_cam.scales=[1.0]", "make_cam.flip=false",
            "train_cam.min_epochs_before_diagnosis=5"]
    args = ["run", str(config), "--run", str(tmp_path / "run"), "--to", "eval_cam"]
    for s in fast:
        args += ["--set", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "quality measured in this run folder" in r.output and "| CAM | test |" in r.output  # run ends with it
    m = json.loads((tmp_path / "run" / "metrics" / "cam.json").read_text())
    assert set(m["splits"]) == {"train", "test"} and 0 <= m["splits"]["test"]["predicted_gating"]["miou"] <= 100
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["name"] == "mine" and saved["data"]["classes"]["background"] == "benign"
    assert re.search(r"mask_mode: binary_image_label", config.read_text())


def test_crops_follow_the_typical_image_and_small_ones_are_counted(tmp_path: Path):
    """train_cam mirrors, train_irn mirrors and train_seg pads images smaller than their crops, so the crops follow
    the median image (one 96-px edge tile does not shrink the profile's 160-px CAM crop to 96), and the notes count the small ones."""
    rows = ["image,split,patient,label"]
    for i, side in enumerate([96, 200, 200, 200, 200, 200]):
        Image.fromarray(np.full((side, side + 10, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        rows.append(f"i{i}.png,{'train' if i < 4 else 'test'},p{i},{'normal' if i % 2 else 'tumour'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    made = config_for_manifest(tmp_path / "m.csv", image_scale=1.0)
    cfg = made.config
    assert cfg.train_cam.crop_size == 160 and cfg.train_irn.crop_size == 192 and cfg.train_seg.crop_size == 160
    assert cfg.train_cam.small_images == "mirror"
    assert cfg.data.mask_column is None and not cfg.upper_bound
    assert any("smallest 96 px, median 200 px" in n for n in made.notes)
    assert any("1 of 4 training images are smaller than train_cam's 160-px crop: train_cam mirrors them" in n
               for n in made.notes)


def _labelled_images(folder: Path, labels: list[str], test: set[int], masks: list[np.ndarray] | None = None) -> Path:
    """96-px images ``i<k>.png`` (with ``masks``: uint8 masks ``m<k>.png`` in a mask column) and ``folder/m.csv``
    (image, split, patient, label): one patient each, the rows ``test`` in the test split."""
    rows = ["image,split,patient,label" + (",mask" if masks is not None else "")]
    for i, label in enumerate(labels):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(folder / f"i{i}.png")
        if masks is not None:
            Image.fromarray(np.asarray(masks[i], np.uint8)).save(folder / f"m{i}.png")
        rows.append(f"i{i}.png,{'test' if i in test else 'train'},p{i},{label}" + (f",m{i}.png" if masks else ""))
    (folder / "m.csv").write_text("\n".join(rows) + "\n")
    return folder / "m.csv"


def test_binary_255_masks_without_a_background_class_are_refused(tmp_path: Path):
    """Two tissue classes, masks 0/255 and --background none: 255 would mean ignore, so nothing would be scored."""
    m = np.zeros((96, 96), np.uint8)
    m[:48] = 255
    path = _labelled_images(tmp_path, ["stroma;tumour", "tumour", "stroma;tumour", "stroma"], {2, 3}, [m] * 4)
    with pytest.raises(ConfigError, match="255 means ignore"):
        config_for_manifest(path, background="none")


def test_init_writes_an_absolute_manifest_and_leaves_glas_cleanup_out(synth: Path, monkeypatch):
    """The config is run from other folders than init's; the profiles' object clean-up is sized for GlaS glands."""
    monkeypatch.chdir(synth.parent)
    made = config_for_manifest(Path(synth.name), label_column="grade")
    assert Path(made.config.data.manifest).is_absolute() and Path(made.config.data.manifest).exists()
    es = made.config.eval_seg
    assert es.min_object_area == 0 and es.max_hole_area == 0 and es.split_h == 0
    assert "object clean-up off" in made.text and "--object-areas" in made.text


def test_mask_mode_reads_masks_from_the_whole_manifest(tmp_path: Path):
    """Sorted by class, the first masks hold only 0 / 1; a later one holds 2: the masks are class ids, not binary."""
    rows = ["image,split,patient,label,mask"]
    for i in range(47):  # 47: more than 24 masks but fewer than two per pick; only the last rows hold a 2
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        m = np.zeros((96, 96), np.uint8)
        m[10:20, 10:20] = 1 if i < 44 else 2
        Image.fromarray(m).save(tmp_path / f"m{i}.png")
        label = "normal;a" if i < 44 else "normal;b"
        rows.append(f"i{i}.png,{'train' if i % 3 else 'test'},p{i},{label},m{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    made = config_for_manifest(tmp_path / "m.csv", background="normal")
    assert made.config.data.mask_mode == "class_ids" and made.config.data.classes.names == ["normal", "a", "b"]
    assert "pass --classes in mask-value order" in made.text


def test_binary_masks_take_the_class_that_is_not_background_whatever_the_order_given(tmp_path: Path):
    rows = ["image,split,patient,label,mask"]
    for i in range(6):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        Image.fromarray(np.zeros((96, 96), np.uint8)).save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,{'train' if i % 3 else 'test'},p{i},{'malignant' if i % 2 else 'benign'},m{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    made = config_for_manifest(tmp_path / "m.csv", background="benign", mask_mode="binary",
                               classes=["malignant", "benign"])  # background given second
    assert made.config.data.mask_foreground_class == "malignant"




def test_class_name_typos_are_caught(tmp_path: Path):
    m = _labelled_images(tmp_path, ["normal", "tumour", "Tumour", "tumour", "normal", "tumuor"], {5})
    with pytest.raises(ConfigError, match="differ only in case or spaces \\('Tumour' / 'tumour'\\)"):
        config_for_manifest(m)
    m.write_text(m.read_text().replace("Tumour", "tumour"))
    made = config_for_manifest(tmp_path / "m.csv")
    assert "class(es) 'tumuor' label a single image: a typo?" in " ".join(made.notes)


def _one_hot(tmp_path: Path, marks: list[tuple[str, str, str]], header: str = "TE,NEC,STR") -> Path:
    rows = [f"image,split,patient,{header},mask"]
    for i, m in enumerate(marks):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        Image.fromarray(np.arange(96 * 96).reshape(96, 96).astype(np.uint8) % 3).save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,{'train' if i < len(marks) - 1 else 'test'},p{i},{','.join(m)},m{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "m.csv"


def test_one_column_per_class_is_found_and_kept_in_column_order(tmp_path: Path):
    """Multi-hot columns (as LUAD-HistoSeg's label vectors written out) are the classes, in column order."""
    m = _one_hot(tmp_path, [("1", "0", "1"), ("0", "1", "1"), ("1", "0", "0"), ("0", "0", "1")])
    made = config_for_manifest(m, background="none")
    d = made.config.data
    assert d.label_columns == ["TE", "NEC", "STR"] and d.label_column is None and d.multi_label
    assert d.classes.names == ["TE", "NEC", "STR"] and d.classes.background is None  # mask value = column position
    assert ("columns TE, NEC, STR (one 0/1 column per class; found: no 'label' column, and these hold 0/1 marks; if "
            "another column holds the class names, pass --label-column COLUMN): TE, NEC, STR, no background class"
            in " ".join(made.text.replace("#", " ").split()))
    assert "in column order (mask value = position):" in made.text
    (tmp_path / "c.yaml").write_text(made.text)
    assert load_config(tmp_path / "c.yaml") == made.config
    from histowsss.data.manifest import read_manifest

    assert [s.labels for s in read_manifest(d)] == [("TE", "STR"), ("NEC", "STR"), ("TE",), ("STR",)]
    # one-hot (one mark per row) is single-label; rows with no mark are the background, a class without a column
    hot = _one_hot(tmp_path, [("1", "0", "0"), ("0", "1", "0"), ("0", "0", "0"), ("0", "0", "1")])
    with pytest.raises(ConfigError, match="--background NAME"):
        config_for_manifest(hot, background="none")
    made = config_for_manifest(hot, background="normal")
    d = made.config.data
    assert "in column order (mask value = position, the background first)" in made.text
    assert not d.multi_label and d.classes.names == ["normal", "TE", "NEC", "STR"] and d.classes.background == "normal"


def test_class_columns_given_and_bad_cells_named(tmp_path: Path):
    m = _one_hot(tmp_path, [("1", "0", "0"), ("0", "1", "0"), ("0", "0", "1")], header="tumour,normal,scanner_ok")
    d = config_for_manifest(m, label_columns=["normal", "tumour"], mask_mode="class_ids").config.data  # a flag left out
    assert d.label_columns == ["normal", "tumour"] and d.classes.background == "normal"
    with pytest.raises(ConfigError, match="not both"):
        config_for_manifest(m, label_columns=["tumour"], label_column="label")
    bad = _one_hot(tmp_path, [("1", "0", "0"), ("0", "2", "0"), ("0", "0", "1")])
    with pytest.raises(ConfigError, match=r"row 3: class column value\(s\) NEC='2'"):
        config_for_manifest(bad, label_columns=["TE", "NEC", "STR"], background="none")


def test_found_class_columns_are_named_in_errors(tmp_path: Path):
    """Two 0/1 flag columns beside a text column of grades look like class columns: init says what it took and
    how to name the label column; rows with no mark ask for the background first; a background in another case
    than its column is refused."""
    m = _one_hot(tmp_path, [("a", "1", "0"), ("b", "0", "1"), ("a", "1", "1")], header="grade,reviewed,has_points")
    with pytest.raises(ConfigError, match=r"cannot tell which class is background.*Classes from columns reviewed, "
                                          r"has_points.*pass --label-column COLUMN"):
        config_for_manifest(m)
    by_grade = config_for_manifest(m, label_column="grade", background="a", mask_mode="class_ids")
    assert by_grade.config.data.label_column == "grade"
    hot = _one_hot(tmp_path, [("1", "0", "0"), ("0", "0", "0"), ("0", "0", "1")])
    with pytest.raises(ConfigError, match="some rows mark none of the class columns"):
        config_for_manifest(hot)  # not the generic "cannot tell which class is background"
    with pytest.raises(ConfigError, match="the class column is 'TE'"):
        config_for_manifest(hot, background="te")


def test_colour_masks_are_named_and_mapped_with_mask_colors(tmp_path: Path):
    """RGB masks drawn in class colours: init lists the colours and asks which class each is (pure red / green /
    white would otherwise pass for binary 0/255 values); with --mask-colors every step reads the ids."""
    from histowsss.data.io import ImageReadError
    from histowsss.data.manifest import read_manifest
    from histowsss.data.masks import load_class_mask

    red, green, white = (255, 0, 0), (0, 255, 0), (255, 255, 255)
    rows = ["image,split,patient,label,mask"]
    for i, (split, labels) in enumerate([("train", "tumour;stroma"), ("train", "stroma"), ("test", "tumour;stroma")]):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        m = np.zeros((96, 96, 3), np.uint8)
        m[:] = green
        m[:24] = white  # glass
        if "tumour" in labels:
            m[48:, :48] = red
        Image.fromarray(m).save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,{split},p{i},{labels},m{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=r"colour images \(colours #00ff00, #ffffff, #ff0000, most pixels first\).*"
                                          r"--mask-colors .CLASS=#rrggbb,...., one per class of"):
        config_for_manifest(tmp_path / "m.csv", background="none")
    made = config_for_manifest(tmp_path / "m.csv", background="none",
                               mask_colors={"tumour": "#FF0000", "stroma": "#00ff00", "ignore": "#ffffff"})
    cfg = made.config
    assert cfg.data.mask_mode == "class_ids" and cfg.data.classes.colors["tumour"] == "#FF0000"
    s = read_manifest(cfg.data)[0]
    ids = load_class_mask(s, cfg.data)
    t, st = cfg.data.classes.index("tumour"), cfg.data.classes.index("stroma")
    assert (ids[:24] == 255).all() and (ids[48:, :48] == t).all() and (ids[24:48] == st).all()
    from histowsss.data.check import check_dataset

    assert [p for p in check_dataset(cfg.data, progress=False) if p.level == "error"] == []
    without_red = cfg.data.model_copy(update={"mask_colors": {"stroma": "#00ff00", "ignore": "#ffffff"}})
    errors = [p.message for p in check_dataset(without_red, progress=False) if p.level == "error"]
    assert len(errors) == 2 and all("#ff0000" in m for m in errors)  # the two masks that hold red
    with pytest.raises(ImageReadError, match=r"m0.png: colour\(s\) #ff0000 \(2304 px\) are in no entry of "
                                             r"data.mask_colors.*`init` --mask-colors \(CLASS=#ff0000\)"):
        load_class_mask(s, without_red)
    r = CliRunner().invoke(app, ["init", str(tmp_path / "m.csv"), "--out", str(tmp_path / "c.yaml"), "--background",
                                 "none", "--mask-colors", "tumour=#ff0000,stroma=#00ff00,ignore=#ffffff"])
    assert r.exit_code == 0, r.output
    assert load_config(str(tmp_path / "c.yaml")).data.mask_colors == {"tumour": "#ff0000", "stroma": "#00ff00",
                                                                       "ignore": "#ffffff"}
    for bad, says in (({"tumor": "#ff0000"}, "not a class: 'tumor'"), ({"tumour": "red"}, "not a colour"),
                      ({"tumour": "#ff0000", "stroma": "#FF0000"}, "the same colour")):
        with pytest.raises(ConfigError, match=says):
            load_config(str(tmp_path / "c.yaml"), [f"data.mask_colors={json.dumps(bad)}"])


def test_mask_values_map_qupath_label_tiles(tmp_path: Path):
    """QuPath's labelled tiles hold 0 (unannotated), then 1, 2 in the order the labels were added, not the classes'
    positions: init says so and takes --mask-values; every step reads the mapped ids."""
    from histowsss.data.check import check_dataset
    from histowsss.data.io import ImageReadError
    from histowsss.data.manifest import read_manifest
    from histowsss.data.masks import load_class_mask

    rows = ["image,split,patient,label,mask"]
    for i, (split, labels) in enumerate([("train", "tumour;stroma"), ("train", "stroma"), ("test", "tumour;stroma")]):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        m = np.full((96, 96), 2, np.uint8)  # stroma (added second in QuPath)
        m[:24] = 0  # unannotated
        if "tumour" in labels:
            m[48:, :48] = 1
        Image.fromarray(m).save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,{split},p{i},{labels},m{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ConfigError, match=r"values \[0, 1, 2\].*--mask-values"):
        config_for_manifest(tmp_path / "m.csv", background="none")
    r = CliRunner().invoke(app, ["init", str(tmp_path / "m.csv"), "--out", str(tmp_path / "c.yaml"), "--background",
                                 "none", "--mask-values", "tumour=1,stroma=2,ignore=0"])
    assert r.exit_code == 0, r.output
    cfg = load_config(str(tmp_path / "c.yaml"))
    assert cfg.data.mask_values == {"tumour": 1, "stroma": 2, "ignore": 0} and cfg.data.mask_mode == "class_ids"
    s = read_manifest(cfg.data)[0]
    ids = load_class_mask(s, cfg.data)
    t, st = cfg.data.classes.index("tumour"), cfg.data.classes.index("stroma")
    assert (ids[:24] == 255).all() and (ids[48:, :48] == t).all() and (ids[24:48] == st).all()
    assert [p for p in check_dataset(cfg.data, progress=False) if p.level == "error"] == []
    no_ignore = cfg.data.model_copy(update={"mask_values": {"tumour": 1, "stroma": 2}})
    with pytest.raises(ImageReadError, match=r"m0.png: mask value\(s\) 0 \(2304 px\) are in no entry of "
                                             r"data.mask_values"):
        load_class_mask(s, no_ignore)
    with pytest.raises(ConfigError, match="both map masks"):
        load_config(str(tmp_path / "c.yaml"), ["data.mask_colors={tumour: '#ff0000'}"])


def test_several_mask_values_or_colours_merge_into_one_class(tmp_path: Path):
    """BCSS-style masks hold many tissue codes: a class (or 'ignore') takes a list, from the CLI by naming it twice;
    a value listed under two classes is refused."""
    from histowsss.data.manifest import read_manifest
    from histowsss.data.masks import load_class_mask

    rows = ["image,split,patient,label,mask"]
    codes = np.zeros((96, 96), np.uint8)
    codes[:, 24:48], codes[:, 48:72], codes[:, 72:] = 3, 5, 7  # 0 and 7: outside the ROI; 3 and 5: two tumour codes
    for i, (split, label) in enumerate([("train", "tumour"), ("train", "normal"), ("test", "tumour")]):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        Image.fromarray(codes).save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,{split},p{i},{label},m{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    r = CliRunner().invoke(app, ["init", str(tmp_path / "m.csv"), "--out", str(tmp_path / "c.yaml"), "--classes",
                                 "normal,tumour", "--background", "normal", "--mask-values",
                                 "tumour=3,tumour=5,ignore=0,ignore=7"])
    assert r.exit_code == 0, r.output
    cfg = load_config(str(tmp_path / "c.yaml"))
    assert cfg.data.mask_values == {"tumour": [3, 5], "ignore": [0, 7]}
    ids = load_class_mask(read_manifest(cfg.data)[0], cfg.data)
    t = cfg.data.classes.index("tumour")
    assert (ids[:, :24] == 255).all() and (ids[:, 24:72] == t).all() and (ids[:, 72:] == 255).all()
    with pytest.raises(ConfigError, match="gives 'tumour' and 'ignore' the same value 5"):
        load_config(str(tmp_path / "c.yaml"), ["data.mask_values={tumour: [3, 5], ignore: [0, 5]}"])
    with pytest.raises(ConfigError, match="not a value: tumour: None"):
        load_config(str(tmp_path / "c.yaml"), ["data.mask_values={tumour: [], ignore: 0}"])
    # colours: two shades of one class
    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[:, :48] = (255, 0, 0)
    rgb[:, 48:] = (200, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "m0.png")
    two = cfg.data.model_copy(update={"mask_values": None, "mask_colors": {"tumour": ["#ff0000", "#c80000"]}})
    assert (load_class_mask(read_manifest(cfg.data)[0], two) == t).all()


def test_palette_masks_stay_class_ids_and_mask_maps_stand_alone(tmp_path: Path):
    """A palette mask (LUAD-HistoSeg, BCSS-WSSS) holds class ids however its palette is coloured; init takes one
    way of reading masks at a time, and an ignore value goes into the map, not beside it."""
    rows = ["image,split,patient,label,mask"]
    for i, (split, labels) in enumerate([("train", "TE;NEC"), ("train", "NEC"), ("test", "TE;NEC")]):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"i{i}.png")
        m = Image.fromarray(np.broadcast_to(np.where(np.arange(96)[:, None] < 48, 1, 0), (96, 96)).astype(np.uint8))
        p = m.convert("P")
        p.putpalette([0, 64, 128, 205, 51, 51, 0, 255, 0] + [0] * (256 * 3 - 9))  # coloured entries
        p.save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,{split},p{i},{labels},m{i}.png")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    made = config_for_manifest(tmp_path / "m.csv", background="none", classes=["TE", "NEC"])
    assert made.config.data.mask_mode == "class_ids" and not made.config.data.mask_colors
    with pytest.raises(ConfigError, match="--mask-colors and --mask-values both say how masks are read"):
        config_for_manifest(tmp_path / "m.csv", background="none", mask_colors={"TE": "#ff0000"},
                            mask_values={"TE": 1})
    with pytest.raises(ConfigError, match="give the ignored value in the map"):
        config_for_manifest(tmp_path / "m.csv", background="none", mask_values={"TE": 1, "NEC": 2}, mask_ignore=[0])
    with pytest.raises(ConfigError, match="mask_ignore_values and mask_values both say"):
        load_config("demo", ["data.mask_mode=class_ids", "data.mask_values={malignant: 1, benign: 2}",
                             "data.mask_ignore_values=[0]"])


def test_init_refuses_to_write_over_its_manifest_or_into_a_folder(synth: Path, tmp_path: Path):
    text = synth.read_text()
    r = CliRunner().invoke(app, ["init", str(synth), "--out", str(synth), "--overwrite"])
    assert r.exit_code == 2 and "is the file this command reads" in r.output and synth.read_text() == text
    r = CliRunner().invoke(app, ["init", str(synth), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is a folder" in r.output
    assert "config.yaml" in "".join(r.output.split())  # (the example names a config file, not a table)


def test_the_background_is_found_in_a_class_name_of_several_words(tmp_path: Path):
    m = _labelled_images(tmp_path, ["Benign glands", "Malignant glands"] * 3, {4, 5})
    made = config_for_manifest(m)
    assert made.config.data.classes.background == "Benign glands"
    m.write_text(m.read_text().replace("Malignant glands", "Not benign"))
    assert config_for_manifest(m).config.data.classes.background == "Benign glands"


def test_a_nan_label_is_no_class(tmp_path: Path):
    m = _labelled_images(tmp_path, ["normal", "tumour", "NaN", "tumour", "normal", "normal"], {5})
    assert config_for_manifest(m).config.data.classes.names == ["normal", "tumour"]


def test_no_tune_advice_without_training_masks_and_the_upper_bound_says_why_it_is_off(synth: Path, tmp_path: Path):
    bare = _rewrite(synth, synth.parent / "bare.csv", lambda r: {**r, "mask": ""})
    notes = " ".join(config_for_manifest(bare, label_column="grade").notes)
    assert "tune RUN" not in notes and "needs masks for some training images: none have one here" in notes
    seen: list[int] = []

    def some(r):
        seen.append(1)
        return {**r, "mask": r["mask"] if len(seen) % 2 else ""}

    part = _rewrite(synth, synth.parent / "part.csv", some)
    made = config_for_manifest(part, label_column="grade")
    assert made.config.upper_bound is False
    assert any(n.startswith("upper_bound false: ") and "of 6 training images have a mask" in n for n in made.notes)
    assert "tune RUN" in " ".join(made.notes)


def test_masks_numbering_the_classes_in_another_order_are_caught(tmp_path: Path):
    """Class-id masks in the labels' vector order (tumour = 0, stroma = 1), classes ordered alphabetically: every
    score would be of swapped classes. init finds the order that fits the labels and asks for it."""
    labels = ["tumour", "stroma", "tumour;stroma", "tumour", "stroma", "tumour;stroma"]
    masks = []
    for lab in labels:
        m = np.zeros((96, 96), np.uint8) if lab == "tumour" else np.ones((96, 96), np.uint8)
        if lab == "tumour;stroma":
            m[:48] = 0
        masks.append(m)
    _labelled_images(tmp_path, labels, {5}, masks)
    with pytest.raises(ConfigError, match="in the order tumour, stroma only 0 do.*Pass --classes tumour,stroma"):
        config_for_manifest(tmp_path / "m.csv", background="none")
    made = config_for_manifest(tmp_path / "m.csv", background="none", classes=["tumour", "stroma"])
    assert made.config.data.classes.names == ["tumour", "stroma"] and made.config.data.mask_mode == "class_ids"


def test_a_mask_value_that_is_no_class_points_to_mask_ignore(tmp_path: Path):
    labels = ["tumour", "stroma", "tumour", "stroma"]
    masks = [np.full((96, 96), 0 if lab == "tumour" else 1, np.uint8) for lab in labels]
    for m in masks:
        m[:10] = 4  # white background, as LUAD-HistoSeg marks it
    _labelled_images(tmp_path, labels, {3}, masks)
    with pytest.raises(ConfigError, match="if 4 marks pixels that are no class .* pass --mask-ignore 4"):
        config_for_manifest(tmp_path / "m.csv", background="none", classes=["tumour", "stroma"])
    made = config_for_manifest(tmp_path / "m.csv", background="none", classes=["tumour", "stroma"], mask_ignore=[4])
    assert made.config.data.mask_ignore_values == [4]


def test_single_labels_with_masks_of_more_classes_pass_the_order_check(tmp_path: Path):
    """One diagnosis per image, masks of every tissue (normal = 0 the background, stroma = 1, tumour = 2): a tumour
    image's mask holds stroma too. Not a swapped order; init must neither refuse it nor move the background."""
    labels = [("normal", "stroma", "tumour", "tumour")[i % 4] for i in range(8)]
    masks = []
    for lab in labels:
        m = np.zeros((96, 96), np.uint8)
        if lab != "normal":
            m[20:60] = 1  # stroma
        if lab == "tumour":
            m[40:80, 40:80] = 2
        masks.append(m)
    _labelled_images(tmp_path, labels, {6, 7}, masks)
    made = config_for_manifest(tmp_path / "m.csv")
    assert made.config.data.classes.names == ["normal", "stroma", "tumour"]
    assert made.config.data.classes.background == "normal"
    assert not any("masked images hold classes" in n for n in made.notes)
    # the same masks numbering tumour 1 and stroma 2: found, and the background stays class 0
    for i in range(8):
        m = np.asarray(Image.open(tmp_path / f"m{i}.png")).copy()
        Image.fromarray(np.choose(m, [0, 2, 1]).astype(np.uint8)).save(tmp_path / f"m{i}.png")
    with pytest.raises(ConfigError, match=r"in the order normal, tumour, stroma only 0 do.*--classes normal,tumour,"
                                          r"stroma"):
        config_for_manifest(tmp_path / "m.csv")
    notes = config_for_manifest(tmp_path / "m.csv", classes=["normal", "stroma", "tumour"]).notes
    assert any(n.startswith("warning: ") and "check that --classes names the classes" in n for n in notes)
