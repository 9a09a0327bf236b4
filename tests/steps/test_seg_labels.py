"""Which labels train_seg learns from (steps/seg_labels.py): pseudo-masks, CAM labels, a label folder, clicks,
and the weak-label filters (patch veto, boundary band)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from histowsss.config import load_config
from histowsss.data.masks import load_class_mask
from histowsss.engine.atomic import write_npz, write_png
from histowsss.engine.pipeline import run_pipeline
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.steps import eval_cam, make_cam, seg_labels, segnet_io, train_seg
from histowsss.steps.common import all_splits, output_classes, samples_for

from tests.steps.seg_fixtures import fake_pseudo, make_cfg


def _fake_cams(cfg, run: RunDir) -> None:
    """Blurred ground truth on the stride-4 grid as CAMs + a finished make_cam record."""
    classes = output_classes(cfg)
    with run.step("make_cam", make_cam.config_hash(cfg)):
        for s in samples_for(cfg, all_splits(cfg)):
            gt = load_class_mask(s, cfg.data)
            h, w = gt.shape
            cams = [ndimage.gaussian_filter((gt == cfg.data.classes.index(c)).astype(np.float32)
                                            .reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3)), 1.0) for c in classes]
            probs = np.array([0.9 if (gt == cfg.data.classes.index(c)).any() else 0.1 for c in classes], np.float32)
            write_npz(make_cam.cam_path(run, s.name), cam=np.stack(cams).astype(np.float16), probs=probs,
                      classes=np.array(classes), size=np.array((h, w)), config_hash=np.array(make_cam.config_hash(cfg)))



def test_falls_back_to_cam_labels_when_configured(dataset: Path, tmp_path: Path):
    cfg = make_cfg(dataset, "train_seg.labels=pseudo_or_cam", "train_seg.epochs=1", "train_seg.loss=gce")
    run = RunDir(tmp_path / "run", cfg).init()
    _fake_cams(cfg, run)
    eval_cam.run(cfg, run)
    meta = train_seg.run(cfg, run)
    assert meta["label_source"] == "cam" and meta["loss"] == "gce"


def test_best_on_train_picks_the_better_label_source(tmp_path):
    """labels=best_on_train compares IRN pseudo-masks and CAM labels on the training images only."""
    from histowsss.config import load_config
    from histowsss.engine.atomic import write_json
    from histowsss.engine.run_dir import RunDir
    from histowsss.steps import eval_cam, eval_sem_seg
    from histowsss.steps.seg_labels import label_source

    cfg = load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}", "train_seg.labels=best_on_train"])
    run = RunDir(tmp_path / "run", cfg).init()
    for mod in (eval_cam, eval_sem_seg):
        with run.step(mod.STEP, mod.config_hash(cfg)):
            pass
    for cam, pseudo, expected in ((71.3, 67.6, "cam"), (60.0, 65.0, "pseudo")):
        write_json(run.path / "metrics" / "sem_seg.json",
                   {"splits": {"train": {"cam": {"miou": cam}, "irn_pseudo": {"miou": pseudo}}}})
        assert label_source(cfg, run) == expected
    # over train (15 images) and val (4): each split weighted by its images, not one vote each (user test, stop 47)
    write_json(run.path / "metrics" / "sem_seg.json",
               {"splits": {"train": {"images": 15, "cam": {"miou": 30.0}, "irn_pseudo": {"miou": 32.0}},
                           "val": {"images": 4, "cam": {"miou": 30.0}, "irn_pseudo": {"miou": 24.0}}}})
    assert label_source(cfg, run) == "pseudo"  # (30.3 vs 30.0; an unweighted mean: 28.0 vs 30.0, cam)
    # eval_cam's settings are an input of train_seg whenever CAM labels may be chosen, never with labels=pseudo
    sweep = "eval_cam.thresholds=[0.3]"
    for labels, follows in (("best_on_train", True), ("pseudo_or_cam", True), ("cam", True), ("pseudo", False)):
        a = load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}", f"train_seg.labels={labels}"])
        b = load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}", f"train_seg.labels={labels}", sweep])
        assert (train_seg.config_hash(a) != train_seg.config_hash(b)) == follows, labels


PATCHES = "data.patches={size: 16, stride: 8, label_rule: mask_fraction, min_fraction: 0.05}"


def test_patch_veto_turns_refused_labels_into_ignore_and_forces_nothing(dataset: Path, tmp_path: Path):
    from histowsss.data.label_gate import patch_allowed

    plain = make_cfg(dataset, PATCHES)
    cfg = make_cfg(dataset, PATCHES, "train_seg.patch_veto=true")
    assert train_seg.config_hash(cfg) != train_seg.config_hash(plain)
    run = RunDir(tmp_path / "run", plain).init()
    fake_pseudo(plain, run, noise=0.3)
    samples = samples_for(cfg, seg_labels.train_splits(cfg))
    before = seg_labels.load_labels(plain, run, samples, "pseudo")
    after = seg_labels.load_labels(cfg, run, samples, "pseudo")
    vetoed = wrong_before = wrong_after = 0
    for s, b, a in zip(samples, before, after):
        gt = load_class_mask(s, cfg.data)
        allowed = patch_allowed(gt, cfg.data)
        refused = ~np.take_along_axis(allowed, b.astype(np.int64)[None], axis=0)[0]
        assert (a[refused] == 255).all()                     # every refused label is vetoed ...
        assert (a[~refused] == b[~refused]).all()            # ... and nothing else changes (no class is forced)
        assert np.mean(a[a != 255] == gt[a != 255]) >= np.mean(b == gt)  # the kept labels are no noisier
        vetoed += int(refused.sum())
        wrong_before += int((b != gt).sum())
        wrong_after += int(((a != gt) & (a != 255)).sum())
    assert vetoed > 0 and wrong_after < wrong_before
    with pytest.raises(Exception, match="patch_veto needs patch labels"):
        make_cfg(dataset, "train_seg.patch_veto=true")


def test_boundary_ignore_bands_weak_labels_only(dataset: Path, tmp_path: Path):
    """train_seg.boundary_ignore turns the pixels along the weak labels' class boundaries into ignore; the
    ground truth of the supervised network is never banded; radius 0 (the default) keeps the hash."""
    from histowsss.ops.label_band import ignore_boundary_band

    plain = make_cfg(dataset)
    cfg = make_cfg(dataset, "train_seg.boundary_ignore=2")
    assert train_seg.config_hash(cfg) != train_seg.config_hash(plain)
    assert train_seg.config_hash(make_cfg(dataset, "train_seg.boundary_ignore=0")) == train_seg.config_hash(plain)
    run = RunDir(tmp_path / "run", plain).init()
    fake_pseudo(plain, run, noise=0.0)
    samples = samples_for(cfg, seg_labels.train_splits(cfg))
    before = seg_labels.load_labels(plain, run, samples, "pseudo")
    after = seg_labels.load_labels(cfg, run, samples, "pseudo")
    banded = 0
    for b, a in zip(before, after):
        assert (a == ignore_boundary_band(b, 2)).all()
        banded += int(((a == 255) & (b != 255)).sum())
    assert banded > 0
    for s, g in zip(samples, seg_labels.load_labels(cfg, run, samples, "ground_truth")):
        assert (g == load_class_mask(s, cfg.data)).all()


def test_self_training_on_a_label_folder_written_by_predict(dataset: Path, tmp_path: Path):
    """labels=folder trains on `histowsss predict` output (<stem>_labels.png) of an earlier run: self-training."""
    from histowsss.cli.predict_cmd import predict_images

    cfg = make_cfg(dataset, "train_seg.epochs=1")
    run1 = RunDir(tmp_path / "round0", cfg).init()
    fake_pseudo(cfg, run1)
    run_pipeline(cfg, run1, start="train_seg", stop="train_seg", log=lambda m: None)
    train = samples_for(cfg, seg_labels.train_splits(cfg))
    out = tmp_path / "self_labels"
    predict_images(run1.path, [Path(s.image) for s in train], out, log=lambda m: None)
    # the weights' fingerprint (key of predict's slide tile cache) follows the checkpoint file
    fp = segnet_io.weights_fingerprint(run1.path, "seg")
    assert fp == segnet_io.weights_fingerprint(run1.path, "seg")
    ckpt = segnet_io.checkpoint_path(run1.path, "seg")
    os.utime(ckpt, ns=(ckpt.stat().st_atime_ns, ckpt.stat().st_mtime_ns + 10**9))
    assert segnet_io.weights_fingerprint(run1.path, "seg") != fp

    cfg2 = make_cfg(dataset, "train_seg.epochs=1", "train_seg.labels=folder", f"train_seg.label_dir={out}")
    run2 = RunDir(tmp_path / "round1", cfg2).init()
    labels = seg_labels.load_labels(cfg2, run2, train, seg_labels.label_source(cfg2, run2))
    for s, lab in zip(train, labels):
        assert np.array_equal(lab, np.asarray(Image.open(out / f"{Path(s.image).stem}_labels.png")))
    run_pipeline(cfg2, run2, start="train_seg", stop="eval_seg", log=lambda m: None)
    meta = json.loads((run2.path / "checkpoints" / "seg.json").read_text())
    assert meta["label_source"] == "folder" and meta["train_images"] == len(train)
    # other labels in the folder = other inputs: the finished run no longer counts as done
    h = train_seg.config_hash(cfg2)
    assert run2.is_done("train_seg", h)
    # hidden files (a killed atomic write's temporary, macOS resource forks) are not labels
    write_png(out / f".{Path(train[0].image).stem}_labels.x1.partial.png", np.zeros((4, 4), np.uint8))
    write_png(out / f"._{Path(train[0].image).stem}_labels.png", np.zeros((4, 4), np.uint8))
    assert train_seg.config_hash(cfg2) == h
    first = out / f"{Path(train[0].image).stem}_labels.png"
    write_png(first, 1 - np.asarray(Image.open(first)))
    assert train_seg.config_hash(cfg2) != h


def test_label_folder_errors_and_level0_labels_are_scaled(dataset: Path, tmp_path: Path):
    from histowsss.config import ConfigError

    with pytest.raises(ConfigError, match="label_dir"):
        make_cfg(dataset, "train_seg.labels=folder")
    folder = tmp_path / "labels"
    cfg = make_cfg(dataset, "train_seg.labels=folder", f"train_seg.label_dir={folder}")
    run = RunDir(tmp_path / "run", cfg).init()
    with pytest.raises(StepError, match="not a folder"):
        train_seg.run(cfg, run)
    train = samples_for(cfg, seg_labels.train_splits(cfg))
    for s in train[1:]:  # the first image has no label
        write_png(folder / f"{s.name}.png", load_class_mask(s, cfg.data))
    with pytest.raises(StepError, match=f"no label for training image {train[0].name}"):
        train_seg.run(cfg, run)
    # level-0 labels (64 px) are nearest-resized to data.image_scale (0.5 -> 32 px)
    half = make_cfg(dataset, "train_seg.labels=folder", f"train_seg.label_dir={folder}", "data.image_scale=0.5")
    lab = seg_labels.folder_labels(half, train[1:2])[0]
    assert lab.shape == (32, 32)
    assert np.array_equal(lab, load_class_mask(train[1], half.data))


def test_clicks_overwrite_weak_labels_at_their_resolution(tmp_path):
    from histowsss.data.manifest import Sample
    from histowsss.steps.seg_labels import click_labels

    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(img)
    clicks = tmp_path / "c.csv"
    clicks.write_text("image,x,y,class\na,30,20,malignant\n")
    s = Sample(name="a", image=img, split="train", patient="p", labels=("malignant",))
    cfg = load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}", f"points.file={clicks}", "points.radius=4"])
    half = click_labels(cfg, [s], [np.zeros((20, 30), np.uint8)])[0]  # labels at image_scale 0.5
    assert half[10, 15] == 1 and half[10, 12] == 0  # radius 4 level-0 px = 2 px at half size
    assert (half == 1).sum() == pytest.approx(np.pi * 4, abs=4)
    full = click_labels(cfg, [s], [np.zeros((40, 60), np.uint8)])[0]
    assert (full == 1).sum() == pytest.approx(np.pi * 16, abs=8)
    off = load_config("demo", [f"data.manifest={tmp_path / 'm.csv'}", f"points.file={clicks}",
                               "points.use_in=[ir_label]"])
    assert (click_labels(off, [s], [np.zeros((40, 60), np.uint8)])[0] == 0).all()


def test_synthetic_crops_replace_a_fraction_of_the_weak_crops(dataset: Path, tmp_path: Path, monkeypatch):
    """train_seg.synthetic_fraction: that share of each epoch's crops is stitched from the single-class patches of
    the training images (exact masks); the other crops are the ones the plan cuts without it; the supervised
    network ignores the setting."""
    strict = make_cfg(dataset, PATCHES, "train_seg.synthetic_fraction=0.5", "train_seg.epochs=1")
    run = RunDir(tmp_path / "strict", strict).init()
    fake_pseudo(strict, run)
    with pytest.raises(StepError, match=r"single-class patches of at least two classes.*'malignant': 0.*"
                                        r"synthetic_fraction=0"):
        train_seg.run(strict, run)  # no 16-px patch of these small tumours is 95 % malignant
    loose = PATCHES.replace("0.05", "0.3")
    plain = make_cfg(dataset, loose)
    cfg = make_cfg(dataset, loose, "train_seg.synthetic_fraction=0.5", "train_seg.epochs=1")
    assert train_seg.config_hash(cfg) != train_seg.config_hash(plain)
    sup = [load_config("demo", [f"data.manifest={dataset}", PATCHES, "train_seg.supervised=true", *x])
           for x in ([], ["train_seg.synthetic_fraction=0.5"])]
    assert train_seg.config_hash(sup[0]) == train_seg.config_hash(sup[1])
    sizes = [(64, 64)] * 6
    a = train_seg.epoch_plan(sizes, 32, 4, (0.8, 1.25), 0, 3)
    b = train_seg.epoch_plan(sizes, 32, 4, (0.8, 1.25), 0, 3, synthetic=0.5)
    synth = [j for j, e in enumerate(b) if e[0] < 0]
    assert len(synth) == 12 and all(a[j] == b[j] for j in range(len(a)) if j not in synth)
    made: list[tuple[np.ndarray, np.ndarray]] = []
    real_synth = __import__("histowsss.data.synthesis", fromlist=["synthesize"]).synthesize

    def spy(*args, **kw):
        out = real_synth(*args, **kw)
        made.append(out)
        return out

    monkeypatch.setattr("histowsss.data.synthesis.synthesize", spy)
    run = RunDir(tmp_path / "run", cfg).init()
    fake_pseudo(cfg, run, noise=0.3)
    train_seg.run(cfg, run)
    st = run.status("train_seg")
    assert set(st["synthetic_regions"]) == {"benign", "malignant"} and min(st["synthetic_regions"].values()) > 0
    n = len(samples_for(cfg, seg_labels.train_splits(cfg))) * cfg.train_seg.crops_per_image
    assert len(made) == round(0.5 * n)
    assert any(len(np.unique(lab)) > 1 for _, lab in made)
    # the agreement logged is with the weak labels; the synthetic crops' own is logged beside it
    rec = json.loads((run.path / "logs" / "train_seg.jsonl").read_text().splitlines()[-1])
    assert 0 <= rec["label_acc"] <= 1 and 0 <= rec["synthetic_acc"] <= 1
