"""`histowsss data stats | check | split` through the real CLI app."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from histowsss.cli.app import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with line wrapping undone (rich wraps at the console width)."""
    return re.sub(r"\s+", " ", text)


def _cells(stdout: str) -> list[list[str]]:
    """Each table line's non-empty cells."""
    return [[c.strip() for c in re.split(r"[│|┃]", line) if c.strip()] for line in stdout.splitlines()]


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """split name -> cells of the stats table."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        if cells and cells[0] in ("train", "val", "test", "testA", "testB", "all"):
            rows[cells[0]] = cells
    return rows


# -- check ------------------------------------------------------------------------------------------------------------

def test_check_clean_dataset_exits_0(clean_manifest):
    r = invoke("data", "check", clean_manifest)
    assert r.exit_code == 0, r.output
    assert "0 error(s), 0 warning(s)" in flat(r.output)


def test_check_lists_every_problem_and_exits_1(builder):
    rows = [builder.row("good", "train", "p1", "benign")]
    rows.append(dict(builder.row("gone", "train", "p2"), image="images/gone_missing.png"))
    corrupt = builder.row("corrupt", "train", "p3")
    (builder.root / corrupt["image"]).write_bytes(np.random.default_rng(0).bytes(500))
    rows.append(corrupt)
    gray = builder.row("gray", "train", "p4")
    Image.fromarray(np.full((24, 32), 128, np.uint8)).save(builder.root / gray["image"])
    rows.append(gray)
    wrong_mask = builder.row("wrongmask", "train", "p5")
    builder.mask("wrongmask", 20, 32)
    rows.append(wrong_mask)
    rows.append(builder.row("typo", "train", "p6", "malignent"))
    rows.append(builder.row("small", "test", "p7", h=12, w=40))
    shared_a = builder.row("shared_a", "train", "p8")
    shared_b = builder.row("shared_b", "test", "p8")
    rows += [shared_a, shared_b]
    rgba = builder.row("rgba", "test", "p9")
    a = np.full((24, 32, 4), 200, np.uint8)
    a[0, 0, 3] = 0
    Image.fromarray(a, "RGBA").save(builder.root / rgba["image"])
    rows.append(rgba)
    m = builder.manifest(rows)

    r = invoke("data", "check", m, "--min-size", "16", "--config", "demo", "--set", "data.label_column=label")
    out = flat(r.output)
    assert r.exit_code == 1, r.output
    expected = [
        ("gone_missing.png", "file not found"),
        ("corrupt.png", "corrupt"),
        ("gray.png", "grayscale"),
        ("wrongmask.png", "mask size 32x20 (WxH) differs from its image 32x24"),
        ("row 7 (images/typo.png)", "unknown class 'malignent'"),
        ("small.png", "smaller than --min-size 16; lower --min-size"),
        ("patient p8", "appears in splits test, train"),
        ("rgba.png", "transparency"),
        ("data.val_splits", "names split 'val' but no image is in it (the manifest has: test, train)"),
    ]
    for file, what in expected:
        assert re.search(re.escape(file) + ".*" + re.escape(what), out), (file, what, r.output)
    assert "6 error(s), 3 warning(s)" in out
    assert "good.png" not in out


def test_check_mask_size_with_config(builder, tmp_path):
    rows = [builder.row("a", "train", "p1", "benign"), builder.row("b", "test", "p2", "malignant")]
    builder.mask("b", 24, 30)
    m = builder.manifest(rows)
    r = invoke("data", "check", m, "--config", "demo", "--set", "data.label_column=label")
    assert r.exit_code == 1, r.output
    assert re.search(r"masks/b\.png: mask size 30x24 \(WxH\) differs from its image 32x24", flat(r.output))
    assert "masks/a.png" not in r.output


def test_check_missing_column_is_one_clear_error(builder):
    m = builder.manifest([builder.row("a")], columns=["image", "mask", "patient", "label"])
    r = invoke("data", "check", m)
    assert r.exit_code == 1
    assert "missing required column(s) 'split'" in flat(r.output) and "histowsss data split" in flat(r.output)


def test_check_missing_manifest_exits_nonzero(tmp_path):
    r = invoke("data", "check", tmp_path / "none.csv")
    assert r.exit_code != 0
    assert "none.csv" in r.output and "not found" in r.output
    assert "Traceback" not in r.output


def test_messages_with_brackets_do_not_break_the_console(builder):
    rows = [builder.row("a", label="[weird]"), builder.row("b", label="[/weird]")]
    m = builder.manifest(rows)
    r = invoke("data", "stats", m, "--config", "demo", "--set", "data.label_column=label")
    assert r.exit_code == 2, r.output  # a clear error, not a rich MarkupError
    assert "'[weird]'" in r.output and "'[/weird]'" in r.output


# -- stats ------------------------------------------------------------------------------------------------------------

def test_stats_counts_and_patient_warning(builder):
    rows = [builder.row("a", "train", "p1", "benign"), builder.row("b", "train", "p2", "malignant"),
            builder.row("c", "train", "p2", "malignant"), builder.row("d", "test", "p2", "benign")]
    m = builder.manifest(rows)
    r = invoke("data", "stats", m)
    assert r.exit_code == 0, r.output
    table = _table_rows(r.stdout)
    assert table["train"][:3] == ["train", "3", "2"]
    assert table["test"][:3] == ["test", "1", "1"]
    assert table["all"][:3] == ["all", "4", "2"]
    assert "1 patient(s) appear in more than one split" in flat(r.output) and "p2 (test/train)" in flat(r.output)


def test_stats_label_column_override_without_config(builder):
    rows = [dict(builder.row("a", label="0"), grade="benign"), dict(builder.row("b", label="1"), grade="malignant")]
    m = builder.manifest(rows)
    r = invoke("data", "stats", m, "--set", "data.label_column=grade")
    assert r.exit_code == 0, r.output
    assert "benign" in r.stdout and "malignant" in r.stdout
    r = invoke("data", "stats", m)  # 'label' holds codes that 'grade' names: the names, as init takes them
    assert r.exit_code == 0 and "benign" in r.stdout and "classes from column 'grade'" in flat(r.output)
    r = invoke("data", "stats", m, "--set", "data.label_column=label")  # asked for: the codes
    assert r.exit_code == 0 and "benign" not in r.stdout
    r = invoke("data", "stats", m, "--set", "data.label_column=nope")
    assert r.exit_code == 2 and "no 'nope' column" in flat(r.output)
    r = invoke("data", "stats", m, "--set", "train_cam.epochs=1")
    assert r.exit_code == 2 and "--config" in r.output


def test_stats_and_split_read_one_column_per_class(builder):
    """One-hot columns are found without a config (a row with none marked counts as 'unmarked', the background, or
    as the column named like a background class), and `data split`
    stratifies by the classes they mark."""
    rows = []
    for p in range(12):
        t, s = ("1", "0") if p % 3 == 0 else ("0", "1") if p % 3 == 1 else ("0", "0")
        for j in range(2):
            rows.append(dict(builder.row(f"p{p}_{j}", "train" if p < 9 else "test", f"P{p}", mask=False),
                             tumour=t, stroma=s))
    m = builder.manifest(rows, columns=["image", "split", "patient", "tumour", "stroma"])
    r = invoke("data", "stats", m)
    assert r.exit_code == 0, r.output
    # three classes' headers do not fit 80 columns: one row per split and class (images, patients)
    cells = _cells(r.stdout)
    assert ["train", "(any)", "18", "9"] in cells
    assert cells[cells.index(["train", "(any)", "18", "9"]) + 1:][:3] == [["unmarked", "6", "3"], ["tumour", "6", "3"],
                                                                         ["stroma", "6", "3"]]
    assert "8 row(s) mark none of the class columns: counted as 'unmarked'" in flat(r.output)
    m2 = builder.root / "m2.csv"
    m2.write_text(m.read_text().replace("stroma", "normal", 1))  # a background column: unmarked rows are 'normal'
    r = invoke("data", "stats", m2)
    assert r.exit_code == 0 and "unmarked" not in r.output
    assert _table_rows(r.stdout)["train"] == ["train", "18", "9", "6", "3", "12", "6"]
    r = invoke("data", "stats", m, "--set", "data.label_columns=[tumour]")
    assert r.exit_code == 0 and "stroma" not in r.stdout
    out = builder.root / "split.csv"
    r = invoke("data", "split", m, "--out", out, "--test", "0.34", "--val", "0", "--train", "0.66", "--replace")
    assert r.exit_code == 0, r.output
    split = list(csv.DictReader(out.open()))
    for t, s in (("1", "0"), ("0", "1"), ("0", "0")):  # each kind of patient in both splits
        assert {x["split"] for x in split if (x["tumour"], x["stroma"]) == (t, s)} == {"train", "test"}
    r = invoke("data", "split", m, "--out", out, "--overwrite", "--label-columns", "tumour,fat")
    assert r.exit_code == 2 and "no 'fat' column" in flat(r.output)
    r = invoke("data", "split", m, "--out", out, "--overwrite", "--label-column", "tisue")  # a typo is not ignored
    assert r.exit_code == 2 and "no 'tisue' column" in flat(r.output)
    r = invoke("data", "stats", m, "--set", "data.label_columns=tumour,stroma")  # the list as text
    assert r.exit_code == 0, r.output


def test_found_class_columns_are_said_and_bad_cells_named(builder):
    rows = [dict(builder.row(f"a{i}", "train", f"P{i}", mask=False), reviewed=str(i % 2), has_points=str(1 - i % 2),
                 label=("benign", "malignant")[i % 2]) for i in range(6)]
    m = builder.manifest(rows, columns=["image", "split", "patient", "reviewed", "has_points"])
    r = invoke("data", "stats", m)  # two flag columns look like classes: said, with the way out
    assert r.exit_code == 0 and "labels from the 0/1 columns reviewed, has_points (found" in flat(r.output)
    r = invoke("data", "split", m, "--out", builder.root / "s.csv")
    assert r.exit_code == 0 and "stratified by the 0/1 columns reviewed, has_points" in flat(r.output)
    both = builder.manifest(rows, name="both.csv", columns=["image", "split", "patient", "label", "reviewed",
                                                              "has_points"])
    r = invoke("data", "stats", both, "--set", "data.label_columns=[reviewed,has_points]")  # 'label' gives way
    assert r.exit_code == 0, r.output
    rows[3]["reviewed"] = "0.5"
    bad = builder.manifest(rows, name="bad.csv", columns=["image", "split", "patient", "reviewed", "has_points"])
    r = invoke("data", "split", bad, "--out", builder.root / "b.csv")
    assert r.exit_code == 2 and "row 5: reviewed='0.5'" in flat(r.output)
    r = invoke("data", "check", bad)  # one typo: still found as class columns, and the cell named
    assert r.exit_code != 0 and "reviewed='0.5'" in flat(r.output) and "no 'label' column; pass" not in flat(r.output)


def test_stats_many_long_class_names_one_row_per_class(builder):
    """Class headers that cannot fit the terminal wrapped at spaces are not cut mid-word: the table turns long."""
    names = ["adenocarcinoma", "squamous_carcinoma", "necrosis", "lymphocytes", "stroma_tissue", "normal_mucosa"]
    rows = [builder.row(f"a{i}", "train" if i < 8 else "test", f"P{i}", names[i % 6], mask=False) for i in range(12)]
    r = invoke("data", "stats", builder.manifest(rows))  # the test console is 80 columns wide
    assert r.exit_code == 0, r.output
    cells = _cells(r.stdout)
    assert ["train", "(any)", "8", "8"] in cells and ["squamous_carcinoma", "2", "2"] in cells
    assert ["all", "(any)", "12", "12"] in cells and "…" not in r.stdout
    # wider terminals where rich would still cut 'adenocarcinoma' (it narrows the widest columns first): long too;
    # wide enough for every header word: the wide table
    four = [builder.row(f"b{i}", "train", f"P{i}", ("adenocarcinoma", "tumour", "stroma", "normal")[i % 4],
                        mask=False) for i in range(8)]
    m4 = builder.manifest(four, name="four.csv")
    two = [builder.row(f"c{i}", "train", f"Q{i}", ("normal", "squamous_carcinoma")[i % 2], mask=False)
           for i in range(4)]
    r = runner.invoke(app, ["data", "stats", str(builder.manifest(two, name="two.csv"))], env={"COLUMNS": "104"})
    assert ["train", "(any)", "4", "4"] in _cells(r.stdout)  # the word whole in one header, cut in the other
    for width, wide in ((123, False), (159, False), (170, True)):
        r = runner.invoke(app, ["data", "stats", str(m4)], env={"COLUMNS": str(width)})
        assert r.exit_code == 0 and "adenocarcinoma" in r.stdout, (width, r.stdout)
        assert (["train", "(any)", "8", "8"] not in _cells(r.stdout)) == wide, (width, r.stdout)


def test_stats_unknown_class_exits_2(builder):
    m = builder.manifest([builder.row("a", label="benign"), builder.row("b", label="tumour")])
    r = invoke("data", "stats", m, "--config", "demo", "--set", "data.label_column=label")
    assert r.exit_code == 2
    out = flat(r.output)
    assert "unknown class 'tumour'" in out and "images/b.png" in out and "Traceback" not in r.output


@pytest.mark.glas
def test_stats_on_glas(glas_dir, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the config's relative manifest path is not used here
    r = invoke("data", "stats", glas_dir / "manifest.csv", "--config", "glas-malignant")
    assert r.exit_code == 0, r.output
    table = _table_rows(r.stdout)
    # columns: split, images, patients, benign images, benign patients, malignant images, malignant patients
    assert table["train"] == ["train", "85", "15", "37", "8", "48", "10"]
    assert table["testA"][:2] == ["testA", "60"] and table["testB"][:2] == ["testB", "20"]
    assert table["all"][:2] == ["all", "165"]
    out = flat(r.output)
    assert "11 patient(s) appear in more than one split" in out and "(1 more)" in out
    # glas-gland has no label column: classes counted off the masks, as training derives them (they were all 0)
    r = invoke("data", "stats", glas_dir / "manifest.csv", "--config", "glas-gland")
    assert r.exit_code == 0, r.output
    assert _table_rows(r.stdout)["train"] == ["train", "85", "15", "85", "15", "85", "15"]
    assert "an image counts for a class when some 112-px patch of it holds more than 5 % of it" in flat(r.output)


@pytest.mark.glas
def test_stats_on_glas_written_one_column_per_class(glas_dir, tmp_path):
    """GlaS's grades as benign / malignant 0/1 columns: found without a config (its numeric columns, width or n_cc,
    are not taken for classes), the same table as the grade column gives."""
    rows = list(csv.DictReader((glas_dir / "manifest.csv").open()))
    for r in rows:
        r["image"] = str(glas_dir / r["image"])
        r.update(benign=str(int(r["grade"] == "benign")), malignant=str(int(r["grade"] == "malignant")))
        del r["grade"], r["label"], r["mask"], r["mask_cc"]
    with (tmp_path / "m.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    r = invoke("data", "stats", tmp_path / "m.csv")
    assert r.exit_code == 0, r.output
    table = _table_rows(r.stdout)
    assert table["train"] == ["train", "85", "15", "37", "8", "48", "10"]
    assert table["all"][:2] == ["all", "165"]


# -- split ------------------------------------------------------------------------------------------------------------

def _twenty_patients(builder) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(20):
        label = "malignant" if p % 2 else "benign"
        for j in range(int(rng.integers(1, 5))):
            rows.append({"image": f"images/p{p}_{j}.png", "patient": f"P{p}", "label": label})
    return builder.manifest(rows)


def test_split_is_patient_disjoint_and_stratified(builder):
    m = _twenty_patients(builder)
    out = builder.root / "split.csv"
    r = invoke("data", "split", m, "--out", out, "--seed", "1")
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(list(csv.DictReader(m.open())))
    assert set(rows[0]) == {"image", "patient", "label", "split"}
    splits_of = defaultdict(set)
    for row in rows:
        splits_of[row["patient"]].add(row["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for label in ("benign", "malignant"):
        lab_rows = [r for r in rows if r["label"] == label]
        frac_train = sum(r["split"] == "train" for r in lab_rows) / len(lab_rows)
        frac_test = sum(r["split"] == "test" for r in lab_rows) / len(lab_rows)
        assert 0.55 <= frac_train <= 0.85 and 0.1 <= frac_test <= 0.35, (label, frac_train, frac_test)


def test_split_refuses_to_overwrite(builder):
    m = _twenty_patients(builder)
    out = builder.root / "split.csv"
    out.write_text("keep me\n")
    r = invoke("data", "split", m, "--out", out)
    assert r.exit_code == 2
    assert "--overwrite" in r.output and "exists" in r.output
    assert out.read_text() == "keep me\n"
    r = invoke("data", "split", m, "--out", out, "--overwrite", "--val", "0", "--test", "0.3")
    assert r.exit_code == 0, r.output
    assert {row["split"] for row in csv.DictReader(out.open())} == {"train", "test"}


def test_split_output_feeds_stats(builder):
    m = _twenty_patients(builder)
    out = builder.root / "split.csv"
    assert invoke("data", "split", m, "--out", out).exit_code == 0
    r = invoke("data", "stats", out)
    assert r.exit_code == 0 and "more than one split" not in r.output


def test_split_needs_patient_column_and_ids(builder):
    m = builder.manifest([{"image": "a.png", "label": "x"}])
    r = invoke("data", "split", m, "--out", builder.root / "o.csv")
    assert r.exit_code == 2 and "no 'patient' column" in flat(r.output)
    m = builder.manifest([{"image": "a.png", "patient": "", "label": "x"}], name="m2.csv")
    r = invoke("data", "split", m, "--out", builder.root / "o.csv")
    assert r.exit_code == 2 and "empty patient id in row(s) 2" in flat(r.output)
    r = invoke("data", "split", m, "--out", builder.root / "o.csv", "--label-column", "grade")
    assert r.exit_code == 2 and "no 'grade' column" in flat(r.output)
    m = builder.manifest([{"image": f"{i}.png", "patient": str(i), "label": c}
                          for i, c in enumerate(["malignant", "Malignant", "benign"])], name="m3.csv")
    r = invoke("data", "split", m, "--out", builder.root / "o.csv")
    assert r.exit_code == 2 and "differ only in case or spaces ('Malignant' / 'malignant')" in flat(r.output)
    assert not (builder.root / "o.csv").exists()


def test_split_fractions_must_sum_to_one(builder):
    m = _twenty_patients(builder)
    r = invoke("data", "split", m, "--out", builder.root / "o.csv", "--train", "0.5")
    assert r.exit_code == 2 and "sum to 1" in r.output


def test_check_with_a_config_wants_training_images_to_hold_the_cam_crop(builder):
    """Without --min-size, --config checks training images against train_cam's crop: smaller ones are refused (an error)
    with small_images=refuse, mirrored (a warning) by default
    (a test image of that size is fine: it is never cropped)."""
    rows = [builder.row("good", "train", "p1", "benign", h=32, w=40), builder.row("small_train", "train", "p2", h=24, w=40),
            builder.row("small_test", "test", "p3", h=24, w=40)]
    m = builder.manifest(rows)
    r = invoke("data", "check", m, "--config", "demo", "--set", "data.label_column=label",
               "--set", "train_cam.crop_size=32", "--set", "data.val_splits=[]", "--set", "train_cam.small_images=refuse")
    out = flat(r.output)
    assert r.exit_code == 1, r.output
    assert re.search(r"small_train\.png.*smaller than the crop/patch size 32", out) and "small_test" not in out
    assert "good.png" not in out and "1 error(s)" in out
    # the default mirrors small training images: a warning that says so, no error
    r = invoke("data", "check", m, "--config", "demo", "--set", "data.label_column=label",
               "--set", "train_cam.crop_size=32", "--set", "data.val_splits=[]")
    out = flat(r.output)
    assert r.exit_code == 0, r.output
    assert re.search(r"small_train\.png.*smaller than train_cam's crop 32: train_cam will mirror it", out)
    assert "small_test" not in out and "good.png" not in out


def test_check_with_a_config_accepts_small_images_when_patches_are_padded(builder):
    rows = [builder.row("good", "train", "p1", "benign", h=32, w=40), builder.row("small_train", "train", "p2", h=24, w=40)]
    m = builder.manifest(rows)
    r = invoke("data", "check", m, "--config", "demo", "--set", "data.label_column=label", "--set", "data.val_splits=[]",
               "--set", "data.patches={size: 32, stride: 32, border: pad, label_rule: image}")
    assert r.exit_code == 0, r.output


def test_split_into_another_folder_keeps_naming_the_same_files(builder, tmp_path):
    """Manifest paths are relative to the manifest's folder: a split written elsewhere has them rewritten."""
    rows = [builder.row(f"i{k}", patient=f"P{k}", label="malignant" if k % 2 else "benign") for k in range(10)]
    m = builder.manifest(rows)
    out = tmp_path / "elsewhere" / "deeper" / "split.csv"
    out.parent.mkdir(parents=True)
    r = invoke("data", "split", m, "--out", out, "--val", "0", "--test", "0.3")
    assert r.exit_code == 0, r.output
    assert "20 relative path(s) rewritten" in flat(r.output)  # 10 images and their masks
    new = list(csv.DictReader(out.open()))
    for old, row in zip(rows, new):
        assert (out.parent / row["image"]).resolve() == (builder.root / old["image"]).resolve()
        assert (out.parent / row["mask"]).resolve() == (builder.root / old["mask"]).resolve()
    r = invoke("data", "check", out)
    assert r.exit_code == 0 and "0 error(s)" in flat(r.output), r.output
    # paths relative to a data.root elsewhere name no file from the manifest's folder: kept as written
    rooted = tmp_path / "rooted"
    rooted.mkdir()
    (rooted / "m.csv").write_text("image,patient,label\n" + "".join(
        f"{Path(r['image']).name},P{k},{r['label']}\n" for k, r in enumerate(rows)))
    r = invoke("data", "split", rooted / "m.csv", "--out", tmp_path / "elsewhere" / "rooted_split.csv", "--val", "0",
               "--test", "0.3")
    assert r.exit_code == 0, r.output
    assert [x["image"] for x in csv.DictReader((tmp_path / "elsewhere" / "rooted_split.csv").open())] == \
        [Path(x["image"]).name for x in rows]
    # into the manifest's own folder: the paths stay as written
    same = builder.root / "split_here.csv"
    assert invoke("data", "split", m, "--out", same, "--val", "0", "--test", "0.3").exit_code == 0
    assert [row["image"] for row in csv.DictReader(same.open())] == [row["image"] for row in rows]


