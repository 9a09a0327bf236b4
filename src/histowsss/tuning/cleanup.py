"""Choose eval_seg's object clean-up (``min_object_area``, ``max_hole_area``, ``split_h``) on training predictions.

:func:`score_cleanup` re-scores kept class probabilities (the ``.npz`` files :func:`histowsss.tuning.crossval.crossval`
keeps per fold: every training image predicted by a network that never saw its patient) under every combination of
the values given: pixel metrics from one pooled confusion matrix, and the GlaS object metrics against the manifest's
instance masks. :func:`choose_by_rank_sum` picks one the way the GlaS challenge ranked its entrants: a standard
competition rank on each of object F1, object Dice and object Hausdorff (Dice and Hausdorff pooled over all objects,
as the challenge defines them), the smallest sum wins (ties: higher mIoU,
then the smaller values). Test images are never read.
"""

from __future__ import annotations

import math

from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from histowsss.config import RunConfig
from histowsss.data.manifest import Sample
from histowsss.data.masks import load_class_mask, load_instance_mask
from histowsss.evaluation.metrics import ConfusionMatrix
from histowsss.evaluation.object_score import ObjectScore, predicted_objects
from histowsss.ops.label_cleanup import clean_objects
from histowsss.steps.image_gate import apply_gate

__all__ = ["score_cleanup", "choose_by_rank_sum", "fold_gate_absent", "cleanup_from_crossval",
           "require_instance_masks"]


def _score_image(cfg: RunConfig, s: Sample, path: Path, key: str, absent: list[int] | None,
                 combos: list[tuple]) -> list[tuple[np.ndarray, dict | None]]:
    """One stored image under every clean-up combination: (confusion counts, object metrics or None) per combo."""
    from histowsss.evaluation.object_metrics import object_metrics

    names = list(cfg.data.classes.names)
    bg = cfg.data.classes.background_index
    gt = load_class_mask(s, cfg.data)
    gi = load_instance_mask(s, cfg.data, gt, bg)
    with np.load(path) as z:
        probs = z[key].astype(np.float32)
    if absent is not None:
        probs = apply_gate(probs, absent, bg)
    lab = probs.argmax(0).astype(np.uint8)
    out = []
    for a, h, sp in combos:
        cleaned = clean_objects(lab, bg, min_object_area=a, max_hole_area=h, split_h=sp)
        cm = ConfusionMatrix(len(names))
        cm.update(gt, cleaned)
        out.append((cm.matrix, object_metrics(gi, predicted_objects(cleaned, gt, bg)) if gi is not None else None))
    return out


