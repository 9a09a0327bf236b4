"""QuPath GeoJSON annotations -> tile class masks (and through `histowsss data tiles`)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from histowsss.cli.app import app
from histowsss.slides.annotations import AnnotationError, read_annotations
from tests.conftest import tissue_slide_rgb

runner = CliRunner()


def feature(coords, name=None, kind="Polygon"):
    props = {"objectType": "annotation"}
    if name is not None:
        props["classification"] = {"name": name, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def write_geojson(path: Path, feats, bare_list=False) -> Path:
    path.write_text(json.dumps(feats if bare_list else {"type": "FeatureCollection", "features": feats}))
    return path


def test_polygons_holes_and_order_are_rasterised(tmp_path: Path):
    gj = write_geojson(tmp_path / "a.geojson", [
        feature([square(100, 50, 200, 150), square(140, 90, 160, 110)], "gland"),  # with a hole
        feature([square(180, 130, 260, 170)], "tumour"),  # drawn over the gland
        feature([120, 60], "gland", kind="Point"),  # no area: ignored
    ], bare_list=True)
    ann = read_annotations(gj, ["background", "gland", "tumour"])
    m = ann.rasterize(0, 0, 400, 300, (200, 150))  # downsample 2
    assert m.shape == (150, 200) and m.dtype == np.uint8
    assert (m[25:45, 50:70] == 1).all() and (m[46:54, 71:79] == 0).all()  # gland, its hole
    assert (m[65:85, 90:130] == 2).all() and m[65:75, 85].tolist() == [1] * 10
    assert m[:24].max() == 0 and m[:, :49].max() == 0
    assert (m == 1).sum() == pytest.approx(50 * 50 - 10 * 10 - 10 * 10, abs=150)
    part = ann.rasterize(150, 100, 100, 100, (50, 50))  # a box inside: same pixels as the big map
    np.testing.assert_array_equal(part, m[50:100, 75:125])


def test_a_hole_keeps_what_earlier_features_drew(tmp_path: Path):
    """QuPath's "subtract": a stroma annotation with a hole cut around an earlier tumour annotation, drawn after
    it; the tumour stays tumour (the hole is no part of the stroma), the hole's rest is background."""
    gj = write_geojson(tmp_path / "s.geojson", [
        feature([square(250, 250, 450, 450)], "tumour"),
        feature([square(100, 100, 600, 600), square(240, 240, 460, 460)], "stroma"),
    ])
    m = read_annotations(gj, ["background", "stroma", "tumour"]).rasterize(0, 0, 700, 700, (700, 700))
    assert (m == 2).sum() == 200 * 200 and (m[250:450, 250:450] == 2).all()
    assert (m == 0)[240:460, 240:460].sum() == 220 * 220 - 200 * 200  # the hole's ring around the tumour
    assert (m == 1).sum() == 500 * 500 - 220 * 220


def test_annotation_errors_name_the_feature_and_fix(tmp_path: Path):
    gj = write_geojson(tmp_path / "b.geojson", [feature([square(0, 0, 10, 10)], "Stroma")])
    with pytest.raises(AnnotationError, match=r"b.geojson: feature 0 has class 'Stroma'.*--ignore-unknown"):
        read_annotations(gj, ["background", "gland"])
    assert read_annotations(gj, ["background", "gland"], ignore_unknown=True).geometries == []
    gj2 = write_geojson(tmp_path / "c.geojson", [feature([square(0, 0, 10, 10)])])
    with pytest.raises(AnnotationError, match="no classification.*--default-class"):
        read_annotations(gj2, ["background", "gland"])
    assert read_annotations(gj2, ["background", "gland"], default_class="gland").labels == [1]
    (tmp_path / "d.geojson").write_text("{not json")
    with pytest.raises(AnnotationError, match="d.geojson: not a GeoJSON"):
        read_annotations(tmp_path / "d.geojson", ["background"])
    with pytest.raises(FileNotFoundError, match="e.geojson.*QuPath"):
        read_annotations(tmp_path / "e.geojson", ["background"])


