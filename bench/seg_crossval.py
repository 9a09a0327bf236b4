"""Patient-grouped K-fold cross-validation of train_seg candidates and inference choices on GlaS train.

    python bench/seg_crossval.py --protocol glas-malignant --profile cpu --folds 4 \\
        --candidate "train_seg.epochs=15;train_seg.members=1" --gate-cuts 0.5 0.3 0.2 0.1 0.05 --holdout-classifier

The bench form of ``histowsss tune`` (``histowsss.tuning.crossval``, docs/segmentation.md): the same computation on
the GlaS run folder of bench/irn_glas.py, written as a bench result. bench/seg_schedule.py validates on one held-out
fifth of GlaS train (18 images, 6 patients); several of its choices did not carry over to test, where a single
split of that size is a noisy guide. Here every train image is scored once: the train patients are dealt into
``--folds`` grade-stratified folds (seed 0); for each fold every candidate trains on the other folds' weak labels and
predicts the fold's images with eval_seg's inference; scores are pooled into one confusion matrix per variant.
``--gate-cuts`` also scores eval_seg's image gate at these cuts; with ``--holdout-classifier`` each fold's gate comes
from a CAM stage trained without that fold's patients. Test images are never read. Writes
bench/results/<name>.<profile>.json (default name ``seg_crossval_<protocol>``).
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

from histowsss.tuning.crossval import crossval  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant", "glas-tissue"], required=True,
                    help="glas-tissue: the three-tissue run of bench/tissue_glas.py (bench/work/tissue_glas.<profile>/"
                         "run), scored by mIoU")
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--candidate", action="append", required=True,
                    help="config overrides separated by ';' (give train_seg.members=1 when the config trains several)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--run", type=Path, default=None, help="source run folder (default bench/work/cam_<protocol>.<profile>)")
    ap.add_argument("--gate-cuts", type=float, nargs="+", default=None)
    ap.add_argument("--holdout-classifier", action="store_true")
    ap.add_argument("--name", default=None)
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folders after success")
    args = ap.parse_args()
    if args.folds < 2:
        ap.error("--folds must be at least 2")

    from histowsss.config import load_config

    t0 = time.time()
    default_run = (ROOT / "bench" / "work" / f"tissue_glas.{args.profile}" / "run" if args.protocol == "glas-tissue"
                   else ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}")
    src = (args.run or default_run).resolve()
    criterion = "iou_malignant" if args.protocol == "glas-malignant" else "miou"
    name = args.name or f"seg_crossval_{args.protocol}"
    work = ROOT / "bench" / "work" / f"{name}.{args.profile}"
    res = crossval(src, args.candidate, work, folds=args.folds, gate_cuts=args.gate_cuts,
                   holdout_classifier=args.holdout_classifier, criterion=criterion, log=lambda m: print(m, flush=True))
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    metrics = {k: res[k] for k in ("folds", "label_source", "weak_labels_pooled", "criterion", "pooled", "per_fold",
                                   "chosen", "notes")}
    checks = [check(f"chosen_by_crossvalidation_{criterion}", res["chosen"][criterion],
                    "reported (model selection on patient folds of GlaS train; test never read)", True)]
    base = load_config(str(src / "config.yaml"), ["train_seg.supervised=false"])
    path = write_result(name, args.profile, time.time() - t0,
                        {"run": str(src.relative_to(ROOT)), "folds": args.folds, "split_seed": 0,
                         "candidates": args.candidate, "gate_cuts": args.gate_cuts,
                         "holdout_classifier": args.holdout_classifier,
                         "eval_seg": base.eval_seg.model_dump(mode="json")}, metrics, checks)
    print(json.dumps({"result": str(path), "chosen": res["chosen"], "pooled": res["pooled"]}, indent=2))


if __name__ == "__main__":
    main()
