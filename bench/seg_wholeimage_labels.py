"""Benchmark: the segmentation network trained on whole-image labels (glas-malignant), against CAM labels,
by patient-grouped cross-validation of GlaS train (test never read).

    python bench/seg_wholeimage_labels.py --profile cpu

The glas-malignant target is "malignant" = the gland pixels of malignant images. Its CAMs localise no better than
the whole image (``malignant_localisation.cpu.json``: pixel AUC 0.58; the best subset of feature clusters is every
cluster). This asks whether the final network, trained with the noise-robust OEEM loss, does better from the
image labels alone: every pixel of a malignant training image labelled malignant, every pixel of a benign one
background (written as class-id PNGs and read through ``train_seg.labels: folder``), so that what the network calls
malignant must separate malignant images from benign ones pixel by pixel (stroma and benign-looking tissue, common
to both, pull toward background). Both candidates train 15 epochs, one member, on the other folds' images of
``bench/seg_crossval.py``'s 4 grade-stratified patient folds, and are scored on the held-out fold's masks, pooled
over the 85 train images (malignant IoU, the glas-malignant criterion). Writes
``bench/results/seg_wholeimage_labels_glas-malignant.<profile>.json``. No issue sets a target for this comparison;
the check reports it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--run", type=Path, default=None, help="source run folder (default "
                    "bench/work/cam_glas-malignant.<profile>, bench/cam_glas.py's)")
    ap.add_argument("--keep-work", action="store_true")
    args = ap.parse_args()
    import numpy as np

    from histowsss.config import load_config
    from histowsss.data.io import image_size
    from histowsss.engine.atomic import write_png
    from histowsss.steps import seg_labels
    from histowsss.steps.common import samples_for
    from histowsss.tuning.crossval import crossval

    t0 = time.time()
    name = "seg_wholeimage_labels_glas-malignant"
    src = (args.run or ROOT / "bench" / "work" / f"cam_glas-malignant.{args.profile}").resolve()
    base = load_config(str(src / "config.yaml"), ["train_seg.supervised=false"])
    classes = base.data.classes
    bg = classes.background_index
    malignant = next(i for i, n in enumerate(classes.names) if i != bg)
    labels = ROOT / "bench" / "work" / f"wholeimage_labels_glas-malignant.{args.profile}"
    samples = samples_for(base, seg_labels.train_splits(base))
    counts = {"malignant": 0, "background": 0}
    for s in samples:
        h, w = image_size(s.image)
        cls = malignant if classes.names[malignant] in s.labels else bg
        counts["malignant" if cls == malignant else "background"] += 1
        write_png(labels / f"{s.name}.png", np.full((h, w), cls, np.uint8))
    common = "train_seg.epochs=15;train_seg.members=1"
    cands = [common, f"{common};train_seg.labels=folder;train_seg.label_dir={labels}"]
    work = ROOT / "bench" / "work" / f"{name}.{args.profile}"
    res = crossval(src, cands, work, folds=args.folds, criterion="iou_malignant",
                   log=lambda m: print(m, flush=True))
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    pooled = {("cam_labels" if r["candidate"] == 0 else "whole_image_labels"): r["network"] for r in res["pooled"]}
    metrics = {"images": {**counts, "total": len(samples)}, "label_source_of_the_run": res["label_source"],
               "val_pooled": pooled, "per_fold": res["per_fold"], "weak_labels_pooled": res["weak_labels_pooled"],
               "folds": res["folds"]}
    gain = round(pooled["whole_image_labels"]["iou_malignant"] - pooled["cam_labels"]["iou_malignant"], 2)
    checks = [check("val_malignant_iou_whole_image_minus_cam_labels", gain,
                    "reported (held-out train patients, 4 folds pooled; test never read)", True)]
    path = write_result(name, args.profile, time.time() - t0,
                        {"run": str(src.relative_to(ROOT)), "folds": args.folds, "split_seed": 0,
                         "candidates": cands}, metrics, checks)
    print(json.dumps({"result": str(path), "val_pooled": pooled}, indent=2))


if __name__ == "__main__":
    main()
