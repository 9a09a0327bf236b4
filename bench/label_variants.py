"""Analysis (GlaS train only): sparser, cleaner weak labels built from a finished run, as label folders for train_seg.

    python bench/label_variants.py --protocol glas-gland --profile cpu      (after bench/irn_glas.py --keep)

then, to see what a network learns from them on held-out train patients:

    python bench/seg_schedule.py --protocol glas-gland --profile cpu \\
        --candidate "train_seg.epochs=15;train_seg.members=1" \\
        --candidate "train_seg.epochs=15;train_seg.members=1;train_seg.labels=folder;train_seg.label_dir=$PWD/bench/work/labels_irconf_glas-gland.cpu" \\
        --candidate "train_seg.epochs=15;train_seg.members=1;train_seg.labels=folder;train_seg.label_dir=$PWD/bench/work/labels_agree_glas-gland.cpu" \\
        --ensemble 1,2 --name seg_labelsource_val_glas-gland

Two variants of the run's weak labels, each a folder of class-id PNGs at image size (255 = ignore):

* ``irconf``: cam_to_ir_label's confident seeds alone (the IRN training labels, nearest-upsampled from the stride-4
  grid), everything else ignored;
* ``agree``: the IRN pseudo-masks where eval_cam's CAM labels agree with them, ignore where they disagree.

For each, and for the two full label maps, the share of pixels labelled and the mIoU on those pixels, over GlaS
**train** (the images train_seg learns from). Test images are never read; no issue target, so no checks.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", required=True, choices=["glas-gland", "glas-malignant"])
    ap.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    ap.add_argument("--run", default=None, help="run folder (default bench/work/cam_<protocol>.<profile>)")
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    from histowsss.config import load_config
    from histowsss.data.masks import IGNORE, load_class_mask
    from histowsss.engine.atomic import write_png
    from histowsss.engine.run_dir import RunDir
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.steps import seg_labels
    from histowsss.steps.common import samples_for
    from histowsss.steps.make_cam import STRIDE

    t0 = time.time()
    run = Path(args.run) if args.run else ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}"
    for sub in ("pseudo", "ir_labels", "metrics/cam.json"):
        if not (run / sub).exists():
            sys.exit(f"{run / sub} missing: run bench/irn_glas.py --protocol {args.protocol} --keep first")
    cfg = load_config(str(run / "config.yaml"), ["train_seg.supervised=false"])
    names = cfg.data.classes.names
    samples = samples_for(cfg, seg_labels.train_splits(cfg))
    cam = seg_labels.cam_labels(cfg, RunDir(run, cfg), samples)
    out = {k: ROOT / "bench" / "work" / f"labels_{k}_{args.protocol}.{args.profile}" for k in ("irconf", "agree")}
    kinds = ["pseudo", "cam", *out]
    cms = {k: ConfusionMatrix(len(names)) for k in kinds}
    labelled = {k: 0 for k in kinds}
    pixels = 0
    for s, cam_lab in zip(samples, cam):
        gt = load_class_mask(s, cfg.data)
        with Image.open(run / "pseudo" / f"{s.name}.png") as im:
            pseudo = np.asarray(im)
        with Image.open(run / "ir_labels" / f"{s.name}.png") as im:
            ir = np.asarray(im)
        ir = np.repeat(np.repeat(ir, STRIDE, 0), STRIDE, 1)[: gt.shape[0], : gt.shape[1]]
        maps = {"pseudo": pseudo, "cam": cam_lab, "irconf": ir,
                "agree": np.where(pseudo == cam_lab, pseudo, IGNORE).astype(np.uint8)}
        for k in out:
            write_png(out[k] / f"{s.name}.png", maps[k])
        pixels += gt.size
        for k, lab in maps.items():
            v = lab != IGNORE
            cms[k].update(gt[v], lab[v])
            labelled[k] += int(v.sum())
    metrics = {"train_images": len(samples), "folders": {k: str(p.relative_to(ROOT)) for k, p in out.items()},
               "train_labels": {k: {"labelled_pct": round(100 * labelled[k] / pixels, 2),
                                    "miou_on_labelled": cms[k].summary(names)["miou"]} for k in kinds}}
    for k, v in metrics["train_labels"].items():
        print(f"{k:7s} labelled {v['labelled_pct']:6.2f} %  mIoU on labelled pixels {v['miou_on_labelled']:.2f}")
    path = write_result(f"label_variants_{args.protocol}", args.profile, time.time() - t0,
                        {"run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run),
                         "note": "GlaS train only; test never read; no target, so no checks"}, metrics, [])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
