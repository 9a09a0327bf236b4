"""Patient cross-validation (histowsss tune) on tiny synthetic data with fake weak labels."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from histowsss.cli.app import app
from histowsss.config import ConfigError, load_config
from histowsss.data.manifest import write_manifest
from histowsss.data.masks import load_class_mask
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.engine.atomic import write_npz, write_png
from histowsss.engine.run_dir import RunDir
from histowsss.steps import make_sem_seg_labels, seg_labels, train_seg
from histowsss.steps.common import samples_for
from histowsss.tuning import crossval as cv

SEG = ["train_seg.labels=pseudo", "train_seg.encoder=test_efficientnet", "train_seg.encoder_weights=none",
       "train_seg.decoder_channels=[16,16,8,8,8]", "train_seg.epochs=1", "train_seg.batch_size=4",
       "train_seg.crop_size=32", "train_seg.crops_per_image=1", "eval_seg.tile_size=32", "eval_seg.batch_size=16",
       "eval_seg.scales=[1.0]", "eval_seg.tta=none"]
CAM = ["train_cam.epochs=1", "train_cam.crop_size=48", "train_cam.crops_per_image=2", "train_cam.cache_copies=1",
       "train_cam.head_channels=32", "make_cam.scales=[1.0]", "make_cam.flip=false",
       "train_cam.min_epochs_before_diagnosis=5"]
runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), {"train": 8, "val": 2, "test": 3}, size=48)


def weak_run(manifest: Path, path: Path, *extra: str) -> RunDir:
    """A run folder with finished weak labels (ground truth with 10 % of the pixels flipped) and fake classifier
    probabilities in cams/ (0.9 for malignant images, 0.2 for benign ones)."""
    cfg = load_config("demo", [f"data.manifest={manifest}", *SEG, *CAM, *extra])
    run = RunDir(path, cfg).init()
    rng = np.random.default_rng(0)
    with run.step("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg)):
        for s in samples_for(cfg, seg_labels.train_splits(cfg)):
            gt = load_class_mask(s, cfg.data) if s.mask else np.zeros((48, 48), np.uint8)
            flip = rng.random(gt.shape) < 0.1
            write_png(run.path / "pseudo" / f"{s.name}.png", np.where(flip, 1 - gt, gt).astype(np.uint8))
            p = 0.9 if "malignant" in s.labels else 0.2
            write_npz(run.path / "cams" / f"{s.name}.npz", probs=np.array([p], np.float32),
                      classes=np.array(["malignant"]))
    return run


def test_folds_keep_patients_together_and_need_enough_patients():
    patients = ["a", "a", "b", "c", "c", "d"]
    assign = cv.fold_assignment(patients, ["x", "x", "y", "x", "x", "y"], 2)
    assert set(assign) == set(patients) and set(assign.values()) == {"fold0", "fold1"}
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        cv.fold_assignment(patients, ["x"] * 6, 5)
    with pytest.raises(ValueError, match="at least 2"):
        cv.fold_assignment(patients, ["x"] * 6, 1)
    with pytest.raises(ValueError, match="needs at least 2 training patients, got 1"):  # not "use --folds 2"
        cv.fold_assignment(["a", "a"], ["x", "x"], 2)


def test_fold_manifest_moves_the_fold_to_holdout_with_absolute_paths(dataset: Path, tmp_path: Path):
    out = tmp_path / "m.csv"
    cv.fold_manifest(dataset, {"syn_train_000", "syn_val_001"}, out)
    rows = list(csv.DictReader(out.open()))
    held = {r["name"] for r in rows if r["split"] == "holdout"}
    assert held == {"syn_train_000", "syn_val_001"}
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).exists() for r in rows)
    assert sum(r["split"] == "test" for r in rows) == 3  # test rows stay test


def test_fold_manifest_keeps_linked_image_names(dataset: Path, tmp_path: Path):
    """Images that are symbolic links (the own-data layout) keep their names; unknown names are refused."""
    rows = list(csv.DictReader(dataset.open()))
    (tmp_path / "links").mkdir()
    for r in rows:
        link = tmp_path / "links" / f"p{r['patient']}__{Path(r['image']).name}"
        link.symlink_to(dataset.parent / r["image"])
        r["image"], r["mask"], r["mask_cc"], r["name"] = f"links/{link.name}", "", "", ""
    src = tmp_path / "m.csv"
    write_manifest(src, rows)
    first = Path(rows[0]["image"]).stem
    cv.fold_manifest(src, {first}, tmp_path / "out.csv")
    out = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [Path(r["image"]).stem for r in out if r["split"] == "holdout"] == [first]
    assert all(Path(r["image"]).is_symlink() for r in out)
    with pytest.raises(ValueError, match="would have seen them"):
        cv.fold_manifest(src, {first, "syn_train_000"}, tmp_path / "out2.csv")  # the link target's name


def test_chosen_overrides_reproduce_the_variant():
    assert cv.chosen_overrides("a.b=1; c=2", "image_gate@0.3", False) == [
        "a.b=1", "c=2", "eval_seg.image_gate=true", "eval_seg.image_gate_cut=0.3"]
    assert cv.chosen_overrides("", "network", True) == ["eval_seg.image_gate=false"]
    assert cv.chosen_overrides("x=1", "network", False) == ["x=1"]
    # a candidate's own gate settings give way to the variant's (they printed image_gate=true, then =false)
    assert cv.chosen_overrides("x=1;eval_seg.image_gate=true", "network", False) == ["x=1", "eval_seg.image_gate=false"]
    assert cv.chosen_overrides("eval_seg.image_gate=true;eval_seg.image_gate_cut=0.5", "image_gate@0.2", False) == [
        "eval_seg.image_gate=true", "eval_seg.image_gate_cut=0.2"]


def test_the_choice_switches_off_a_gate_the_candidate_itself_sets_and_needs_a_score():
    """The ungated ``network`` variant is what was scored: a candidate that turns the gate on must get it switched
    off again, even when the run's config does not gate; a criterion with no value anywhere is an error."""
    pooled = [{"candidate": 0, "overrides": "", "network": {"miou": 50.0}},
              {"candidate": 1, "overrides": "eval_seg.image_gate=true", "network": {"miou": 60.0}}]
    chosen = cv.choose(pooled, "miou", ["", "eval_seg.image_gate=true"], [False, True])
    assert chosen["index"] == 1 and chosen["miou"] == 60.0
    assert chosen["overrides"] == ["eval_seg.image_gate=false"]  # (not "=true" then "=false")
    none = [{"candidate": 0, "overrides": "", "network": {"iou_x": None}}]
    with pytest.raises(ValueError, match="no candidate has a iou_x score"):
        cv.choose(none, "iou_x", [""], [False])


