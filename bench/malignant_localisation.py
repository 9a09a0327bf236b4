"""Analysis: can any image-label-only cue localise malignant glands inside malignant GlaS images?

    python bench/malignant_localisation.py --profile cpu   (after bench/cam_glas.py --protocol glas-malignant)

On GlaS **train** malignant images, per-image pixel ROC-AUC of gland vs non-gland for: the malignant CAM of
the benchmark run; a hematoxylin-density prior (colour deconvolution, Gaussian-smoothed); and a
nearest-neighbour "distance to benign tissue" map (PatchCore-style memory bank of ImageNet features from
benign train images). AUC 0.5 = no localisation. Also the train IoU of the best global threshold of each
cue against "whole image = malignant". And cross-image regions (what RPNet-style prototype mining builds on):
k-means of the same features over every train image, k = 2..8; the best subset of clusters called malignant,
chosen by reading the gland masks (an oracle, so an upper bound for any rule that picks clusters from image
labels), and the subset image labels pick (clusters more frequent in malignant than in benign images).
Train data only: this explains the CAM result, it tunes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402


def _cluster_oracle(features, cfg, benign: list, malignant: list, load_image, load_class_mask) -> dict:
    """k-means regions across train images: train IoU of the oracle's best cluster subset and of the image-label
    rule (clusters more frequent in malignant images), on the feature grid (gland fraction of each cell)."""
    import itertools

    import torch.nn.functional as F
    from sklearn.cluster import MiniBatchKMeans

    feats, grids = [], []
    for i, s in enumerate(benign + malignant):
        f = features(load_image(s.image, cfg.data))
        feats.append(f.flatten(1).T.numpy())
        if i >= len(benign):
            gt = torch_from(load_class_mask(s, cfg.data) > 0)
            grids.append(F.interpolate(gt, size=f.shape[1:], mode="area")[0, 0].numpy().ravel())
    rng = np.random.default_rng(0)
    bank = np.concatenate([v[rng.choice(len(v), min(400, len(v)), replace=False)] for v in feats])
    out = {}
    for k in (2, 3, 4, 6, 8):
        km = MiniBatchKMeans(k, random_state=0, n_init=5, batch_size=4096).fit(bank)
        labs = [km.predict(v) for v in feats]
        lab_b, lab_m = labs[:len(benign)], labs[len(benign):]

        def iou(sel: tuple[int, ...]) -> float:
            inter = sum(float((np.isin(lab, sel) * gr).sum()) for lab, gr in zip(lab_m, grids))
            union = sum(float(np.maximum(np.isin(lab, sel), gr).sum()) for lab, gr in zip(lab_m, grids))
            return round(100 * inter / union, 2)

        subsets = [c for r in range(1, k + 1) for c in itertools.combinations(range(k), r)]
        best = max(subsets, key=iou)
        freq_m = np.bincount(np.concatenate(lab_m), minlength=k) / sum(len(x) for x in lab_m)
        freq_b = np.bincount(np.concatenate(lab_b), minlength=k) / sum(len(x) for x in lab_b)
        by_labels = tuple(int(c) for c in np.flatnonzero(freq_m > freq_b))
        cells = [np.concatenate([gr[lab == c] for lab, gr in zip(lab_m, grids)]) for c in range(k)]
        gland = [round(float(x.mean()), 2) if x.size else None for x in cells]  # None: not in malignant images
        out[f"k{k}"] = {"oracle_best": iou(best), "oracle_clusters": len(best),
                        "image_label_rule": iou(by_labels) if by_labels else None,
                        "whole_image": iou(tuple(range(k))), "cluster_gland_fraction": gland}
    return out


def torch_from(mask: np.ndarray):
    """A boolean mask as a (1, 1, H, W) float tensor."""
    import torch

    return torch.from_numpy(mask[None, None].astype(np.float32))


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
    clusters = _cluster_oracle(features, cfg, benign, malignant, load_image, load_class_mask)
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
               "train_malignant_iou_whole_image": round(100 * whole, 2),
               "train_malignant_iou_feature_clusters": clusters}
    # analysis only: the target lives in cam_glas-malignant; this reports the explanation
    checks = [check("cam_pixel_auc_gland_vs_rest_in_malignant_train_images", metrics["pixel_auc_mean"]["cam"],
                    "reported (analysis; 0.5 = no localisation)", True)]
    path = write_result("malignant_localisation", args.profile, time.time() - t0,
                        {"run": str(run.relative_to(ROOT)), "splits": "train only"}, metrics, checks)
    print(path, metrics)


if __name__ == "__main__":
    main()
