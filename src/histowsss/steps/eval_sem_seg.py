"""Step eval_sem_seg: pixel and object metrics of the IRN pseudo-labels beside the CAM labels (train images).

Per split of the IRN images that has masks (train, and val when present), one dataset-level confusion matrix
(:class:`histowsss.evaluation.metrics.ConfusionMatrix`) for:

* ``cam``: eval_cam's label-gated CAM labels (copied from ``metrics/cam.json``);
* ``ir_labels`` (and ``ir_labels_crf``): the confident labels upsampled x4 (nearest), scored on confident
  pixels only (``confident_only``) and with ignore counted as background (``ignore_as_background``);
* ``irn_pseudo``: ``pseudo/<name>.png``.

Object level (:mod:`histowsss.evaluation.object_metrics`), when the manifest has a ``mask_cc`` column of
instance masks: ``instances/<name>.png`` and, for comparison, the connected components of the pseudo-mask,
against the ground-truth instances restricted to foreground classes. F1 from the TP/FP/FN summed over images;
object Dice and Hausdorff pooled over all objects as GlaS defines them, with their means over images beside
(:class:`histowsss.evaluation.object_score.ObjectScore`). Writes ``metrics/sem_seg.json``.
"""

from __future__ import annotations

import json

import numpy as np
from rich.progress import track

from histowsss.config import RunConfig
from histowsss.data.manifest import Sample
from histowsss.data.masks import load_class_mask, load_instance_mask
from histowsss.engine.atomic import write_json
from histowsss.engine.run_dir import RunDir
from histowsss.evaluation.metrics import ConfusionMatrix
from histowsss.evaluation.object_score import ObjectScore, predicted_objects
from histowsss.ops.instances import upsample_nearest
from histowsss.ops.ir_labels import IGNORE
from histowsss.steps import cam_to_ir_label, eval_cam, make_ins_seg_labels, make_sem_seg_labels
from histowsss.steps.irn_common import STRIDE, background_id, irn_samples, read_png

STEP = "eval_sem_seg"


def config_hash(cfg: RunConfig) -> str:
    """Hash of the config sections this step depends on."""
    return cfg.step_hash("data", "backbone", "train_cam", "make_cam", "eval_cam", "ir_label", "points", "train_irn",
                         "sem_seg", "ins_seg")


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps (status record, config hash) this step reads: checked before a run starts."""
    return [("eval_cam", eval_cam.config_hash(cfg)), ("cam_to_ir_label", cam_to_ir_label.config_hash(cfg)),
            ("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg)),
            ("make_ins_seg_labels", make_ins_seg_labels.config_hash(cfg))]


def _evaluate(cfg: RunConfig, run: RunDir, samples: list[Sample]) -> dict:
    names = cfg.data.classes.names
    bg_id = cfg.data.classes.background_index  # None: every class is an object class (tissue types)
    bg = background_id(cfg)  # a fill value for pixels scored as ignore
    c = len(names)
    folders = ["ir_labels"] + (["ir_labels_crf"] if cfg.ir_label.crf else [])
    # "ignore as background" needs a background class: without one, class 0 would be scored for the ignore pixels
    kinds = ("confident_only", "ignore_as_background") if cfg.data.classes.background_index is not None \
        else ("confident_only",)
    cms = {f: {k: ConfusionMatrix(c) for k in kinds} for f in folders}
    coverage = {f: [0, 0] for f in folders}
    pseudo_cm = ConfusionMatrix(c)
    inst_score, cc_score = ObjectScore(), ObjectScore()
    for s in track(samples, description=STEP):
        gt = load_class_mask(s, cfg.data)
        for f in folders:
            ir = upsample_nearest(read_png(run.path / f / f"{s.name}.png"), STRIDE, gt.shape)
            ign = ir == IGNORE
            cms[f]["confident_only"].update(np.where(ign, IGNORE, gt), np.where(ign, bg, ir))
            if "ignore_as_background" in cms[f]:
                cms[f]["ignore_as_background"].update(gt, np.where(ign, bg, ir))
            coverage[f][0] += int((~ign).sum())
            coverage[f][1] += ign.size
        pseudo = read_png(run.path / "pseudo" / f"{s.name}.png")
        # without a background class an image with no evidence is ignore (255): nothing to score there
        unknown = pseudo == IGNORE
        pseudo_cm.update(np.where(unknown, IGNORE, gt), np.where(unknown, 0, pseudo))
        gi = load_instance_mask(s, cfg.data, gt, bg_id)
        if gi is not None:
            inst = read_png(run.path / "instances" / f"{s.name}.png").astype(np.int64)
            inst_score.update(gi, np.where(gt == IGNORE, 0, inst))
            cc_score.update(gi, predicted_objects(pseudo, gt, bg_id))
    out: dict = {"images": len(samples)}
    for f in folders:
        out[f] = {k: cm.summary(names) for k, cm in cms[f].items()}
        out[f]["coverage"] = round(100 * coverage[f][0] / max(coverage[f][1], 1), 2)
    out["irn_pseudo"] = pseudo_cm.summary(names)
    if inst_score.dice:
        out["objects"] = {"irn_instances": inst_score.summary(), "pseudo_connected_components": cc_score.summary()}
    return out


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Write metrics/sem_seg.json."""
    h = config_hash(cfg)
    with run.step(STEP, h, overwrite=overwrite) as info:
        run.require("eval_cam", eval_cam.config_hash(cfg), STEP)
        run.require("cam_to_ir_label", cam_to_ir_label.config_hash(cfg), STEP)
        run.require("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg), STEP)
        run.require("make_ins_seg_labels", make_ins_seg_labels.config_hash(cfg), STEP)
        cam_metrics = json.loads((run.path / "metrics" / "cam.json").read_text())
        samples = [s for s in irn_samples(cfg) if s.mask is not None]
        d = cfg.data
        result: dict = {
            "notes": [
                "train/val images only: IRN pseudo-labels are made for the images that later train the "
                "segmentation network; test images are not touched",
                "cam = eval_cam label-gated CAM labels (metrics/cam.json); ir_labels at stride 4 upsampled x4 "
                "(nearest); irn_pseudo = pseudo/ (random walk)",
                "objects: ground-truth instances from the manifest's mask_cc column restricted to foreground "
                "classes; for GlaS these ids are connected components derived from the binary annotation, so "
                "touching glands may be merged and the object metrics are approximate",
            ],
            "cam_mode": cam_metrics.get("mode"), "cam_value": cam_metrics.get("chosen_value"), "splits": {}}
        for split in dict.fromkeys(d.train_splits + d.val_splits):
            its = [s for s in samples if s.split == split]
            if not its:
                continue
            entry = {"cam": cam_metrics.get("splits", {}).get(split, {}).get("label_gating")}
            entry.update(_evaluate(cfg, run, its))
            result["splits"][split] = entry
        write_json(run.sub("metrics") / "sem_seg.json", result)
        summary = {sp: {"cam_miou": (e["cam"] or {}).get("miou"), "pseudo_miou": e["irn_pseudo"]["miou"]}
                   for sp, e in result["splits"].items()}
        info.update(outputs=["metrics/sem_seg.json"], summary=summary)
        return result
