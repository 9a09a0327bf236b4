"""Analysis (GlaS train only): how far can IRN go on these CAMs if its boundary network had perfect labels?

    python bench/irn_label_ceiling.py --protocol glas-gland --profile cpu      (after bench/irn_glas.py --keep)

Issue 3 asks for +8 mIoU over the CAMs; the pipeline gives +2.7 on glas-gland, and bench/irn_error_anatomy.py
shows that the same CAMs walked inside the true outlines would give +18: the boundary map is the limit. This bench
asks whether better *training labels* for the boundary network would lift that limit. It trains IRN (train_irn,
the run's own config) on the CAM stage of ``bench/work/cam_<protocol>.<profile>`` (hard links, read only) with:

* ``ir_labels``: the confident labels cam_to_ir_label chooses (the pipeline as it is);
* ``ground_truth``: every stride-4 cell labelled with the ground-truth class at its centre, no ignore. This is an
  in-sample ceiling, not a method: the boundary head is trained and scored on the same training images' truth.

For each it runs make_sem_seg_labels and scores, on the train images, the configured walk and the walk at
``--exp-times`` (same CAMs, radius, beta and background value), and the boundary map's ROC AUC for the true
outline cells (as irn_error_anatomy.py). Test images are never read. No issue target is set here (the +8 is
checked by irn_glas.py), so the result has no checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, cam_and_boundary, write_result  # noqa: E402
from irn_error_anatomy import outline_grid  # noqa: E402
from points_glas import link_cam_stage  # noqa: E402

VARIANTS = ("ir_labels", "ground_truth")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--exp-times", type=int, nargs="+", default=[4, 5, 6, 8], help="walk lengths (2**n steps) to score")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image
    from rich.progress import track
    from sklearn.metrics import roc_auc_score

    from histowsss.config import load_config
    from histowsss.data.masks import load_class_mask
    from histowsss.engine.atomic import write_png
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.steps.cam_to_ir_label import grid_gt
    from histowsss.steps.common import samples_for
    from histowsss.steps.irn_common import background_id, cam_class_ids, cam_mode, irn_samples, presence
    from histowsss.steps.make_sem_seg_labels import background_value, gate_cams, labels_from_scores, walk_scores

    src = ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}"
    if not (src / "status" / "eval_cam.json").exists():
        raise SystemExit(f"{src}: run bench/irn_glas.py --protocol {args.protocol} --keep first")
    cfg = load_config(str(src / "config.yaml"))
    ss = cfg.sem_seg
    mode, bg, ids = cam_mode(cfg), background_id(cfg), cam_class_ids(cfg)
    names = cfg.data.classes.names
    if [s.name for s in irn_samples(cfg)] != [s.name for s in samples_for(cfg, cfg.data.train_splits)]:
        raise SystemExit("this bench expects the IRN images to be the train split (ir_label.splits unset, no val split)")
    samples = samples_for(cfg, cfg.data.train_splits)
    present = presence(cfg, samples)
    lengths = sorted(set(args.exp_times) | {ss.exp_times})
    cam_value = float(json.loads((src / "metrics" / "cam.json").read_text())["chosen_value"])
    cam_cm = ConfusionMatrix(len(names))  # the CAM labels (eval_cam's rule), scored once
    t0 = time.time()
    results: dict[str, dict] = {}
    for variant in args.variants:
        dst = ROOT / "bench" / "work" / f"irn_labels_{variant}_{args.protocol}.{args.profile}"
        link_cam_stage(src, dst)
        rd = RunDir(dst, cfg).init()
        tv = time.time()
        run_pipeline(cfg, rd, start="cam_to_ir_label", stop="cam_to_ir_label")
        if variant == "ground_truth":
            for s in samples:
                p = dst / "ir_labels" / f"{s.name}.png"
                with Image.open(p) as im:
                    grid = (im.height, im.width)
                write_png(p, grid_gt(load_class_mask(s, cfg.data), grid).astype(np.uint8))
        run_pipeline(cfg, rd, start="train_irn", stop="make_sem_seg_labels")
        value = background_value(cfg, rd)
        cms = {e: ConfusionMatrix(len(names)) for e in lengths}
        aucs = []
        for i, s in enumerate(track(samples, description=f"scoring {variant}")):
            cam_norm, size, boundary = cam_and_boundary(dst, s.name)
            gt = load_class_mask(s, cfg.data)
            cam_norm, pres, allowed = gate_cams(cfg, s, cam_norm, present[i])
            cam, bnd = torch.from_numpy(cam_norm), torch.from_numpy(boundary)
            outline = outline_grid(gt, boundary.shape, len(names))
            if 0 < outline.mean() < 1:
                aucs.append(float(roc_auc_score(outline.ravel(), boundary.ravel())))
            if variant == args.variants[0]:
                got = walk_scores(cam, pres, ids, bg, mode, bnd, size, propagate=False)
                cam_cm.update(gt, np.full(size, bg, np.uint8) if got is None
                              else labels_from_scores(got[0], got[1], bg, mode, cam_value, allowed))
            for e in lengths:
                got = walk_scores(cam, pres, ids, bg, mode, bnd, size, ss.radius, ss.beta, e)
                cms[e].update(gt, np.full(size, bg, np.uint8) if got is None
                              else labels_from_scores(got[0], got[1], bg, mode, value, allowed))
        final = json.loads((dst / "logs" / "train_irn.jsonl").read_text().splitlines()[-1])
        results[variant] = {
            "train_pseudo_miou_by_exp_times": {str(e): cm.summary(names)["miou"] for e, cm in cms.items()},
            "train_pseudo_miou_configured": cms[ss.exp_times].summary(names)["miou"],
            "boundary_auc_vs_gt_outline_cells": {"mean": round(float(np.mean(aucs)), 3),
                                                 "p10_p50_p90": [round(float(x), 3)
                                                                 for x in np.percentile(aucs, [10, 50, 90])]},
            "train_irn_final_epoch": final, "seconds": round(time.time() - tv, 1)}
    cam_miou = cam_cm.summary(names)["miou"]
    for r in results.values():
        r["gain_over_cam_configured"] = round(r["train_pseudo_miou_configured"] - cam_miou, 2)
        r["gain_over_cam_best_exp_times"] = round(max(r["train_pseudo_miou_by_exp_times"].values()) - cam_miou, 2)
    metrics = {"train_cam_miou": cam_miou, "variants": results, "images": len(samples),
               "configured_exp_times": ss.exp_times}
    path = write_result(f"irn_label_ceiling_{args.protocol}", args.profile, time.time() - t0,
                        {"run": str(src.relative_to(ROOT)), "variants": args.variants, "exp_times": lengths,
                         "train_irn": cfg.train_irn.model_dump(mode="json"), "sem_seg": ss.model_dump(mode="json"),
                         "note": "GlaS train only (analysis for issue 3); the ground_truth variant is an in-sample "
                                 "ceiling, not a method; test never read; no target, so no checks"},
                        metrics, [])
    print(json.dumps({"result": str(path), **metrics}, indent=1))


if __name__ == "__main__":
    main()
