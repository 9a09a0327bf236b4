"""Analysis (GlaS train only): do colour superpixels snap the CAM or IRN labels to the gland outlines?

    python bench/irn_superpixel_vote.py --protocol glas-gland --profile cpu      (after bench/irn_glas.py)

Issue 3 asks for +8 mIoU over the CAMs; IRN's walk gives +2.7 on glas-gland because its boundary map has gaps
(docs/irn.md, "Why the gain is small"). A classic remedy in histopathology is to let the image's own colour
regions decide: average the class scores inside each superpixel and take the argmax per superpixel. This bench
does that for the CAM scores and for the walked (IRN) scores of the run folder bench/work/cam_<protocol>.<profile>
(make_cam's CAMs, make_sem_seg_labels' boundary maps), with SLIC (``skimage.segmentation.slic``, several sizes
and compactness values) and Felzenszwalb's graph segmentation, on every GlaS **train** image, and scores each
against the gland masks (one dataset-level confusion matrix, as eval_cam). Background values as the pipeline's
(eval_cam's chosen offset or make_sem_seg_labels' threshold). The superpixel settings are scanned on train and
the best is reported beside the unsnapped labels: an upper bound for this family of refinements. Test images are
never read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, cam_and_boundary, check, irn_run, write_result  # noqa: E402

SLIC = [(n, c) for n in (200, 600, 1500) for c in (10, 30)]  # (n_segments, compactness)
FELZENSZWALB = (50, 150)  # scale; sigma 0.8, min_size 50


def region_mean(scores, regions):
    """(C, H, W) scores replaced by their mean over each region of the (H, W) label map ``regions`` (ids >= 0)."""
    import numpy as np
    import torch

    flat = regions.ravel()
    n = int(flat.max()) + 1
    count = np.bincount(flat, minlength=n).clip(1)
    means = np.stack([np.bincount(flat, weights=c.ravel().astype(np.float64), minlength=n) / count
                      for c in scores.numpy()])
    return torch.from_numpy(means[:, regions].astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    args = ap.parse_args()

    import numpy as np
    import torch
    from rich.progress import track
    from skimage.segmentation import felzenszwalb, slic

    from histowsss.data.loading import load_image
    from histowsss.data.masks import load_class_mask
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.steps.make_sem_seg_labels import gate_cams, labels_from_scores, walk_scores

    run = irn_run(args.protocol, args.profile)
    run_path, cfg, mode, bg, ids, values = run.path, run.cfg, run.mode, run.bg, run.ids, run.values
    ss = cfg.sem_seg
    samples, present, names = run.samples, run.present, run.names
    methods = {f"slic_n{n}_c{c}": ("slic", n, c) for n, c in SLIC}
    methods.update({f"felzenszwalb_s{s}": ("felzenszwalb", s, 0) for s in FELZENSZWALB})
    cms = {k: ConfusionMatrix(len(names)) for k in ["cam", "pseudo"] + [f"{m}/{src}" for m in methods
                                                                         for src in ("cam", "pseudo")]}
    seconds = {m: 0.0 for m in methods}
    regions_per_image: dict[str, list[int]] = {m: [] for m in methods}
    t0 = time.time()
    for i, s in enumerate(track(samples, description="superpixel vote (train)")):
        cam_norm, size, boundary = cam_and_boundary(run_path, s.name)
        gt = load_class_mask(s, cfg.data)
        img = load_image(s.image, cfg.data)
        cam_norm, pres, allowed = gate_cams(cfg, s, cam_norm, present[i])
        cam = torch.from_numpy(cam_norm)
        scores = {}
        for src, walk in (("cam", False), ("pseudo", True)):
            scores[src] = walk_scores(cam, pres, ids, bg, mode, torch.from_numpy(boundary), size, ss.radius, ss.beta,
                                      ss.exp_times, propagate=walk)
            got = scores[src]
            cms[src].update(gt, np.full(size, bg, np.uint8) if got is None
                            else labels_from_scores(got[0], got[1], bg, mode, values[src], allowed))
        for m, (alg, a, b) in methods.items():
            t = time.perf_counter()
            regions = (slic(img, n_segments=a, compactness=b, start_label=0) if alg == "slic"
                       else felzenszwalb(img, scale=a, sigma=0.8, min_size=50))
            seconds[m] += time.perf_counter() - t
            regions_per_image[m].append(int(regions.max()) + 1)
            for src, got in scores.items():
                cms[f"{m}/{src}"].update(gt, np.full(size, bg, np.uint8) if got is None else labels_from_scores(
                    region_mean(got[0], regions), got[1], bg, mode, values[src], allowed))
    miou = {k: cm.summary(names)["miou"] for k, cm in cms.items()}
    best = {src: max(methods, key=lambda m: miou[f"{m}/{src}"]) for src in ("cam", "pseudo")}
    metrics = {
        "train_miou": miou,
        "best_on_train": {src: {"method": m, "miou": miou[f"{m}/{src}"],
                                "gain_over_unsnapped": round(miou[f"{m}/{src}"] - miou[src], 2)}
                          for src, m in best.items()},
        "irn_gain_over_cam": round(miou["pseudo"] - miou["cam"], 2),
        "best_gain_over_cam": round(max(miou[f"{best['pseudo']}/pseudo"], miou[f"{best['cam']}/cam"], miou["pseudo"])
                                    - miou["cam"], 2),
        "superpixels_per_image_mean": {m: round(float(np.mean(v)), 1) for m, v in regions_per_image.items()},
        "superpixel_seconds_per_image": {m: round(v / len(samples), 3) for m, v in seconds.items()},
        "background_values": values, "images": len(samples)}
    gain = metrics["best_gain_over_cam"]
    checks = [check(f"pseudo_mask_gain_over_cam_with_superpixel_vote_{args.protocol}_train", gain,
                    ">= +8 mIoU over the CAMs (issue 3, glas-gland; here with the best superpixel setting on train)",
                    gain >= 8)] if args.protocol == "glas-gland" else []
    path = write_result(f"irn_superpixel_vote_{args.protocol}", args.profile, time.time() - t0,
                        {"run": str(run_path.relative_to(ROOT)), "slic": SLIC, "felzenszwalb_scale": FELZENSZWALB,
                         "sem_seg": ss.model_dump(mode="json"),
                         "note": "GlaS train only; every setting scanned and scored on train; test never read"},
                        metrics, checks)
    print(json.dumps({"result": str(path), **metrics}, indent=1))


if __name__ == "__main__":
    main()
