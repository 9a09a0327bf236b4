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
