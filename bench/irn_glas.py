"""Benchmark: the IRN steps (cam_to_ir_label .. eval_sem_seg) on a GlaS protocol, after bench/cam_glas.py.

    python bench/irn_glas.py --protocol glas-gland --profile cpu
    python bench/irn_glas.py --protocol glas-malignant --profile cpu [--network rpnet]

Reuses the CAM run folder bench/work/cam_<protocol>[_rpnet].<profile> and writes
bench/results/irn_<protocol>[_rpnet].<profile>.json: per-stage quality on GlaS train (CAM -> confident IR labels
-> IRN pseudo-masks), object-level metrics of the instance pseudo-masks, timings. Thresholds are chosen on
train (eval_cam, ir_label sweep); test images are not used by these steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402

IRN_STEPS = ("cam_to_ir_label", "train_irn", "make_sem_seg_labels", "make_ins_seg_labels", "eval_sem_seg")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--network", default="cam")
    ap.add_argument("--keep", action="store_true", help="reuse finished steps")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="override on top of the run's config (saved into it), e.g. sem_seg.exp_times=4")
    ap.add_argument("--run", type=Path, default=None, help="run folder (default bench/work/cam_<protocol>.<profile>)")
    ap.add_argument("--name", default=None, help="result name (default irn_<protocol>)")
    args = ap.parse_args()

    from histowsss.config import load_config
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir

    suffix = "" if args.network == "cam" else f"_{args.network}"
    run_path = (args.run or ROOT / "bench" / "work" / f"cam_{args.protocol}{suffix}.{args.profile}").resolve()
    if not (run_path / "metrics" / "cam.json").exists():
        raise SystemExit(f"{run_path}: run bench/cam_glas.py --protocol {args.protocol} first")
    cfg = load_config(str(run_path / "config.yaml"), args.overrides)
    # the run folder describes the config its steps ran with: init() files it in config_history/, so every step's
    # status names it (run_config), as under `histowsss run` (before stop 31, the IRN steps of a bench run had none)
    rd = RunDir(run_path, cfg).init()
    timings = {}
    time.time()
    for step in IRN_STEPS:
        ts = time.time()
        run_pipeline(cfg, rd, step, step, overwrite=not args.keep)
        timings[step] = round(time.time() - ts, 1)
    step_wall = {s: json.loads((run_path / "status" / f"{s}.json").read_text())["wall_s"] for s in IRN_STEPS}
    wall = float(sum(step_wall.values()))  # recorded step times (reused steps keep theirs)
    m = json.loads((run_path / "metrics" / "sem_seg.json").read_text())
    tr = m["splits"]["train"]
    cam_miou = tr["cam"]["miou"]
    ir = tr["ir_labels"]
    pseudo = tr["irn_pseudo"]["miou"]
    fg = [c for c in cfg.data.classes.names if c != cfg.data.classes.background][0]
    stages = [
        {"stage": "CAM (eval_cam, label-gated)", "miou": cam_miou, f"iou_{fg}": tr["cam"]["per_class"][fg]["iou"]},
        {"stage": "IR labels, ignore counted as background", "miou": ir["ignore_as_background"]["miou"],
         f"iou_{fg}": ir["ignore_as_background"]["per_class"][fg]["iou"]},
        {"stage": f"IR labels, confident pixels only ({ir['coverage']} % of pixels)",
         "miou": ir["confident_only"]["miou"], f"iou_{fg}": ir["confident_only"]["per_class"][fg]["iou"]},
        {"stage": "IRN pseudo-masks (random walk)", "miou": pseudo, f"iou_{fg}": tr["irn_pseudo"]["per_class"][fg]["iou"]},
    ]
    crf = tr.get("ir_labels_crf")
    if crf:  # ir_label.crf: the CRF-refined seeds (train_irn trained on these), beside the plain ones above
        stages.insert(3, {"stage": f"IR labels after dense CRF, confident pixels only ({crf['coverage']} % of pixels)",
                          "miou": crf["confident_only"]["miou"],
                          f"iou_{fg}": crf["confident_only"]["per_class"][fg]["iou"]})
    status = {s: json.loads((run_path / "status" / f"{s}.json").read_text()) for s in IRN_STEPS}
    metrics = {"train_stages": stages, "objects": tr.get("objects"), "step_seconds": step_wall,
               "this_invocation_seconds": timings,
               "images_without_confident_foreground": status["make_sem_seg_labels"].get("no_confident_foreground"),
               "ir_label_choice": json.loads((run_path / "metrics" / "ir_label.json").read_text()).get("chosen")
               if (run_path / "metrics" / "ir_label.json").exists() else None}
    gain = round(pseudo - cam_miou, 2)
    checks = []
    if args.protocol == "glas-gland":
        checks.append(check("train_pseudo_minus_cam_miou", gain, ">= +8 mIoU over CAMs (GlaS train)", gain >= 8))
    else:
        checks.append(check("train_pseudo_minus_cam_miou", gain, "> 0 (rises clearly over the CAM stage)", gain > 1))
    checks.append(check("cpu_profile_wall_s" if args.profile == "cpu" else "gpu_profile_wall_s", round(wall, 1),
                        "<= 1800 s", wall <= 1800))
    path = write_result(args.name or f"irn_{args.protocol}{suffix}", args.profile, wall,
                        {"run": str(run_path.relative_to(ROOT)) if run_path.is_relative_to(ROOT) else str(run_path), "ir_label": cfg.ir_label.model_dump(mode="json"),
                         "train_irn": cfg.train_irn.model_dump(mode="json"),
                         "sem_seg": cfg.sem_seg.model_dump(mode="json"), "ins_seg": cfg.ins_seg.model_dump(mode="json")},
                        metrics, checks)
    print(json.dumps({"result": str(path), "stages": stages, "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
