"""Is train_seg bit-reproducible? Two trainings with the same config, images, weak labels and seed.

    python bench/seg_determinism.py --protocol glas-malignant --profile cpu --images 12 --epochs 2

Both train in fresh scratch folders of the finished run folder (bench/work/cam_<protocol>.<profile>, default) on the
first ``--images`` training images, one after the other in one process. Reports the weights' digests and the largest
absolute difference between them. No issue target: the check only records the answer (test never read).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    from histowsss.config import load_config
    from histowsss.steps import seg_labels
    from histowsss.steps.common import samples_for
    from histowsss.tuning.scratch import fit_on, scratch_run

    t0 = time.time()
    src = (args.run or ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}").resolve()
    over = ["train_seg.supervised=false", "train_seg.members=1", f"train_seg.epochs={args.epochs}"]
    cfg = load_config(str(src / "config.yaml"), over)
    samples = samples_for(cfg, seg_labels.train_splits(cfg))[: args.images]
    work = ROOT / "bench" / "work" / f"seg_determinism_{args.protocol}.{args.profile}"
    runs = []
    for k in range(2):
        dst = work / f"run{k}"
        scratch_run(src, dst)
        meta, model, _, train_s = fit_on(cfg, dst, samples)
        sd = {n: v.detach().cpu().float() for n, v in model.state_dict().items()}
        digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in sd.values())).hexdigest()[:16]
        runs.append({"digest": digest, "final_loss": meta["final"]["loss"], "train_seconds": round(train_s, 1),
                     "state": sd})
    diff = max(float((runs[0]["state"][n] - runs[1]["state"][n]).abs().max()) for n in runs[0]["state"])
    shutil.rmtree(work, ignore_errors=True)
    metrics = {"images": len(samples), "epochs": args.epochs, "label_source": meta["label_source"],
               "runs": [{k: v for k, v in r.items() if k != "state"} for r in runs], "max_abs_weight_diff": diff,
               "bit_identical": runs[0]["digest"] == runs[1]["digest"] and diff == 0.0}
    checks = [check("max_abs_weight_diff_between_two_trainings", diff, "reported (0 = bit-reproducible)", True)]
    path = write_result(f"seg_determinism_{args.protocol}", args.profile, time.time() - t0,
                        {"run": str(src.relative_to(ROOT)), "overrides": over, "images": args.images}, metrics, checks)
    print(json.dumps({"result": str(path), **metrics}, indent=1))


if __name__ == "__main__":
    main()
