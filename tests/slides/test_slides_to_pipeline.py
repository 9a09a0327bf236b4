"""Slides + slide labels + QuPath annotations -> `data tiles` -> the CAM stage trains and is evaluated on the tiles."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from histowsss.cli.app import app
from histowsss.config import load_config
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.engine.pipeline import run_pipeline
from histowsss.engine.run_dir import RunDir
from histowsss.export.geojson import feature_collection, labels_to_features

FAST = ["train_cam.epochs=2", "train_cam.crop_size=48", "train_cam.crops_per_image=4", "train_cam.cache_copies=1",
        "train_cam.head_channels=32", "make_cam.scales=[1.0]", "make_cam.flip=false",
        "train_cam.min_epochs_before_diagnosis=5"]


def test_slides_become_a_training_set(tmp_path: Path, make_slide):
    syn = generate_synthetic_dataset(tmp_path / "syn", {"train": 8, "test": 4}, size=64)
    with open(syn, newline="") as f:
        rows = list(csv.DictReader(f))
    # one slide per 2 x 2 images of one split and grade: a patient whose glands were annotated in QuPath
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["split"], r["grade"]), []).append(r)
    (tmp_path / "slides").mkdir()
    lines = ["image,split,patient,grade,annotations"]
    first_image = {}
    for k, ((split, grade), members) in enumerate(sorted(groups.items())):
        for j in range(0, len(members), 4):
            quad = (members[j:] + members)[:4]  # a short group repeats its images
            ims = [np.asarray(Image.open(syn.parent / r["image"]).convert("RGB")) for r in quad]
            masks = [(np.asarray(Image.open(syn.parent / r["mask"])) > 0).astype(np.uint8) for r in quad]
            rgb = np.vstack([np.hstack(ims[:2]), np.hstack(ims[2:])])
            gland = np.vstack([np.hstack(masks[:2]), np.hstack(masks[2:])])
            name = f"s{k}_{j}"
            make_slide(tmp_path / "slides" / f"{name}.tif", rgb, mpp=0.5, tile=32)
            feats = labels_to_features(gland, ["background", "gland"], ["#00ff00", "#ff0000"], background=0,
                                       simplify=0)  # as QuPath would export them
            (tmp_path / "slides" / f"{name}.geojson").write_text(json.dumps(feature_collection(feats)))
            lines.append(f"slides/{name}.tif,{split},{name},{grade},slides/{name}.geojson")
            first_image[f"slides/{name}.tif"] = (ims[0], masks[0])
    (tmp_path / "slides.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "tiles"
    r = CliRunner().invoke(app, ["data", "tiles", str(tmp_path / "slides.csv"), "--out", str(out), "--tile", "64",
                                 "--mpp", "0.5", "--min-tissue", "0", "--tissue-threshold", "0.01",
                                 "--mask-classes", "background,gland"])
    assert r.exit_code == 0, r.output
    tiles = list(csv.DictReader(open(out / "manifest.csv", newline="")))
    assert len(tiles) == 4 * (len(lines) - 1)
    # the tile at (0, 0) of every slide is its first image, and the annotations give back that image's mask
    for t in (x for x in tiles if x["x"] == "0" and x["y"] == "0"):
        img, gt = first_image[t["slide"].removeprefix("../")]  # named from the tile manifest's folder
        assert (out / t["annotations"]).exists()
        np.testing.assert_array_equal(np.asarray(Image.open(out / t["image"])), img)
        assert (np.asarray(Image.open(out / t["mask"])) == gt).mean() > 0.99
    cfg = load_config("demo", [f"data.manifest={out / 'manifest.csv'}", *FAST])
    run = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, run, stop="eval_cam", log=lambda m: None)
    m = json.loads((run.path / "metrics" / "cam.json").read_text())
    assert 0 <= m["splits"]["test"]["predicted_gating"]["miou"] <= 100
