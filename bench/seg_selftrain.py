"""Self-training of the final network on GlaS: the weak network's own predictions on the training images become
the labels of a fresh network (``train_seg.labels=folder``), round after round.

    python bench/seg_selftrain.py --protocol glas-gland --profile cpu [--rounds 1] [--keep]

Needs the weak run of bench/seg_glas.py (``--mode weak`` in bench/work/cam_<protocol>.<profile>, its ``seg``
network finished with the config that folder holds). Each round runs what a user would: ``histowsss predict`` on
the training images (``predict_images``, labels at level 0) into bench/work/selftrain_<protocol>.<profile>/
labels_<r>, then train_seg + eval_seg in .../round_<r> with ``train_seg.labels=folder``. The number of rounds is
chosen on held-out train patients (``bench/seg_schedule.py --self-train``), not here. Reported: test mIoU / IoU of
each round, the labels' agreement with the training masks (label quality, as eval_sem_seg reports it), and the
whole pipeline's time (every step of the weak run + predictions + rounds). Writes
bench/results/seg_selftrain_<protocol>.<profile>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, check, write_result  # noqa: E402

ANCHORS = {"glas-gland": {"OEEM (MICCAI 2022)": 77.56, "MAA (2025)": 81.99}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--run", type=Path, default=None, help="weak run folder (default bench/work/cam_<protocol>.<profile>)")
    ap.add_argument("--keep", action="store_true", help="reuse finished rounds instead of re-running them")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (repeatable)")
    args = ap.parse_args()

    import numpy as np
    from PIL import Image

    from histowsss.cli.predict_cmd import predict_images
    from histowsss.config import load_config
    from histowsss.data.masks import load_class_mask
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.steps import seg_labels, train_seg
    from histowsss.steps.common import samples_for

    t0 = time.time()
    src = (args.run or ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}").resolve()
    weak = ["train_seg.supervised=false"] + args.overrides
    cfg0 = load_config(str(src / "config.yaml"), weak)
    if not RunDir(src, cfg0).is_done("train_seg", train_seg.config_hash(cfg0)):
        raise SystemExit(f"{src}: its weak network is missing or was trained with another config; run "
                         f"`python bench/seg_glas.py --protocol {args.protocol} --profile {args.profile} --mode weak` first")
    names = cfg0.data.classes.names
    fg = "gland" if args.protocol == "glas-gland" else "malignant"
    train = samples_for(cfg0, seg_labels.train_splits(cfg0))
    work = ROOT / "bench" / "work" / f"selftrain_{args.protocol}.{args.profile}"

    def label_quality(round_cfg) -> dict:
        """The labels of ``round_cfg``'s label_dir against the training masks (reported like eval_sem_seg's label
        quality; selects nothing)."""
        cm = ConfusionMatrix(len(names))
        for s in train:
            lab = np.asarray(Image.open(seg_labels.folder_label_path(round_cfg, s)))
            gt = load_class_mask(s, cfg0.data)
            if lab.shape != gt.shape:
                lab = np.asarray(Image.fromarray(lab).resize(gt.shape[::-1], Image.NEAREST))
            cm.update(gt, lab)
        sm = cm.summary(names)
        return {"miou": sm["miou"], f"iou_{fg}": sm["per_class"][fg]["iou"]}

    base_steps = {p.stem: json.loads(p.read_text()).get("wall_s", 0.0) for p in (src / "status").glob("*.json")
                  if not p.stem.endswith("_supervised")}
    base_seg = json.loads((src / "metrics" / "seg.json").read_text())["all"]
    rounds, prev, extra_s = [], src, 0.0
    for r in range(1, args.rounds + 1):
        label_dir, rd_path = work / f"labels_{r}", work / f"round_{r}"
        cfg = load_config(str(src / "config.yaml"), weak + ["train_seg.labels=folder", f"train_seg.label_dir={label_dir}"])
        tp = time.time()
        if not (args.keep and (label_dir / "done").exists()):
            print(f"round {r}: predicting {len(train)} training images with {prev.name}", flush=True)
            predict_images(prev, [Path(s.image) for s in train], label_dir, overwrite=True, log=lambda m: None)
            (label_dir / "done").write_text(json.dumps({"from": str(prev), "seconds": round(time.time() - tp, 1)}))
        predict_s = json.loads((label_dir / "done").read_text())["seconds"]
        rd = RunDir(rd_path, cfg).init()
        for step in ("train_seg", "eval_seg"):
            run_pipeline(cfg, rd, step, step, overwrite=not args.keep)
        m = json.loads((rd_path / "metrics" / "seg.json").read_text())
        st = {s: json.loads((rd_path / "status" / f"{s}.json").read_text())["wall_s"] for s in ("train_seg", "eval_seg")}
        extra_s += predict_s + sum(st.values())
        a = m["all"]
        rounds.append({"round": r, "labels_on_train": label_quality(cfg),
                       "test_all": {"miou": a["miou"], f"iou_{fg}": a["per_class"][fg]["iou"], "mdice": a["mdice"]},
                       "test_splits": {k: {"miou": v["miou"], f"iou_{fg}": v["per_class"][fg]["iou"]}
                                       for k, v in m.get("splits", {}).items()},
                       "seconds": {"predict_train": predict_s, **st}})
        print(json.dumps(rounds[-1]), flush=True)
        prev = rd_path

    last = rounds[-1]["test_all"]
    total = round(float(sum(base_steps.values())) + extra_s, 1)
    metrics = {"round_0": {"miou": base_seg["miou"], f"iou_{fg}": base_seg["per_class"][fg]["iou"]},
               "rounds": rounds, "weak_run_step_seconds": base_steps, "anchors": ANCHORS.get(args.protocol, {})}
    checks = [check(f"whole_pipeline_{args.profile}_wall_s", total,
                    "<= 3600 s (every step of the weak run + predictions + self-training rounds)", total <= 3600)]
    sup_file = RESULTS / f"seg_{args.protocol}_supervised.{args.profile}.json"
    sup = json.loads(sup_file.read_text()) if sup_file.exists() else None
    if args.protocol == "glas-gland":
        checks += [check("test_miou_vs_OEEM", last["miou"], ">= 77.56", last["miou"] >= 77.56),
                   check("test_miou_vs_MAA", last["miou"], ">= 81.99", last["miou"] >= 81.99)]
        if sup:
            v = sup["metrics"]["test_all"]["miou"]
            checks.append(check("test_miou_vs_supervised", last["miou"],
                                f">= supervised upper bound {v} ({sup_file.name}, commit {sup['commit']})",
                                last["miou"] >= v))
    else:
        cam_m = json.loads((src / "metrics" / "cam.json").read_text())["splits"]["test"]
        b = cam_m["image_level_baseline"]["per_class"]["malignant"]["iou"]
        iou = last["iou_malignant"]
        checks.append(check("test_malignant_iou_vs_image_level_baseline", iou,
                            f"> image-level baseline of this run ({b}) and > 48.7 (design.md)", iou > b and iou > 48.7))
        if sup:
            v = sup["metrics"]["test_all"]["iou_malignant"]
            ratio = round(100 * iou / max(v, 1e-9), 1)
            checks.append(check("test_malignant_iou_pct_of_supervised", ratio,
                                f">= 90 % of the supervised IoU {v} ({sup_file.name}, commit {sup['commit']})",
                                ratio >= 90))
    path = write_result(f"seg_selftrain_{args.protocol}", args.profile, time.time() - t0,
                        {"run": str(src.relative_to(ROOT)), "rounds": args.rounds, "overrides": args.overrides,
                         "train_seg": cfg0.train_seg.model_dump(mode="json"),
                         "note": "rounds chosen on held-out train patients (seg_selftrain_schedule_<protocol>); "
                                 "test masks read only by eval_seg to report"}, metrics, checks)
    print(json.dumps({"result": str(path), "metrics": {k: v for k, v in metrics.items() if k != "weak_run_step_seconds"},
                      "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
