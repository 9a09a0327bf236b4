"""Analysis: can any image-label-only cue localise malignant glands inside malignant GlaS images?

    python bench/malignant_localisation.py --profile cpu   (after bench/cam_glas.py --protocol glas-malignant)

On GlaS **train** malignant images, per-image pixel ROC-AUC of gland vs non-gland for: the malignant CAM of
the benchmark run; a hematoxylin-density prior (colour deconvolution, Gaussian-smoothed); and a
nearest-neighbour "distance to benign tissue" map (PatchCore-style memory bank of ImageNet features from
benign train images). AUC 0.5 = no localisation. Also the train IoU of the best global threshold of each
cue against "whole image = malignant". Train data only: this explains the CAM result, it tunes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--run", type=Path, default=None)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F
    from scipy import ndimage as ndi
    from skimage.color import rgb2hed
    from sklearn.metrics import roc_auc_score

    from histowsss.config import load_config
    from histowsss.data.loading import load_image
    from histowsss.data.manifest import read_manifest
    from histowsss.data.masks import load_class_mask
    from histowsss.data.transforms import Normalizer
    from histowsss.evaluation.cam_labels import upsample_cam
    from histowsss.models.backbone import StagedBackbone

    t0 = time.time()
    run = args.run or ROOT / "bench" / "work" / f"cam_glas-malignant.{args.profile}"
    cfg = load_config(str(run / "config.yaml"))
    samples = read_manifest(cfg.data, cfg.data.train_splits)
    benign = [s for s in samples if "malignant" not in s.labels]
    malignant = [s for s in samples if "malignant" in s.labels]
    bb = StagedBackbone(cfg.backbone).eval()
    norm = Normalizer(bb.mean, bb.std)

    def features(img: np.ndarray) -> torch.Tensor:
        x = norm(torch.from_numpy(np.ascontiguousarray(img))[None])
        with torch.no_grad():
            _, got = bb(x, collect=(2, 3))
        f3 = F.interpolate(got[3], size=got[2].shape[2:], mode="bilinear", align_corners=False)
        return F.avg_pool2d(torch.cat([F.normalize(got[2], dim=1), F.normalize(f3, dim=1)], 1), 3, 1, 1)[0]

    rng = np.random.default_rng(0)
    bank = []
    for s in benign:
        v = features(load_image(s.image, cfg.data)).flatten(1).T
        bank.append(v[torch.from_numpy(rng.choice(len(v), min(600, len(v)), replace=False))])
    bank_t = torch.cat(bank)
    aucs: dict[str, list[float]] = {"cam": [], "hematoxylin": [], "knn_to_benign": []}
    pooled: dict[str, list[np.ndarray]] = {k: [] for k in aucs}
    gts = []
    for s in malignant:
        img = load_image(s.image, cfg.data)
        gt = load_class_mask(s, cfg.data) > 0
        with np.load(run / "cams" / f"{s.name}.npz") as z:
            cam = upsample_cam(z["cam"].astype(np.float32), tuple(int(v) for v in z["size"]))[0]
        hem = ndi.gaussian_filter(rgb2hed(img)[..., 0], 6)
        f = features(img)
        d = torch.cdist(f.flatten(1).T, bank_t).topk(3, largest=False).values.mean(1).reshape(1, 1, *f.shape[1:])
        knn = F.interpolate(d, size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0].numpy()
        for k, m in (("cam", cam), ("hematoxylin", hem), ("knn_to_benign", knn)):
            aucs[k].append(float(roc_auc_score(gt.ravel()[::5], m.ravel()[::5])))
            r = m.ravel()[::5].argsort().argsort() / (m.size / 5)  # per-image rank: scale-free threshold
            pooled[k].append(r)
        gts.append(gt.ravel()[::5])
    g = np.concatenate(gts)
    whole = float(g.mean())
    best = {}
    for k in aucs:
        r = np.concatenate(pooled[k])
        ious = [float(((r > q) & g).sum() / ((r > q) | g).sum()) for q in np.linspace(0, 0.8, 17)]
        best[k] = round(100 * max(ious), 2)
    metrics = {"images": {"benign": len(benign), "malignant": len(malignant)},
               "pixel_auc_mean": {k: round(float(np.mean(v)), 3) for k, v in aucs.items()},
               "pixel_auc_p10_p50_p90": {k: [round(float(x), 3) for x in np.percentile(v, [10, 50, 90])]
                                         for k, v in aucs.items()},
               "train_malignant_iou_best_rank_threshold": best,
               "train_malignant_iou_whole_image": round(100 * whole, 2)}
    # analysis only: the target lives in cam_glas-malignant; this reports the explanation
    checks = [check("cam_pixel_auc_gland_vs_rest_in_malignant_train_images", metrics["pixel_auc_mean"]["cam"],
                    "reported (analysis; 0.5 = no localisation)", True)]
    path = write_result("malignant_localisation", args.profile, time.time() - t0,
                        {"run": str(run.relative_to(ROOT)), "splits": "train only"}, metrics, checks)
    print(path, metrics)


if __name__ == "__main__":
    main()
