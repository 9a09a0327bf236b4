"""The whole pipeline with image labels only: no training image has a mask (the usual weakly supervised case)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from histowsss.config import load_config
from histowsss.data.manifest import write_manifest
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.engine.pipeline import run_pipeline
from histowsss.engine.run_dir import RunDir
from histowsss.evaluation.report import build_report

FAST = ["train_cam.epochs=1", "train_cam.crop_size=48", "train_cam.crops_per_image=2", "train_cam.cache_copies=1",
        "train_cam.head_channels=16", "train_cam.min_epochs_before_diagnosis=5", "make_cam.scales=[1.0]",
        "make_cam.flip=false", "train_irn.epochs=1", "train_irn.batch_size=4", "train_irn.crop_size=48",
        "train_irn.crops_per_image=1", "train_irn.radius=5", "train_irn.edge_channels=8", "train_irn.dp_channels=16",
        "sem_seg.exp_times=2", "ins_seg.refine_iterations=5", "ins_seg.min_area=4",
        "train_seg.encoder=test_efficientnet", "train_seg.encoder_weights=none",
        "train_seg.decoder_channels=[16,16,8,8,8]", "train_seg.epochs=1", "train_seg.batch_size=4",
        "train_seg.crop_size=32", "train_seg.crops_per_image=1", "train_seg.members=1", "eval_seg.tile_size=32",
        "eval_seg.scales=[1.0]", "eval_seg.tta=none", "upper_bound=false"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), {"train": 6, "val": 2, "test": 2}, size=48)


def without_masks(manifest: Path, out: Path, keep_test: bool) -> Path:
    """A copy of the manifest with absolute paths and no mask (test masks kept when ``keep_test``)."""
    rows = list(csv.DictReader(manifest.open()))
    for r in rows:
        r["image"] = str(manifest.parent / r["image"])
        keep = keep_test and r["split"] == "test"
        r["mask"] = str(manifest.parent / r["mask"]) if keep else ""
        r["mask_cc"] = str(manifest.parent / r["mask_cc"]) if keep else ""
    write_manifest(out, rows)
    return out


@pytest.mark.parametrize("keep_test", [True, False], ids=["test-masks-only", "no-masks-at-all"])
def test_pipeline_runs_with_image_labels_only(dataset: Path, tmp_path: Path, keep_test: bool):
    man = without_masks(dataset, tmp_path / "m.csv", keep_test)
    extra = [] if keep_test else ["data.mask_column=null"]
    cfg = load_config("demo", [f"data.manifest={man}", *FAST, *extra])
    run = RunDir(tmp_path / "run", cfg).init()
    res = run_pipeline(cfg, run, log=lambda m: None)
    assert "eval_seg" in res and run.status("eval_seg")["state"] == "done"
    cam = json.loads((run.path / "metrics" / "cam.json").read_text())
    # nothing to sweep on: documented defaults, and the record says why
    assert cam["chosen_on"] == [] and cam["sweep"] == [] and cam["chosen_value"] == 0.15 and cam["chosen_gate"] == 0.5
    assert "no image of train, val has a mask" in cam["chosen_how"]
    assert cam["masked_images"]["train"] == 0 and "classification" in cam["splits"]["train"]
    assert "label_gating" not in cam["splits"]["train"]
    ir = json.loads((run.path / "metrics" / "ir_label.json").read_text())
    assert ir["select"].startswith("fixed")
    assert json.loads((run.path / "metrics" / "sem_seg.json").read_text())["splits"] == {}
    assert json.loads((run.path / "checkpoints" / "seg.json").read_text())["label_source"] == "pseudo"
    seg = json.loads((run.path / "metrics" / "seg.json").read_text())
    preds = sorted((run.path / "pred").glob("*.png"))
    assert len(preds) == 2  # every test image is segmented, with or without a mask
    if keep_test:
        assert cam["masked_images"]["test"] == 2 and cam["splits"]["test"]["predicted_gating"]["miou"] is not None
        assert seg["all"]["miou"] is not None
    else:
        assert "predicted_gating" not in cam["splits"]["test"]
    text = build_report(run.path)
    assert "no masks" in text


def test_the_chosen_value_can_be_set_for_mask_free_runs(dataset: Path, tmp_path: Path):
    man = without_masks(dataset, tmp_path / "m.csv", True)
    cfg = load_config("demo", [f"data.manifest={man}", *FAST, "eval_cam.no_mask_value=0.3"])
    run = RunDir(tmp_path / "run", cfg).init()
    run_pipeline(cfg, run, stop="eval_cam", log=lambda m: None)
    assert json.loads((run.path / "metrics" / "cam.json").read_text())["chosen_value"] == pytest.approx(0.3)
    assert np.isfinite(json.loads((run.path / "metrics" / "cam.json").read_text())["chosen_gate"])
