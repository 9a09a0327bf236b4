"""Step eval_cam: choose the background parameter on train/val, then score CAM label maps on every split.

Two gatings of the classes present in an image: by its labels (train/val only: the pseudo-label setting that
later steps use; with ``label_gating: patch`` per pixel, by the labels of the patches covering it) and by the
classifier's own probabilities (any split; the only one used on test images).
Test ground truth is only read to report the final numbers.

Without masks on the choose splits (image labels only, the usual weakly supervised setting) nothing can be swept:
the background parameter is ``eval_cam.no_mask_value`` (IRN's 0.15 threshold, offset 0), the class-presence cut
0.5, and the record says so (``chosen_on: []``); images without a mask are left out of every segmentation score
(the classification scores use every image).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from rich.progress import track

from histowsss.config import RunConfig
from histowsss.data.crops import image_targets
from histowsss.data.label_gate import patch_allowed, present_classes, uses_patch_gate
from histowsss.data.masks import load_class_mask
from histowsss.engine.atomic import read_npz, write_json
from histowsss.engine.run_dir import RunDir
from histowsss.evaluation.cam_labels import cams_to_labels, normalize_cams, upsample_cam
from histowsss.evaluation.metrics import ConfusionMatrix
from histowsss.steps.common import check_cam_hash, output_classes, samples_for
from histowsss.steps.make_cam import STRIDE, cam_path, config_hash as make_cam_hash

STEP = "eval_cam"


def cam_mode(cfg: RunConfig) -> str:
    """'threshold' when background has no CAM channel, 'offset' when it has one, 'argmax' when the class map has
    no background class at all (tissue types: every pixel is one of the labelled classes)."""
    bg = cfg.data.classes.background
    if bg is None:
        return "argmax"
    return "offset" if bg in output_classes(cfg) else "threshold"


def load_split(cfg: RunConfig, run: RunDir, split_names: list[str], stride: int = STRIDE) -> list[dict]:
    """Per image: normalised full-resolution CAMs, probabilities, image targets and the GT class map; for
    labelled (non-test) images with eval_cam.label_gating=patch also the patch-label gate ('allowed')."""
    samples = samples_for(cfg, split_names)
    if not samples:
        return []
    keep = [cfg.data.classes.index(n) for n in output_classes(cfg)]
    targets = image_targets(samples, cfg.data)[:, keep]
    out = []
    expected = make_cam_hash(cfg)
    for s, t in zip(track(samples, description=f"loading {'+'.join(split_names)}"), targets):
        p = cam_path(run, s.name)
        if not p.exists():
            raise FileNotFoundError(f"{p}: CAM missing; run make_cam for split {s.split}")
        z = read_npz(p, "delete it and re-run make_cam with --overwrite")
        check_cam_hash(z, p, expected)
        cam, probs, size = z["cam"].astype(np.float32), z["probs"], tuple(int(v) for v in z["size"])
        gt = load_class_mask(s, cfg.data) if s.mask is not None else None  # no mask: classification only
        if gt is not None and gt.shape != size:
            raise ValueError(f"{s.mask}: mask size {gt.shape} differs from the CAM's image size {size}")
        # full-resolution CAMs only where a mask can score them (an unmasked image counts for classification only)
        item = {"name": s.name, "cam": normalize_cams(upsample_cam(cam, size, stride)) if gt is not None else None,
                "probs": probs, "target": t, "gt": gt}
        if gt is not None and uses_patch_gate(cfg) and s.split not in cfg.data.test_splits:
            item["allowed"] = patch_allowed(gt, cfg.data, name=str(s.image))
            item["gate_present"] = present_classes(item["allowed"], keep)
        out.append(item)
    return out


def masked(items: list[dict]) -> list[dict]:
    """The items with a ground-truth mask (the only ones a segmentation score can use)."""
    return [it for it in items if it["gt"] is not None]


def no_mask_value(cfg: RunConfig, mode: str) -> float:
    """The background parameter when no mask can choose it: ``eval_cam.no_mask_value``, else 0.15 (threshold mode,
    IRN's CAM evaluation threshold) or 0.0 (offset mode: the background channel as it is)."""
    if cfg.eval_cam.no_mask_value is not None:
        return float(cfg.eval_cam.no_mask_value)
    return 0.15 if mode == "threshold" else 0.0  # offset: the background channel as it is; argmax: unused


def presence(item: dict, gating: str, gate_threshold: float) -> np.ndarray:
    """Classes present in an image, from its labels or from the classifier (probability >= gate_threshold)."""
    if gating == "labels":
        return item["gate_present"] if "allowed" in item else item["target"] > 0.5
    return item["probs"] >= gate_threshold


def score(items: list[dict], cfg: RunConfig, mode: str, value: float, gating: str,
          gate: float = 0.5) -> ConfusionMatrix:
    """Confusion matrix of CAM labels over ``items``."""
    names = cfg.data.classes.names
    ids = [names.index(n) for n in output_classes(cfg)]
    bg = cfg.data.classes.background_index if cfg.data.classes.background_index is not None else 0
    cm = ConfusionMatrix(len(names))
    for it in masked(items):
        allowed = it.get("allowed") if gating == "labels" else None
        pred = cams_to_labels(it["cam"], presence(it, gating, gate), ids, bg, mode, value, allowed)
        cm.update(it["gt"], pred)
    return cm


def image_level_baseline(items: list[dict], cfg: RunConfig, gate: float) -> ConfusionMatrix:
    """Trivial baseline: every pixel gets the most probable predicted class, background if none is predicted."""
    names = cfg.data.classes.names
    ids = [names.index(n) for n in output_classes(cfg)]
    bg = cfg.data.classes.background_index or 0
    cm = ConfusionMatrix(len(names))
    for it in masked(items):
        pr = it["probs"]
        k = int(np.argmax(pr))
        cls = ids[k] if pr[k] >= gate or cfg.data.classes.background_index is None else bg
        cm.update(it["gt"], np.full(it["gt"].shape, cls, dtype=np.uint8))
    return cm


def classification_metrics(items: list[dict], gate_threshold: float) -> dict:
    from histowsss.engine.diagnostics import macro_auc

    t = np.stack([i["target"] for i in items])
    p = np.stack([i["probs"] for i in items])
    auc = macro_auc(t, p)
    return {"auc": None if auc is None else round(100 * auc, 2),
            "accuracy": round(100 * float(((p >= gate_threshold) == (t > 0.5)).all(axis=1).mean()), 2),
            "images": len(items)}


def config_hash(cfg: RunConfig) -> str:
    """Hash of the config sections this step depends on."""
    return cfg.step_hash("data", "backbone", "train_cam", "make_cam", "eval_cam")


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps (status record, config hash) this step reads: checked before a run starts."""
    return [("make_cam", make_cam_hash(cfg))]


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Write metrics/cam.json: chosen background parameter, per-split metrics for both gatings."""
    ec = cfg.eval_cam
    h = config_hash(cfg)
    run.require("make_cam", make_cam_hash(cfg), STEP)
    with run.step(STEP, h, overwrite=overwrite) as info:
        mode = cam_mode(cfg)
        # argmax mode (no background class) has no background parameter: one value, nothing to sweep
        values = ec.thresholds if mode == "threshold" else ec.offsets if mode == "offset" else [0.0]
        choose = ec.choose_on or (cfg.data.train_splits + cfg.data.val_splits)
        names = cfg.data.classes.names
        items = load_split(cfg, run, choose)
        sweep, gate_sweep = [], []
        if masked(items):
            for v in values:
                s = score(items, cfg, mode, v, "labels").summary(names)
                sweep.append({"value": v, "miou": s["miou"]})
            best = max(sweep, key=lambda r: r["miou"] or -1)["value"]
            gate_sweep = [{"gate": g, "miou": score(items, cfg, mode, best, "predicted", g).summary(names)["miou"]}
                          for g in ec.gate_thresholds]
            gate = max(gate_sweep, key=lambda r: r["miou"] or -1)["gate"]
            chosen_on, how = choose, f"swept on {len(masked(items))} masked images of {', '.join(choose)}"
        else:
            best, gate, chosen_on = no_mask_value(cfg, mode), 0.5, []
            how = (f"default (no image of {', '.join(choose)} has a mask): eval_cam.no_mask_value / 0.5; give some "
                   "training patients masks to choose them")
        result = {"mode": mode, "label_gating": ec.label_gating, "chosen_on": chosen_on, "chosen_how": how,
                  "chosen_value": best, "sweep": sweep, "chosen_gate": gate, "gate_sweep": gate_sweep,
                  "masked_images": {}, "splits": {}}
        bg_name = cfg.data.classes.background
        for split in list(dict.fromkeys(cfg.data.train_splits + cfg.data.val_splits)) + ["test"]:
            split_names = cfg.data.test_splits if split == "test" else [split]
            its = items if split_names == choose else load_split(cfg, run, split_names)
            if not its:
                continue
            result["masked_images"][split] = len(masked(its))
            entry = {"classification": classification_metrics(its, 0.5)}
            if not masked(its):  # image labels only: nothing to score the CAM label maps against
                result["splits"][split] = entry
                continue
            entry.update({"predicted_gating": score(its, cfg, mode, best, "predicted", gate).summary(names),
                          "image_level_baseline": image_level_baseline(its, cfg, 0.5).summary(names)})
            if split != "test":
                entry["label_gating"] = score(its, cfg, mode, best, "labels").summary(names)
            if bg_name is not None:
                entry["predicted_gating"]["background_images_false_fg"] = _false_fg(its, cfg, mode, best, gate)
            result["splits"][split] = entry
        write_json(run.sub("metrics") / "cam.json", result)
        handoff = handoff_digest(result)  # (made on the training splits: the training side reads all of it)
        info.update(outputs=["metrics/cam.json"], chosen_value=best, handoff=handoff, train_handoff=handoff)
        return result


def handoff_from_training(cfg: RunConfig) -> bool:
    """Whether what later steps read of eval_cam (:func:`handoff_digest`) is made from the rows the manifest's
    training-side digest covers (``choose_on`` within the training, validation and train_seg splits)."""
    d = cfg.data
    choose = cfg.eval_cam.choose_on or (d.train_splits + d.val_splits)
    return set(choose) <= set(d.train_splits) | set(d.val_splits) | set(cfg.train_seg.splits or [])


def handoff_digest(result: dict) -> str:
    """Digest of what later steps read of metrics/cam.json: the choices and the training splits' scores, all made
    from the training splits (``choose_on`` may not name a test split). The test split's scores are left out, so
    that a test label or mask fixed makes eval_cam again but not the steps that read it (train_seg on CAM labels,
    make_sem_seg_labels' offset, eval_sem_seg, eval_seg's gate): :meth:`RunDir.made_again_after`."""
    read = {k: v for k, v in result.items() if k not in ("splits", "masked_images")}
    for k in ("splits", "masked_images"):
        read[k] = {split: v for split, v in result.get(k, {}).items() if split != "test"}
    text = json.dumps(read, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _false_fg(items: list[dict], cfg: RunConfig, mode: str, value: float, gate: float) -> float | None:
    """Percent of pixels called non-background in images whose ground truth is all background (e.g. benign)."""
    names = cfg.data.classes.names
    ids = [names.index(n) for n in output_classes(cfg)]
    bg = cfg.data.classes.background_index or 0
    tot = fg = 0
    for it in masked(items):
        scored = it["gt"] != 255  # ignore pixels (unlabelled, mask_ignore_values) are neither
        if np.any(it["gt"][scored] != bg):
            continue
        pred = cams_to_labels(it["cam"], presence(it, "predicted", gate), ids, bg, mode, value)
        tot += int(scored.sum())
        fg += int((pred[scored] != bg).sum())
    return round(100 * fg / tot, 2) if tot else None