def score_cleanup(cfg: RunConfig, samples: Iterable[Sample], probs_files: Iterable[Path],
                  min_object_areas: list[int], max_hole_areas: list[int], split_hs: list[float] | None = None,
                  absent: dict[str, list[int]] | None = None,
                  log: Callable[[str], None] = lambda m: None, workers: int | None = None) -> list[dict]:
    """One row per (min_object_area, max_hole_area, split_h): ``miou``, ``iou_<class>`` and ``objects``
    (ObjectScore summary). ``absent``: per image name, the classes an image gate removes before the argmax (as
    ``eval_seg.image_gate``; :func:`histowsss.steps.image_gate.apply_gate`), so the clean-up is chosen on the
    labels the configuration will clean.

    ``probs_files``: ``.npz`` files of (C, H, W) probabilities keyed by sample name (at data.image_scale); every
    stored image must be one of ``samples`` and have a mask. Images are scored in ``workers`` processes (None: one
    per core, at most 8; 1: in this process); the rows do not depend on it.
    """
    import os

    names = list(cfg.data.classes.names)
    by_name = {s.name: s for s in samples}
    combos = [(a, h, sp) for a in min_object_areas for h in max_hole_areas for sp in (split_hs or [0.0])]
    cms = {c: ConfusionMatrix(len(names)) for c in combos}
    objs = {c: ObjectScore() for c in combos}
    scored: dict[str, Path] = {}
    jobs = []
    for path in probs_files:
        with np.load(path) as z:
            for key in z.files:
                if key not in by_name:
                    raise KeyError(f"{path}: {key!r} is not one of the training images given")
                if key in scored:  # out-of-fold means once: a second copy comes from another cross-validation
                    raise ValueError(f"{path}: {key!r} was scored already from {scored[key].name}; the files must "
                                     "be the folds of one cross-validation")
                scored[key] = Path(path)
                jobs.append((by_name[key], Path(path), key, None if absent is None else absent[key]))
    n = workers if workers is not None else min(os.cpu_count() or 1, 8)

    def take(result: list) -> None:
        for combo, (counts, m) in zip(combos, result):
            cms[combo].merge(ConfusionMatrix.from_matrix(counts))
            if m is not None:
                objs[combo].add(m)

    if n <= 1 or len(jobs) < 2:
        results = (_score_image(cfg, s, p, k, ab, combos) for s, p, k, ab in jobs)
        pool = None
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context(method))
        results = pool.map(_score_image, *zip(*[(cfg, s, p, k, ab, combos) for s, p, k, ab in jobs]))
    try:
        for i, result in enumerate(results, start=1):  # in the images' order, whatever the workers: same sums
            take(result)
            if i % 20 == 0 or i == len(jobs):
                log(f"{i} of {len(jobs)} images scored")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    rows = []
    for combo in combos:
        sm = cms[combo].summary(names)
        rows.append({"min_object_area": combo[0], "max_hole_area": combo[1], "split_h": combo[2], "miou": sm["miou"],
                     **{f"iou_{c}": sm["per_class"][c]["iou"] for c in names},
                     "objects": objs[combo].summary() if objs[combo].dice else None})
    return rows


def fold_gate_absent(files: Iterable[Path], work: Path, run_dir: Path, names: list[str], cut: float,
                     holdout_runs: dict[str, str] | None) -> dict[str, list[int]]:
    """Per image of the kept fold probabilities ``<fold>_candidate<i>_probs.npz``, the classes the image gate at
    ``cut`` removes: from each fold's held-out CAM stage (``holdout_runs``: fold -> its folder under ``work``, as
    crossval records it), else (None) from the run's own classifier (which saw every training image: optimistic), as
    crossval scores its gate variants."""
    from histowsss.steps.image_gate import stored_absent

    absent: dict[str, list[int]] = {}
    for f in files:
        fold = f.name.split("_", 1)[0]
        if holdout_runs is not None and fold not in holdout_runs:
            raise FileNotFoundError(f"{f}: no held-out CAM stage recorded for {fold}; run the cross-validation again")
        gate_run = Path(work) / holdout_runs[fold] if holdout_runs is not None else Path(run_dir)
        with np.load(f) as z:
            absent.update({k: stored_absent(gate_run, k, names, cut) for k in z.files})
    return absent


def require_instance_masks(run_dir: Path) -> None:
    """ValueError (before any training) when no training image of the run has an instance mask to score objects
    against: the clean-up choice would train every fold and then find nothing to rank."""
    from histowsss.config import load_config
    from histowsss.data.masks import INSTANCE_COLUMN
    from histowsss.steps import seg_labels
    from histowsss.steps.common import samples_for
    from histowsss.tuning.crossval import WEAK

    cfg = load_config(str(Path(run_dir) / "config.yaml"), WEAK)
    samples = samples_for(cfg, seg_labels.train_splits(cfg))
    if not any((s.extra.get(INSTANCE_COLUMN) or "").strip() and s.mask for s in samples):
        raise ValueError(f"{cfg.data.manifest}: --object-areas scores objects against instance masks, but none of its "
                         f"{len(samples)} training images has a mask and a {INSTANCE_COLUMN} entry; add a "
                         f"{INSTANCE_COLUMN} column (an image of instance ids per pixel, 0 = none; the connected "
                         "components of a binary mask will do) or leave out --object-areas")


def _competition_rank(keys: list) -> list[int]:
    """Standard competition ranks ("1224") of keys where lower is better: equal keys share the best rank."""
    return [1 + sum(1 for o in keys if o < k) for k in keys]