def test_duplicate_candidates_mark_one_choice(tmp_path: Path):
    """The same candidate given twice: the report marks the chosen row only (it once marked both, by their text)."""
    from histowsss.evaluation.report import section_tuning

    pooled = [{"candidate": i, "overrides": "a=1", "network": {"miou": m, "fold_mean_miou": m}}
              for i, m in enumerate((50.0, 52.0))]
    chosen = cv.choose(pooled, "miou", ["a=1", "a=1"], [False, False])
    assert chosen["index"] == 1
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "crossval.json").write_text(json.dumps(
        {"folds": 2, "criterion": "miou", "pooled": pooled, "chosen": chosen, "training_images": 4}))
    assert section_tuning(tmp_path).count("(chosen)") == 1


def test_a_class_missing_from_a_fold_neither_crashes_nor_wins():
    assert cv._mean_of_known([50.0, None, 60.0]) == 55.0 and cv._mean_of_known([None]) is None
    pooled = [{"candidate": 0, "overrides": "", "network": {"iou_x": None}, "image_gate@0.5": {"iou_x": 10.0}},
              {"candidate": 1, "overrides": "a=1", "network": {"iou_x": 5.0}}]
    assert cv.best_variant(pooled, "iou_x") == (0, "image_gate@0.5")


def test_candidates_cannot_change_how_the_data_are_read():
    """Scored on the run's images and masks: a data.* candidate would be trained at one setting, judged at another."""
    assert cv.parse_candidate(" train_seg.epochs=3 ;eval_seg.tta=none") == ["train_seg.epochs=3", "eval_seg.tta=none"]
    with pytest.raises(ConfigError, match="data.image_scale=0.5: cross-validation compares"):
        cv.parse_candidate("train_seg.epochs=3;data.image_scale=0.5")
    for key in ("train_seg.splits=[train,test]", "eval_cam.choose_on=[test]"):  # ignored by the folds, then printed
        with pytest.raises(ConfigError, match="split settings are not candidates"):
            cv.parse_candidate(key)