def test_a_manifest_without_rows_says_so(builder):
    m = builder.manifest([])
    for cmd in ("stats", "check"):
        r = invoke("data", cmd, m)
        assert r.exit_code == 2 and "header but no rows" in flat(r.output), r.output


def test_split_spreads_the_images_with_masks(builder):
    """Masks drawn for half of the images: every split gets its share of them, whatever the seed (the class
    stratification alone gave the test split 4 to 7 of them with these seeds)."""
    rows = []
    for p in range(40):
        label = "malignant" if p % 2 else "benign"
        rows.append({"image": f"images/p{p}.png", "patient": f"P{p}", "label": label,
                     "mask": f"masks/p{p}.png" if p % 4 < 2 else ""})
    m = builder.manifest(rows)
    for seed in range(5):
        out = builder.root / f"split{seed}.csv"
        r = invoke("data", "split", m, "--out", out, "--seed", str(seed))
        assert r.exit_code == 0, r.output
        split = list(csv.DictReader(out.open()))
        masked = {s: sum(1 for x in split if x["split"] == s and x["mask"]) for s in ("train", "val", "test")}
        assert masked == {"train": 14, "val": 2, "test": 4}, (seed, masked)  # 20 masked images at 70 / 10 / 20 %
        assert f"test 8 images ({masked['test']} with masks)" in flat(r.output)


