"""Manifest reading: every row problem listed at once, missing columns named with their fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histowsss.data.manifest import (ManifestError, patient_key, patients_in_several_splits, read_manifest,
                                     scan_manifest, write_manifest)


def test_reads_clean_manifest(clean_manifest, data_config):
    cfg = data_config(clean_manifest)
    samples = read_manifest(cfg)
    assert [s.name for s in samples] == ["a1", "a2", "b1", "c1", "d1", "d2"]
    s = samples[2]
    assert s.image == clean_manifest.parent / "images/b1.png" and s.image.exists()
    assert s.mask == clean_manifest.parent / "masks/b1.png"
    assert s.split == "train" and s.patient == "p2" and s.labels == ("malignant",) and s.row == 4
    np.testing.assert_array_equal(s.target(cfg.classes), [0.0, 1.0])
    assert [s.name for s in read_manifest(cfg, splits=["test"])] == ["c1", "d1", "d2"]
    assert read_manifest(cfg, check_files=True) == samples


def test_root_overrides_manifest_folder(builder, data_config, tmp_path):
    rows = [builder.row("a", label="benign")]
    m = builder.manifest(rows, name="m.csv")
    moved = tmp_path / "elsewhere.csv"
    moved.write_text(m.read_text())
    s = read_manifest(data_config(moved, root=builder.root), check_files=True)[0]
    assert s.image == builder.root / "images/a.png"


def test_an_ome_tiff_keeps_the_name_run_folders_know_it_by(builder, data_config):
    """'a.ome' (the file stem), as run folders made before predict dropped the '.ome' from its outputs name their
    files: a finished step keeps finding them."""
    m = builder.manifest([builder.row("a", label="benign")], name="m.csv")
    m.write_text(m.read_text().replace("images/a.png", "images/a.ome.tif"))
    assert read_manifest(data_config(m))[0].name == "a.ome"


def test_manifest_not_found(tmp_path, data_config):
    p = tmp_path / "none.csv"
    with pytest.raises(ManifestError) as e:
        read_manifest(data_config(p))
    assert str(p) in str(e.value) and "not found" in str(e.value)


@pytest.mark.parametrize("column, fix", [
    ("split", "histowsss data split"),
    ("patient", "add a 'patient' column"),
    ("image", "add an 'image' column"),
    ("label", "data.label_column"),
])
def test_missing_required_column_named_with_fix(builder, data_config, column, fix):
    rows = [builder.row("a", label="benign")]
    cols = [c for c in ("image", "mask", "split", "patient", "label") if c != column]
    m = builder.manifest(rows, columns=cols)
    with pytest.raises(ManifestError) as e:
        read_manifest(data_config(m))
    msg = str(e.value)
    assert str(m) in msg
    assert f"missing required column(s) '{column}'" in msg
    assert fix in msg


def test_column_with_wrong_case_suggests_rename(builder, data_config):
    m = builder.root / "m.csv"
    m.write_text("Image,split,patient,label\nimages/a.png,train,p,benign\n")
    with pytest.raises(ManifestError, match="rename column 'Image' to 'image'"):
        read_manifest(data_config(m))


def test_label_column_from_config(builder, data_config):
    rows = [dict(builder.row("a"), grade="benign", label="0")]
    m = builder.manifest(rows)
    s = read_manifest(data_config(m, label_column="grade"))[0]
    assert s.labels == ("benign",)
    # integer class indices are accepted as labels
    assert read_manifest(data_config(m))[0].labels == ("benign",)
    # no label column: no image labels
    assert read_manifest(data_config(m, label_column=None, mask_mode="class_ids"))[0].labels == ()
    # ... which binary_image_label masks cannot do without (their foreground takes the image's label)
    with pytest.raises(ValueError, match="binary_image_label.*label_column is null.*mask_mode 'binary'"):
        data_config(m, label_column=None)


def test_unknown_class_names_row_file_and_fix(builder, data_config):
    rows = [builder.row("a", label="benign"), builder.row("b", label="malignent")]
    m = builder.manifest(rows)
    with pytest.raises(ManifestError) as e:
        read_manifest(data_config(m))
    msg = str(e.value)
    assert str(m) in msg and "row 3 (images/b.png)" in msg and "'malignent'" in msg
    assert "known classes: benign, malignant" in msg and "data.classes.names" in msg


def test_multi_label_hint(builder, data_config):
    m = builder.manifest([builder.row("a", label="benign;malignant")])
    with pytest.raises(ManifestError, match="multi_label=true"):
        read_manifest(data_config(m))
    s = read_manifest(data_config(m, multi_label=True))[0]
    assert s.labels == ("benign", "malignant")
    comma = builder.manifest([builder.row("a", label="benign,malignant")], name="comma.csv")
    with pytest.raises(ManifestError, match="reads as several classes separated by ',': set data.multi_label=true "
                                            "and data.label_separator=','"):
        read_manifest(data_config(comma))
    with pytest.raises(ManifestError, match="set data.label_separator=','$"):
        read_manifest(data_config(comma, multi_label=True))


def test_every_row_problem_listed(builder, data_config):
    rows = [
        builder.row("ok", label="benign"),
        builder.row("bad_class", label="tumour"),
        dict(builder.row("no_split"), split=""),
        dict(builder.row("no_patient"), patient=""),
        dict(builder.row("gone"), image="images/gone_for_good.png"),
        dict(builder.row("ok", label="malignant"), split="test"),  # the same file again: a test image in train
        dict(builder.row("other"), name="ok"),  # another file under a name already taken
        dict(builder.row("nomask"), mask="masks/none.png"),
    ]
    m = builder.manifest(rows, columns=["image", "mask", "split", "patient", "label", "name"])
    samples, problems = scan_manifest(data_config(m), check_files=True)
    assert [s.name for s in samples] == ["ok"]
    text = "\n".join(problems)
    for expected in ("row 3 (images/bad_class.png): unknown class 'tumour'", "row 4 (images/no_split.png): empty split",
                     "row 5 (images/no_patient.png): empty patient",
                     "image " + str(builder.root / "images/gone_for_good.png") + ": file not found",
                     "row 7 (images/ok.png, split test): the same image file as row 2 (split train)",
                     "row 8 (images/other.png): duplicate image name 'ok' (also row 2)",
                     "row 9: mask " + str(builder.root / "masks/none.png") + ": file not found"):
        assert expected in text, expected
    with pytest.raises(ManifestError, match="7 problem"):
        read_manifest(data_config(m), check_files=True)


def test_an_empty_or_nan_label_is_an_error_not_a_normal_image(builder, data_config):
    """A forgotten label (empty, or NaN as pandas writes it) must not train as the background class."""
    m = builder.manifest([builder.row("a", label=""), builder.row("b", label="NaN"), builder.row("c", label="benign")])
    with pytest.raises(ManifestError) as e:
        read_manifest(data_config(m))
    text = str(e.value)
    assert "2 problem(s)" in text
    assert "row 2 (images/a.png): empty label in column 'label'; write the image's class ('benign' for a" in text
    assert "row 3 (images/b.png): missing label ('NaN')" in text
    cfg = data_config(m, classes={"names": ["x", "y"]}, mask_mode="class_ids")
    with pytest.raises(ManifestError, match="no background class is configured"):
        read_manifest(cfg)


def test_a_class_named_like_a_missing_value_is_a_class(builder, data_config):
    m = builder.manifest([builder.row("a", label="NA"), builder.row("b", label="benign")])
    cfg = data_config(m, classes={"names": ["benign", "NA"], "background": "benign"})
    assert [s.labels for s in read_manifest(cfg)] == [("NA",), ("benign",)]


@pytest.mark.parametrize("name", ["../../evil", "a/b", "..", "c\\d"])
def test_a_name_that_is_no_plain_file_name_is_refused(builder, data_config, name):
    """Names become output file names (cams/<name>.npz): '../x' would write outside the run folder."""
    rows = [dict(builder.row("a", label="benign"), name=name), builder.row("b", label="benign")]
    with pytest.raises(ManifestError, match="is not a plain file name"):
        read_manifest(data_config(builder.manifest(rows)))


def test_a_column_named_twice_is_an_error(builder, data_config):
    builder.row("a", label="benign")
    m = builder.root / "m.csv"
    m.write_text("image,split,patient,label,label\nimages/a.png,train,p1,benign,malignant\n")
    with pytest.raises(ManifestError, match="column\\(s\\) 'label' appear more than once in the header"):
        read_manifest(data_config(m))
    m.write_text("image,split,patient,label,note,note\nimages/a.png,train,p1,benign,,\n")  # a column nothing reads
    assert read_manifest(data_config(m))[0].labels == ("benign",)
    m.write_text("image,split,patient,grade,grade\nimages/a.png,train,p1,benign,malignant\n")  # the config's
    with pytest.raises(ManifestError, match="'grade' appear more than once"):
        read_manifest(data_config(m, label_column="grade"))


def test_a_row_with_a_field_too_many_names_its_line_and_the_quotes(builder, data_config):
    builder.row("a", label="benign")
    m = builder.root / "m.csv"
    m.write_text("image,split,patient,label\nimages/a.png,train,p1,benign\nimages/x,2.png,train,p2,benign\n")
    with pytest.raises(ManifestError) as e:
        read_manifest(data_config(m))
    assert "line 3 has 5 fields but the header has 4 (extra: 'benign')" in str(e.value)
    assert "double quotes" in str(e.value)
    m.write_text("image,split,patient,label\nimages/a.png,train,p1,benign,,\n")  # empty extra cells: tolerated
    assert read_manifest(data_config(m))[0].labels == ("benign",)


@pytest.mark.parametrize("written, key", [("2", "2"), ("2.0", "2"), ("02", "2"), (" 7.00 ", "7"), ("p2", "p2"),
                                          ("2.5", "2.5"), ("-3", "-3")])
def test_patient_key_reads_a_whole_number_written_two_ways_as_one(written, key):
    assert patient_key(written) == key


def test_one_patient_written_two_ways_is_one_patient_in_leak_checks(builder, data_config):
    rows = [builder.row("a", "train", "2"), builder.row("b", "test", "2.0"), builder.row("c", "train", "03"),
            builder.row("d", "train", "3")]
    samples = read_manifest(data_config(builder.manifest(rows)))
    assert patients_in_several_splits(samples) == {"2": ["test", "train"]}


def test_bom_and_spaces_tolerated(builder, data_config):
    builder.row("a", label="benign")
    m = builder.root / "m.csv"
    m.write_bytes("\ufeffimage , split,patient,label\n images/a.png ,train, p1 ,benign\n".encode())
    s = read_manifest(data_config(m), check_files=True)[0]
    assert s.image.name == "a.png" and s.patient == "p1"


def test_patients_in_several_splits(builder, data_config):
    rows = [builder.row("a", "train", "p1"), builder.row("b", "test", "p1"), builder.row("c", "val", "p2"),
            builder.row("d", "val", "p3"), builder.row("e", "test", "p3")]
    samples = read_manifest(data_config(builder.manifest(rows)))
    assert patients_in_several_splits(samples) == {"p1": ["test", "train"], "p3": ["test", "val"]}


def test_write_manifest_roundtrip(builder, data_config):
    rows = [builder.row("a", label="benign"), builder.row("b", label="malignant")]
    out = builder.root / "sub" / "out.csv"
    write_manifest(out, rows)
    assert [s.name for s in read_manifest(data_config(out, root=builder.root), check_files=True)] == ["a", "b"]


def test_a_relative_manifest_not_found_says_where_it_was_looked_for(tmp_path, data_config, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError, match=r"data/m\.csv: manifest not found \(a relative path is read from the "
                                            r"current folder, " + str(tmp_path)):
        read_manifest(data_config(Path("data/m.csv")))


def test_windows_separators_semicolons_and_encodings(builder, data_config):
    """Manifests made on Windows / by a European Excel: backslash paths are found, ';'-separated files are read,
    and text that is not UTF-8 is a clear error naming the file and the fix."""
    rows = [builder.row("a", label="benign"), builder.row("b", label="malignant")]
    win = [dict(r, image=r["image"].replace("/", "\\"), mask=r["mask"].replace("/", "\\")) for r in rows]
    samples = read_manifest(data_config(builder.manifest(win, name="win.csv")), check_files=True)
    assert [s.image for s in samples] == [builder.root / "images" / "a.png", builder.root / "images" / "b.png"]
    assert [s.name for s in samples] == ["a", "b"]  # the file name, not 'images\\a'
    assert samples[0].mask == builder.root / "masks" / "a.png"
    semi = builder.root / "semi.csv"
    semi.write_text("image;mask;split;patient;label\n" + "".join(
        f"{r['image']};{r['mask']};{r['split']};{r['patient']};{r['label']}\n" for r in rows))
    assert [s.name for s in read_manifest(data_config(semi), check_files=True)] == ["a", "b"]
    odd = builder.root / "images" / "x\\y.png"  # a POSIX file name that holds a backslash is still found
    odd.write_bytes((builder.root / "images" / "a.png").read_bytes())
    odd_m = builder.manifest([dict(rows[0], image="images/x\\y.png"), rows[1]], name="odd.csv")
    assert read_manifest(data_config(odd_m), check_files=True)[0].image == odd
    latin = builder.root / "latin.csv"
    latin.write_bytes("image,split,patient,label\nimages/caf\u00e9.png,train,p,benign\n".encode("cp1252"))
    with pytest.raises(ManifestError, match=r"latin\.csv: not UTF-8.*CSV UTF-8"):
        read_manifest(data_config(latin))
    utf16 = builder.root / "utf16.csv"
    utf16.write_bytes("image,split,patient,label\nimages/a.png,train,p,benign\n".encode("utf-16"))
    with pytest.raises(ManifestError, match=r"it is UTF-16.*iconv -f utf-16"):
        read_manifest(data_config(utf16))
    utf16.write_bytes("image,split,patient,label\nimages/a.png,train,p,benign\n".encode("utf-16-le"))  # no BOM
    with pytest.raises(ManifestError, match=r"UTF-16 text \(without a byte-order mark\)"):
        read_manifest(data_config(utf16))
    # a European Excel file: ';' separates the columns, a comma sits in a column name; its empty rows are ';;;;'
    excel = builder.root / "excel.csv"
    excel.write_text("image;mask;split;patient;label;comment, free text\n" + "".join(
        f"{r['image']};{r['mask']};{r['split']};{r['patient']};{r['label']};\n" for r in rows) + ";;;;;\n;;;;;\n")
    assert [s.name for s in read_manifest(data_config(excel), check_files=True)] == ["a", "b"]


def test_row_numbers_are_the_lines_of_the_file(builder, data_config):
    """Blank lines and cells over several lines do not shift the row named in a message."""
    rows = [builder.row("a", label="benign"), builder.row("b", label="malignnat")]
    p = builder.root / "gaps.csv"
    p.write_text("image,mask,split,patient,label,note\n"
                 f"{rows[0]['image']},{rows[0]['mask']},train,a,benign,\"two\nlines\"\n\n\n"
                 f"{rows[1]['image']},{rows[1]['mask']},train,b,malignnat,\n")
    _, problems = scan_manifest(data_config(p))
    assert len(problems) == 1 and problems[0].startswith("row 6 (images/b.png): unknown class 'malignnat'")


def _class_columns_manifest(builder, cells: list[tuple[str, str, str]]) -> Path:
    """Rows of three classes written one 0/1 column per class (``cells``: (tumour, stroma, necrosis) marks)."""
    rows = []
    for i, (t, s, n) in enumerate(cells):
        r = builder.row(f"i{i}", "train", f"p{i}", mask=False, seed=i)
        r.update(tumour=t, stroma=s, necrosis=n)
        rows.append(r)
    return builder.manifest(rows, columns=["image", "split", "patient", "tumour", "stroma", "necrosis"])


def _class_columns_config(data_config, m: Path, **kw):
    base = dict(label_column=None, label_columns=["tumour", "stroma", "necrosis"], multi_label=True,
                classes={"names": ["normal", "tumour", "stroma", "necrosis"], "background": "normal"},
                mask_column=None, mask_mode="class_ids")
    return data_config(m, **(base | kw))


def test_one_column_per_class_reads_as_the_label_column(builder, data_config):
    """One-hot / multi-hot columns (1/0, true/false, yes/no, x/empty) give the labels a label column would."""
    m = _class_columns_manifest(builder, [("1", "0", "0"), ("1", "1", "0"), ("true", "False", "yes"),
                                          ("x", "", ""), ("0", "0", "0"), ("1.0", "0.0", "0")])
    samples = read_manifest(_class_columns_config(data_config, m), check_files=True)
    assert [s.labels for s in samples] == [("tumour",), ("tumour", "stroma"), ("tumour", "necrosis"), ("tumour",),
                                           ("normal",), ("tumour",)]  # none marked: the background class
    cfg = _class_columns_config(data_config, m)
    np.testing.assert_array_equal(samples[1].target(cfg.classes), [0, 1, 1, 0])  # none marked = background only
    assert cfg.has_labels and cfg.label_column is None


def test_class_column_problems_are_named_with_their_fix(builder, data_config):
    m = _class_columns_manifest(builder, [("1", "0", "0"), ("0.5", "0", "0"), ("1", "1", "0"), ("0", "0", "0")])
    _, problems = scan_manifest(_class_columns_config(data_config, m, multi_label=False))
    assert len(problems) == 2
    assert "row 3 (" in problems[0] and "tumour='0.5'" in problems[0] and "write 1 or 0" in problems[0]
    assert "row 4 (" in problems[1] and "data.multi_label=true" in problems[1]
    no_bg = _class_columns_config(data_config, m, classes={"names": ["tumour", "stroma", "necrosis"]})
    _, problems = scan_manifest(no_bg)
    assert any("row 5 (" in p and "no class column marked" in p for p in problems)
    gone = builder.manifest([builder.row("a", mask=False)], name="no_class_columns.csv",
                            columns=["image", "split", "patient", "tumour"])
    with pytest.raises(ManifestError) as e:
        read_manifest(_class_columns_config(data_config, gone))
    assert "'stroma', 'necrosis'" in str(e.value) and "data.label_columns" in str(e.value)


def test_class_columns_config_is_checked(builder, data_config):
    m = _class_columns_manifest(builder, [("1", "0", "0")])
    with pytest.raises(ValueError, match="must name classes"):
        _class_columns_config(data_config, m, label_columns=["tumour", "fat"])
    with pytest.raises(ValueError, match="keep one"):
        _class_columns_config(data_config, m, label_column="label")


def test_a_name_in_another_unicode_normalization_finds_its_file(tmp_path):
    """macOS writes 'é' as e + accent (NFD); a manifest typed elsewhere holds the one code point (NFC)."""
    import unicodedata

    from histowsss.data.manifest import manifest_path

    nfd = unicodedata.normalize("NFD", "caf\u00e9.png")
    root = tmp_path / "\u00c9tude"  # the data folder's own name holds an accent (as it is: NFC)
    root.mkdir()
    (root / nfd).write_bytes(b"x")
    assert manifest_path(root, "caf\u00e9.png") == root / nfd
    assert manifest_path(root, "other.png") == root / "other.png"