def test_crossval_scores_every_training_image_once_and_resumes(dataset: Path, tmp_path: Path, monkeypatch):
    run = weak_run(dataset, tmp_path / "run")
    cfg = run.cfg
    read: list[str] = []
    import histowsss.data.loading as loading

    real_load = loading.load_image
    def spy(p, d):
        read.append(Path(p).name)
        return real_load(p, d)

    monkeypatch.setattr(loading, "load_image", spy)
    monkeypatch.setattr(train_seg, "load_image", spy)
    res = cv.crossval(run.path, ["", "train_seg.epochs=2"], tmp_path / "work", folds=2, gate_cuts=[0.5],
                      criterion="iou_malignant", log=lambda m: None)
    train_s = samples_for(cfg, seg_labels.train_splits(cfg))
    assert read and not any("test" in n for n in read)  # test images are never read
    assert res["training_images"] == len(train_s) == 10
    pix = sum(load_class_mask(s, cfg.data).size for s in train_s)
    for row in res["pooled"]:
        assert set(row) == {"candidate", "overrides", "network", "image_gate@0.5"}
    # each training image is scored once per candidate and variant: the pooled pixel count is the images' total
    folds = res["per_fold"]
    assert sorted(n for f in folds for n in f["val_patients"]) == sorted({s.patient for s in train_s})
    assert sum(f["val_images"] for f in folds) == len(train_s)
    assert all(f["fit_images"] + f["val_images"] == len(train_s) for f in folds)
    recs = sorted((tmp_path / "work").glob("fold*_candidate*.json"))
    assert len(recs) == 4
    total = sum(np.asarray(json.loads(r.read_text())["confusion"]["network"]).sum() for r in recs)
    assert total == 2 * pix
    # the gate at 0.5 removes "malignant" from every benign image: no malignant pixel predicted there
    assert sum(f["images_with_class_removed"]["image_gate@0.5"] for f in folds) == sum(
        "malignant" not in s.labels for s in train_s)
    gated = res["pooled"][0]["image_gate@0.5"]
    assert gated["iou_benign"] >= res["pooled"][0]["network"]["iou_benign"]
    assert res["chosen"][res["criterion"]] == max(v["iou_malignant"] for r in res["pooled"] for v in r.values()
                                                  if isinstance(v, dict))
    # a second call trains nothing: every (fold, candidate) record is kept and gives the same numbers
    monkeypatch.setattr(train_seg, "fit", lambda *a, **k: pytest.fail("retrained a finished fold"))
    again = cv.crossval(run.path, ["", "train_seg.epochs=2"], tmp_path / "work", folds=2, gate_cuts=[0.5],
                        criterion="iou_malignant", log=lambda m: None)
    assert again["pooled"] == res["pooled"] and again["chosen"] == res["chosen"]
    # new gate cuts re-score the kept fold probabilities, still without training
    more = cv.crossval(run.path, ["", "train_seg.epochs=2"], tmp_path / "work", folds=2, gate_cuts=[0.5, 0.1],
                       criterion="iou_malignant", log=lambda m: None)
    for old_row, row in zip(res["pooled"], more["pooled"]):
        assert row["network"] == old_row["network"] and row["image_gate@0.5"] == old_row["image_gate@0.5"]
        # every image's fake classifier probability is >= 0.2: a 0.1 cut removes nothing
        assert row["image_gate@0.1"]["miou"] == row["network"]["miou"]
    # an object clean-up in the run's config does not change the kept probabilities: still nothing to train
    text = (run.path / "config.yaml").read_text()
    assert "  min_object_area: 0\n" in text and "  split_h: 0.0\n" in text
    (run.path / "config.yaml").write_text(text.replace("  min_object_area: 0\n", "  min_object_area: 30\n")
                                          .replace("  split_h: 0.0\n", "  split_h: 2.0\n"))
    assert cv.load_config(str(run.path / "config.yaml")).eval_seg.min_object_area == 30
    assert cv.crossval(run.path, ["", "train_seg.epochs=2"], tmp_path / "work", folds=2, gate_cuts=[0.5],
                       criterion="iou_malignant", log=lambda m: None)["pooled"] == res["pooled"]
    # bad input names the problem before any training
    with pytest.raises(ConfigError, match="criterion 'iou_gland' unknown"):
        cv.crossval(run.path, [""], tmp_path / "work", folds=2, criterion="iou_gland")
    with pytest.raises(ValueError, match="gate cuts"):
        cv.crossval(run.path, [""], tmp_path / "work", folds=2, gate_cuts=[1.5])
    with pytest.raises(ValueError, match="unknown|no field|not a"):
        cv.crossval(run.path, ["train_seg.no_such_key=1"], tmp_path / "work", folds=2)