def test_check_without_a_config_reads_the_splits_by_name(builder):
    """A val split is not "used by no step" (init takes val*, dev*, test* by name too); a split of another name is."""
    rows = [builder.row("a", "train", "p1", "benign"), builder.row("b", "val", "p2", "malignant"),
            builder.row("c", "testA", "p3", "benign"), builder.row("d", "holdout", "p4", "benign")]
    r = invoke("data", "check", builder.manifest(rows))
    out = flat(r.output)
    assert "split 'val'" not in out and "split 'testA'" not in out
    assert "split 'holdout' (1 image(s)) is in none of" in out


def test_check_wants_a_patch_only_of_the_images_the_run_tiles(builder):
    """Training images are cut into patches; a val image only when the patch gate reads its mask's patches
    (eval_cam.label_gating=patch), so a small val image is an error there and fine otherwise."""
    rows = [builder.row("good", "train", "p1", "benign", h=48, w=48), builder.row("tiny", "train", "p2", h=48, w=48),
            builder.row("small_val", "val", "p3", "malignant", h=24, w=40)]
    m = builder.manifest(rows)
    base = ["data", "check", m, "--config", "demo", "--set", "data.label_column=label", "--set", "data.patches.size=32",
            "--set", "data.patches.stride=16", "--set", "data.patches.label_rule=mask_fraction"]
    r = invoke(*base, "--set", "eval_cam.label_gating=patch")
    assert r.exit_code == 1 and re.search(r"small_val\.png.*smaller than the crop/patch size 32", flat(r.output))
    r = invoke(*base, "--set", "eval_cam.label_gating=image", "--set", "train_seg.patch_veto=true")
    assert r.exit_code == 1 and "small_val" in flat(r.output)  # the veto reads the val mask's patches too
    r = invoke(*base, "--set", "eval_cam.label_gating=image")
    assert r.exit_code == 0 and "small_val" not in flat(r.output), r.output


