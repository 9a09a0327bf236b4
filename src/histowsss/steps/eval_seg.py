"""Step eval_seg: sliding-window inference of the segmentation network on the test splits, and its metrics.

For every image of ``eval_seg.splits`` (default: the test splits): class probabilities from overlapping tiles
(Gaussian / linear blending, flip or dihedral TTA, optionally at several scales, :mod:`histowsss.engine.inference`), argmax ->
``pred/<name>.png`` (``pred_supervised/`` for the upper bound). Metrics from dataset-level confusion matrices
(:class:`histowsss.evaluation.metrics.ConfusionMatrix`): one per split and one over all evaluated splits
(``all``: e.g. GlaS testA + testB), plus per-image mIoU (for the report's best / worst examples).
Object level, when the manifest has instance masks (``mask_cc``): the GlaS challenge metrics (object F1, object
Dice, object Hausdorff, :mod:`histowsss.evaluation.object_score`) of the prediction's connected components (each
foreground class) against the ground-truth instances, per split and over all (``objects``).
Writes ``metrics/seg.json`` (``metrics/seg_supervised.json``). Only rank 0 evaluates under torchrun.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
from rich.progress import track

from histowsss.config import RunConfig
from histowsss.data.loading import load_image
from histowsss.data.masks import load_class_mask, load_instance_mask
from histowsss.data.transforms import Normalizer
from histowsss.engine.atomic import write_json, write_png
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.evaluation.metrics import ConfusionMatrix
from histowsss.evaluation.object_score import ObjectScore, predicted_objects
from histowsss.steps import segnet_io, train_seg
from histowsss.steps.common import samples_for

STEP = "eval_seg"


def config_hash(cfg: RunConfig, network_hash: str | None = None) -> str:
    """Hash of train_seg's inputs (``network_hash``: the network's hash given instead) + the eval_seg section."""
    import hashlib

    payload = f"{network_hash or train_seg.config_hash(cfg)}|{cfg.step_hash('eval_seg')}"
    if cfg.eval_seg.image_gate:  # the gate reads the CAM stage's image probabilities and chosen cut
        from histowsss.steps import eval_cam

        payload += f"|{eval_cam.config_hash(cfg)}"
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps (status record, config hash) this step reads: checked before a run starts."""
    need = [(train_seg.status_name(cfg), train_seg.config_hash(cfg))]
    if cfg.eval_seg.image_gate:  # (eval_cam's chosen cut, make_cam's image probabilities)
        from histowsss.steps import eval_cam, make_cam

        need += [("eval_cam", eval_cam.config_hash(cfg)), ("make_cam", make_cam.config_hash(cfg))]
    return need


def status_name(cfg: RunConfig) -> str:
    """``eval_seg`` or ``eval_seg_supervised`` (see :func:`histowsss.steps.train_seg.status_name`)."""
    return f"{STEP}_supervised" if cfg.train_seg.supervised else STEP


def pred_dir_name(tag: str) -> str:
    return "pred" if tag == "seg" else "pred_" + tag.removeprefix("seg_")


def eval_splits(cfg: RunConfig) -> list[str]:
    return list(cfg.eval_seg.splits or cfg.data.test_splits)


def predict_probs(model, img: np.ndarray, cfg: RunConfig, device) -> np.ndarray:
    """(C, H, W) probabilities of one image (already at data.image_scale) with the eval_seg settings."""
    from histowsss.engine.inference import multiscale_probs

    ev = cfg.eval_seg
    return multiscale_probs(model, img, Normalizer(model.mean, model.std), ev.scales, tile=ev.tile_size,
                            overlap=ev.overlap, blend=ev.blend, tta=ev.tta, batch_size=ev.batch_size,
                            device=device, size_divisor=model.size_divisor, amp=cfg.train_seg.amp,
                            cpu_amp=ev.cpu_amp)


def finite_probs(probs: np.ndarray, where) -> np.ndarray:
    """``probs``, or a ValueError naming ``where`` when some are NaN / inf (damaged weights, bfloat16 overflow):
    predict stops instead of writing labels of class 0."""
    if not np.isfinite(probs).all():
        raise ValueError(f"{where}: the network's probabilities are not finite (NaN / inf): its weights are damaged "
                         "(train or export it again), or bfloat16 overflowed (try --no-cpu-amp)")
    return probs


def labels_from_probs(probs: np.ndarray, cfg: RunConfig) -> np.ndarray:
    """Class ids (uint8) of (C, H, W) probabilities: the argmax, then the eval_seg object clean-up."""
    return clean_for(probs.argmax(0).astype(np.uint8), cfg)


def clean_for(lab: np.ndarray, cfg: RunConfig, pixel_factor: float = 1.0) -> np.ndarray:
    """``lab`` with the eval_seg object clean-up (``min_object_area``, ``max_hole_area``, ``split_h``;
    :func:`histowsss.ops.label_cleanup.clean_objects`; unchanged when it is off). ``pixel_factor``: network pixels
    per map pixel along a side, so areas shrink by its square and ``split_h`` by it on a coarser map (a slide's)."""
    ev = cfg.eval_seg
    if not ev.min_object_area and not ev.max_hole_area and not ev.split_h:
        return lab
    from histowsss.ops.label_cleanup import clean_objects

    f2 = pixel_factor**2
    return clean_objects(lab, cfg.data.classes.background_index, min_object_area=math.ceil(ev.min_object_area / f2),
                         max_hole_area=math.ceil(ev.max_hole_area / f2), split_h=ev.split_h / pixel_factor)