def test_holdout_classifier_never_sees_the_fold(dataset: Path, tmp_path: Path):
    run = weak_run(dataset, tmp_path / "run", "make_cam.splits=[train,val,test]")  # holdout is added to these
    # a second call with another fold assignment in the same (kept) work folder must not reuse the first call's
    # held-out classifiers: each of those saw some of the new folds' patients
    assignments = []
    for seed in (0, 1):
        res = cv.crossval(run.path, [""], tmp_path / "work", folds=2, gate_cuts=[0.5], holdout_classifier=True,
                          seed=seed, log=lambda m: None)
        assignments.append(sorted(tuple(f["val_patients"]) for f in res["per_fold"]))
        for f in res["per_fold"]:
            cam_run = tmp_path / "work" / f["holdout_cam_run"]
            man = load_config(str(cam_run / "config.yaml")).data.manifest
            rows = list(csv.DictReader(open(man)))
            held = {r["patient"] for r in rows if r["split"] == "holdout"}
            trained_on = {r["patient"] for r in rows if r["split"] in ("train", "val")}
            assert held == set(f["val_patients"]) and not held & trained_on
            assert json.loads((cam_run / "status" / "eval_cam.json").read_text())["state"] == "done"
            assert "chosen_gate" in f["holdout_classifier"] and f["holdout_cam_seconds"] >= 0
    assert assignments[0] != assignments[1]  # the seeds draw other folds, so the check above meant something
    assert len(list((tmp_path / "work").glob("fold*_cam"))) == 4  # each held-out set trained its own classifier