# -- stain-reference --------------------------------------------------------------------------------------------------

def test_stain_reference_prints_a_reference_the_config_accepts(builder):
    """Measured on the train images only (the test image is stained otherwise), printed as YAML that loads."""
    import yaml

    from histowsss.config import DataConfig

    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(("train", "train", "test")):
        h, e = rng.uniform(0, 1.5, (40, 40)), rng.uniform(0.2, 1.0, (40, 40))
        od = h[..., None] * np.array([0.65, 0.70, 0.30]) + e[..., None] * np.array([0.07, 0.99, 0.12])
        if split == "test":  # a different stain: would move the median if it were read
            od = h[..., None] * np.array([0.2, 0.2, 0.95]) + e[..., None] * np.array([0.9, 0.1, 0.4])
        Image.fromarray(np.clip(240 * np.exp(-od) - 1, 0, 255).astype(np.uint8)).save(builder.root / f"s{i}.png")
        rows.append({"image": f"s{i}.png", "split": split, "patient": f"p{i}", "label": "benign"})
    m = builder.manifest(rows)
    r = invoke("data", "stain-reference", m, "--method", "macenko")
    assert r.exit_code == 0, r.stdout
    assert "measured on 2 images of split(s) train" in flat(r.stdout)
    data = yaml.safe_load(r.stdout[r.stdout.index("data:"):])["data"]
    assert data["stain_normalization"] == "macenko"
    ref = np.asarray(data["stain_reference"])
    assert ref[0, :3] @ np.array([0.65, 0.70, 0.30]) / np.linalg.norm([0.65, 0.70, 0.30]) > 0.99
    DataConfig.model_validate({"manifest": m, "classes": {"names": ["benign", "malignant"]}, **data})
    r = invoke("data", "stain-reference", m, "--method", "reinhard", "--max-images", "1")
    assert r.exit_code == 0 and "measured on 1 images (a random sample of 2) of split(s) train" in flat(r.stdout)
    r = invoke("data", "stain-reference", m, "--method", "vahadane")
    assert r.exit_code != 0 and "reinhard or macenko" in flat(r.output)
    r = invoke("data", "stain-reference", m, "--method", "reinhard", "--split", "val")
    assert r.exit_code != 0 and "no images in split(s) val" in flat(r.output) and "--split" in flat(r.output)


