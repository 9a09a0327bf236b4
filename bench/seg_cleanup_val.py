"""Choose eval_seg's object clean-up (min_object_area, max_hole_area, split_h) on out-of-fold predictions of GlaS train.

    python bench/seg_cleanup_val.py --protocol glas-gland --profile cpu

``--gate-cut`` (with ``--holdout-classifier``) scores the predictions gated as eval_seg.image_gate gates them.
Runs ``histowsss.tuning.crossval`` (patient-grouped, grade-stratified folds of GlaS train, seed 0) for one
candidate (default ``train_seg.epochs=15;train_seg.members=1``) and keeps its work folder, whose per-fold
probabilities are every training image predicted by a network that never saw its patient. Re-scores them under every
(min_object_area, max_hole_area, split_h) of ``--areas`` x ``--holes`` x ``--splits`` (``histowsss.tuning.cleanup``): pooled pixel mIoU and
the GlaS object metrics against the manifest's instance masks. The choice is the GlaS challenge's rule, the smallest
sum of ranks on object F1, object Dice and object Hausdorff. Test images are never read. Writes
bench/results/<name>.<profile>.json (default ``seg_cleanup_val_<protocol>``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402

from histowsss.tuning.cleanup import cleanup_from_crossval  # noqa: E402
from histowsss.tuning.crossval import crossval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--candidate", default="train_seg.epochs=15;train_seg.members=1")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--run", type=Path, default=None, help="source run folder (default bench/work/cam_<protocol>.<profile>)")
    ap.add_argument("--areas", type=int, nargs="+", default=[0, 100, 400, 1600])
    ap.add_argument("--holes", type=int, nargs="+", default=[0, 400])
    ap.add_argument("--splits", type=float, nargs="+", default=[0.0, 3.0, 6.0, 12.0])
    ap.add_argument("--gate-cut", type=float, default=None,
                    help="score the predictions gated at this cut, as eval_seg.image_gate (glas-malignant: 0.05)")
    ap.add_argument("--holdout-classifier", action="store_true",
                    help="gate each fold with a CAM stage trained without its patients (as the cut was chosen)")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()

    t0 = time.time()
    src = (args.run or ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}").resolve()
    criterion = "miou" if args.protocol == "glas-gland" else "iou_malignant"
    name = args.name or f"seg_cleanup_val_{args.protocol}"
    work = ROOT / "bench" / "work" / f"{name}.{args.profile}"  # kept: a second call re-scores without training
    cuts = [args.gate_cut] if args.gate_cut is not None else None
    cv = crossval(src, [args.candidate], work, folds=args.folds, criterion=criterion, gate_cuts=cuts,
                  holdout_classifier=args.holdout_classifier, log=lambda m: print(m, flush=True))
    t1 = time.time()
    cl = cleanup_from_crossval(src, cv, work, args.areas, args.holes, args.splits, gate_cut=args.gate_cut,
                               log=lambda m: print(m, flush=True))
    rows, chosen = cl["rows"], cl["chosen"]
    off = next(r for r in rows if r["min_object_area"] == 0 and r["max_hole_area"] == 0 and r["split_h"] == 0)
    metrics = {"crossval": {k: cv[k] for k in ("folds", "label_source", "pooled", "chosen", "seconds")},
               "rescore_seconds": round(time.time() - t1, 1), "rows": rows, "off": off,
               "chosen": chosen, "chosen_overrides": cl["overrides"],
               "notes": ["out-of-fold predictions of GlaS train (each image by a network that never saw its "
                         "patient); areas and split_h in pixels at data.image_scale; chosen by the GlaS challenge rule (smallest "
                         "sum of ranks on object F1, object Dice, object Hausdorff; ties: higher mIoU); test never "
                         "read"]}
    o, c = off["objects"], chosen["objects"]
    checks = [check("chosen_on_crossvalidation_object_f1", c["f1"],
                    f"reported (model selection on patient folds of GlaS train; test never read; off: {o['f1']})", True),
              check("chosen_minus_off_miou", round(chosen["miou"] - off["miou"], 2),
                    "reported (pixel mIoU change of the chosen clean-up on the same predictions)", True)]
    path = write_result(name, args.profile, time.time() - t0,
                        {"run": str(src.relative_to(ROOT)) if src.is_relative_to(ROOT) else str(src),
                         "candidate": args.candidate, "folds": args.folds, "areas": args.areas, "holes": args.holes,
                         "splits": args.splits, "gate_cut": args.gate_cut,
                         "holdout_classifier": args.holdout_classifier},
                        metrics, checks)
    print(f"chosen min_object_area={chosen['min_object_area']} max_hole_area={chosen['max_hole_area']} "
          f"split_h={chosen['split_h']}: "
          f"object F1 {c['f1']} (off {o['f1']}), object Dice {c['dice']} (off "
          f"{o['dice']}), Hausdorff {c['hausdorff']} (off "
          f"{o['hausdorff']}), mIoU {chosen['miou']} (off {off['miou']}) -> {path}")


if __name__ == "__main__":
    main()
