"""Analysis (GlaS train only): where are the CAM's errors, and could the IRN boundary map fix them?

    python bench/irn_error_anatomy.py --protocol glas-gland --profile cpu      (after bench/irn_glas.py)

Issue 3 asks IRN for +8 mIoU over the CAMs; on glas-gland it gives +2.7. IRN's random walk can only move a
label across the boundary map's regions, so it helps where the CAM's errors sit at object outlines and not where
whole glands or stroma areas are wrong. This bench reads the run folder bench/work/cam_<protocol>.<profile>
(CAMs, IRN boundary maps) and, on every GlaS **train** image, measures:

* the error of the CAM labels and of the IRN pseudo-masks (the configured walk) by distance to the nearest
  ground-truth class outline (bands in image pixels): how much of each lies within a few pixels of an outline;
* region voting: the walked scores averaged inside watershed regions of the boundary map (markers on a grid of
  ``--spacing`` cells), i.e. labels snapped to the boundary map, and the same regions labelled by their
  ground-truth majority (an oracle: the best any labelling of those regions can do);
* the outline oracle: the same CAMs walked (same radius, beta, background value) on a boundary map drawn from the
  ground truth instead of IRN's (1 on stride-4 cells that hold two classes or touch a cell of another majority
  class, 0 elsewhere), for ``--oracle-exp-times``. It separates the two possible causes of a small IRN gain:
  seeds too poor for any walk, or a boundary map too weak to walk far. With it, the IRN boundary map's ROC AUC
  for those outline cells (per image, then mean / percentiles).

Background values: eval_cam's chosen one for the CAM labels (as eval_cam), make_sem_seg_labels' for the walk and
the region votes (its threshold, or eval_cam's offset). Test images are never read. No issue target
is set here, so the result has no checks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, cam_and_boundary, irn_run, write_result  # noqa: E402

BANDS = (0, 4, 8, 16, 32, 64)


def outline_grid(gt, grid: tuple[int, int], n_classes: int):
    """(h, w) bool on the stride-4 grid: cells holding two classes of ``gt`` (255 = ignore, left out) or touching
    a cell (4-neighbourhood) whose majority class differs."""
    import numpy as np

    from histowsss.steps.irn_common import STRIDE

    h, w = grid
    pad = np.full((h * STRIDE, w * STRIDE), 255, np.uint8)
    pad[: gt.shape[0], : gt.shape[1]] = gt[: h * STRIDE, : w * STRIDE]
    cells = pad.reshape(h, STRIDE, w, STRIDE).transpose(0, 2, 1, 3).reshape(h, w, STRIDE * STRIDE)
    counts = np.stack([(cells == c).sum(-1) for c in range(n_classes)], -1)
    mixed = (counts > 0).sum(-1) > 1
    major = np.where(counts.sum(-1) > 0, counts.argmax(-1), -1)
    known = major >= 0
    down = (major[1:] != major[:-1]) & known[1:] & known[:-1]  # cell (y + 1, x) differs from (y, x)
    right = (major[:, 1:] != major[:, :-1]) & known[:, 1:] & known[:, :-1]
    edge = mixed.copy()
    edge[1:] |= down
    edge[:-1] |= down
    edge[:, 1:] |= right
    edge[:, :-1] |= right
    return edge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--spacing", type=int, nargs="+", default=[3, 5], help="watershed marker grid (stride-4 cells)")
    ap.add_argument("--oracle-exp-times", type=int, nargs="+", default=[4, 6, 8],
                    help="walk lengths (2**n steps) for the ground-truth-outline walk")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from rich.progress import track
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed
    from sklearn.metrics import roc_auc_score

    from histowsss.data.masks import load_class_mask
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.steps.irn_common import STRIDE
    from histowsss.steps.make_sem_seg_labels import gate_cams, labels_from_scores, walk_scores

    run = irn_run(args.protocol, args.profile)
    run_path, cfg, mode, bg, ids, values = run.path, run.cfg, run.mode, run.bg, run.ids, run.values
    ss = cfg.sem_seg
    value = values["pseudo"]
    samples, present, names = run.samples, run.present, run.names
    kinds = (["cam", "pseudo"] + [f"vote_{g}" for g in args.spacing] + [f"oracle_{g}" for g in args.spacing]
             + [f"outline_oracle_e{e}" for e in args.oracle_exp_times])
    boundary_auc: list[float] = []
    cms = {k: ConfusionMatrix(len(names)) for k in kinds}
    edges = list(BANDS) + [np.inf]
    band_pixels = np.zeros(len(BANDS), np.int64)
    band_errors = {k: np.zeros(len(BANDS), np.int64) for k in ("cam", "pseudo")}
    regions_per_image = {g: [] for g in args.spacing}
    t0 = time.time()
    for i, s in enumerate(track(samples, description="error anatomy (train)")):
        cam_norm, size, boundary = cam_and_boundary(run_path, s.name)
        gt = load_class_mask(s, cfg.data)
        cam_norm, pres, allowed = gate_cams(cfg, s, cam_norm, present[i])
        cam = torch.from_numpy(cam_norm)
        labs = {}
        walked = None
        for kind, walk in (("cam", False), ("pseudo", True)):
            got = walk_scores(cam, pres, ids, bg, mode, torch.from_numpy(boundary), size, ss.radius, ss.beta,
                              ss.exp_times, propagate=walk)
            labs[kind] = (np.full(size, bg, np.uint8) if got is None
                          else labels_from_scores(got[0], got[1], bg, mode, values[kind], allowed))
            if walk:
                walked = got
        # distance of every pixel to the nearest ground-truth class outline
        valid = gt != 255
        outline = np.zeros(gt.shape, bool)
        outline[:-1] |= gt[:-1] != gt[1:]
        outline[:, :-1] |= gt[:, :-1] != gt[:, 1:]
        dist = ndi.distance_transform_edt(~outline)
        band = np.digitize(dist, edges[1:-1])
        band_pixels += np.bincount(band[valid], minlength=len(BANDS))
        for kind in ("cam", "pseudo"):
            wrong = valid & (labs[kind] != gt)
            band_errors[kind] += np.bincount(band[wrong], minlength=len(BANDS))
            cms[kind].update(gt, labs[kind])
        h, w = boundary.shape
        gt_small = gt[::STRIDE, ::STRIDE][:h, :w]
        outline_cells = outline_grid(gt, (h, w), len(names))
        if 0 < outline_cells.mean() < 1:
            boundary_auc.append(float(roc_auc_score(outline_cells.ravel(), boundary.ravel())))
        for e in args.oracle_exp_times:
            got = walk_scores(cam, pres, ids, bg, mode, torch.from_numpy(outline_cells.astype(np.float32)), size,
                              ss.radius, ss.beta, e)
            cms[f"outline_oracle_e{e}"].update(gt, np.full(size, bg, np.uint8) if got is None
                                               else labels_from_scores(got[0], got[1], bg, mode, value, allowed))
        for g in args.spacing:
            markers = np.zeros((h, w), np.int32)
            gy, gx = np.meshgrid(np.arange(g // 2, h, g), np.arange(g // 2, w, g), indexing="ij")
            markers[gy, gx] = np.arange(1, gy.size + 1).reshape(gy.shape)
            regions = watershed(boundary, markers)
            n = int(regions.max())
            regions_per_image[g].append(n)
            up_regions = np.kron(regions, np.ones((STRIDE, STRIDE), np.int32))[: size[0], : size[1]]
            if walked is None:
                cms[f"vote_{g}"].update(gt, labs["pseudo"])
            else:
                sc, keys = walked
                small = F.avg_pool2d(sc[None], STRIDE, ceil_mode=True)[0].numpy()[:, :h, :w]
                means = np.stack([np.asarray(ndi.mean(c, labels=regions, index=np.arange(1, n + 1))) for c in small])
                voted = torch.from_numpy(means[:, up_regions - 1].astype(np.float32))
                cms[f"vote_{g}"].update(gt, labels_from_scores(voted, keys, bg, mode, value, allowed))
            counts = np.zeros((n + 1, len(names) + 1), np.int64)  # region x class (last column: ignore)
            np.add.at(counts, (regions.ravel(), np.where(gt_small == 255, len(names), gt_small).ravel()), 1)
            major = counts[:, : len(names)].argmax(1).astype(np.uint8)
            cms[f"oracle_{g}"].update(gt, major[up_regions])
    miou = {k: cm.summary(names)["miou"] for k, cm in cms.items()}
    total = {k: int(v.sum()) for k, v in band_errors.items()}
    bands = []
    for b in range(len(BANDS)):
        hi = edges[b + 1]
        row = {"band_px": f"{BANDS[b]}-{int(hi)}" if np.isfinite(hi) else f">={BANDS[b]}",
               "pixel_share": round(100 * band_pixels[b] / band_pixels.sum(), 2)}
        for k in ("cam", "pseudo"):
            row[f"{k}_error_rate"] = round(100 * band_errors[k][b] / max(band_pixels[b], 1), 2)
            row[f"{k}_error_share"] = round(100 * band_errors[k][b] / max(total[k], 1), 2)
        bands.append(row)
    near = {k: round(sum(r[f"{k}_error_share"] for r in bands[:2]), 2) for k in ("cam", "pseudo")}
    metrics = {"train_miou": miou, "errors_by_distance_to_outline": bands,
               "error_share_within_8px": near,
               "regions_per_image_mean": {g: round(float(np.mean(v)), 1) for g, v in regions_per_image.items()},
               "irn_boundary_auc_vs_gt_outline_cells": {
                   "mean": round(float(np.mean(boundary_auc)), 3),
                   "p10_p50_p90": [round(float(x), 3) for x in np.percentile(boundary_auc, [10, 50, 90])],
                   "images": len(boundary_auc)},
               "background_values": values, "images": len(samples)}
    path = write_result(f"irn_error_anatomy_{args.protocol}", args.profile, time.time() - t0,
                        {"run": str(run_path.relative_to(ROOT)), "spacing": args.spacing, "bands": list(BANDS),
                         "oracle_exp_times": args.oracle_exp_times,
                         "sem_seg": ss.model_dump(mode="json"),
                         "note": "GlaS train only (analysis for issue 3); test never read; no target, so no checks"},
                        metrics, [])
    print(json.dumps({"result": str(path), **metrics}, indent=1))


if __name__ == "__main__":
    main()