def _with_test_split(builder) -> Path:
    """Twenty patients, the last four in a fixed test split; patient P2's id written '2' and '2.0' (a spreadsheet)."""
    rows = []
    for p in range(20):
        label = "malignant" if p % 2 else "benign"
        for j in range(2):
            pid = (f"{p}.0" if j else f"{p}") if p in (2, 17) else f"P{p}"
            rows.append({"image": f"images/p{p}_{j}.png", "patient": pid, "label": label,
                         "split": "test" if p >= 16 and not (p == 17 and j) else "train"})
    return builder.manifest(rows)


def test_split_of_a_manifest_with_a_test_split_needs_keep_test_or_replace(builder):
    """A fixed test set must not move into training unnoticed."""
    m = _with_test_split(builder)
    out = builder.root / "split.csv"
    r = invoke("data", "split", m, "--out", out)
    assert r.exit_code == 2 and "already has a split column (images: test 7, train 33)" in flat(r.output)
    assert "--keep-test" in r.output and "--replace" in r.output and not out.exists()
    r = invoke("data", "split", m, "--out", out, "--keep-test", "--train", "0.8", "--val", "0.2", "--test", "0")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    before = {x["image"]: x["split"] for x in csv.DictReader(m.open())}
    for x in rows:
        if before[x["image"]] == "test":
            assert x["split"] == "test"
    # patient 17 written '17' (test) and '17.0' (train): one patient, so its other image joined the test split
    assert {x["split"] for x in rows if x["patient"] in ("17", "17.0")} == {"test"}
    assert "1 other image(s) of their patients joined them" in flat(r.output)
    assert "so the test split(s) now hold 8 of 40 images" in flat(r.output)
    assert {x["split"] for x in rows if before[x["image"]] == "train"} >= {"train", "val"}
    assert {x["split"] for x in rows if x["patient"] in ("2", "2.0")} in ({"train"}, {"val"})
    r = invoke("data", "split", m, "--out", out, "--replace", "--overwrite", "--seed", "3")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert len({x["split"] for x in rows if x["patient"] in ("2", "2.0")}) == 1  # one patient, one split