def test_tiles_of_an_annotated_slide_get_aligned_masks(tmp_path: Path, make_slide):
    (tmp_path / "slides").mkdir()
    make_slide(tmp_path / "slides" / "a.tif", tissue_slide_rgb(), mpp=0.25)
    # the first tissue blob of tissue_slide_rgb (centre (x 110, y 90), radius 70) annotated as one square
    write_geojson(tmp_path / "slides" / "a.geojson", [feature([square(60, 40, 160, 140)], "gland")])
    m = tmp_path / "slides.csv"
    m.write_text("image,split,patient,label,annotations\nslides/a.tif,test,p1,malignant,slides/a.geojson\n")
    out = tmp_path / "tiles"
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(out), "--tile", "20", "--downsample", "2",
                            "--mask-classes", "background,gland"])
    assert r.exit_code == 0, r.output
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(x["mask"] for x in rows)
    for x in rows:
        mask = np.asarray(Image.open(out / x["mask"]))
        x0, y0 = int(x["x"]), int(x["y"])
        yy, xx = np.mgrid[0:20, 0:20] * 2 + 1  # level-0 centre of every tile pixel
        want = ((xx + x0 >= 60) & (xx + x0 < 160) & (yy + y0 >= 40) & (yy + y0 < 140)).astype(np.uint8)
        np.testing.assert_array_equal(mask, want)
    assert any(np.asarray(Image.open(out / x["mask"])).any() for x in rows)
    r = runner.invoke(app, ["data", "check", str(out / "manifest.csv")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(tmp_path / "t2"), "--downsample", "2"])
    assert r.exit_code == 2 and "--mask-classes" in r.output