def test_cli_writes_the_result_and_refuses_to_overwrite_it(dataset: Path, tmp_path: Path):
    run = weak_run(dataset, tmp_path / "run")
    args = ["tune", str(run.path), "--folds", "2", "--gate-cuts", "0.5", "--criterion", "iou_malignant"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    out = run.path / "tuning" / "crossval.json"
    res = json.loads(out.read_text())
    assert res["chosen"]["variant"] in {"network", "image_gate@0.5"} and not (run.path / "tuning" / "crossval").exists()
    assert "chosen: " in r.output
    text = " ".join(r.output.split())
    assert ("the gate was judged with the run's own CAM classifier" in text) == (res["chosen"]["variant"] != "network")
    line = r"fold0: candidate 0: network: mIoU [\d.]+ \(benign [\d.]+, malignant [\d.]+\); image_gate@0.5: mIoU"
    assert re.search(line, " ".join(r.output.split())), r.output  # a line a person reads, not a JSON record
    from histowsss.evaluation.report import build_report

    text = build_report(run.path)  # the report shows the cross-validation and marks the choice
    assert "crossval: 2-fold patient cross-validation" in text and "(chosen)" in text and "image_gate@0.5" in text
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = runner.invoke(app, ["tune", str(run.path), "--folds", "2", "--gate-cuts", "0.5,x", "--name", "b"])
    assert r.exit_code == 2 and "comma-separated" in r.output


def test_only_images_with_masks_are_scored_and_their_patients_never_train_the_fold(dataset: Path, tmp_path: Path):
    rows = list(csv.DictReader(dataset.open()))
    first = next(r["patient"] for r in rows if r["split"] == "train")
    for r in rows:
        r["image"] = str(dataset.parent / r["image"])
        r["mask"] = "" if r["patient"] == first else str(dataset.parent / r["mask"])
    man = tmp_path / "partial.csv"
    write_manifest(man, rows)
    run = weak_run(man, tmp_path / "run")
    res = cv.crossval(run.path, [""], tmp_path / "work", folds=2, gate_cuts=[0.5], holdout_classifier=True,
                      log=lambda m: None)
    unmasked = sum(r["patient"] == first for r in rows)
    assert unmasked and res["scored_images"] == res["training_images"] - unmasked
    assert sum(f["val_images"] for f in res["per_fold"]) == res["scored_images"]
    assert sum(f["unscored_val_images"] for f in res["per_fold"]) == unmasked
    for f in res["per_fold"]:  # the unmasked patient trains the other fold, never its own
        assert f["fit_images"] == res["training_images"] - f["val_images"] - f["unscored_val_images"]
    for r in rows:
        r["mask"] = ""
    write_manifest(man, rows)
    from histowsss.cli.tune_cmd import choice_notes

    assert choice_notes(res)[0] == (f"note: scored on {res['scored_images']} of the {res['training_images']} training "
                                    "images (those with a mask): a choice on so few is noise, give masks for more "
                                    "patients")  # (said on the console, not only in the JSON)
    with pytest.raises(RuntimeError, match="fill the mask column"):
        cv.crossval(run.path, [""], tmp_path / "work2", folds=2, log=lambda m: None)


def test_cli_also_chooses_the_object_clean_up_on_the_out_of_fold_predictions(dataset: Path, tmp_path: Path):
    run = weak_run(dataset, tmp_path / "run")
    r = runner.invoke(app, ["tune", str(run.path), "--folds", "2", "--object-areas", "0,30", "--hole-areas", "0,10",
                            "--split-h", "0,2", "--gate-cuts", "0.5"])
    assert r.exit_code == 0, r.output
    res = json.loads((run.path / "tuning" / "crossval.json").read_text())
    cl = res["cleanup"]
    assert cl["variant"] == res["chosen"]["variant"]  # scored as the chosen variant gates (or not)
    assert [(x["min_object_area"], x["max_hole_area"], x["split_h"]) for x in cl["rows"]] == [
        (a, h, s) for a in (0, 30) for h in (0, 10) for s in (0.0, 2.0)]
    assert all(x["objects"]["images"] == res["scored_images"] for x in cl["rows"])
    c = cl["chosen"]
    assert cl["overrides"] == [f"eval_seg.min_object_area={c['min_object_area']}",
                               f"eval_seg.max_hole_area={c['max_hole_area']}", f"eval_seg.split_h={c['split_h']}"]
    assert "chosen clean-up: --set eval_seg.min_object_area=" in r.output
    assert not (run.path / "tuning" / "crossval").exists()  # the fold probabilities were scored before removal
    r = runner.invoke(app, ["tune", str(run.path), "--folds", "2", "--hole-areas", "10", "--name", "h"])
    assert r.exit_code == 2 and "--object-areas" in r.output
    # without instance masks the clean-up is refused before any fold trains (it once trained them all first)
    rows = list(csv.DictReader(dataset.open()))
    for row in rows:
        row["image"], row["mask"], row["mask_cc"] = (str(dataset.parent / row[k]) for k in ("image", "mask", "mask_cc"))
        row["mask_cc"] = ""
    man = tmp_path / "no_cc.csv"
    write_manifest(man, rows)
    run2 = weak_run(man, tmp_path / "run2")
    r = runner.invoke(app, ["tune", str(run2.path), "--folds", "2", "--object-areas", "0,30", "--name", "cc"])
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and "add a mask_cc column" in out and "no_cc.csv" in out
    assert not (run2.path / "tuning" / "cc").exists()


def test_fold_manifest_follows_data_root_and_the_mask_column(dataset: Path, tmp_path: Path, monkeypatch):
    """A manifest kept apart from its images (data.root) with masks in a column of another name: the fold manifest's
    paths are absolute from data.root, and the held-out CAM stage runs it with data.root unset."""
    rows = list(csv.DictReader(dataset.open()))
    for r in rows:
        r["gt"] = r.pop("mask")
    src = tmp_path / "elsewhere" / "m.csv"
    src.parent.mkdir()
    write_manifest(src, rows)
    cv.fold_manifest(src, {"syn_train_000"}, tmp_path / "out.csv", root=dataset.parent, path_columns=("image", "gt"))
    out = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert all(Path(r[c]).is_absolute() and Path(r[c]).exists() for r in out for c in ("image", "gt") if r[c])

    seen = {}
    import histowsss.engine.pipeline as pipeline

    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg, *a, **k: seen.setdefault("cfg", cfg))
    cfg = load_config("demo", [f"data.manifest={src}", f"data.root={dataset.parent}", "data.mask_column=gt"])
    run = RunDir(tmp_path / "src_run", cfg).init()
    cv.holdout_cam_run(run.path, tmp_path / "out.csv", tmp_path / "fold_cam", log=lambda s: None)
    assert seen["cfg"].data.root is None and Path(seen["cfg"].data.manifest) == tmp_path / "out.csv"


