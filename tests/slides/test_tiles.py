"""`histowsss data tiles`: slides + slide labels -> a tile folder and a manifest the pipeline trains on."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
from typer.testing import CliRunner

from histowsss.cli.app import app
from tests.conftest import tissue_slide_rgb

runner = CliRunner()


def slide_manifest(root: Path, make_slide) -> Path:
    (root / "slides").mkdir(parents=True)
    make_slide(root / "slides" / "a.tif", tissue_slide_rgb(seed=0), mpp=0.25)
    make_slide(root / "slides" / "b.tif", tissue_slide_rgb(seed=1)[::-1].copy(), mpp=0.25)
    m = root / "slides.csv"
    m.write_text("image,split,patient,label,site\nslides/a.tif,train,p1,malignant,colon\n"
                 "slides/b.tif,test,p2,benign,rectum\n")
    return m


def rows_of(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiles_inherit_labels_and_hold_the_slide_pixels(tmp_path: Path, make_slide):
    m = slide_manifest(tmp_path, make_slide)
    out = tmp_path / "tiles"
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(out), "--tile", "32", "--mpp", "0.5"])
    assert r.exit_code == 0, r.output
    rows = rows_of(out / "manifest.csv")
    # the slide column names the slide from the tile manifest's folder (it was copied from the slides CSV as is)
    by_slide = {s: [x for x in rows if x["slide"] == "../" + s] for s in ("slides/a.tif", "slides/b.tif")}
    assert all(by_slide.values()) and all((out / x["slide"]).exists() for x in rows)
    for x in by_slide["slides/a.tif"]:
        assert (x["split"], x["patient"], x["label"], x["site"]) == ("train", "p1", "malignant", "colon")
        assert float(x["tissue"]) > 0.5
    for x in by_slide["slides/b.tif"]:
        assert (x["split"], x["patient"], x["label"]) == ("test", "p2", "benign")
    x = by_slide["slides/a.tif"][0]
    tile = np.asarray(Image.open(out / x["image"]))
    assert tile.shape == (32, 32, 3) and re.search(r"a_x\d+_y\d+\.png$", x["image"])
    x0, y0 = int(x["x"]), int(x["y"])  # level-0 corner; the tile is 64 level-0 px at half resolution
    ref = np.asarray(Image.fromarray(tissue_slide_rgb(seed=0)[y0 : y0 + 64, x0 : x0 + 64]).resize((32, 32),
                                                                                                  Image.BILINEAR))
    assert np.abs(tile.astype(int) - ref).mean() < 10
    # the pipeline's own checks accept it: every tile opens, labels are known, no patient in two splits
    r = runner.invoke(app, ["data", "check", str(out / "manifest.csv")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["data", "stats", str(out / "manifest.csv")])
    assert r.exit_code == 0 and "warn" not in r.output.lower(), r.output


def test_max_tiles_and_overwrite(tmp_path: Path, make_slide, monkeypatch):
    m = slide_manifest(tmp_path, make_slide)
    out = tmp_path / "tiles"
    args = ["data", "tiles", str(m), "--out", str(out), "--tile", "16", "--downsample", "2", "--max-tiles", "3"]
    assert runner.invoke(app, args).exit_code == 0
    rows = rows_of(out / "manifest.csv")
    assert len(rows) == 6
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert runner.invoke(app, [*args, "--overwrite", "--seed", "1"]).exit_code == 0
    # the folder holds what its manifest lists: the first call's tiles that the second did not draw are gone
    listed = {out / r["image"] for r in rows_of(out / "manifest.csv")}
    assert set((out / "tiles").rglob("*.png")) == listed and len(listed) == 6
    (out / "tiles" / "notes.txt").write_text("mine")  # not a tile: kept
    fresh = tmp_path / "fresh"  # a folder no call of ours wrote into: PNGs named as tiles are the user's, kept
    (fresh / "tiles" / "s").mkdir(parents=True)
    (fresh / "tiles" / "s" / "s_x0_y0.png").write_bytes(b"user's")
    assert runner.invoke(app, [*args[:4], str(fresh), *args[5:]]).exit_code == 0
    assert (fresh / "tiles" / "s" / "s_x0_y0.png").read_bytes() == b"user's"
    r = runner.invoke(app, [*args[:-2], "--max-tiles", "1", "--overwrite"])
    assert r.exit_code == 0 and "were removed" in " ".join(r.output.split())
    assert len(list((out / "tiles").rglob("*.png"))) == 2 and (out / "tiles" / "notes.txt").exists()
    # an interrupted call (no manifest.csv yet) redone with another tile size: no tile of the old size is reused
    assert runner.invoke(app, [*args[:-2], "--overwrite"]).exit_code == 0  # every 16 px tile
    (out / "manifest.csv").unlink()
    bigger = ["data", "tiles", str(m), "--out", str(out), "--tile", "32", "--downsample", "2"]
    r = runner.invoke(app, bigger)
    assert r.exit_code == 0
    for row in rows_of(out / "manifest.csv"):
        assert Image.open(out / row["image"]).size == (32, 32)
    assert "written anew" in r.output
    # two interrupted calls: the second's settings are on record before its tiles; the first's tiles are gone by
    # then, so a third call with the second's settings cannot take them for its own
    (out / "manifest.csv").unlink()
    assert runner.invoke(app, [*bigger[:5], "--tile", "16", "--downsample", "2"]).exit_code == 0  # (16 px again)
    (out / "manifest.csv").unlink()
    from histowsss.engine import atomic

    real, written = atomic.write_png, []

    def killed_after_one(path, arr):
        if written:
            raise KeyboardInterrupt
        written.append(path)
        real(path, arr)

    monkeypatch.setattr(atomic, "write_png", killed_after_one)
    runner.invoke(app, bigger)  # 32 px, killed after its first tile
    monkeypatch.setattr(atomic, "write_png", real)
    assert sum(1 for _ in (out / "tiles").rglob("*.png")) <= 1  # the 16 px tiles were removed first
    assert runner.invoke(app, bigger).exit_code == 0
    for row in rows_of(out / "manifest.csv"):
        assert Image.open(out / row["image"]).size == (32, 32)


def test_bad_slide_manifests_are_explained(tmp_path: Path, make_slide):
    m = slide_manifest(tmp_path, make_slide)
    out = tmp_path / "o"
    m.write_text(m.read_text() + "slides/gone.tif,train,p3,benign,colon\n")
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(out), "--mpp", "0.5"])
    assert r.exit_code == 2 and "row 4" in r.output and "gone.tif" in r.output
    bad = tmp_path / "nopatient.csv"
    bad.write_text("image,split,label\nslides/a.tif,train,benign\n")
    r = runner.invoke(app, ["data", "tiles", str(bad), "--out", str(out), "--mpp", "0.5"])
    assert r.exit_code == 2 and "patient" in r.output
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(out)])
    assert r.exit_code == 2 and "--mpp" in r.output
    assert not (out / "manifest.csv").exists()


def test_slides_without_mpp_and_clashing_names(tmp_path: Path, make_slide):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    make_slide(tmp_path / "a" / "s.tif", tissue_slide_rgb(), mpp=None)
    make_slide(tmp_path / "b" / "s.tif", tissue_slide_rgb(), mpp=None)
    m = tmp_path / "slides.csv"
    m.write_text("image,split,patient,label\na/s.tif,train,p1,benign\n")
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(tmp_path / "o"), "--mpp", "0.5"])
    assert r.exit_code == 2 and "s.tif" in r.output and "--downsample" in r.output
    assert not (tmp_path / "o").exists()  # found before anything was written (no tiling.json left behind)
    m.write_text("image,split,patient,label\na/s.tif,train,p1,benign\nb/s.tif,train,p2,benign\n")
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(tmp_path / "o"), "--downsample", "2"])
    assert r.exit_code == 2 and "rows 2 and 3" in " ".join(r.output.split())


def test_row_numbers_are_lines_and_a_bad_mpp_touches_nothing(tmp_path: Path, make_slide):
    m = slide_manifest(tmp_path, make_slide)
    text = m.read_text().splitlines()
    m.write_text("\n".join([text[0], "", *text[1:], "slides/gone.tif,train,p9,benign,colon"]) + "\n")
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(tmp_path / "o"), "--mpp", "0.5"])
    assert r.exit_code == 2 and f"row {len(text) + 2}:" in r.output  # the blank line counted
    out = tmp_path / "t"
    (out / "tiles").mkdir(parents=True)
    (out / "tiles" / "kept.png").write_bytes(b"x")
    (out / "tiling.json").write_text('{"tile": 99}')
    from histowsss.slides.tiles import extract_tiles

    with pytest.raises(ValueError, match="--mpp must be positive"):
        extract_tiles(m, out, tile=16, mpp=0.0)
    assert (out / "tiles" / "kept.png").exists()


def test_a_slide_without_tiles_is_warned_about(tmp_path: Path, make_slide):
    """A blank slide gives no tile: said for the slide, and for its split that would vanish from the manifest."""
    m = slide_manifest(tmp_path, make_slide)
    make_slide(tmp_path / "slides" / "blank.tif", np.full((300, 420, 3), 242, np.uint8), mpp=0.25)
    m.write_text(m.read_text() + "slides/blank.tif,val,p3,benign,colon\n")
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(tmp_path / "t"), "--tile", "32", "--mpp", "0.5"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "blank.tif: 0 tile(s)" in out and "warning: no 32-px cell holds more than 50% tissue" in out
    assert "warning: split(s) val got no tile" in out


def test_init_reads_the_tiles_resolution(tmp_path: Path, make_slide):
    """`init` on a tile manifest takes data.mpp from tiling.json and reads the tiles as cut (the profile's scale
    would shrink 96-px tiles at 0.5 um/px to 38 px, under what init accepts)."""
    from histowsss.config_init import config_for_manifest

    m = slide_manifest(tmp_path, make_slide)
    m.write_text(m.read_text() + "slides/a.tif,val,p3,benign,colon\n".replace("a.tif", "c.tif"))
    make_slide(tmp_path / "slides" / "c.tif", tissue_slide_rgb(seed=2), mpp=0.25)
    out = tmp_path / "t"
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(out), "--tile", "96", "--mpp", "0.5",
                            "--min-tissue", "0.2"])
    assert r.exit_code == 0, r.output
    made = config_for_manifest(out / "manifest.csv", background="benign")
    assert made.config.data.mpp == 0.5 and made.config.data.image_scale == 1.0
    assert any("tiles cut at 0.5 um/px by `histowsss data tiles`" in n for n in made.notes)
    given = config_for_manifest(out / "manifest.csv", background="benign", image_scale=0.8).config.data
    assert given.image_scale == 0.8 and given.mpp is None


def test_slide_clicks_go_to_the_tiles_they_fall_in_in_tile_pixels(tmp_path: Path, make_slide):
    """A points column of level-0 slide clicks: each tile gets the clicks inside it, moved and scaled to its
    pixels, not the slide's whole cell (which would stamp a click at the same tile pixel of every tile)."""
    m = slide_manifest(tmp_path, make_slide)
    text = m.read_text().splitlines()
    m.write_text("\n".join([text[0] + ",points", text[1] + ",10 20 malignant; 100 70 benign", text[2] + ","]) + "\n")
    out = tmp_path / "tiles"
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(out), "--tile", "32", "--mpp", "0.5",
                            "--min-tissue", "0"])
    assert r.exit_code == 0, r.output
    rows = rows_of(out / "manifest.csv")
    a = {(int(x["x"]), int(x["y"])): x["points"] for x in rows if x["slide"].endswith("a.tif")}
    assert a[(0, 0)] == "5.0 10.0 malignant" and a[(64, 64)] == "18.0 3.0 benign"  # 64 level-0 px per 32-px tile
    assert sum(bool(v) for v in a.values()) == 2
    assert not any(x["points"] for x in rows if x["slide"].endswith("b.tif"))


def test_empty_patient_or_split_and_bad_clicks_are_refused_before_tiling(tmp_path: Path, make_slide):
    m = slide_manifest(tmp_path, make_slide)
    m.write_text(m.read_text().replace(",p2,", ",,"))
    r = runner.invoke(app, ["data", "tiles", str(m), "--out", str(tmp_path / "t"), "--tile", "32", "--mpp", "0.5"])
    assert r.exit_code == 2 and "row 3: empty patient" in " ".join(r.output.split())
    assert not (tmp_path / "t").exists()
    m2 = slide_manifest(tmp_path / "b", make_slide)
    text = m2.read_text().splitlines()
    m2.write_text("\n".join([text[0] + ",points", text[1] + ",10 x malignant", text[2] + ","]) + "\n")
    r = runner.invoke(app, ["data", "tiles", str(m2), "--out", str(tmp_path / "t2"), "--tile", "32", "--mpp", "0.5"])
    assert r.exit_code == 2 and "row 2 (points): click 1 '10 x malignant' must be 'x y class'" in r.output