def test_annotations_of_a_slide_qupath_crops_are_shifted_to_level0(tmp_path: Path, make_slide, monkeypatch):
    """QuPath's coordinates of a slide with openslide bounds (.mrxs) start at (bounds-x, bounds-y): the same square,
    exported from such a slide, lands on the same level-0 pixels (and with --no-crop, unshifted)."""
    from histowsss.slides.reader import Slide

    (tmp_path / "slides").mkdir()
    make_slide(tmp_path / "slides" / "a.tif", tissue_slide_rgb(), mpp=0.25)
    monkeypatch.setattr(Slide, "qupath_frame", property(lambda self: (20, 10, *self.dimensions)))
    write_geojson(tmp_path / "slides" / "a.geojson", [feature([square(40, 30, 140, 130)], "gland")])  # (60,40)-(160,140)
    m = tmp_path / "slides.csv"
    m.write_text("image,split,patient,label,annotations\nslides/a.tif,test,p1,malignant,slides/a.geojson\n")
    for flag, (ox, oy) in (([], (20, 10)), (["--no-crop"], (0, 0))):
        out = tmp_path / f"tiles{len(flag)}"
        r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(out), "--tile", "20", "--downsample", "2",
                                "--mask-classes", "background,gland", *flag])
        assert r.exit_code == 0, r.output
        # the frame is part of the tiling's settings: a resumed tiling never mixes masks of both frames
        record = json.loads((out / "tiling.json").read_text())
        assert record.get("qupath_origins") == ({"slides/a.tif": [20, 10]} if not flag else None)
        with open(out / "manifest.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for x in rows:
            mask = np.asarray(Image.open(out / x["mask"]))
            x0, y0 = int(x["x"]), int(x["y"])
            yy, xx = np.mgrid[0:20, 0:20] * 2 + 1
            lx, ly = 40 + ox, 30 + oy
            want = ((xx + x0 >= lx) & (xx + x0 < lx + 100) & (yy + y0 >= ly) & (yy + y0 < ly + 100)).astype(np.uint8)
            np.testing.assert_array_equal(mask, want)


def test_edited_annotations_redo_their_masks_and_bad_rows_stop_before_tiling(tmp_path: Path, make_slide):
    """An interrupted tiling goes on with the tiles it wrote, but a slide whose annotations were edited since gets
    its masks anew; a bad annotation file or class in any row stops the call before a tile is written."""
    (tmp_path / "slides").mkdir()
    for name in ("a", "b"):
        make_slide(tmp_path / "slides" / f"{name}.tif", tissue_slide_rgb(), mpp=0.25)
        write_geojson(tmp_path / "slides" / f"{name}.geojson", [feature([square(60, 40, 160, 140)], "gland")])
    m = tmp_path / "slides.csv"
    m.write_text("image,split,patient,label,annotations\nslides/a.tif,train,p1,malignant,slides/a.geojson\n"
                 "slides/b.tif,test,p2,malignant,slides/b.geojson\n")
    out = tmp_path / "tiles"
    args = ["data", "tiles", str(m), "--out", str(out), "--tile", "20", "--downsample", "2",
            "--mask-classes", "background,gland"]
    assert runner.invoke(app, args).exit_code == 0
    (out / "manifest.csv").unlink()  # as if the call had been killed before its manifest
    write_geojson(tmp_path / "slides" / "a.geojson", [])  # a's gland annotation deleted
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "a.tif: its annotations changed" in r.output
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    has_gland = {x["slide"]: False for x in rows}
    for x in rows:
        has_gland[x["slide"]] |= bool(np.asarray(Image.open(out / x["mask"])).any())
    assert has_gland == {"../slides/a.tif": False, "../slides/b.tif": True}
    write_geojson(tmp_path / "slides" / "b.geojson", [feature([square(0, 0, 10, 10)], "tumour")])
    fresh = tmp_path / "fresh"
    r = runner.invoke(app, [*args[:4], str(fresh), *args[5:]])
    assert r.exit_code == 2 and "b.geojson: feature 0 has class 'tumour'" in r.output
    assert not fresh.exists() or not any(fresh.rglob("*.png"))  # nothing tiled before the bad row was found


def test_what_the_masks_will_not_show_is_said(tmp_path: Path, make_slide):
    """Features left out (unknown class skipped, points), outside the slide, NaN vertices, a collection: said, not
    silently dropped (pixels under no annotation become class 0, so a lost annotation teaches 'background')."""
    gc = {"type": "Feature", "properties": {"classification": {"name": "gland"}},
          "geometry": {"type": "GeometryCollection", "geometries": [
              {"type": "Polygon", "coordinates": [square(10, 10, 30, 30)]},
              {"type": "LineString", "coordinates": [[0, 0], [5, 5]]}]}}
    gj = write_geojson(tmp_path / "a.geojson", [
        feature([square(60, 40, 160, 140)], "gland"), feature([square(5000, 5000, 5100, 5100)], "gland"),
        feature([square(0, 0, 9, 9)], "Tumor"), feature([3, 4], "gland", kind="Point"), gc])
    ann = read_annotations(gj, ["background", "gland"], ignore_unknown=True)
    assert ann.feature_ids == [0, 1, 4] and ann.rasterize(0, 0, 40, 40, (40, 40))[20, 20] == 1  # the collection
    notes = ann.notes(420, 300)
    assert "1 feature(s) of class 'Tumor' left out (--ignore-unknown)" in notes
    assert "1 feature(s) without an area (points, lines or no geometry) left out" in notes
    assert any(n.startswith("feature(s) 1 lie wholly outside the slide's 420x300 frame") for n in notes)
    assert not any("every tile mask is class 0" in n for n in notes)
    assert "every tile mask is class 0" in read_annotations(
        write_geojson(tmp_path / "p.geojson", [feature([3, 4], "gland", kind="Point")]), ["background", "gland"]
    ).notes(420, 300)[-1]
    nan = write_geojson(tmp_path / "n.geojson", [feature([[[0, 0], [10, float("nan")], [10, 10], [0, 0]]], "gland")])
    with pytest.raises(AnnotationError, match="n.geojson: feature 0 has coordinates that are not finite"):
        read_annotations(nan, ["background", "gland"])
    case = write_geojson(tmp_path / "c.geojson", [feature([square(0, 0, 10, 10)], "Gland")])
    with pytest.raises(AnnotationError, match="names are case-sensitive: write 'Gland' in --mask-classes"):
        read_annotations(case, ["background", "gland"])
    # through data tiles: the warnings are printed before tiling, naming the file and row
    (tmp_path / "slides").mkdir()
    make_slide(tmp_path / "slides" / "a.tif", tissue_slide_rgb(), mpp=0.25)
    m = tmp_path / "slides.csv"
    m.write_text(f"image,split,patient,label,annotations\nslides/a.tif,test,p1,malignant,{gj}\n")
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(tmp_path / "t"), "--tile", "20", "--downsample",
                            "2", "--mask-classes", "background,gland", "--ignore-unknown"])
    out = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "a.geojson (row 2): feature(s) 1 lie wholly outside the slide's 420x300 frame" in out