def choose_by_rank_sum(rows: list[dict]) -> dict:
    """The row with the smallest sum of ranks on object F1, object Dice and object Hausdorff (GlaS challenge rule);
    ties go to the higher mIoU, then to the smaller areas and split. Rows without object scores cannot be ranked. Each ranked
    row gets its ``rank_sum``."""
    scored = [r for r in rows if r.get("objects")]
    if not scored:
        raise ValueError("no row has object metrics: the training images need instance masks (mask_cc column)")
    o = [r["objects"] for r in scored]
    worst = math.inf  # no object predicted at all: no Dice, no Hausdorff, ranked last
    f1 = _competition_rank([-(x["f1"] or 0.0) for x in o])
    dice = _competition_rank([-(x["dice"] or 0.0) for x in o])  # pooled over all objects, as GlaS defines it
    # objects left with nothing on the other side of their image have no Hausdorff distance: more of them rank worse
    # first (else deleting every object of an image would improve the pooled Hausdorff)
    hd = _competition_rank([(x.get("hausdorff_unpaired_objects", 0),
                             worst if x["hausdorff"] is None else x["hausdorff"]) for x in o])
    for r, a, b, c in zip(scored, f1, dice, hd):
        r["rank_sum"] = a + b + c
    return min(scored, key=lambda r: (r["rank_sum"], -(r["miou"] if r["miou"] is not None else -math.inf),
                                      r["min_object_area"], r["max_hole_area"],
                                      r.get("split_h", 0.0)))


def cleanup_from_crossval(run_dir: Path, res: dict, work: Path, areas: list[int], holes: list[int],
                          splits: list[float], gate_cut: float | None = None,
                          log: Callable[[str], None] = lambda m: None) -> dict:
    """Score and choose the clean-up on the kept fold probabilities of a finished
    :func:`histowsss.tuning.crossval.crossval` result ``res`` (its work folder ``work``, before it is removed): the
    chosen candidate's predictions, gated as its chosen variant gates them, or at ``gate_cut`` when given (as a
    configuration with the image gate on will gate them). Returns the rows, the choice and its ``--set``
    overrides."""
    from histowsss.config import load_config
    from histowsss.steps import seg_labels
    from histowsss.steps.common import samples_for
    from histowsss.tuning.crossval import WEAK

    ci = res["chosen"].get("index", res["candidates"].index(res["chosen"]["candidate"]))
    # the folds of this cross-validation only: the kept work folder may also hold files of an earlier one (more folds)
    files = [Path(work) / f"{r['fold']}_candidate{ci}_probs.npz" for r in res["per_fold"] if r["candidates"]]
    missing = [f.name for f in files if not f.exists()]
    if not files or missing:
        raise FileNotFoundError(f"{work}: kept fold probabilities of candidate {ci} missing ({', '.join(missing)}); "
                                "run the cross-validation there first")
    cfg = load_config(str(Path(run_dir) / "config.yaml"), WEAK)
    variant = res["chosen"]["variant"]
    if gate_cut is None and variant.startswith("image_gate@"):
        gate_cut = float(variant.split("@", 1)[1])
    absent = None
    if gate_cut is not None:
        runs = ({r["fold"]: r["holdout_cam_run"] for r in res["per_fold"] if r.get("holdout_cam_run")}
                if res["holdout_classifier"] else None)
        absent = fold_gate_absent(files, work, run_dir, list(cfg.data.classes.names), gate_cut, runs)
    rows = score_cleanup(cfg, samples_for(cfg, seg_labels.train_splits(cfg)), files, areas, holes, splits,
                         absent=absent, log=log)
    chosen = choose_by_rank_sum(rows)
    keys = ("min_object_area", "max_hole_area", "split_h")
    return {"candidate": res["chosen"]["candidate"], "variant": variant, "gate_cut": gate_cut, "rows": rows,
            "chosen": {k: chosen[k] for k in (*keys, "miou", "objects", "rank_sum")},
            "overrides": [f"eval_seg.{k}={chosen[k]}" for k in keys],
            "notes": ["the chosen candidate's out-of-fold predictions, gated as its chosen variant; chosen by the GlaS "
                      "challenge rule: smallest sum of ranks on object F1, object Dice, object Hausdorff; test never "
                      "read"]}
