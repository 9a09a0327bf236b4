"""Choosing the object clean-up on stored training predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histowsss.config import load_config
from histowsss.data.masks import load_class_mask
from histowsss.data.synthetic import generate_synthetic_dataset
from histowsss.engine.atomic import write_npz
from histowsss.steps.common import samples_for
from histowsss.tuning.cleanup import _competition_rank, choose_by_rank_sum, score_cleanup


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("syn"), {"train": 4, "test": 1}, size=64)


def test_specks_and_holes_are_scored_and_the_clean_up_that_removes_them_is_chosen(dataset: Path, tmp_path: Path):
    cfg = load_config("demo", [f"data.manifest={dataset}"])
    samples = samples_for(cfg, ["train"])
    probs = {}
    for s in samples:
        lab = load_class_mask(s, cfg.data).astype(np.int64)
        lab[60:62, 1:3] = 1          # a 4 px speck in a corner
        g = np.argwhere(lab == 1)
        y, x = g[len(g) // 2]
        probs[s.name] = np.stack([lab == 0, lab == 1]).astype(np.float16)
        probs[s.name][:, y, x] = (1, 0)  # a 1 px hole inside a gland (when the pixel is interior)
    write_npz(tmp_path / "fold0_candidate0_probs.npz", **probs)
    rows = score_cleanup(cfg, samples, [tmp_path / "fold0_candidate0_probs.npz"], [0, 8], [0, 4])
    assert [(r["min_object_area"], r["max_hole_area"], r["split_h"]) for r in rows] == [
        (0, 0, 0.0), (0, 4, 0.0), (8, 0, 0.0), (8, 4, 0.0)]
    off, specks_gone = rows[0], rows[2]
    assert specks_gone["objects"]["fp"] < off["objects"]["fp"] and specks_gone["miou"] > off["miou"]
    assert specks_gone["objects"]["tp"] == off["objects"]["tp"]
    chosen = choose_by_rank_sum(rows)
    assert chosen["min_object_area"] == 8 and all("rank_sum" in r for r in rows)
    # scored in worker processes: the same rows (images merged in their order)
    assert score_cleanup(cfg, samples, [tmp_path / "fold0_candidate0_probs.npz"], [0, 8], [0, 4], workers=2) == \
        score_cleanup(cfg, samples, [tmp_path / "fold0_candidate0_probs.npz"], [0, 8], [0, 4], workers=1)
    gated = score_cleanup(cfg, samples, [tmp_path / "fold0_candidate0_probs.npz"], [0], [0],
                          absent={s.name: [1] for s in samples})  # an image gate that removes the gland class
    assert gated[0]["objects"]["tp"] == 0 and gated[0]["objects"]["fp"] == 0 and gated[0][f"iou_{cfg.data.classes.names[1]}"] == 0
    with pytest.raises(KeyError, match="not one of the training images"):
        score_cleanup(cfg, samples[:1], [tmp_path / "fold0_candidate0_probs.npz"], [0], [0])
    with pytest.raises(ValueError, match="scored already from fold0_candidate0_probs.npz"):
        score_cleanup(cfg, samples, [tmp_path / "fold0_candidate0_probs.npz"] * 2, [0], [0])


def test_competition_ranks_share_the_best_place():
    assert _competition_rank([3, 1, 1, 2]) == [4, 1, 1, 3]
    assert _competition_rank([(0, 5.0), (1, 1.0), (0, 2.0)]) == [2, 3, 1]


def test_rows_without_objects_cannot_be_ranked():
    with pytest.raises(ValueError, match="instance masks"):
        choose_by_rank_sum([{"min_object_area": 0, "max_hole_area": 0, "miou": 50.0, "objects": None}])


def test_gate_absent_comes_from_each_folds_held_out_classifier_or_the_run(tmp_path: Path):
    from histowsss.tuning.cleanup import fold_gate_absent

    names = ["background", "malignant"]
    write_npz(tmp_path / "work" / "fold0_candidate0_probs.npz", a=np.zeros((2, 4, 4), np.float16))
    write_npz(tmp_path / "work" / "fold1_candidate0_probs.npz", b=np.zeros((2, 4, 4), np.float16))
    for where, name, p in (("work/fold0_k0_cam", "a", 0.9), ("work/fold1_k1_cam", "b", 0.01), ("run", "a", 0.01),
                           ("run", "b", 0.9)):
        write_npz(tmp_path / where / "cams" / f"{name}.npz", probs=np.array([p], np.float32),
                  classes=np.array(["malignant"]))
    files = sorted((tmp_path / "work").glob("fold*_probs.npz"))
    runs = {"fold0": "fold0_k0_cam", "fold1": "fold1_k1_cam"}
    held = fold_gate_absent(files, tmp_path / "work", tmp_path / "run", names, 0.5, runs)
    own = fold_gate_absent(files, tmp_path / "work", tmp_path / "run", names, 0.5, None)
    assert held == {"a": [], "b": [1]} and own == {"a": [1], "b": []}
    with pytest.raises(FileNotFoundError, match="fold1"):  # a fold whose held-out stage is not recorded
        fold_gate_absent(files, tmp_path / "work", tmp_path / "run", names, 0.5, {"fold0": "fold0_k0_cam"})


def test_cleanup_from_crossval_gates_as_the_variant_or_at_the_cut_given(dataset: Path, tmp_path: Path):
    from histowsss.engine.run_dir import RunDir
    from histowsss.tuning.cleanup import cleanup_from_crossval

    cfg = load_config("demo", [f"data.manifest={dataset}"])
    run = RunDir(tmp_path / "run", cfg).init()
    samples = samples_for(cfg, ["train"])
    probs = {s.name: np.stack([load_class_mask(s, cfg.data) == c for c in (0, 1)]).astype(np.float16) for s in samples}
    write_npz(tmp_path / "work" / "fold0_candidate0_probs.npz", **probs)
    for s in samples:  # the classifier calls class 1 absent everywhere
        write_npz(run.path / "cams" / f"{s.name}.npz", probs=np.array([0.01], np.float32),
                  classes=np.array([cfg.data.classes.names[1]]))
    res = {"candidates": [""], "chosen": {"candidate": "", "variant": "network"}, "holdout_classifier": False,
           "per_fold": [{"fold": "fold0", "candidates": [{"candidate": 0}]}]}
    # a file of an earlier cross-validation with more folds, left in the kept work folder: not read
    write_npz(tmp_path / "work" / "fold4_candidate0_probs.npz", **probs)
    plain = cleanup_from_crossval(run.path, res, tmp_path / "work", [0], [0], [0.0])
    gated = cleanup_from_crossval(run.path, res, tmp_path / "work", [0], [0], [0.0], gate_cut=0.5)
    by_variant = cleanup_from_crossval(run.path, {**res, "chosen": {"candidate": "", "variant": "image_gate@0.5"}},
                                       tmp_path / "work", [0], [0], [0.0])
    assert plain["gate_cut"] is None and plain["rows"][0]["objects"]["tp"] > 0
    assert gated["gate_cut"] == by_variant["gate_cut"] == 0.5
    assert gated["rows"][0]["objects"]["tp"] == by_variant["rows"][0]["objects"]["tp"] == 0
    assert plain["overrides"] == ["eval_seg.min_object_area=0", "eval_seg.max_hole_area=0", "eval_seg.split_h=0.0"]
