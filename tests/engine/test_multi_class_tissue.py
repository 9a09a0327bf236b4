"""The whole pipeline on multi-label tissue-type labels with three classes (as in LUAD-HistoSeg or BCSS-WSSS), with
and without a background class, down to predict's QuPath GeoJSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histowsss.config import load_config
from histowsss.data.manifest import write_manifest
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.engine.pipeline import run_pipeline
from histowsss.engine.run_dir import RunDir
from histowsss.evaluation.report import build_report
from tests.engine.test_image_labels_only import FAST

NAMES = ["benign_gland", "malignant_gland", "stroma"]  # class 0 is a tissue an image may lack


@pytest.fixture(scope="module")
def tissue_manifest(tmp_path_factory) -> Path:
    """Synthetic images relabelled as tissue types: every image holds stroma and the glands of its own grade;
    masks hold class ids 0/1/2."""
    root = tmp_path_factory.mktemp("tissue")
    man = generate_synthetic_dataset(root / "syn", {"train": 6, "val": 2, "test": 2}, size=48)
    rows = list(csv.DictReader(man.open()))
    (root / "masks").mkdir()
    for r in rows:
        gland = Image.open(man.parent / r["mask"])
        fg = np.asarray(gland) > 0
        cls = "malignant_gland" if r["grade"] == "malignant" else "benign_gland"
        ids = np.where(fg, NAMES.index(cls), NAMES.index("stroma")).astype(np.uint8)
        ids[:4, :4] = 9  # a value that is no class (as 4, white background, in LUAD-HistoSeg masks)
        Image.fromarray(ids).save(root / "masks" / Path(r["mask"]).name)
        r["image"] = str(man.parent / r["image"])
        r["mask"] = str(root / "masks" / Path(r["mask"]).name)
        r["mask_cc"] = str(man.parent / r["mask_cc"])
        r["tissue"] = f"stroma;{cls}" if fg.any() else "stroma"
    write_manifest(root / "tissue.csv", rows)
    return root / "tissue.csv"


@pytest.mark.parametrize("background", ["stroma", "null"], ids=["stroma-as-background", "no-background"])
def test_three_tissue_classes_end_to_end(tissue_manifest: Path, tmp_path: Path, background: str):
    over = [f"data.manifest={tissue_manifest}", "data.label_column=tissue", "data.multi_label=true",
            f"data.classes.names=[{','.join(NAMES)}]", f"data.classes.background={background}",
            "data.classes.colors={}", "data.mask_mode=class_ids", "data.mask_ignore_values=[9]",
            "train_cam.background_mode=class", *FAST]
    cfg = load_config("demo", over)
    run = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, run, log=lambda m: None)
    assert run.status("eval_seg")["state"] == "done"
    rows = {r["name"]: r for r in csv.DictReader(tissue_manifest.open())}
    with np.load(run.path / "cams" / f"{next(iter(rows))}.npz") as z:
        assert list(z["classes"]) == NAMES  # a CAM for every tissue class, background or not
    for png in sorted((run.path / "pseudo").glob("*.png")):
        lab = np.asarray(Image.open(png))
        present = {NAMES.index(c) for c in rows[png.stem]["tissue"].split(";")}
        # a pseudo-mask holds only the classes its image is labelled with (the other grade's glands never)
        assert set(np.unique(lab).tolist()) <= present, png.name
    seg = json.loads((run.path / "metrics" / "seg.json").read_text())
    assert set(seg["all"]["per_class"]) == set(NAMES) and seg["all"]["miou"] is not None
    # the ignored corner is scored nowhere: the class supports add up to the test pixels less 16 per image
    n_test = sum(r["split"] == "test" for r in rows.values())
    assert sum(c["support"] for c in seg["all"]["per_class"].values()) == n_test * (48 * 48 - 16)
    assert "stroma" in build_report(run.path)
    cam = json.loads((run.path / "metrics" / "cam.json").read_text())
    assert cam["mode"] == ("argmax" if background == "null" else "offset")
    sem = json.loads((run.path / "metrics" / "sem_seg.json").read_text())
    ir = next(iter(sem["splits"].values()))["ir_labels"]
    # ignore pixels are counted as background only where there is one (not as whichever class is first)
    assert ("ignore_as_background" in ir) == (background != "null") and "confident_only" in ir
    from histowsss.cli.demo_cmd import stage_table

    table = stage_table(run.path)  # the demo's closing table reads either
    assert ("IR labels (confident pixels)" in table) == (background == "null") and "IRN pseudo-masks" in table
    if background == "null":  # no background parameter to choose, and the CRF (which needs one) is refused
        assert [r["value"] for r in cam["sweep"]] == [0.0]
        from histowsss.engine.run_dir import StepError
        from histowsss.steps import cam_to_ir_label

        crf = load_config("demo", over + ["ir_label.crf=true"])
        with pytest.raises(StepError, match="needs a background class"):
            cam_to_ir_label.run(crf, RunDir(run.path, crf), overwrite=True)
        # class 0 is a tissue, not background: IRN trains no background pairs, and it gets instances too
        irn_log = [json.loads(x) for x in (run.path / "logs" / "train_irn.jsonl").read_text().splitlines()]
        assert "dp_bg" not in irn_log[-1] and "dp_fg" in irn_log[-1]
        ir_metrics = json.loads((run.path / "metrics" / "ir_label.json").read_text())
        assert ir_metrics["chosen"]["conf_bg"] is None and run.status("cam_to_ir_label").get("conf_bg") is None
        fgs = [r["conf_fg"] for r in ir_metrics["sweep"]]
        assert len(fgs) == len(set(fgs)) and all(r["conf_bg"] is None for r in ir_metrics["sweep"])
        for png in sorted((run.path / "pseudo").glob("*.png")):
            lab = np.asarray(Image.open(png))
            inst = np.asarray(Image.open(run.path / "instances" / png.name))
            if (lab == 0).sum() > 50:  # a region of class 0 large enough to keep: it has an instance
                assert inst[lab == 0].max() > 0, png.name

    from histowsss.cli import predict_cmd

    test_img = next(r["image"] for r in rows.values() if r["split"] == "test")
    recs = predict_cmd.predict_images(run.path, [Path(test_img)], tmp_path / "pred", min_area=0, simplify=0,
                                      log=lambda m: None)
    assert len(recs) == 1
    gj = json.loads(next((tmp_path / "pred").glob("*.geojson")).read_text())
    named = {f["properties"]["classification"]["name"] for f in gj["features"]}
    assert named <= set(NAMES) and all(f["properties"]["objectType"] == "annotation" for f in gj["features"])
    if background == "null":  # with no background class every tissue is exported, stroma included
        lab = np.asarray(Image.open(next((tmp_path / "pred").glob("*_labels.png"))))
        assert {NAMES[v] for v in np.unique(lab)} <= named


def test_one_column_per_class_trains_as_the_label_column(tissue_manifest: Path, tmp_path: Path):
    """The same tissue labels written one 0/1 column per class: `histowsss init` finds the columns, `data check`
    passes, every image reads with the labels of the label column, and the CAM stage trains and scores on them."""
    from typer.testing import CliRunner

    from histowsss.cli.app import app
    from histowsss.data.manifest import read_manifest

    rows = list(csv.DictReader(tissue_manifest.open()))
    for r in rows:
        marked = r["tissue"].split(";")
        r.update({n: "1" if n in marked else "0" for n in NAMES})
        del r["tissue"], r["grade"], r["label"]
    one_hot = tmp_path / "one_hot.csv"
    write_manifest(one_hot, rows)
    cli = CliRunner()
    res = cli.invoke(app, ["init", str(one_hot), "--out", str(tmp_path / "c.yaml"), "--background", "none",
                           "--mask-ignore", "9", "--image-scale", "1.5"])  # (init wants >= 64 px)
    assert res.exit_code == 0, res.output
    cfg = load_config(tmp_path / "c.yaml", FAST)
    assert cfg.data.label_columns == NAMES and cfg.data.classes.names == NAMES and cfg.data.multi_label
    res = cli.invoke(app, ["data", "check", str(one_hot), "--config", str(tmp_path / "c.yaml")])
    assert res.exit_code == 0, res.output
    by_column = load_config("demo", [f"data.manifest={tissue_manifest}", "data.label_column=tissue",
                                     "data.multi_label=true", f"data.classes.names=[{','.join(NAMES)}]",
                                     "data.classes.background=null", "data.classes.colors={}",
                                     "data.mask_mode=class_ids"]).data
    assert [(s.name, set(s.labels)) for s in read_manifest(cfg.data)] == \
        [(s.name, set(s.labels)) for s in read_manifest(by_column)]
    run = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, run, stop="eval_cam", log=lambda m: None)
    cam = json.loads((run.path / "metrics" / "cam.json").read_text())
    assert cam["mode"] == "argmax" and set(cam["splits"]["test"]["predicted_gating"]["per_class"]) == set(NAMES)
    assert cam["splits"]["train"]["classification"]["images"] == sum(r["split"] == "train" for r in rows)
