"""Sparse clicks: parsing, the points file, rasterising disks, and `data check` on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histowsss.config import ClassMap, load_config
from histowsss.data.manifest import Sample
from histowsss.data.points import (Point, PointsError, apply_points, parse_points, point_map, read_points_file,
                                   sample_points, uses_points)

CLASSES = ClassMap(names=["background", "gland"], background="background")


def test_parse_points_formats_and_errors():
    assert parse_points("10 20 gland; 3.5,4 background;", CLASSES) == [Point(10, 20, 1), Point(3.5, 4, 0)]
    assert parse_points("1 2 1", CLASSES) == [Point(1, 2, 1)]  # class indices work too
    assert parse_points("", CLASSES) == []
    with pytest.raises(PointsError, match=r"img7: click 1: unknown class 'tumour'; known classes: background, gland"):
        parse_points("1 2 tumour", CLASSES, "img7")
    with pytest.raises(PointsError, match="click 2 '5 gland' must be 'x y class'"):
        parse_points("1 2 gland; 5 gland", CLASSES)
    with pytest.raises(PointsError, match="must be numbers"):
        parse_points("a b gland", CLASSES)
    for bad in ("nan 5 gland", "1 inf gland"):  # (a run crashed on them with no file or row named)
        with pytest.raises(PointsError, match="img3: click 1 .* must be finite numbers"):
            parse_points(bad, CLASSES, "img3")


def test_point_map_draws_disks_at_scale():
    m = point_map([Point(20, 10, 1)], (20, 40), scale=1.0, radius=3)
    ys, xs = np.nonzero(m == 1)
    # the click (20, 10) is the corner of pixel (row 10, col 20); pixel centres are at +0.5
    assert m[10, 20] == 1 and m[10, 17] == 1 and m[10, 22] == 1 and m[10, 16] == 255 and m[10, 23] == 255
    assert abs(len(ys) - np.pi * 9) < 6
    g = point_map([Point(20, 10, 1)], (5, 10), scale=0.25, radius=0)  # stride-4 grid: the click's own cell
    assert g[2, 5] == 1 and (g != 255).sum() == 1
    later = point_map([Point(5, 5, 1), Point(6, 5, 0)], (10, 10), 1.0, 2)
    assert later[5, 6] == 0 and later[5, 3] == 1  # the later click wins where disks overlap
    assert (point_map([Point(100, 100, 1)], (10, 10), 1.0, 2) == 255).all()  # outside: nothing
    lab = np.zeros((20, 40), np.uint8)
    assert apply_points(lab, m)[10, 20] == 1 and apply_points(lab, m)[0, 0] == 0


def test_points_file_and_column_are_joined(tmp_path: Path):
    f = tmp_path / "clicks.csv"
    f.write_text("image,x,y,class\na,1,2,gland\na,3,4,background\nb,5,6,gland\n")
    assert read_points_file(f, CLASSES)["a"] == (Point(1, 2, 1), Point(3, 4, 0))
    cfg = load_config("glas-gland", [f"points.file={f}", "data.points_column=clicks"])
    assert uses_points(cfg, "ir_label") and uses_points(cfg, "train_seg")
    assert not uses_points(load_config("glas-gland"), "ir_label")
    s = Sample(name="a", image=tmp_path / "a.png", split="train", patient="p", labels=(), points="7 8 gland")
    assert sample_points(cfg, s) == [Point(7, 8, 1), Point(1, 2, 1), Point(3, 4, 0)]
    bad = tmp_path / "bad.csv"
    bad.write_text("image,x,class\na,1,gland\n")
    with pytest.raises(PointsError, match="bad.csv: missing column.*y"):
        read_points_file(bad, CLASSES)
    bad.write_text("image,x,y,class\na,1,2,stroma\n")
    with pytest.raises(PointsError, match="bad.csv, row 2: unknown class 'stroma'"):
        read_points_file(bad, CLASSES)
    with pytest.raises(FileNotFoundError, match="nope.csv.*points.file"):
        read_points_file(tmp_path / "nope.csv", CLASSES)
    semi = tmp_path / "semi.csv"  # read like a manifest: ';' separated (a European Excel), rows by file line
    semi.write_text("image;x;y;class\na;1;2;gland\n\nb;5;6;stroma\n")
    with pytest.raises(PointsError, match="semi.csv, row 4: unknown class 'stroma'"):
        read_points_file(semi, CLASSES)
    bad.write_text("image,x,y\na,1,2\n")
    with pytest.raises(PointsError, match=r"missing column\(s\) class \(the header has: image, x, y\)"):
        read_points_file(bad, CLASSES)


def test_points_enter_the_hashes_of_the_steps_that_use_them(tmp_path: Path):
    from histowsss.steps import cam_to_ir_label, make_cam, make_sem_seg_labels, train_irn, train_seg

    f = tmp_path / "clicks.csv"
    f.write_text("image,x,y,class\n")
    plain, clicked = load_config("glas-gland"), load_config("glas-gland", [f"points.file={f}"])
    assert make_cam.config_hash(plain) == make_cam.config_hash(clicked)  # the CAM stage is reused
    for step in (cam_to_ir_label, train_irn, make_sem_seg_labels, train_seg):
        assert step.config_hash(plain) != step.config_hash(clicked)


def test_clicks_added_later_redo_the_steps_they_act_in(tmp_path: Path):
    """Clicks added to the points file, or to the manifest's points cells, make the finished steps they act in
    (points.use_in) run again, not the CAM stage, nor steps they do not act in; the hashes stay (runs made before
    clicks were recorded keep their steps), and row order or rows without clicks change nothing."""
    from histowsss.engine.decisions import clicks_stale
    from histowsss.engine.run_dir import RunDir
    from histowsss.steps import cam_to_ir_label

    f = tmp_path / "clicks.csv"
    f.write_text("image,x,y,class\na,1,2,gland\n")
    m0 = tmp_path / "m0.csv"
    m0.write_text("image,split,patient,label\na.png,train,p,gland\nb.png,train,q,gland\n")
    cfg = load_config("glas-gland", [f"data.manifest={m0}", f"points.file={f}", "points.use_in=[ir_label,train_seg]"])
    h = cam_to_ir_label.config_hash(cfg)
    run = RunDir(tmp_path / "run", cfg).init()
    for step in ("train_cam", "cam_to_ir_label", "make_sem_seg_labels", "train_seg"):
        with run.step(step, "h"):
            pass
    assert all(clicks_stale(cfg, run, s, s) is None for s in ("cam_to_ir_label", "train_seg"))
    f.write_bytes(b"image,x,y,class\r\nzzz,5,5,gland\r\na, 1 ,2,gland\r\n")  # (the same clicks of its images)
    assert all(clicks_stale(cfg, run, s, s) is None for s in ("cam_to_ir_label", "train_seg"))
    f.write_text("image,x,y,class\na,1,2,gland\na,9,9,background\n")
    assert cam_to_ir_label.config_hash(cfg) == h
    assert "the clicks changed since it ran" in clicks_stale(cfg, run, "cam_to_ir_label", "cam_to_ir_label")
    assert "the clicks changed" in clicks_stale(cfg, run, "train_seg", "train_seg")
    assert clicks_stale(cfg, run, "make_sem_seg_labels", "make_sem_seg_labels") is None  # not in use_in
    assert clicks_stale(cfg, run, "train_cam", "train_cam") is None
    st = run.status("cam_to_ir_label")
    del st["clicks_used"]  # a record from before clicks were recorded: kept
    from histowsss.engine.atomic import write_json

    write_json(run.status_path("cam_to_ir_label"), st)
    assert clicks_stale(cfg, run, "cam_to_ir_label", "cam_to_ir_label") is None
    st["clicks"] = "0" * 16  # one of before the clicks themselves were recorded: the file's bytes, as then
    write_json(run.status_path("cam_to_ir_label"), st)
    assert "the clicks changed" in clicks_stale(cfg, run, "cam_to_ir_label", "cam_to_ir_label")
    st["clicks"] = cfg.clicks_digest()
    write_json(run.status_path("cam_to_ir_label"), st)
    assert clicks_stale(cfg, run, "cam_to_ir_label", "cam_to_ir_label") is None
    man = tmp_path / "m.csv"
    man.write_text("image,split,patient,label,clicks\na.png,train,p,gland,1 2 gland\nb.png,train,q,gland,\n")
    col = load_config("glas-gland", [f"data.manifest={man}", "data.points_column=clicks"])
    d = col.clicks_used_digest()
    man.write_text("image,split,patient,label,clicks\nc.png,test,r,gland,\nb.png,train,q,gland,\n"
                   "a.png,train,p,gland,1  2 gland\n")
    assert col.clicks_used_digest() == d  # rows reordered, a row without clicks added, other spacing
    man.write_text("image,split,patient,label,clicks\na.png,train,p,gland,1 2 gland; 5 5 background\n")
    assert col.clicks_used_digest() != d


def test_data_check_reports_bad_clicks(tmp_path: Path):
    from typer.testing import CliRunner

    from histowsss.cli.app import app
    from PIL import Image

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(tmp_path / "images" / "b.png")
    (tmp_path / "m.csv").write_text("image,split,patient,label,clicks\nimages/a.png,train,p1,gland,40 5 gland\n"
                                    "images/b.png,train,p2,gland,1 1 stroma\n")
    r = CliRunner().invoke(app, ["data", "check", str(tmp_path / "m.csv"), "--set", "data.points_column=clicks"])
    out = " ".join(r.output.split())
    assert r.exit_code == 1
    assert "a.png" in out and "click (40, 5) lies outside the 30x20 image" in out
    assert "b.png" in out and "unknown class 'stroma'" in out
    m = tmp_path / "m.csv"
    m.write_text("image,split,patient,label,clicks\nimages/a.png,train,p1,gland,500 40 gland; 1 1 tumour; x 2 gland\n")
    r = CliRunner().invoke(app, ["data", "check", str(m), "--set", "data.points_column=clicks"])
    out = " ".join(r.output.split())  # every problem of the cell, each with its click number
    assert "click 2: unknown class 'tumour'" in out and "click 3 'x 2 gland': x and y must be numbers" in out
    assert "click (500, 40) lies outside the 30x20 image" in out
    # a points column that the manifest lacks (misspelt) is an error, not a run without clicks
    r = CliRunner().invoke(app, ["data", "check", str(tmp_path / "m.csv"), "--set", "data.points_column=click"])
    out = " ".join(r.output.split())
    assert r.exit_code != 0 and "missing required column(s) 'click'" in out and "data.points_column" in out


def test_runs_made_before_points_existed_keep_their_hashes(tmp_path: Path):
    plain = load_config("glas-gland")
    assert plain.step_hash("data", "ir_label", "points") == plain.step_hash("data", "ir_label")
    clicked = load_config("glas-gland", [f"points.file={tmp_path / 'c.csv'}"])
    assert clicked.step_hash("data", "ir_label", "points") != clicked.step_hash("data", "ir_label")


def test_class_names_with_spaces_are_one_field():
    classes = ClassMap(names=["background", "tumour stroma"], background="background")
    assert parse_points("10 20 tumour stroma; 1,2,background", classes) == [Point(10, 20, 1), Point(1, 2, 0)]
    with pytest.raises(PointsError, match="unknown class 'tumour  cells'"):
        parse_points("1 2 tumour  cells", classes)


def test_a_points_column_is_taken_by_init_and_checked_without_a_config(tmp_path: Path):
    from typer.testing import CliRunner

    from histowsss.cli.app import app
    from histowsss.config_init import config_for_manifest
    from PIL import Image

    for n in ("a", "b", "c"):
        Image.fromarray(np.full((96, 96, 3), 200, np.uint8)).save(tmp_path / f"{n}.png")
    m = tmp_path / "m.csv"
    m.write_text("image,split,patient,label,points\na.png,train,p1,gland,5 5 gland; 90 90 background\n"
                 "b.png,train,p2,background,\nc.png,test,p3,gland,\n")
    made = config_for_manifest(m)
    assert made.config.data.points_column == "points" and any("clicks from column 'points' (2 on 1" in n
                                                               for n in made.notes)
    m.write_text(m.read_text().replace("90 90 background", "900 90 background"))
    r = CliRunner().invoke(app, ["data", "check", str(m)])
    out = " ".join(r.output.split())  # (a warning, as `run` says it: left out)
    assert r.exit_code == 0 and "click (900, 90) lies outside the 96x96 image, left out by the steps" in out


def test_the_run_says_what_it_makes_of_the_clicks_before_any_step(tmp_path: Path):
    """Before the CAM stage: a click that cannot be read stops the run; clicks that will be left out (outside
    their image, on a test image, named for an image the manifest lacks) or contradict their image's labels are
    counted and named."""
    from PIL import Image

    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir

    for n in ("a", "b", "t"):
        Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(tmp_path / f"{n}.png")
    m = tmp_path / "m.csv"
    m.write_text("image,split,patient,label,points\na.png,train,p1,gland,5 5 gland; 60 5 gland\n"
                 "b.png,train,p2,background,3 3 gland\nt.png,test,p3,gland,1 1 gland\n")
    f = tmp_path / "clicks.csv"
    f.write_text("image,x,y,class\na,1,1,background\na.png,2,2,gland\n")
    over = [f"data.manifest={m}", "data.label_column=label", "data.points_column=points", f"points.file={f}",
            "data.classes.names=[background,gland]", "data.classes.background=background", "data.classes.colors={}",
            "data.mask_column=null", "data.mask_mode=class_ids", "data.test_splits=[test]"]
    cfg = load_config("demo", over)
    lines: list[str] = []
    from histowsss.data.points import clicks_report

    lines = clicks_report(cfg)
    text = "\n".join(lines)
    assert lines[0] == "clicks: 3 on 2 image(s) of the training splits (1 background, 2 gland)"
    assert "1 click(s) outside their image, left out" in text and "a (60, 5)" in text
    assert "1 image(s) with clicks in no split the click steps train on" in text and "t (test)" in text
    assert "1 click(s) of a class their image is not labelled with" in text and "b (3, 3) gland" in text
    assert "image name(s) in" in text and "a.png" in text
    m.write_text(m.read_text().replace("3 3 gland", "3 3 tumour"))
    logs: list[str] = []
    run = RunDir(tmp_path / "run", cfg).init()
    with pytest.raises(PointsError, match=r"m.csv, row 3 \(b\), column 'points': click 1: unknown class 'tumour'"):
        run_pipeline(cfg, run, log=logs.append)
    assert run.status("train_cam") is None  # stopped before the CAM stage


def test_a_folder_of_qupath_point_exports(tmp_path: Path):
    """QuPath's File > Export objects as GeoJSON, one file per image named after it: Point and MultiPoint features
    with their classification are the clicks (areas skipped); an unclassified point or unknown class is named."""
    import json

    def fc(*feats):
        return json.dumps({"type": "FeatureCollection", "features": list(feats)})

    def feat(kind, coords, name=None):
        props = {"objectType": "annotation", **({"classification": {"name": name, "color": [0, 0, 0]}} if name else {})}
        return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}

    d = tmp_path / "clicks"
    d.mkdir()
    (d / "a.tif.geojson").write_text(fc(feat("MultiPoint", [[1, 2], [3, 4]], "gland"),  # QuPath: image.ext.geojson
                                        feat("Point", [5, 6], "background"),
                                        feat("Polygon", [[[0, 0], [9, 0], [9, 9], [0, 0]]], "gland")))
    (d / "b.geojson").write_text(fc(feat("Point", [7, 8], "gland")))
    (d / "c.ome.tif.geojson").write_text(fc(feat("Point", [2, 2], "gland")))  # the manifest names c.ome.tif 'c.ome'
    assert read_points_file(d, CLASSES) == {"a": (Point(1, 2, 1), Point(3, 4, 1), Point(5, 6, 0)),
                                            "b": (Point(7, 8, 1),), "c.ome": (Point(2, 2, 1),)}
    man = tmp_path / "m.csv"
    man.write_text("image,split,patient,label\na.tif,train,p,gland\nb.png,train,q,gland\nc.ome.tif,train,r,gland\n")
    cfg = load_config("glas-gland", [f"points.file={d}", f"data.manifest={man}"])
    h = cfg.clicks_used_digest()
    (d / "new.geojson").write_text(fc(feat("Point", [7, 8], "gland"), feat("Point", [1, 1])))
    (d / "new.geojson").replace(d / "b.geojson")  # (as an editor saves: a new file in its place)
    assert cfg.clicks_used_digest() != h  # an edited export redoes the click steps
    with pytest.raises(PointsError, match=r"b.geojson: feature 2: a point without a classification"):
        read_points_file(d, CLASSES)
    (d / "new.geojson").write_text(fc(feat("Point", [7, 8], "stroma")))
    (d / "new.geojson").replace(d / "b.geojson")
    with pytest.raises(PointsError, match=r"b.geojson: feature 1: unknown class 'stroma'"):
        read_points_file(d, CLASSES)
    with pytest.raises(PointsError, match="does not say which image it belongs to"):
        read_points_file(d / "a.tif.geojson", CLASSES)


def test_click_files_as_qupath_users_write_them(tmp_path: Path):
    """Headers in any case; a class written in another case, or an index past the classes, named with the fix; two
    exports of one image (an old one left beside a new one) refused, not joined; an empty file, and clicks that
    no step uses, said."""
    f = tmp_path / "clicks.csv"
    f.write_text("Image,X,Y,Class\na,1,2,gland\n")
    assert read_points_file(f, CLASSES) == {"a": (Point(1, 2, 1),)}
    f.write_text("image,x,y,class\na,1,2,Gland\nb,3,4,7\n")
    with pytest.raises(PointsError) as e:
        read_points_file(f, CLASSES)
    assert "row 2: unknown class 'Gland'; known classes: background, gland (written 'gland' in the config" in \
        str(e.value)
    from histowsss.data.points import parse_points_file

    assert "row 3: unknown class '7'; known classes: background, gland (or an index 0-1)" in parse_points_file(
        f, CLASSES)[1][1]
    d = tmp_path / "exports"
    d.mkdir()
    point = '{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": ' \
            '{"classification": {"name": "gland"}}}'
    (d / "train_1.geojson").write_text(f'{{"type": "FeatureCollection", "features": [{point}]}}')
    (d / "train_1.png.geojson").write_text(f"[{point}]")  # (QuPath's older export: a bare list)
    with pytest.raises(PointsError, match=r"train_1.png.geojson: image 'train_1' has another export here too, "
                                          r"train_1.geojson; keep one export per image"):
        read_points_file(d, CLASSES)

    from PIL import Image

    from histowsss.data.points import clicks_report
    from histowsss.engine.pipeline import _report_clicks
    from histowsss.engine.run_dir import RunDir

    Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(tmp_path / "a.png")
    m = tmp_path / "m.csv"
    m.write_text("image,split,patient,label\na.png,train,p1,gland\n")
    f.write_text("image,x,y,class\n")
    over = [f"data.manifest={m}", f"points.file={f}", "data.label_column=label",
            "data.classes.names=[background,gland]", "data.classes.background=background", "data.classes.colors={}",
            "data.mask_column=null", "data.mask_mode=class_ids"]
    assert "warning: no click on any image (an empty points file or column?)" in "\n".join(
        clicks_report(load_config("demo", over)))
    f.write_text("image,x,y,class\nzzz,1,1,gland\n")  # clicks, on an image the manifest lacks: that is said
    text = "\n".join(clicks_report(load_config("demo", over)))
    assert "that the manifest lacks" in text and "no click on any image" not in text
    cfg = load_config("demo", [*over, "points.use_in=[]"])
    logs: list[str] = []
    _report_clicks(cfg, RunDir(tmp_path / "run", cfg), [], False, logs.append)
    assert logs == ["note: clicks are configured (points.file / data.points_column) but points.use_in is empty: no "
                    "step uses them"]
