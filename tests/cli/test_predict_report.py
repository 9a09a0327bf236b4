"""`histowsss predict` and `histowsss report` on a tiny trained run (fake pseudo-masks, image_scale 0.5)."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import shape
from typer.testing import CliRunner

from histowsss.cli.app import app
from histowsss.data.io import image_stem

FAST = ["data.image_scale=0.5", "train_seg.encoder=test_efficientnet", "train_seg.encoder_weights=none",
        "train_seg.decoder_channels=[16,16,8,8,8]", "train_seg.epochs=2", "train_seg.batch_size=4",
        "train_seg.crop_size=32", "train_seg.crops_per_image=2", "eval_seg.tile_size=32"]

runner = CliRunner()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, trained_run_builder) -> Path:
    return trained_run_builder(tmp_path_factory.mktemp("predict"), {"train": 6, "val": 2, "test": 3}, FAST)


def test_predict_writes_labels_probs_overlay_geojson(trained_run: Path, tmp_path: Path):
    images = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(images[1]).save(folder / "b.ome.tif")  # OME-TIFF: named 'b', not 'b.ome'
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(images[0]), str(folder), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert not list(out.glob("b.ome*"))
    for stem in (images[0].stem, "b"):
        lab = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert lab.shape == (64, 64) and lab.dtype == np.uint8 and lab.max() <= 1  # level 0: the input's size
        with np.load(out / f"{stem}_prob.npz") as z:
            assert z["probs"].dtype == np.float16 and z["probs"].shape == (2, 32, 32)  # at image_scale 0.5
            np.testing.assert_allclose(z["probs"].astype(np.float32).sum(0), 1.0, atol=1e-2)
            assert list(z["classes"]) == ["benign", "malignant"] and float(z["image_scale"]) == 0.5
        assert np.asarray(Image.open(out / f"{stem}_overlay.png")).shape == (64, 64, 3)
        fc = json.loads((out / f"{stem}.geojson").read_text())
        assert fc["type"] == "FeatureCollection"
        for f in fc["features"]:
            assert f["properties"]["objectType"] == "annotation"
            assert f["properties"]["classification"]["name"] == "malignant"  # background is not exported
            assert f["properties"]["classification"]["color"] == [230, 25, 75]
            m = f["properties"]["measurements"]  # the region's own probability of its class: the argmax, so >= 1/2
            assert 0.5 - 1e-3 <= m["min_probability"] <= m["mean_probability"] <= 1
            minx, miny, maxx, maxy = shape(f["geometry"]).bounds
            assert 0 <= minx and maxx <= 64 and 0 <= miny and maxy <= 64  # level-0 pixels of the 64 px input
    rows = {image_stem(r["input"]): r for r in csv.DictReader(open(out / "predictions.csv", newline=""))}
    assert set(rows) == {images[0].stem, "b"}
    for stem, r in rows.items():
        lab = np.asarray(Image.open(out / f"{stem}_labels.png"))
        assert r["kind"] == "image" and r["basis"] == "image" and (r["width"], r["height"]) == ("64", "64")
        assert float(r["malignant_percent"]) == pytest.approx(100 * (lab == 1).mean(), abs=0.01)
        assert int(r["malignant_regions"]) == sum(1 for x in json.loads((out / f"{stem}.geojson").read_text())["features"])
        assert r["mpp"] == "" and r["malignant_mm2"] == ""  # the demo config sets no data.mpp, and that is said
    assert "areas in mm² of images need the run's data.mpp, which it lacks" in " ".join(res.output.split())


def test_geojson_coordinates_undo_the_image_scale(trained_run: Path, tmp_path: Path, monkeypatch):
    from histowsss.cli import predict_cmd

    lab = np.zeros((32, 32), np.uint8)
    lab[8:16, 4:24] = 1  # the working-resolution map the network "predicts"
    probs = np.stack([1.0 - lab, lab]).astype(np.float32)
    monkeypatch.setattr("histowsss.steps.eval_seg.predict_probs", lambda *a, **k: probs)
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    predict_cmd.predict_images(trained_run, [img], tmp_path, min_area=0, simplify=0, log=lambda m: None)
    fc = json.loads((tmp_path / f"{img.stem}.geojson").read_text())
    (f,) = fc["features"]
    assert shape(f["geometry"]).bounds == pytest.approx((8.0, 16.0, 48.0, 32.0))  # x 4..24, y 8..16, doubled
    labels = np.asarray(Image.open(tmp_path / f"{img.stem}_labels.png"))
    assert labels[16:32, 8:48].all() and labels.sum() == 16 * 40


def test_geojson_of_an_odd_sized_image_spans_it_exactly(trained_run: Path, tmp_path: Path, monkeypatch):
    """At image_scale 0.5 a 63 x 61 image is read as 32 x 30 (rounded), not 31.5 x 30.5: a region over the whole
    map spans the whole image, no more (nothing past its edge) and no less (no column left out)."""
    from histowsss.cli import predict_cmd

    def whole(model, img, cfg, dev):  # every working pixel of the class, at the size the image was read at
        return np.stack([np.zeros(img.shape[:2]), np.ones(img.shape[:2])]).astype(np.float32)

    monkeypatch.setattr("histowsss.steps.eval_seg.predict_probs", whole)
    src = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    img = tmp_path / "odd.png"
    Image.open(src).crop((0, 0, 63, 61)).save(img)
    predict_cmd.predict_images(trained_run, [img], tmp_path / "out", min_area=0, simplify=0, log=lambda m: None)
    (f,) = json.loads((tmp_path / "out" / "odd.geojson").read_text())["features"]
    assert shape(f["geometry"]).bounds == pytest.approx((0.0, 0.0, 63.0, 61.0))


def test_a_batch_of_unreadable_inputs_alone_says_none_was_predicted(trained_run: Path, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not an image")
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(tmp_path / "notes.txt"), "--out",
                              str(tmp_path / "out")])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "no input was predicted; fix or replace" in text and "other inputs" not in text


def test_a_config_file_given_for_the_run_folder_is_named_as_such(trained_run: Path, tmp_path: Path):
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    res = runner.invoke(app, ["predict", "--run", str(trained_run / "config.yaml"), str(img), "--out",
                              str(tmp_path / "out")])
    assert res.exit_code == 2 and "is a file, a config?: give the folder its run wrote" in " ".join(res.output.split())
    res = runner.invoke(app, ["report", str(trained_run / "config.yaml")])
    assert res.exit_code == 2 and "(a config?), not a run folder" in " ".join(res.output.split())


def test_predict_refuses_to_overwrite(trained_run: Path, tmp_path: Path):
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / f"{img.stem}.geojson").write_text("keep me")
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(img), "--out", str(out)])
    assert res.exit_code == 2
    assert f"{img.stem}.geojson" in res.output and "--overwrite" in res.output
    assert (out / f"{img.stem}.geojson").read_text() == "keep me"
    assert not (out / f"{img.stem}_labels.png").exists()  # nothing written before the check
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(img), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / f"{img.stem}.geojson").read_text())["type"] == "FeatureCollection"


def test_predict_errors_are_clear(trained_run: Path, tmp_path: Path):
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(tmp_path / "nope.png"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "nope.png" in res.output
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(tmp_path), "--supervised", "--out",
                              str(tmp_path / "o")])
    assert res.exit_code == 2  # an empty folder, or no supervised network
    from histowsss.config import load_config
    from histowsss.engine.run_dir import RunDir

    partial = RunDir(tmp_path / "partial", load_config("demo")).init()  # (a run stopped before train_seg)
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    res = runner.invoke(app, ["predict", "--run", str(partial.path), str(img), "--out", str(tmp_path / "p")])
    text = "".join(res.output.split())  # (the command as the folder's own config runs it, copied as it is)
    assert res.exit_code == 2 and f"histowsssrun{partial.path / 'config.yaml'}--totrain_seg" in text


def test_predict_refuses_a_config_rewritten_with_other_input_settings(trained_run: Path, tmp_path: Path):
    """A later `histowsss run --set data.image_scale=...` rewrote config.yaml: predict names the setting."""
    import yaml

    run = shutil.copytree(trained_run, tmp_path / "run")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    scale = cfg["data"].get("image_scale", 1.0)
    cfg["data"]["image_scale"] = scale / 2
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    img = tmp_path / "x.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(img)
    res = runner.invoke(app, ["predict", "--run", str(run), str(img), "--out", str(tmp_path / "out")])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and f"data.image_scale = {scale / 2!r}" in out and "--from train_seg" in out
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # export refuses it too: the bundle would not predict (it once did, and the bundle then failed in predict)
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "model")])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "data.image_scale" in out and not (tmp_path / "model").exists()


def test_report_is_self_contained_with_all_sections(trained_run: Path):
    res = runner.invoke(app, ["report", str(trained_run)])
    assert res.exit_code == 0, res.output
    text = (trained_run / "report.html").read_text()
    for section in ("Run", "Dataset", "Per-stage quality", "Model selection", "Training curves", "Examples",
                    "Timings"):
        assert f"<h2>{section}</h2>" in text
    assert "no cross-validation in this run folder" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "<script" not in text
    assert "<svg" in text and "data:image/png;base64," in text
    assert "not run" in text  # CAM / IRN stages of this run were not run
    assert "Segmentation network (weak labels)" in text and "train_seg" in text
    objects = text.split("Objects (GlaS challenge metrics)", 1)[1].split("</table>", 1)[0]
    f1 = json.loads((trained_run / "metrics" / "seg.json").read_text())["objects"]["all"]["f1"]
    assert "Segmentation network (weak labels)" in objects and f'<td class="">{f1:.2f}</td>' in objects
    dice = json.loads((trained_run / "metrics" / "seg.json").read_text())["objects"]["all"]["dice"]
    assert f'<td class="">{dice:.2f}</td>' in objects  # the pooled GlaS value, not the mean over images
    assert "objects without a Hausdorff partner" in objects and "images with infinite Hausdorff" not in objects
    note = text.split("Objects (GlaS challenge metrics)", 1)[1].split("</p>", 1)[0]
    assert "pooled over every object" in note and "means over the images" not in note


def test_report_and_closing_table_mark_numbers_that_do_not_follow_from_config_yaml(trained_run: Path, tmp_path: Path):
    """A run with other settings rewrote config.yaml and stopped before making the network again: the network's
    numbers are marked stale, with the setting that differs, in the report and in the table `run` ends with."""
    import yaml

    from histowsss.cli.demo_cmd import stage_table
    from histowsss.config import load_config
    from histowsss.engine.standing import metrics_standing

    run = shutil.copytree(trained_run, tmp_path / "run")
    assert metrics_standing(load_config(run / "config.yaml"), run) == {}
    assert "stale" not in stage_table(run, {})
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["train_seg"]["epochs"] = 7
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    stale = metrics_standing(load_config(run / "config.yaml"), run)
    assert stale == {"seg": "eval_seg: finished with other settings (train_seg.epochs = 2 (now 7))"}
    table = stage_table(run, stale)
    assert "yes (below)" in table.splitlines()[2] and table.splitlines()[-1] == (
        "stale (metrics/seg.json does not follow from the settings and files of now): " + stale["seg"])
    res = runner.invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    quality = (run / "report.html").read_text().split("<h2>Per-stage quality</h2>", 1)[1].split("</table>", 1)[0]
    row = next(r for r in quality.split("<tr") if "Segmentation network (weak labels)" in r)
    assert 'class="stale"' in row and ">stale<" in row and "train_seg.epochs = 2 (now 7)" in row
    text = (run / "report.html").read_text()  # the objects table and the examples say so too
    assert text.split("<h3>train_seg</h3>", 1)[1].startswith('<p class="note stale">Stale (train_seg: finished '
                                                             "with other settings (train_seg.epochs = 2 (now 7))")
    # export would ship a config.yaml that does not describe the network: refused; predict says so
    res = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "model")])
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "does not describe network seg (train_seg finished with other settings: " \
        "train_seg.epochs = 2 (now 7))" in out
    assert not (tmp_path / "model").exists()
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    res = runner.invoke(app, ["predict", "--run", str(run), str(img), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0 and "note: network seg does not follow from" in " ".join(res.output.split())
    for section in ("Objects (GlaS challenge metrics)</h3>",
                    "<h2>Examples</h2><h3>Segmentation network (weak labels)</h3>"):
        assert text.split(section, 1)[1].startswith('<p class="note stale">Stale (does not follow from config.yaml '
                                                    "and the folder's files): "
                                                    "metrics/seg.json (eval_seg: finished with other ")


def test_report_of_an_empty_run_folder(tmp_path: Path):
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "not run" in (tmp_path / "report.html").read_text()
    res = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not found" in res.output
    res = runner.invoke(app, ["report", str(tmp_path)])  # an earlier report is replaced
    assert res.exit_code == 0, res.output
    other = tmp_path / "notes.html"
    other.write_text("my notes")
    res = runner.invoke(app, ["report", str(tmp_path), "--out", str(other)])
    assert res.exit_code == 2 and "not a histowsss report" in res.output and other.read_text() == "my notes"
    res = runner.invoke(app, ["report", str(tmp_path), "--out", str(other), "--overwrite"])
    assert res.exit_code == 0 and "histowsss report" in other.read_text()
    odd = tmp_path / "a[/b]c[red]d"  # square brackets in a path are not rich markup
    odd.mkdir(parents=True)
    res = runner.invoke(app, ["report", str(odd)])
    assert res.exit_code == 0 and str(odd / "report.html") in " ".join(res.output.split()).replace(" ", ""), res.output


def _image_slide(trained_run: Path, tmp_path: Path, make_slide, mpp=None) -> tuple[Path, np.ndarray]:
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    rgb = np.asarray(Image.open(img).convert("RGB"))
    big = np.tile(rgb, (2, 2, 1))  # 128 x 128 level-0 px of tissue
    return make_slide(tmp_path / "slide.tif", big, mpp=mpp, tile=32), big


def test_predict_segments_a_slide_tile_by_tile(trained_run: Path, tmp_path: Path, make_slide):
    slide, big = _image_slide(trained_run, tmp_path, make_slide)
    out = tmp_path / "out"
    args = ["predict", "--run", str(trained_run), str(slide), "--out", str(out), "--downsample", "2",
            "--slide-tile", "32", "--slide-margin", "8", "--out-factor", "2", "--tissue-threshold", "0.01"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "slide_slide.json").read_text())
    assert summary["level0_size"] == [128, 128] and summary["downsample"] == 2.0 and summary["out_downsample"] == 4.0
    assert summary["tiles"] == 4 and summary["mpp"] is None and summary["area_mm2"] is None
    assert sum(summary["area_level0_px"].values()) == 128 * 128
    lab = np.asarray(Image.open(out / "slide_labels.png"))
    assert lab.shape == (32, 32) and lab.max() <= 1
    with np.load(out / "slide_prob.npz") as z:
        assert z["probs"].shape == (2, 32, 32) and float(z["out_downsample"]) == 4.0
    assert np.asarray(Image.open(out / "slide_overlay.png")).shape == (32, 32, 3)
    fc = json.loads((out / "slide.geojson").read_text())
    for f in fc["features"]:
        minx, miny, maxx, maxy = shape(f["geometry"]).bounds
        assert 0 <= minx and maxx <= 128 and 0 <= miny and maxy <= 128  # level-0 pixels of the slide
    assert not (out / "slide.partial").exists()  # the tile cache goes once the outputs are written
    assert "0 image(s), 1 slide(s)" in " ".join(res.output.split())
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "--overwrite" in res.output
    bad = ["--slide-tile" if a == "--slide-tile" else ("33" if prev == "--slide-tile" else a)
           for prev, a in zip([None] + args, args)]
    res = runner.invoke(app, bad + ["--overwrite"])  # named before the slide is opened
    assert res.exit_code == 2 and "--slide-tile 33 must be a multiple of --out-factor 2" in " ".join(res.output.split())


def test_slide_geojson_is_in_level0_pixels(trained_run: Path, tmp_path: Path, make_slide, monkeypatch):
    from histowsss.cli import predict_cmd

    slide, _ = _image_slide(trained_run, tmp_path, make_slide, mpp=0.5)
    calls = []

    def everything_malignant(model, img, cfg, device):
        calls.append(img.shape)
        p = np.zeros((2, *img.shape[:2]), np.float32)
        p[1] = 1
        return p

    monkeypatch.setattr("histowsss.steps.eval_seg.predict_probs", everything_malignant)
    # slide at 0.5 um/px; training images at 1 um/px read at image_scale 0.5 = 2 um/px: downsample 4, 32 x 32 px
    recs = predict_cmd.predict_images(trained_run, [slide], tmp_path / "o", min_area=0, simplify=0,
                                      slide_options=predict_cmd.SlideOptions(train_mpp=1.0, tile_size=16, margin=0,
                                                                              out_factor=2, tissue_threshold=0.01),
                                      log=lambda m: None)
    assert recs[0]["downsample"] == 4.0 and len(calls) == 4 and calls[0][:2] == (16, 16)
    assert recs[0]["area_mm2"]["malignant"] == pytest.approx(128 * 128 * 0.25e-6)
    (row,) = csv.DictReader(open(tmp_path / "o" / "predictions.csv", newline=""))
    assert row["kind"] == "slide" and row["basis"] == "tissue" and row["mpp"] == "0.5"
    assert 0 < recs[0]["tissue_level0_px"] <= recs[0]["tissue_or_class_level0_px"] == 128 * 128
    assert float(row["basis_mm2"]) == pytest.approx(128 * 128 * 0.25e-6, abs=1e-4)
    assert row["malignant_percent"] == "100.00"  # every analysed pixel is called malignant
    assert float(row["malignant_mm2"]) == pytest.approx(128 * 128 * 0.25e-6, abs=1e-4)  # = the GeoJSON's area
    (f,) = json.loads((tmp_path / "o" / "slide.geojson").read_text())["features"]
    assert f["properties"]["measurements"]["mean_probability"] == 1.0  # from the stitched uint8 map
    assert shape(f["geometry"]).bounds == pytest.approx((0.0, 0.0, 128.0, 128.0))
    assert shape(f["geometry"]).area == pytest.approx(128 * 128, rel=0.01)  # marching squares cuts the corners
    # a slide QuPath crops to its openslide.bounds (.mrxs): the GeoJSON is in QuPath's frame, or with --no-crop not
    from histowsss.slides.reader import Slide

    monkeypatch.setattr(Slide, "qupath_frame", property(lambda self: (8, 4, 100, 90)))
    for no_crop, shift, size in ((False, (8, 4), (100, 90)), (True, (0, 0), (128, 128))):
        out = tmp_path / f"crop_{no_crop}"
        recs = predict_cmd.predict_images(
            trained_run, [slide], out, min_area=0, simplify=0, log=lambda m: None,
            slide_options=predict_cmd.SlideOptions(train_mpp=1.0, tile_size=16, margin=0, out_factor=2,
                                                   tissue_threshold=0.01, no_crop=no_crop))
        (g,) = json.loads((out / "slide.geojson").read_text())["features"]
        # in the frame's own pixels, cut to it: nothing QuPath does not show (no negative coordinates)
        assert shape(g["geometry"]).bounds == pytest.approx((0.0, 0.0, *size))
        assert recs[0]["geojson_origin_level0"] == list(shift)


def test_the_qupath_origin_is_the_corner_of_the_openslide_bounds():
    from types import SimpleNamespace

    from histowsss.slides.reader import Slide

    def slide(props):
        return Slide(Path("x.mrxs"), SimpleNamespace(properties=props, dimensions=(9000, 8000)), "openslide")

    bounds = {"openslide.bounds-x": "1200", "openslide.bounds-y": "340", "openslide.bounds-width": "5000",
              "openslide.bounds-height": "4000"}
    assert slide(bounds).qupath_origin == (1200, 340) and slide(bounds).qupath_frame == (1200, 340, 5000, 4000)
    assert slide({}).qupath_origin == (0, 0) and slide({}).qupath_frame == (0, 0, 9000, 8000)
    assert slide({k: v for k, v in bounds.items() if not k.endswith("height")}).qupath_origin == (0, 0)


def test_inputs_from_sub_folders_and_never_earlier_outputs(tmp_path: Path):
    from histowsss.cli.predict_cmd import collect_inputs

    def img(p: Path) -> Path:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p)
        return p

    top = img(tmp_path / "in" / "a.png")
    deep = img(tmp_path / "in" / "tumour" / "b.png")
    img(tmp_path / "in" / ".hidden" / "c.png")
    img(tmp_path / "in" / "s.partial" / "t.png")
    img(tmp_path / "in" / ".a_overlay.k3j2x.partial.png")  # a killed atomic write's temporary
    img(tmp_path / "in" / "._a.png")  # macOS resource fork
    img(tmp_path / "in" / "a_labels.png")  # an image of the user's that merely looks like an output: kept
    out = tmp_path / "in" / "pred"
    img(out / "a_labels.png")
    img(out / "a_overlay.png")
    assert collect_inputs([tmp_path / "in"], exclude=out) == [top, tmp_path / "in" / "a_labels.png"]
    assert collect_inputs([tmp_path / "in"], recursive=True, exclude=out) == [top, tmp_path / "in" / "a_labels.png",
                                                                               deep]
    img(tmp_path / "only" / "sub" / "d.png")
    with pytest.raises(FileNotFoundError, match="pass --recursive"):
        collect_inputs([tmp_path / "only"])
    assert collect_inputs([tmp_path / "only"], recursive=True) == [tmp_path / "only" / "sub" / "d.png"]
    # predicting a folder into itself: the second pass does not pick up the first one's outputs
    same = tmp_path / "same"
    x = img(same / "x.png")
    img(same / "x_labels.png")
    img(same / "x_overlay.png")
    assert collect_inputs([same], exclude=same) == [x]


def test_report_reads_a_relative_manifest_from_where_the_run_started(clean_manifest: Path, tmp_path: Path,
                                                                     monkeypatch):
    from histowsss.config import load_config
    from histowsss.evaluation.report import section_dataset

    root = clean_manifest.parent.parent  # the run was started in `root`, with a manifest path relative to it
    rel = clean_manifest.relative_to(root)
    cfg = load_config("demo", [f"data.manifest={rel}", "data.label_column=label", "data.val_splits=[]"])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert "manifest not readable" in section_dataset(cfg)  # no run folder to look beside
    text = section_dataset(cfg, root / "run")
    assert "manifest not readable" not in text and "<table" in text and "train" in text
    # runs/<name> below the folder the run was started in (the default layout): found there too, for every section
    from histowsss.evaluation.report import with_reachable_manifest

    found = with_reachable_manifest(cfg, root / "runs" / "demo")
    assert Path(found.data.manifest) == root / rel


def test_a_killed_batch_goes_on_with_skip_existing_and_blank_slides_are_skipped(trained_run: Path, tmp_path: Path,
                                                                              make_slide, monkeypatch):
    """predictions.csv grows after every input; --skip-existing skips the inputs whose outputs all exist and redoes
    one left half-written; a slide without tissue is skipped with a warning while the batch goes on."""
    from histowsss.steps import eval_seg

    imgs = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[:3]
    blank = make_slide(tmp_path / "glass.tif", np.full((128, 128, 3), 245, np.uint8), mpp=None)
    out = tmp_path / "out"
    real, calls = eval_seg.predict_probs, []

    def killed_at_the_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the batch is killed while predicting the third image
        return real(*a, **k)

    monkeypatch.setattr("histowsss.steps.eval_seg.predict_probs", killed_at_the_third)
    args = ["predict", "--run", str(trained_run), *map(str, imgs), str(blank), "--out", str(out), "--downsample", "1",
            "--tissue-threshold", "0.05"]
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [Path(r["input"]).name for r in rows] == [imgs[0].name, imgs[1].name]  # the finished ones are listed
    (out / "predictions.csv").unlink()  # as a kill between an input's outputs and its row leaves it: rebuilt below
    (out / f"{imgs[2].stem}_labels.png").write_bytes(b"half")  # a half-written input: some outputs only
    monkeypatch.setattr("histowsss.steps.eval_seg.predict_probs", real)
    assert runner.invoke(app, args).exit_code == 2  # without a flag, existing outputs are refused
    before = (out / f"{imgs[0].stem}.geojson").stat().st_mtime_ns
    res = runner.invoke(app, args + ["--skip-existing"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "2 of 4 input(s) already predicted" in text and "glass.tif" in text and "no tissue" in text
    assert (out / f"{imgs[0].stem}.geojson").stat().st_mtime_ns == before  # not redone
    assert Image.open(out / f"{imgs[2].stem}_labels.png").size  # redone: a readable PNG again
    after = list(csv.DictReader((out / "predictions.csv").open()))
    assert sorted(Path(r["input"]).name for r in after) == sorted(i.name for i in imgs)
    assert [r for r in after if r["input"] in {x["input"] for x in rows}] == rows  # rebuilt from the outputs alike
    assert not (out / "glass_labels.png").exists()


def test_a_slide_predicted_again_without_tissue_leaves_no_stale_outputs(trained_run: Path, tmp_path: Path,
                                                                        make_slide):
    """--overwrite of a slide that now shows no tissue (a higher threshold) removes its earlier outputs and row,
    instead of leaving results the batch says it did not make; image-only inputs warn that slide options are moot."""
    from tests.conftest import tissue_slide_rgb

    slide = make_slide(tmp_path / "s.tif", tissue_slide_rgb(256, 256), mpp=None)
    out = tmp_path / "out"
    args = ["predict", "--run", str(trained_run), str(slide), "--out", str(out), "--downsample", "2",
            "--slide-tile", "64"]
    assert runner.invoke(app, args).exit_code == 0
    assert (out / "s.geojson").exists() and "s.tif" in (out / "predictions.csv").read_text()
    res = runner.invoke(app, [*args, "--overwrite", "--tissue-threshold", "0.99"])
    assert res.exit_code == 0, res.output
    assert "no tissue" in " ".join(res.output.split())
    assert not list(out.glob("s_*")) and not (out / "s.geojson").exists()
    assert "s.tif" not in (out / "predictions.csv").read_text()
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(img), "--out", str(tmp_path / "o2"),
                              "--train-mpp", "0.5"])
    assert res.exit_code == 0 and "apply to whole-slide inputs only" in " ".join(res.output.split())


def test_slides_without_a_resolution_are_named_before_any_slide_is_segmented(trained_run: Path, tmp_path: Path,
                                                                               make_slide):
    """A batch of slides, one without microns per pixel: refused at the start, naming it, not after the others."""
    from tests.conftest import tissue_slide_rgb

    with_mpp = make_slide(tmp_path / "a.tif", tissue_slide_rgb(256, 256), mpp=0.5)
    without = make_slide(tmp_path / "b.tif", tissue_slide_rgb(256, 256, seed=1), mpp=None)
    out = tmp_path / "out"
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(with_mpp), str(without), "--out", str(out),
                              "--train-mpp", "1.0", "--slide-tile", "64"])
    text = " ".join(res.output.split()).replace(" ", "")
    assert res.exit_code != 0 and "1of2slide(s)havenomicrons-per-pixel" in text and "b.tif" in text
    assert "nothingwaspredicted" in text and not (out / "a.geojson").exists()
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(with_mpp), str(without), "--out", str(out),
                              "--train-mpp", "1.0", "--slide-tile", "64", "--slide-mpp", "0.25"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0 and "a.tif: --slide-mpp 0.25 replaces the 0.500 um/px its metadata gives" in text


def test_predict_is_refused_under_torchrun(trained_run: Path, tmp_path: Path, monkeypatch):
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(img), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "not under torchrun" in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()


def test_a_second_predict_into_the_same_output_folder_is_refused(trained_run: Path, tmp_path: Path):
    """Two predicts into one --out would both pass the overwrite check, then replace each other's outputs and lose
    rows of predictions.csv: the output folder is locked while one works in it."""
    from histowsss.engine.run_dir import run_lock

    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    out = tmp_path / "out"
    with run_lock(out, "histowsss predict", place="output folder"):  # (another predict, as flock sees it)
        res = runner.invoke(app, ["predict", "--run", str(trained_run), str(img), "--out", str(out)])
    assert res.exit_code == 2 and "(histowsss predict) is working in this output folder" in " ".join(res.output.split())
    assert not (out / f"{img.stem}_labels.png").exists()
    assert runner.invoke(app, ["predict", "--run", str(trained_run), str(img), "--out", str(out)]).exit_code == 0


def test_skip_existing_refuses_outputs_of_another_network(trained_run: Path, tmp_path: Path):
    """Outputs record the network that made them (``model`` in ``_prob.npz``): a batch resumed with other weights
    is refused, not completed as a mix of two networks' outputs."""
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    out = tmp_path / "out"
    args = ["predict", "--run", str(trained_run), str(img), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    with np.load(out / f"{img.stem}_prob.npz") as z:
        made_by = str(z["model"])
    assert made_by.startswith("seg:")
    assert runner.invoke(app, args + ["--skip-existing"]).exit_code == 0  # the same network: skipped
    z = dict(np.load(out / f"{img.stem}_prob.npz"))
    np.savez_compressed(out / f"{img.stem}_prob.npz", **{k: v for k, v in z.items() if k != "model"})
    res = runner.invoke(app, args + ["--skip-existing"])  # as an earlier histowsss wrote it: kept, and said
    assert res.exit_code == 0 and "1 finished input(s) record no network" in " ".join(res.output.split())
    np.savez_compressed(out / f"{img.stem}_prob.npz", **{**z, "model": np.array("seg:0123456789abcdef")})
    res = runner.invoke(app, args + ["--skip-existing"])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "1 finished input(s) in this --out were predicted by another network" in text
    assert f"this is {made_by}" in text


def test_colors_recolour_the_outputs_without_touching_the_run(trained_run: Path, tmp_path: Path):
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[1]
    before = (trained_run / "config.yaml").read_text()
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(img), "--out", str(tmp_path / "o"),
                              "--colors", "malignant=#00ff00"])
    assert res.exit_code == 0, res.output
    feats = json.loads((tmp_path / "o" / f"{img.stem}.geojson").read_text())["features"]
    assert feats and all(f["properties"]["classification"]["color"] == [0, 255, 0] for f in feats)
    assert (trained_run / "config.yaml").read_text() == before
    for bad, said in (("malignant=green", "'#rrggbb'"), ("tumour=#00ff00", "'tumour' is not one of the classes"),
                      ("malignant", "give CLASS=#rrggbb")):
        res = runner.invoke(app, ["predict", "--run", str(trained_run), str(img), "--out", str(tmp_path / "x"),
                                  "--colors", bad])
        assert res.exit_code == 2 and said in " ".join(res.output.split()), res.output


