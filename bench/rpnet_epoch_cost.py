"""Cost: one training epoch of the plain CAM network vs RPNet, side by side in one process, nothing else running.

    python bench/rpnet_epoch_cost.py --protocol glas-gland --profile cpu

Same config, seed and feature cache for both; each runs ``train_cam`` for ``--epochs`` epochs in its own run
folder under bench/work/. An RPNet epoch sees every crop with a partner crop of the same class (twice the
crops) and adds the prototype branch; the result gives seconds per epoch and crops per second for each.
Writes bench/results/rpnet_epoch_cost_<protocol>.<profile>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()

    from histowsss.config import load_config
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir

    cfg_name = args.protocol if args.profile == "cpu" else f"{args.protocol}-gpu"
    t0 = time.time()
    rows = []
    for net in ("cam", "rpnet"):
        overrides = [f"train_cam.network={net}", f"train_cam.epochs={args.epochs}"]
        cfg = load_config(cfg_name, overrides)
        run_path = ROOT / "bench" / "work" / f"epoch_cost_{args.protocol}_{net}.{args.profile}"
        rd = RunDir(run_path, cfg).init()
        ts = time.time()
        run_pipeline(cfg, rd, "train_cam", "train_cam", overwrite=True)
        step_s = time.time() - ts
        log = [json.loads(x) for x in (run_path / "logs" / "train_cam.jsonl").read_text().splitlines()]
        rows.append({"network": net, "step_seconds_incl_cache": round(step_s, 1),
                     "seconds_per_epoch": round(sum(r["seconds"] for r in log) / len(log), 2),
                     "crops_per_epoch": log[-1]["examples"],
                     "crops_per_s": round(sum(r["examples"] for r in log) / sum(r["seconds"] for r in log), 2),
                     "final_loss": round(log[-1]["loss"], 4), "final_auc": log[-1]["auc"]})
    ratio = round(rows[1]["seconds_per_epoch"] / rows[0]["seconds_per_epoch"], 2)
    per_crop = round(rows[0]["crops_per_s"] / rows[1]["crops_per_s"], 2)
    metrics = {"table": rows, "epoch_time_ratio_rpnet_vs_cam": ratio, "per_crop_time_ratio_rpnet_vs_cam": per_crop}
    checks = [check("epoch_time_ratio_rpnet_vs_cam", ratio, "reported (issue 4: cost per epoch vs plain CAM, "
                    "side by side)", True)]
    config = {"config": cfg_name, "epochs": args.epochs, "note": "both networks in one process, one after the other"}
    path = write_result(f"rpnet_epoch_cost_{args.protocol}", args.profile, time.time() - t0, config, metrics, checks)
    print(json.dumps({"result": str(path), "metrics": metrics}, indent=2))


if __name__ == "__main__":
    main()