def test_split_refuses_a_folder_or_the_manifest_itself_as_out(builder):
    m = _twenty_patients(builder)
    text = m.read_text()
    r = invoke("data", "split", m, "--out", builder.root)
    assert r.exit_code == 2 and "is a folder; --out names the file to write" in flat(r.output)
    r = invoke("data", "split", m, "--out", m, "--overwrite")
    assert r.exit_code == 2 and "is the file this command reads" in flat(r.output)
    assert m.read_text() == text


def test_split_names_a_column_written_in_another_case(builder):
    m = builder.manifest([{"image": "a.png", "Patient": "p1", "label": "x"}])
    r = invoke("data", "split", m, "--out", builder.root / "o.csv")
    assert r.exit_code == 2 and "rename column 'Patient' to 'patient'" in flat(r.output)


def test_stats_and_check_refuse_class_names_that_differ_only_in_case(builder):
    rows = [builder.row("a", label="benign"), builder.row("b", label="Benign"), builder.row("c", label="malignant")]
    m = builder.manifest(rows)
    for cmd in ("stats", "check"):
        r = invoke("data", cmd, m)
        assert r.exit_code == 2 and "differ only in case or spaces ('Benign' / 'benign')" in flat(r.output), cmd


def test_check_names_the_nan_cells_that_hide_class_columns(builder):
    rows = [dict(builder.row(f"a{i}", patient=f"P{i}", mask=False), benign=str(i % 2), malignant=str(1 - i % 2))
            for i in range(12)]
    rows[3]["benign"] = rows[7]["benign"] = "NaN"  # two of twelve: more than the typos class columns may hold
    m = builder.manifest(rows, columns=["image", "split", "patient", "benign", "malignant"])
    r = invoke("data", "check", m)
    out = flat(r.output)
    assert r.exit_code == 2 and "columns benign, malignant hold 0/1 marks but for 2 cell(s)" in out
    assert "row 5 benign='NaN', row 9 benign='NaN'" in out and "write 1 or 0 there" in out


