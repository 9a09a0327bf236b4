"""Patient-grouped K-fold cross-validation of segmentation-network settings on a run's training images.

Test ground truth is the wrong place to choose settings, and one held-out fifth of a small training set is a noisy
guide. ``crossval`` scores every training image once instead: the training patients are dealt into K
class-stratified folds; for each fold every candidate (a list of config overrides) trains the segmentation network
on the other folds' weak labels (those ``train_seg.labels`` picks in the source run) and predicts the fold's images
with eval_seg's inference. Scores are pooled over the folds into one confusion matrix per candidate and variant.

Variants: the network alone (``network``) and, for each class-presence cut in ``gate_cuts``, the network gated by the
CAM classifier (``image_gate@<cut>``, as ``eval_seg.image_gate`` does). With ``holdout_classifier`` each fold's gate
comes from a CAM stage trained without that fold's patients, so it judges unseen patients as on test; otherwise the
source run's classifier, which saw every training image, gates (optimistic).

Restartable: each finished (fold, candidate) is kept as a small JSON of confusion matrices, keyed by everything that
determines the trained network, beside the fold's predicted probabilities (float16 ``.npz``), so a later call with
other gate cuts (or with held-out classifiers) re-scores them without training again; the held-out CAM stages are
ordinary run folders whose finished steps are skipped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from histowsss.config import ConfigError, RunConfig, load_config
from histowsss.data.manifest import data_root, manifest_path, patient_key
from histowsss.engine.atomic import write_json, write_npz
from histowsss.evaluation.metrics import ConfusionMatrix
from histowsss.tuning.scratch import fit_on, scratch_run

NETWORK = "network"
# eval_seg's object clean-up works on the argmax: the kept probabilities do not depend on it, and the pooled pixel
# scores here are of the plain argmax (tuning.cleanup scores the clean-up on the kept probabilities)
CLEANUP_KEYS = ("min_object_area", "max_hole_area", "split_h")
SPLIT_KEYS = ("train_seg.splits", "ir_label.splits", "eval_cam.choose_on", "make_cam.splits", "eval_seg.splits")
GATE_KEYS = ("eval_seg.image_gate", "eval_seg.image_gate_cut")  # decided by the variant, not by a candidate
WEAK = ["train_seg.supervised=false"]  # a run's config.yaml may hold the last (supervised) run's switch


def parse_candidate(text: str) -> list[str]:
    """``"a.b=1; c.d=2"`` -> ``["a.b=1", "c.d=2"]`` (an empty text: the run's own configuration).

    ``data.*`` overrides are refused: every candidate is scored on the run's images and masks as the run reads
    them (resolution, stain normalisation), so a candidate with other data settings would be trained on one and
    judged on another."""
    overrides = [o.strip() for o in text.split(";") if o.strip()]
    bad = [o for o in overrides if o.split("=", 1)[0].strip().startswith("data.")]
    if bad:
        raise ConfigError(f"candidate {text!r}: {', '.join(bad)}: cross-validation compares settings on the run's own "
                          "data settings; to compare data.* settings, make one run per setting and tune each")
    splits = [o for o in overrides if o.split("=", 1)[0].strip() in SPLIT_KEYS]
    if splits:  # the folds decide what trains and what is scored; a split setting would be ignored, then printed
        raise ConfigError(f"candidate {text!r}: {', '.join(splits)}: the folds of the training patients decide what "
                          "each network trains on and is scored on; split settings are not candidates")
    return overrides


def gate_variant(cut: float) -> str:
    return f"image_gate@{cut:g}"


def fold_strata(samples: list) -> list[str]:
    """The stratum of each training image for the folds: its grade (or label set), and where only some images have
    a mask, whether it has one, so every fold gets its share of the masked images (only they are scored);
    unchanged when all or none have one."""
    from histowsss.data.split import strata_with_masks

    strata = [s.extra.get("grade") or "+".join(s.labels) for s in samples]
    return strata_with_masks(strata, [s.mask is not None for s in samples])


def fold_assignment(patients: list[str], strata: list[str], folds: int, seed: int = 0) -> dict[str, str]:
    """Patient -> ``fold<k>``: no patient in two folds, each fold with about the same share of every stratum."""
    from histowsss.data.split import grouped_stratified_split

    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    n_pat = len(set(patients))
    if n_pat < 2:
        raise ValueError(f"patient cross-validation needs at least 2 training patients, got {n_pat}; fill the "
                         "manifest's patient column (images without one count as a patient each)")
    if n_pat < folds:
        raise ValueError(f"{n_pat} training patients cannot fill {folds} folds; use --folds {n_pat} or fewer")
    return grouped_stratified_split(patients, strata, {f"fold{k}": 1 / folds for k in range(folds)}, seed=seed)


def fold_manifest(src_manifest: Path, names: set[str], out: Path, root: Path | None = None,
                  path_columns: tuple[str, ...] = ("image", "mask", "mask_cc")) -> None:
    """A copy of ``src_manifest`` with absolute file paths (relative ones read from ``root``, default the manifest's
    folder, as ``data.root`` does) in ``path_columns``, and the rows named in ``names`` moved to split ``holdout`` (a
    CAM stage trained on it never sees those images). Run it with ``data.root`` unset."""
    from histowsss.data.manifest import read_csv_rows, write_manifest

    _, rows = read_csv_rows(Path(src_manifest))
    base = Path(os.path.abspath(root if root is not None else Path(src_manifest).parent))
    moved: set[str] = set()
    for r in rows:
        name = r.get("name") or manifest_path(base, r["image"]).stem  # as data/manifest.py names images
        for col in path_columns:
            if r.get(col):  # absolute, but symbolic links kept: their names are the images' names
                r[col] = os.path.abspath(manifest_path(base, r[col]))
        if name in names:
            r["split"] = "holdout"
            moved.add(name)
    if moved != set(names):
        raise ValueError(f"{src_manifest}: {len(set(names) - moved)} held-out images not found by name (e.g. "
                         f"{sorted(set(names) - moved)[0]}); the fold's CAM stage would have seen them")
    write_manifest(out, rows)


def holdout_cam_run(src: Path, manifest: Path, run_path: Path, log: Callable[[str], None]) -> Path:
    """The source run's CAM stage (train_cam .. eval_cam) trained without the ``holdout`` split of ``manifest``;
    make_cam covers the held-out images, so their class probabilities come from a classifier that never saw them."""
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir

    # the fold manifest's paths are absolute: data.root would be put in front of them
    over = WEAK + [f"data.manifest={manifest}", "data.root=null", "data.test_splits=[holdout]", "upper_bound=false"]
    cfg = load_config(str(src / "config.yaml"), over)
    if cfg.make_cam.splits is not None and "holdout" not in cfg.make_cam.splits:  # CAMs for the held-out images too
        cfg = load_config(str(src / "config.yaml"), over + [f"make_cam.splits={[*cfg.make_cam.splits, 'holdout']}"])
    run_pipeline(cfg, RunDir(run_path, cfg).init(), None, "eval_cam", log=log)
    return run_path


def _summary(cm: ConfusionMatrix, names: list[str]) -> dict:
    sm = cm.summary(names)
    return {"miou": sm["miou"], **{f"iou_{c}": sm["per_class"][c]["iou"] for c in names}}


def _mean_of_known(values: list[float | None]) -> float | None:
    """Mean of the values that exist (a fold without the criterion's class, neither in its masks nor predicted, has
    none), rounded; None when none does."""
    known = [v for v in values if v is not None]
    return round(float(np.mean(known)), 2) if known else None


def best_variant(pooled: list[dict], criterion: str) -> tuple[int, str]:
    """(candidate, variant) of the pooled rows with the highest ``criterion``; a variant without a value ranks last."""
    def value(cv: tuple[int, str]) -> float:
        v = pooled[cv[0]][cv[1]][criterion]
        return -math.inf if v is None else v

    return max(((r["candidate"], vk) for r in pooled for vk in r if isinstance(r[vk], dict)), key=value)


def _matrix(cm: ConfusionMatrix) -> list[list[int]]:
    return cm.matrix.tolist()


def eval_key(cfg) -> dict:
    """The eval_seg settings a fold's cached probabilities depend on (not the clean-up, nor the image gate: both
    applied to them afterwards, so a run whose gate was set, by `tune`'s own choice say, re-scores its kept folds);
    options added later enter only when set, so earlier caches stay valid (the gate as its defaults, as they held)."""
    d = cfg.eval_seg.model_dump(mode="json", exclude=set(CLEANUP_KEYS))
    if not d.get("cpu_amp"):
        d.pop("cpu_amp", None)
    defaults = type(cfg.eval_seg)()
    for k in (g.split(".")[1] for g in GATE_KEYS):
        if k in d:
            d[k] = getattr(defaults, k)
    return d


def _key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _gate_confusions(probs_path: Path, val_s: list, gt: list[np.ndarray], gates: dict[str, list[list[int]]],
                     background: int | None, n: int) -> dict[str, list[list[int]]]:
    """Confusion matrices of the kept fold probabilities under every image-gate variant (one image in memory at a
    time)."""
    from histowsss.steps.image_gate import apply_gate

    cms = {gk: ConfusionMatrix(n) for gk in gates}
    with np.load(probs_path) as z:
        for i, (s, g) in enumerate(zip(val_s, gt)):
            p = z[s.name].astype(np.float32)
            for gk, absent in gates.items():
                cms[gk].update(g, apply_gate(p, absent[i], background).argmax(0).astype(np.uint8))
    return {gk: _matrix(cm) for gk, cm in cms.items()}


def criterion_names(cfg: RunConfig) -> list[str]:
    """The criteria a cross-validation can choose by: ``miou`` and ``iou_<class>`` for every class."""
    return ["miou"] + [f"iou_{c}" for c in cfg.data.classes.names]


def crossval(run_path: Path, candidates: list[str], work: Path, *, folds: int = 4, gate_cuts: list[float] | None = None,
             holdout_classifier: bool = False, criterion: str = "miou", seed: int = 0,
             log: Callable[[str], None] = print) -> dict:
    """Cross-validate ``candidates`` (``;``-separated overrides each) on the finished weak labels of ``run_path``.

    Scratch folders and per-(fold, candidate) records go to ``work`` (kept, so a killed call resumes). Returns the
    pooled scores, per-fold scores and the chosen (candidate, variant) by ``criterion``. Test images are never read.
    """
    from histowsss.data.loading import load_image
    from histowsss.data.masks import load_class_mask
    from histowsss.engine.run_dir import RunDir, StepError
    from histowsss.steps import seg_labels, train_seg
    from histowsss.steps.common import samples_for
    from histowsss.steps.eval_seg import predict_probs
    from histowsss.steps.image_gate import stored_absent

    src = Path(run_path).resolve()
    if not (src / "config.yaml").exists():
        raise FileNotFoundError(f"{src / 'config.yaml'} missing: pass a run folder of `histowsss run` whose weak "
                                "labels are made (its steps up to eval_sem_seg, or eval_cam for CAM labels)")
    base = load_config(str(src / "config.yaml"), WEAK)
    if criterion not in criterion_names(base):
        raise ConfigError(f"criterion {criterion!r} unknown; choose one of {', '.join(criterion_names(base))}")
    cands = list(candidates) or [""]
    parsed = [parse_candidate(c) for c in cands]
    cfgs = [load_config(str(src / "config.yaml"), WEAK + p) for p in parsed]  # bad overrides fail before training
    gate_cuts = list(gate_cuts or [])
    if any(not 0 < c < 1 for c in gate_cuts):
        raise ValueError(f"gate cuts must lie in (0, 1), got {gate_cuts}")
    if holdout_classifier and not gate_cuts:
        raise ValueError("holdout_classifier only changes the image gate: give gate cuts too")
    src_rd = RunDir(src, base)
    source = seg_labels.label_source(base, src_rd)
    if source == "ground_truth":
        raise StepError("the run's train_seg trains on ground truth (train_seg.supervised); cross-validation "
                        "chooses settings for the weak network")
    samples = samples_for(base, seg_labels.train_splits(base))
    if not samples:
        raise StepError(f"no training images in {base.data.manifest} (splits {seg_labels.train_splits(base)})")
    if not any(s.mask for s in samples):
        raise StepError(f"cross-validation scores training images against their masks, but none of the "
                        f"{len(samples)} training images in {base.data.manifest} has one; fill the mask column for "
                        "the images of a few patients (only those are scored; the others still train)")
    patients = [patient_key(s.patient) or s.name for s in samples]
    assign = fold_assignment(patients, fold_strata(samples), folds, seed)
    fold_names = [f"fold{k}" for k in range(folds)]
    names = list(base.data.classes.names)
    n = len(names)
    bg = base.data.classes.background_index
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)

    pooled: dict[tuple[int, str], ConfusionMatrix] = {}
    pooled_labels = ConfusionMatrix(n)
    fold_records = []
    t_start = time.time()
    for f in fold_names:
        held = [s for s, p in zip(samples, patients) if assign[p] == f]
        val_s = [s for s in held if s.mask]  # scored; a held-out patient's images without a mask are left out
        fit_s = [s for s, p in zip(samples, patients) if assign[p] != f]
        gt = [load_class_mask(s, base.data) for s in val_s]
        rec: dict = {"fold": f, "val_patients": sorted({p for p in patients if assign[p] == f}, key=str),
                     "val_images": len(val_s), "unscored_val_images": len(held) - len(val_s),
                     "fit_images": len(fit_s), "candidates": []}
        if not val_s:
            log(f"{f}: none of its images has a mask; nothing to score, skipped")
            rec["skipped"] = "no image of the fold's patients has a mask"
            fold_records.append(rec)
            continue
        cm = ConfusionMatrix(n)
        for g, lab in zip(gt, seg_labels.load_labels(base, src_rd, val_s, source)):
            unknown = lab == 255  # weak labels may leave pixels ignore (no evidence): not scored
            g, lab = np.where(unknown, 255, g), np.where(unknown, 0, lab)
            cm.update(g, lab)
            pooled_labels.update(g, lab)
        rec["weak_labels"] = _summary(cm, names)
        gates: dict[str, list[list[int]]] = {}
        if gate_cuts:
            gate_run = src
            if holdout_classifier:
                tc = time.time()
                # named after the held-out images: a kept work folder of another fold assignment (--seed,
                # --folds) must not lend its classifier, which saw some of these patients
                hk = _key(sorted(s.name for s in held))
                man = work / f"{f}_{hk}_manifest.csv"
                fold_manifest(Path(base.data.manifest), {s.name for s in held}, man, root=data_root(base.data),
                              path_columns=tuple(dict.fromkeys(c for c in ("image", base.data.mask_column, "mask_cc")
                                                               if c)))
                log(f"{f}: CAM stage without the fold's {len(rec['val_patients'])} patients")
                gate_run = holdout_cam_run(src, man, work / f"{f}_{hk}_cam", log)
                rec["holdout_cam_run"] = gate_run.name
                rec["holdout_cam_seconds"] = round(time.time() - tc, 1)
                cam_m = json.loads((gate_run / "metrics" / "cam.json").read_text())
                rec["holdout_classifier"] = {"chosen_gate": cam_m.get("chosen_gate"),
                                             "holdout": cam_m.get("splits", {}).get("test", {}).get("classification")}
            for cut in gate_cuts:
                gates[gate_variant(cut)] = [stored_absent(gate_run, s.name, names, cut) for s in val_s]
            rec["images_with_class_removed"] = {k: sum(bool(a) for a in v) for k, v in gates.items()}
        imgs = None
        for ci, (cand, cfg) in enumerate(zip(cands, cfgs)):
            # the gates are not part of the key: the fold's probabilities are kept, so new cuts re-score them
            # the encoder weights file's contents too (its path is in the hash): one changed in place retrains
            wf = (cfg.weights_file_digest("train_seg.encoder_weights")
                  if cfg.train_seg.encoder_weights not in ("imagenet", "none") else None)
            key = _key({"candidate": parsed[ci], "train_seg": train_seg.config_hash(cfg),
                        **({"encoder_weights": wf} if wf else {}), "eval_seg": eval_key(cfg),
                        "val": sorted(s.name for s in val_s),
                        "fit": sorted(s.name for s in fit_s)})
            done_path = work / f"{f}_candidate{ci}.json"
            probs_path = work / f"{f}_candidate{ci}_probs.npz"
            done = json.loads(done_path.read_text()) if done_path.exists() else None
            if done is None or done.get("key") != key or (gates and not probs_path.exists()):
                rd_path = work / f"{f}_candidate{ci}"
                key_path = rd_path / "crossval_key.txt"
                resume = key_path.exists() and key_path.read_text() == key
                scratch_run(src, rd_path, keep=resume)  # a killed training resumes from its last epoch
                key_path.write_text(key)
                log(f"{f}: candidate {ci} ({cand or 'the run configuration'}): train on {len(fit_s)} images, "
                    f"predict {len(val_s)}")
                meta, model, device, train_s = fit_on(cfg, rd_path, fit_s, overwrite=False)
                if imgs is None:
                    imgs = [load_image(s.image, base.data) for s in val_s]
                probs = {s.name: predict_probs(model, img, cfg, device).astype(np.float16)
                         for s, img in zip(val_s, imgs)}
                write_npz(probs_path, **probs)
                vcm = ConfusionMatrix(n)
                for g, s in zip(gt, val_s):
                    vcm.update(g, probs[s.name].argmax(0).astype(np.uint8))
                done = {"key": key, "train_seconds": round(train_s, 1), "final_epoch": meta["final"],
                        "confusion": {NETWORK: _matrix(vcm)}}
                write_json(done_path, done)
                shutil.rmtree(rd_path, ignore_errors=True)
            else:
                log(f"{f}: candidate {ci}: trained earlier, kept" + (" (gates re-scored)" if gates else ""))
            confusion = {NETWORK: done["confusion"][NETWORK]}
            if gates:
                confusion.update(_gate_confusions(probs_path, val_s, gt, gates, bg, n))
            crec = {"candidate": ci, "train_seconds": done["train_seconds"], "final_epoch": done["final_epoch"]}
            for vk, m in confusion.items():
                vcm = ConfusionMatrix.from_matrix(m)
                pooled.setdefault((ci, vk), ConfusionMatrix(n)).merge(vcm)
                crec[vk] = _summary(vcm, names)
            rec["candidates"].append(crec)
            scores = "; ".join(f"{vk}: mIoU {m['miou']} (" + ", ".join(f"{c} {m[f'iou_{c}']}" for c in names) + ")"
                               for vk, m in crec.items() if isinstance(m, dict) and "miou" in m)
            log(f"{f}: candidate {ci}: {scores}; {crec['train_seconds']} s of training")
        fold_records.append(rec)

    pooled_rec = []
    for ci, cand in enumerate(cands):
        row: dict = {"candidate": ci, "overrides": cand}
        for (cj, vk), cm in pooled.items():
            if cj == ci:
                row[vk] = {**_summary(cm, names), "fold_mean_" + criterion: _mean_of_known(
                    [r["candidates"][ci][vk][criterion] for r in fold_records if r["candidates"]])}
        pooled_rec.append(row)
    chosen = choose(pooled_rec, criterion, cands, [c.eval_seg.image_gate for c in cfgs])
    return {"run": str(src), "folds": folds, "split_seed": seed, "label_source": source,
            "training_images": len(samples), "training_patients": len(set(patients)),
            "scored_images": sum(bool(s.mask) for s in samples),
            "candidates": cands, "gate_cuts": gate_cuts, "holdout_classifier": holdout_classifier,
            "weak_labels_pooled": _summary(pooled_labels, names), "criterion": criterion, "pooled": pooled_rec,
            "per_fold": fold_records, "chosen": chosen,
            "seconds": round(time.time() - t_start, 1),
            "notes": ["every training image is scored once, by a network (and, with holdout_classifier, a CAM "
                      "classifier) that never saw its patient; test images are never read"]}


def choose(pooled: list[dict], criterion: str, candidates: list[str], gates_on: list[bool]) -> dict:
    """The chosen (candidate, variant) of the pooled rows by ``criterion``, with its index, score and ``--set``
    overrides; ``gates_on[i]``: candidate i's config gates (the run's config, or the candidate itself sets the gate).
    A criterion no row has a value for is an error."""
    best_c, best_v = best_variant(pooled, criterion)
    value = pooled[best_c][best_v][criterion]
    if value is None:
        raise ValueError(f"no candidate has a {criterion} score: no scored training mask holds its class and no "
                         "network predicted it; choose another --criterion (miou, or iou_<class>)")
    return {"index": best_c, "candidate": candidates[best_c], "variant": best_v, criterion: value,
            "overrides": chosen_overrides(candidates[best_c], best_v, gates_on[best_c])}


def chosen_overrides(candidate: str, variant: str, gate_on: bool) -> list[str]:
    """The ``--set`` overrides that give a run the chosen candidate and variant (``gate_on``: the run's config
    already gates, which the ungated ``network`` variant must switch off)."""
    given = parse_candidate(candidate)
    out = [o for o in given if o.split("=", 1)[0].strip() not in GATE_KEYS]  # the variant says whether it gates
    gated = gate_on or any(o.split("=", 1)[0].strip() == "eval_seg.image_gate"
                           and o.split("=", 1)[1].strip().lower() in ("true", "1", "yes") for o in given)
    if variant.startswith("image_gate@"):
        out += ["eval_seg.image_gate=true", f"eval_seg.image_gate_cut={variant.split('@', 1)[1]}"]
    elif variant == NETWORK and gated:
        out += ["eval_seg.image_gate=false"]
    return out