def object_summary(per_split: dict[str, ObjectScore]) -> dict | None:
    """``{"splits": {split: summary}, "all": summary}`` over the splits that had instance masks; None if none had."""
    scored = {sp: o for sp, o in per_split.items() if o.dice}
    if not scored:
        return None
    overall = ObjectScore()
    for o in scored.values():
        overall.merge(o)
    return {"splits": {sp: o.summary() for sp, o in scored.items()}, "all": overall.summary()}


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Write pred/<name>.png and metrics/seg.json (or the seg_supervised equivalents)."""
    from histowsss.engine.device import resolve_device
    from histowsss.engine.ranks import is_main_process

    if not is_main_process():
        return {}
    ev = cfg.eval_seg
    h = config_hash(cfg)
    with run.step(status_name(cfg), h, overwrite=overwrite) as info:
        run.require(train_seg.status_name(cfg), train_seg.config_hash(cfg), status_name(cfg))
        tag = train_seg.tag(cfg)
        device = resolve_device(cfg.device)
        model = segnet_io.load_segnet(cfg, run.path, tag, device)
        names = cfg.data.classes.names
        splits = eval_splits(cfg)
        samples = samples_for(cfg, splits)
        if not samples:
            raise StepError(f"no images in the eval_seg splits {splits}; set eval_seg.splits or data.test_splits")
        pdir = pred_dir_name(tag)
        # every prediction is made again: none of an earlier network (or of other splits) stays beside the new scores
        shutil.rmtree(run.path / pdir, ignore_errors=True)
        gate = None
        if ev.image_gate:
            from histowsss.steps import eval_cam, make_cam
            from histowsss.steps.image_gate import apply_gate, chosen_gate, stored_absent

            run.require("eval_cam", eval_cam.config_hash(cfg), status_name(cfg) + " (eval_seg.image_gate)")
            gate = chosen_gate(run.path, cfg)
            cam_hash = make_cam.config_hash(cfg)
        bg = cfg.data.classes.background_index
        gated_images = 0
        cms = {sp: ConfusionMatrix(len(names)) for sp in splits}
        overall = ConfusionMatrix(len(names))
        objects = {sp: ObjectScore() for sp in splits}
        per_image, unlabelled = [], 0
        for s in track(samples, description=f"eval_seg ({tag})", disable=False):
            img = load_image(s.image, cfg.data)
            probs = predict_probs(model, img, cfg, device)
            if gate is not None:
                absent = stored_absent(run.path, s.name, names, gate, cam_hash)
                probs = apply_gate(probs, absent, bg)
                gated_images += bool([k for k in absent if k != bg])
            pred = labels_from_probs(probs, cfg)
            if ev.save_predictions:
                write_png(run.path / pdir / f"{s.name}.png", pred)
            if s.mask is None:
                unlabelled += 1
                continue
            gt = load_class_mask(s, cfg.data)
            if gt.shape != pred.shape:
                raise StepError(f"{s.mask}: mask size {gt.shape} differs from its image {pred.shape}")
            one = ConfusionMatrix(len(names))
            one.update(gt, pred)
            cms[s.split].merge(one)
            overall.merge(one)
            gi = load_instance_mask(s, cfg.data, gt, bg)
            if gi is not None:
                objects[s.split].update(gi, predicted_objects(pred, gt, bg))
            summ = one.summary(names)
            per_image.append({"name": s.name, "split": s.split, "miou": summ["miou"],
                              "iou": {c: v["iou"] for c, v in summ["per_class"].items()}})
        meta_path = segnet_io.checkpoint_path(run.path, tag).with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        result = {"tag": tag, "label_source": meta.get("label_source"), "loss": meta.get("loss"),
                  "supervised": cfg.train_seg.supervised,
                  "inference": {"tile_size": ev.tile_size, "overlap": ev.overlap, "blend": ev.blend, "tta": ev.tta,
                                "scales": ev.scales, "image_scale": cfg.data.image_scale,
                                "image_gate": ev.image_gate, "image_gate_cut": gate,
                                "min_object_area": ev.min_object_area, "max_hole_area": ev.max_hole_area,
                                "split_h": ev.split_h,
                                "images_with_classes_removed": gated_images if ev.image_gate else None},
                  "splits": {sp: {**cms[sp].summary(names), "images": sum(1 for s in samples if s.split == sp)}
                             for sp in splits},
                  "all": {**overall.summary(names), "splits": splits, "images": len(samples)},
                  "unlabelled_images": unlabelled, "per_image": per_image,
                  "objects": object_summary(objects),
                  "notes": ["'all' is one dataset-level confusion matrix over every evaluated split (not a mean of "
                            "per-split or per-image numbers); per_image is for choosing examples only",
                            "objects: GlaS challenge metrics of the prediction's connected components against the "
                            "manifest's instance masks (mask_cc); F1 from TP/FP/FN summed over images; dice (percent) "
                            "and hausdorff (pixels at data.image_scale) pooled over all objects, each weighted by "
                            "its area, as GlaS defines them; *_mean_per_image: their means over images"]}
        write_json(run.sub("metrics") / f"{tag}.json", result)
        # (its predictions folder too, emptied when not saved: no other settings' predictions beside these scores)
        info.update(outputs=[f"metrics/{tag}.json", f"{pdir}/"], tag=tag, miou=result["all"]["miou"])
        return result