def test_fold_cache_key_takes_cpu_amp_only_when_on():
    """eval_seg.cpu_amp (added after caches existed): off, a fold's cache key is the one of before the option, so
    finished folds are reused; on, the probabilities differ and so does the key."""
    from histowsss.tuning.crossval import CLEANUP_KEYS, eval_key

    base = load_config("demo")
    before = base.eval_seg.model_dump(mode="json", exclude=set(CLEANUP_KEYS) | {"cpu_amp"})
    assert eval_key(base) == before
    on = eval_key(load_config("demo", ["eval_seg.cpu_amp=true"]))
    assert on["cpu_amp"] is True and on != before
    # the image gate is applied to the kept probabilities afterwards: a run that took tune's gate re-scores them
    gated = load_config("demo", ["eval_seg.image_gate=true", "eval_seg.image_gate_cut=0.5"])
    assert eval_key(gated) == before


def test_cli_refuses_hole_and_split_grids_without_a_background_class(tmp_path: Path):
    """Tissue types: holes and cuts are background, which they lack; the clean-up grid is refused before any work."""
    from histowsss.config import dump_config, load_config

    cfg = load_config("demo", ["data.classes.background=null", "train_cam.background_mode=class",
                              "data.mask_mode=class_ids"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(cfg))
    for extra in (["--hole-areas", "0,400"], ["--split-h", "0,12"]):
        r = runner.invoke(app, ["tune", str(run), "--object-areas", "0,400", *extra])
        assert r.exit_code == 2 and "need a background class" in " ".join(r.output.split()), r.output


def test_folds_share_out_the_masked_images():
    """Masks for 8 of 40 training patients: every fold gets masked patients (only they are scored), not by luck."""
    from types import SimpleNamespace

    from histowsss.tuning.crossval import fold_assignment, fold_strata

    samples = [SimpleNamespace(extra={}, labels=("malignant" if k % 2 else "benign",),
                               mask="m.png" if k % 5 == 0 else None, patient=f"P{k}") for k in range(40)]
    for seed in range(5):
        assign = fold_assignment([s.patient for s in samples], fold_strata(samples), 4, seed)
        masked = {assign[s.patient] for s in samples if s.mask}
        assert masked == {"fold0", "fold1", "fold2", "fold3"}, (seed, masked)