def _annotated_tiles(tmp_path: Path, make_slide, features: list[dict], label_column: str, labels: tuple[str, str],
                     mask_classes: str) -> Path:
    """Two slides (a: train, b: test) annotated alike with ``features``, labelled ``labels``, cut into 64 px tiles
    with ``--mask-classes``; returns the tile folder."""
    (tmp_path / "slides").mkdir()
    for name, seed in (("a", 0), ("b", 1)):
        make_slide(tmp_path / "slides" / f"{name}.tif", tissue_slide_rgb(seed=seed), mpp=0.25)
        write_geojson(tmp_path / "slides" / f"{name}.geojson", features)
    m = tmp_path / "slides.csv"
    m.write_text(f"image,split,patient,{label_column},annotations\nslides/a.tif,train,p1,{labels[0]},slides/a.geojson\n"
                 f"slides/b.tif,test,p2,{labels[1]},slides/b.geojson\n")
    out = tmp_path / "tiles"
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(out), "--tile", "64", "--downsample", "1",
                            "--mask-classes", mask_classes, "--min-tissue", "0.2"])
    assert r.exit_code == 0, r.output
    return out


def test_init_on_annotated_tiles_takes_the_mask_classes_in_their_order(tmp_path: Path, make_slide):
    """Tissue labels (Gland, Stroma) on slides annotated with --mask-classes Background,Gland,Stroma: init takes
    the classes in mask order with Background (class 0, unannotated) as the background, without asking."""
    from histowsss.config_init import config_for_manifest

    out = _annotated_tiles(tmp_path, make_slide, [feature([square(60, 40, 160, 140)], "Gland"),
                                                  feature([square(200, 150, 300, 250)], "Stroma")],
                           "label", ("Gland;Stroma", "Gland"), "Background,Gland,Stroma")
    made = config_for_manifest(out / "manifest.csv")
    assert made.config.data.classes.names == ["Background", "Gland", "Stroma"]
    assert made.config.data.classes.background == "Background" and made.config.data.mask_mode == "class_ids"
    assert any(n.startswith("classes in the order of the tiles' --mask-classes") for n in made.notes)


def test_init_names_the_tiles_mask_classes_when_the_slide_labels_are_other_classes(tmp_path: Path, make_slide):
    """Slides labelled benign / malignant, annotated background / stroma / gland: the masks cannot be read as the
    label classes, and the error says why (tiling.json's classes) and what to pass, not a guess at ignore values."""
    from histowsss.config import ConfigError
    from histowsss.config_init import config_for_manifest

    out = _annotated_tiles(tmp_path, make_slide, [feature([square(0, 0, 420, 300)], "stroma"),
                                                  feature([square(60, 40, 160, 140)], "gland")],
                           "grade", ("malignant", "benign"), "background,stroma,gland")
    with pytest.raises(ConfigError) as e:
        config_for_manifest(out / "manifest.csv", label_column="grade")
    msg = " ".join(str(e.value).split())
    assert "cut with --mask-classes background, stroma, gland" in msg and "0 = background, 1 = stroma, 2 = gland" in msg
    assert "name benign, malignant" in msg and "--mask-values" in msg
    # data check with a config of the label classes says once why the tiles' masks do not fit
    from histowsss.config import DataConfig
    from histowsss.data.check import check_dataset

    cfg = DataConfig(manifest=out / "manifest.csv", label_column="grade", mask_mode="class_ids",
                     classes={"names": ["benign", "malignant"], "background": "benign"})
    warned = [p.message for p in check_dataset(cfg, progress=False) if "tiling.json" in p.message]
    assert len(warned) == 1 and "cut with --mask-classes background, stroma, gland" in warned[0]
    assert "data.classes.names are benign, malignant" in warned[0] and "data.mask_values" in warned[0]
