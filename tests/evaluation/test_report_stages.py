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