def test_skip_existing_and_overwrite_are_refused_together(tmp_path):
    from typer.testing import CliRunner

    from histowsss.cli.app import app

    r = CliRunner().invoke(app, ["predict", "--run", str(tmp_path / "run"), str(tmp_path), "--out",
                                 str(tmp_path / "o"), "--skip-existing", "--overwrite"])
    assert r.exit_code == 2 and "pass one" in r.output and not (tmp_path / "o").exists()


def test_a_slide_replaced_after_a_kill_is_not_stitched_from_old_tiles(trained_run: Path, tmp_path: Path, make_slide,
                                                                       monkeypatch):
    """A killed slide's finished tiles are reused by --skip-existing, unless the slide file was replaced since (a
    new scan under the same name and pixel size): then it starts afresh, and Ctrl-C says how to go on."""
    import histowsss.steps.eval_seg as slide_predict  # (slides.predict imports predict_probs when it runs)

    slide, big = _image_slide(trained_run, tmp_path, make_slide)
    out = tmp_path / "out"
    args = ["predict", "--run", str(trained_run), str(slide), "--out", str(out), "--downsample", "2",
            "--slide-tile", "32", "--slide-margin", "8", "--tissue-threshold", "0.01"]
    real, calls = slide_predict.predict_probs, {"n": 0}

    def killed_after_two(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(slide_predict, "predict_probs", killed_after_two)
    res = runner.invoke(app, args)
    assert res.exit_code == 130 and "--skip-existing to go on" in " ".join(res.output.split())
    assert len(list((out / "slide.partial").glob("r*_c*.npy"))) == 2
    monkeypatch.setattr(slide_predict, "predict_probs", real)
    make_slide(slide, big[::-1].copy(), tile=32)  # the same name and size, another picture
    res = runner.invoke(app, [*args, "--skip-existing"])
    assert res.exit_code == 0, res.output
    assert "cached tiles are from other settings" in " ".join(res.output.split())


def test_non_finite_probabilities_stop_predict(trained_run: Path, tmp_path: Path, monkeypatch):
    """A network that gives NaN (damaged weights) is an error naming the input, not labels of class 0."""
    import histowsss.steps.eval_seg as eval_seg

    real = eval_seg.predict_probs
    monkeypatch.setattr(eval_seg, "predict_probs", lambda *a, **k: real(*a, **k) * np.nan)
    img = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[0]
    res = runner.invoke(app, ["predict", "--run", str(trained_run), str(img), "--out", str(tmp_path / "o")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and f"{img.name}: the network's probabilities are not finite" in text, text


def test_qupath_tile_export_folder_skips_label_tiles_and_places_regions_on_the_slide(trained_run: Path, tmp_path: Path):
    """A folder as QuPath's tile exporter writes it: image tiles and '-labelled' label tiles side by side. --skip
    leaves the label tiles out; --qupath-tiles writes each tile's regions in its slide's level-0 pixels."""
    images = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))
    folder = tmp_path / "export"
    folder.mkdir()
    name = "CMU-1 [d=2,x=4096,y=8192,w=128,h=128]"
    shutil.copy(images[0], folder / f"{name}.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / f"{name}-labelled.png")  # grey: not an H&E input
    r = runner.invoke(app, ["predict", "--run", str(trained_run), str(folder), "--out", str(tmp_path / "o1")])
    assert r.exit_code == 1 and "--skip" in " ".join(r.output.split())  # skipped, the batch goes on; the fix is named
    assert (tmp_path / "o1" / f"{name}.geojson").is_file() and not list((tmp_path / "o1").glob("*-labelled*"))
    plain, placed = tmp_path / "plain", tmp_path / "placed"
    for out, extra in ((plain, []), (placed, ["--qupath-tiles"])):
        r = runner.invoke(app, ["predict", "--run", str(trained_run), str(folder), "--out", str(out),
                                "--skip", "*-labelled.png", "--simplify", "0", "--min-area", "0", *extra])
        assert r.exit_code == 0, r.output
        assert not list(out.glob("*-labelled*"))
    a = json.loads((plain / f"{name}.geojson").read_text())["features"]
    b = json.loads((placed / f"{name}.geojson").read_text())["features"]
    assert len(a) == len(b) > 0
    for fa, fb in zip(a, b):
        ax0, ay0, ax1, ay1 = shape(fa["geometry"]).bounds
        assert shape(fb["geometry"]).bounds == pytest.approx((4096 + 2 * ax0, 8192 + 2 * ay0, 4096 + 2 * ax1,
                                                              8192 + 2 * ay1))
    # predictions.csv in the slide's level-0 pixels too (as the GeoJSON's area_px); the fractions the same
    rows = [next(csv.DictReader(open(out / "predictions.csv", newline=""))) for out in (plain, placed)]
    assert (rows[1]["width"], rows[1]["height"]) == ("128", "128") and rows[0]["width"] == "64"
    assert rows[1]["malignant_percent"] == rows[0]["malignant_percent"]
    # --min-area in the slide's level-0 pixels: a region of the tile counts d² times its tile pixels
    cut = sorted(f["properties"]["measurements"]["area_px"] for f in b)[len(b) // 2]
    r = runner.invoke(app, ["predict", "--run", str(trained_run), str(folder), "--out", str(tmp_path / "cut"),
                            "--skip", "*-labelled.png", "--simplify", "0", "--min-area", str(cut), "--qupath-tiles"])
    kept = json.loads((tmp_path / "cut" / f"{name}.geojson").read_text())["features"]
    assert r.exit_code == 0 and len(kept) == sum(f["properties"]["measurements"]["area_px"] >= cut for f in b)
    r = runner.invoke(app, ["predict", "--run", str(trained_run), str(folder), "--out", str(tmp_path / "mpp"),
                            "--skip", "*-labelled.png", "--qupath-tiles", "--slide-mpp", "0.5"])
    row = next(csv.DictReader(open(tmp_path / "mpp" / "predictions.csv", newline="")))
    assert r.exit_code == 0 and "whole-slide inputs only" not in r.output and row["mpp"] == "0.5"
    px = float(row["malignant_percent"]) / 100 * 128 * 128  # level-0 pixels of the slide, 0.5 um each
    assert float(row["malignant_mm2"]) == pytest.approx(px * 0.25e-6, abs=1e-4)  # (written to 4 decimals)
    assert "whose size times d" not in r.output  # 64 px x d=2 is the named 128
    odd = tmp_path / "odd"
    odd.mkdir()
    shutil.copy(images[0], odd / "CMU-1 [d=2,x=0,y=0,w=200,h=128].png")  # resized after export, or d misnamed
    r = runner.invoke(app, ["predict", "--run", str(trained_run), str(odd), "--out", str(tmp_path / "o4"),
                            "--qupath-tiles"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "1 QuPath tile(s) whose size times d is not the level-0 size" in text
    assert "64x64 px x d=2 = 128x128, the name says 200x128" in text
    r = runner.invoke(app, ["predict", "--run", str(trained_run), str(images[1]), "--out", str(tmp_path / "o3"),
                            "--qupath-tiles"])
    assert r.exit_code == 2 and "--qupath-tiles needs names" in " ".join(r.output.split())


def _unreadable_batch(trained_run: Path, folder: Path) -> Path:
    """a_ok.png, b_notimage.png (text), c_ok.png, d_gray.png (grayscale: refused), e_broken.svs (no slide)."""
    images = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))
    folder.mkdir()
    shutil.copy(images[0], folder / "a_ok.png")
    (folder / "b_notimage.png").write_text("not an image")
    shutil.copy(images[1], folder / "c_ok.png")
    Image.fromarray(np.full((64, 64), 128, np.uint8)).save(folder / "d_gray.png")
    (folder / "e_broken.svs").write_bytes(b"junk")
    return folder


def test_a_batch_goes_on_past_unreadable_inputs_lists_them_and_exits_1(trained_run: Path, tmp_path: Path):
    """An image or slide its reader refuses is skipped with its reason; the good ones are predicted whole, and the
    command ends with the list of skipped inputs and exit code 1; --skip-existing then predicts only the fixed one."""
    pytest.importorskip("tiffslide")
    folder = _unreadable_batch(trained_run, tmp_path / "in")
    out = tmp_path / "out"
    args = ["predict", "--run", str(trained_run), str(folder), "--out", str(out)]
    res = runner.invoke(app, args)
    text = " ".join(res.output.split())
    assert res.exit_code == 1, res.output
    for stem in ("a_ok", "c_ok"):
        assert all((out / f"{stem}{suf}").is_file() for suf in ("_labels.png", "_prob.npz", "_overlay.png",
                                                                 ".geojson"))
    for stem in ("b_notimage", "d_gray", "e_broken"):
        assert not list(out.glob(f"{stem}*"))
    assert sorted(Path(r["input"]).name for r in csv.DictReader(open(out / "predictions.csv", newline=""))) == [
        "a_ok.png", "c_ok.png"]
    report = "".join(text[text.index("3 input(s) skipped"):].split())  # the summary, after the batch; unwrapped
    for line in ("b_notimage.png: cannot be decoded as an image", "d_gray.png: grayscale image",
                 "e_broken.svs: cannot be opened as a whole-slide image", "--skip-existing"):
        assert "".join(line.split()) in report, line
    shutil.copy(folder / "a_ok.png", folder / "b_notimage.png")  # fixed; the other two removed
    (folder / "d_gray.png").unlink()
    (folder / "e_broken.svs").unlink()
    before = (out / "a_ok.geojson").stat().st_mtime_ns
    res = runner.invoke(app, args + ["--skip-existing"])
    assert res.exit_code == 0, res.output
    assert (out / "b_notimage.geojson").is_file() and (out / "a_ok.geojson").stat().st_mtime_ns == before
    (folder / "a_ok.png").write_text("damaged since")  # --overwrite of an input now unreadable: its outputs kept
    res = runner.invoke(app, args + ["--overwrite"])
    assert res.exit_code == 1 and "earlier outputs of its name are kept" in " ".join(res.output.split())
    assert (out / "a_ok.geojson").stat().st_mtime_ns == before and "a_ok.png" in (out / "predictions.csv").read_text()


def test_errors_not_of_one_input_still_stop_the_batch(trained_run: Path, tmp_path: Path, monkeypatch):
    """Out of memory, or a reader error about another file than the input, stops the batch at the first input; a
    missing slide reader is said before any work."""
    import sys

    from histowsss.data.io import ImageReadError

    images = sorted((trained_run.parent / "data" / "images").glob("syn_test_*.png"))[:2]
    args = ["predict", "--run", str(trained_run), *map(str, images)]

    def out_of_memory(*a, **k):
        raise RuntimeError("CUDA out of memory")

    def other_file(*a, **k):
        raise ImageReadError(f"{tmp_path / 'reference.png'}: cannot be decoded as an image")

    for target, fn in (("histowsss.steps.eval_seg.predict_probs", out_of_memory),
                       ("histowsss.data.loading.load_image", other_file)):
        with monkeypatch.context() as m:
            m.setattr(target, fn)
            out = tmp_path / fn.__name__
            res = runner.invoke(app, [*args, "--out", str(out)])
        assert res.exit_code == 2, res.output
        assert not list(out.glob("*.geojson")) and "skipped" not in res.output  # stopped at the first input
    slide = tmp_path / "s.svs"
    slide.write_bytes(b"junk")
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide / tiffslide: ImportError
    monkeypatch.setitem(sys.modules, "tiffslide", None)
    res = runner.invoke(app, [*args, str(slide), "--out", str(tmp_path / "noreader")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "no slide reader is available" in text and "pip install" in text, text
    assert not (tmp_path / "noreader").exists()  # before any work


def test_predictions_csv_holds_one_row_per_output(trained_run: Path, tmp_path: Path, monkeypatch):
    """An output predicted again from another path (another folder's image of the same name, an absolute path)
    replaces its row, which then describes the new image."""
    images = sorted((trained_run.parent / "data" / "images").glob("syn_train_*.png"))
    monkeypatch.chdir(tmp_path)
    for folder, (a, b) in (("pin", (0, 1)), ("pin4", (2, None))):
        Path(folder).mkdir()
        shutil.copy(images[a], Path(folder) / "train_1.png")
        if b is not None:
            shutil.copy(images[b], Path(folder) / "train_2.png")
    run = ["predict", "--run", str(trained_run)]
    assert runner.invoke(app, [*run, "pin", "--out", "pout"]).exit_code == 0
    assert runner.invoke(app, [*run, "pin4", "--out", "pout", "--overwrite"]).exit_code == 0
    res = runner.invoke(app, [*run, str(tmp_path / "pin" / "train_2.png"), "--out", "pout", "--overwrite"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open("pout/predictions.csv", newline="")))
    assert sorted(r["input"] for r in rows) == sorted([str(tmp_path / "pin4" / "train_1.png"),  # (absolute:
                                                       str(tmp_path / "pin" / "train_2.png")])  # as given or not)
    assert all(Path(r["geojson"]).is_absolute() for r in rows)
    for r in rows:  # each row describes the outputs as they now are
        lab = np.asarray(Image.open(Path("pout") / f"{image_stem(r['input'])}_labels.png"))
        assert float(r["malignant_percent"]) == pytest.approx(100 * (lab == 1).mean(), abs=0.01)


def test_out_naming_a_file_is_a_clear_error_before_any_work(tmp_path: Path):
    """--out naming an existing file (or a path through one) names it and the fix, before the run is even read."""
    img = tmp_path / "x.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(img)
    base = tmp_path / "base.csv"
    base.write_text("a,b\n")
    for out in (base, base / "sub"):
        res = runner.invoke(app, ["predict", "--run", str(tmp_path / "no_run"), str(img), "--out", str(out)])
        text = " ".join(res.output.split())
        assert res.exit_code == 2 and f"{base}: exists and is a file, not a folder" in text, text
        assert "--out must be a folder" in text and "pick another name" in text and "Errno" not in text
    assert base.read_text() == "a,b\n"


def test_a_link_to_no_file_in_an_input_folder_is_said(tmp_path: Path):
    import warnings

    from histowsss.cli.predict_cmd import collect_inputs

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(folder / "a.png")
    (folder / "b.png").symlink_to(tmp_path / "moved" / "b.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert collect_inputs([folder]) == [folder / "a.png"]
    assert any("1 link(s) in the input folder(s) point to no file" in str(w.message) for w in caught)