def test_keep_test_leaves_every_test_row_in_its_own_split(builder):
    """GlaS: patients in both testA and testB stay in both; their training images go to the first of them."""
    rows = []
    for p in range(12):
        for j, split in enumerate(("train", "train", "testA" if p < 3 else "train", "testB" if p < 2 else "train")):
            rows.append({"image": f"images/p{p}_{j}.png", "patient": f"P{p}", "split": split,
                         "label": "malignant" if p % 2 else "benign"})
    m = builder.manifest(rows)
    out = builder.root / "split.csv"
    r = invoke("data", "split", m, "--out", out, "--keep-test")
    assert r.exit_code == 0, r.output
    after = {x["image"]: x["split"] for x in csv.DictReader(out.open())}
    for x in rows:
        if x["split"].startswith("test"):
            assert after[x["image"]] == x["split"], x
        elif x["patient"] in ("P0", "P1", "P2"):
            assert after[x["image"]] == "testA", x  # out of training, in the first test split of the patient
    assert "7 other image(s) of their patients joined them" in flat(r.output)
    assert "--test 0.2 is not used" in flat(r.output)


def test_check_without_a_config_checks_the_mask_order_when_the_classes_are_named(builder):
    """--set data.classes... is the user's word as a config is: masks holding classes their labels do not name are
    said (classes in another order than the masks number them)."""
    rows = []
    for k, label in enumerate(["tumour", "stroma", "tumour", "stroma"]):
        ids = np.full((24, 32), 0 if label == "tumour" else 1, np.uint8)  # tumour = 0, stroma = 1 in the masks
        r = builder.row(f"i{k}", "train" if k < 2 else "test", f"p{k}", label)
        builder.mask(f"i{k}", values=ids)
        rows.append(r)
    m = builder.manifest(rows)
    base = ["data", "check", m, "--set", "data.mask_mode=class_ids", "--set", "data.multi_label=true"]
    r = invoke(*base)
    assert "hold classes their labels do not name" not in flat(r.output)  # classes inferred: no order to check
    r = invoke(*base, "--set", "data.classes.names=[stroma,tumour]")
    assert "4 of 4 masked image(s) hold classes their labels do not name" in flat(r.output), r.output
