"""report.stage_rows: the per-stage table reads the metrics files of a run folder."""

from __future__ import annotations

import json
from pathlib import Path

from histowsss.evaluation.report import stage_rows


def test_the_cam_label_row_takes_the_training_split_that_was_scored(tmp_path: Path):
    """Masks on val only (LUAD-HistoSeg / BCSS-WSSS): the CAM label row shows val's score, not train's 'no masks'."""
    (tmp_path / "metrics").mkdir()
    scored = {"miou": 52.44, "mdice": 60.0, "per_class": {"TE": {"iou": 50.0}, "STR": {"iou": 54.88}}}
    cam = {"mode": "argmax", "chosen_on": ["val"],
           "splits": {"train": {"label_gating": None}, "val": {"label_gating": scored}, "test": {}}}
    (tmp_path / "metrics" / "cam.json").write_text(json.dumps(cam))
    row = next(r for r in stage_rows(tmp_path, ["TE", "STR"]) if r["stage"] == "CAM, classes from image labels")
    assert (row["split"], row["status"], row["mIoU"]) == ("val", "done", 52.44)
    cam["label_gating"] = "patch"  # gated by patch labels: the row says so
    (tmp_path / "metrics" / "cam.json").write_text(json.dumps(cam))
    stages = [r["stage"] for r in stage_rows(tmp_path, ["TE", "STR"])]
    assert "CAM, classes from patch labels" in stages and "CAM, classes from image labels" not in stages


def test_a_run_without_masks_shows_the_classifier_numbers(tmp_path: Path):
    """eval_cam scores the classifier without masks: the report and the closing table of run / demo show it."""
    from histowsss.cli.demo_cmd import stage_table
    from histowsss.evaluation.report import classification_rows, section_quality

    (tmp_path / "metrics").mkdir()
    cam = {"mode": "threshold", "splits": {"test": {"classification": {"auc": 97.5, "accuracy": 87.5, "images": 8}}}}
    (tmp_path / "metrics" / "cam.json").write_text(json.dumps(cam))
    assert classification_rows(tmp_path) == [{"split": "test", "images": 8, "AUC": 97.5, "accuracy": 87.5}]
    html = section_quality(tmp_path, ["benign", "malignant"])
    assert "Image classification" in html and "97.50" in html and "87.50" in html
    table = stage_table(tmp_path)
    assert "| classifier (image labels) | test | labels |" in table and "97.50" in table


def test_a_relative_manifest_read_from_elsewhere_is_not_taken_for_other_settings(tmp_path: Path, demo_data: Path,
                                                                                 monkeypatch):
    """The report resolves a relative manifest that does not resolve from the current folder (started inside the run
    folder, say): the numbers still follow from config.yaml, whose manifest path is as written."""
    from histowsss.config import load_config
    from histowsss.engine.run_dir import RunDir
    from histowsss.evaluation.report import build_report
    from histowsss.steps import eval_cam, make_cam, train_cam

    cfg = load_config("demo")  # data.manifest: runs/demo/data/manifest.csv, relative
    rd = RunDir(tmp_path / "runs" / "x", cfg).init()
    for step, mod in (("train_cam", train_cam), ("make_cam", make_cam), ("eval_cam", eval_cam)):
        with rd.step(step, mod.config_hash(cfg)):
            pass
    scored = {"miou": 50.0, "mdice": 60.0, "per_class": {"benign": {"iou": 50.0}, "malignant": {"iou": 50.0}}}
    (rd.path / "metrics").mkdir()
    (rd.path / "metrics" / "cam.json").write_text(json.dumps({"mode": "threshold", "splits": {
        "test": {"predicted_gating": scored, "classification": {"auc": 90.0, "accuracy": 80.0, "images": 2}}}}))
    monkeypatch.chdir(rd.path)
    html = build_report(rd.path)
    assert ">done<" in html and 'class="stale"' not in html and "Stale, not from" not in html
    monkeypatch.chdir(tmp_path)
    other = load_config("demo", ["train_cam.epochs=3"])
    RunDir(rd.path, other).init()  # config.yaml rewritten with other settings: now stale
    html = build_report(rd.path)
    assert 'class="stale"' in html and "files): metrics/cam.json (eval_cam: finished with other settings" in html
