"""Benchmark: the own-data on-ramp on real data. GlaS laid out as a user's folder of labelled images, then
`histowsss data manifest` -> `histowsss init` -> `histowsss run`, exactly as docs/data.md tells a user.

    python bench/own_data_glas.py --profile cpu [--tune]
    python bench/own_data_glas.py --profile cpu --no-train-masks

The GlaS images and masks of ../shared/data/glas are linked (symbolic links, nothing copied) into
bench/work/own_data_glas.<profile>/folder/<split>/<grade>/<patient>__<name>.png and .../masks/, the layout tile
datasets ship in (the patient id in the file name, the split and class in the folders). The three commands run
as a user would type them (`--mpp 0.62`, GlaS' resolution; nothing else tuned); the whole pipeline then trains
and evaluates. The per-stage numbers are reported beside the hand-written `glas-malignant` profile's committed
results. No issue sets a target for this, so there are no checks. Test ground truth is read only by the
evaluation steps, as in every run.

``--tune`` then does what the init note tells a user: ``histowsss tune`` chooses the image gate on the training
patients (4 patient folds, one network per fold, a CAM classifier per fold that never saw the fold's patients,
cuts 0.5 / 0.3 / 0.2 / 0.1 / 0.05 and no gate), and ``histowsss run`` applies the choice (eval_seg only, the
networks are kept); the test numbers before and after are both reported.

``--no-train-masks`` is the usual weakly supervised case: image labels only, masks for the test images alone (to
score the result). eval_cam then has nothing to choose its threshold and cut on and uses its documented defaults,
there is no supervised bound, and the result (``own_data_glas_nomasks``) is set beside the run with masks.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, ROOT, write_result  # noqa: E402

GLAS = ROOT.parent / "shared" / "data" / "glas"


def _link_layout(work: Path, train_masks: bool = True) -> tuple[Path, Path]:
    folder, masks = work / "folder", work / "masks"
    with open(GLAS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        stem = f"{r['patient']}__{Path(r['image']).stem}"
        img = folder / r["split"] / r["grade"] / f"{stem}{Path(r['image']).suffix}"
        msk = masks / f"{stem}{Path(r['mask']).suffix}"
        links = [(img, GLAS / r["image"])]
        if train_masks or r["split"] != "train":  # without train masks: only the test images keep theirs
            links.append((msk, GLAS / r["mask"]))
        for link, target in links:
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(target.resolve(), link.parent.resolve()))
    return folder, masks


def _cli(*args: str, cwd: Path) -> str:
    exe = Path(sys.executable).with_name("histowsss")
    out = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"histowsss {' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out.stdout + out.stderr


def _iou(d: dict, cls: str) -> dict:
    return {"miou": d["miou"], f"iou_{cls}": d["per_class"][cls]["iou"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--tune", action="store_true", help="then choose the image gate with histowsss tune and apply it")
    ap.add_argument("--no-train-masks", action="store_true",
                    help="image labels only: the training images get no masks (the test images keep theirs, to "
                         "score the result); writes own_data_glas_nomasks")
    args = ap.parse_args()
    if args.tune and args.no_train_masks:
        ap.error("--tune scores training images against their masks; it cannot run with --no-train-masks")
    name = "own_data_glas_nomasks" if args.no_train_masks else "own_data_glas"
    work = ROOT / "bench" / "work" / f"{name}.{args.profile}"
    work.mkdir(parents=True, exist_ok=True)
    folder, masks = _link_layout(work, train_masks=not args.no_train_masks)
    t0 = time.time()
    commands = [
        ["data", "manifest", "folder", "--out", "data/manifest.csv", "--masks", "masks", "--patient-regex",
         r"/([^/]+)__", "--overwrite"],
        ["init", "data/manifest.csv", "--out", "glas-own.yaml", "--mpp", "0.62", "--profile", args.profile,
         "--overwrite"],
        ["run", "glas-own.yaml", "--run", "run"],
    ]
    logs = [_cli(*c, cwd=work) for c in commands]
    wall = time.time() - t0
    run = work / "run"
    cam = json.loads((run / "metrics" / "cam.json").read_text())
    sem = json.loads((run / "metrics" / "sem_seg.json").read_text())["splits"].get("train")
    seg = json.loads((run / "metrics" / "seg.json").read_text())["all"]
    sup_path = run / "metrics" / "seg_supervised.json"  # no supervised bound without training masks
    sup = json.loads(sup_path.read_text())["all"] if sup_path.exists() else None
    steps = {p.stem: json.loads(p.read_text()).get("wall_s") for p in sorted((run / "status").glob("*.json"))}
    fg = "malignant"
    metrics = {
        "cam_test": {**_iou(cam["splits"]["test"]["predicted_gating"], fg),
                     "auc": cam["splits"]["test"]["classification"]["auc"]},
        "cam_chosen": {k: cam.get(k) for k in ("mode", "chosen_value", "chosen_gate", "chosen_on", "chosen_how")},
        "train_cam": _iou(sem["cam"], fg) if sem else None,
        "train_pseudo": _iou(sem["irn_pseudo"], fg) if sem else None,
        "seg_test": _iou(seg, fg), "supervised_test": _iou(sup, fg) if sup else None,
        "weak_over_supervised_pct": round(100 * seg["per_class"][fg]["iou"] / sup["per_class"][fg]["iou"], 1)
        if sup else None,
        "step_seconds": steps, "pipeline_seconds": round(sum(v for v in steps.values() if v), 1),
        "init_notes": [ln.removeprefix("#   - ") for ln in (work / "glas-own.yaml").read_text().splitlines()
                       if ln.startswith("#   - ")],
    }
    ref = {}
    for ref_name, key in (("cam_glas-malignant", "cam"), ("seg_glas-malignant_weak", "seg"),
                          ("seg_glas-malignant_supervised", "supervised")):
        p = RESULTS / f"{ref_name}.{args.profile}.json"
        if p.exists():
            d = json.loads(p.read_text())
            ref[key] = {"result": p.name, "commit": d["commit"], "metrics": {
                k: v for k, v in d["metrics"].items() if k.startswith("test_") and isinstance(v, dict)}}
    if args.no_train_masks:  # the same commands with every training mask: the other result of this script
        p = RESULTS / f"own_data_glas.{args.profile}.json"
        if p.exists():
            d = json.loads(p.read_text())
            ref["with_train_masks"] = {"result": p.name, "commit": d["commit"], "metrics": {
                k: d["metrics"].get(k) for k in ("cam_test", "cam_chosen", "seg_test", "supervised_test")}}
    metrics["glas_malignant_profile_results"] = ref
    if args.tune:
        tt = time.time()
        tune_cmd = ["tune", "run", "-c", "train_seg.members=1", "--folds", "4", "--gate-cuts", "0.5,0.3,0.2,0.1,0.05",
                    "--holdout-classifier", "--criterion", f"iou_{fg}", "--overwrite"]
        logs.append(_cli(*tune_cmd, cwd=work))
        tuned = json.loads((run / "tuning" / "crossval.json").read_text())
        # the candidate trains one network per fold only to save time; what is applied is the inference choice
        apply = [o for o in tuned["chosen"]["overrides"] if o.startswith("eval_seg.")]
        run_cmd = ["run", "glas-own.yaml", "--run", "run", *[a for o in apply for a in ("--set", o)]]
        logs.append(_cli(*run_cmd, cwd=work))
        seg_after = json.loads((run / "metrics" / "seg.json").read_text())["all"]
        commands += [tune_cmd, run_cmd]
        metrics["tune"] = {
            "pooled_" + tuned["criterion"]: {vk: v[tuned["criterion"]] for vk, v in tuned["pooled"][0].items()
                                             if isinstance(v, dict)},
            "weak_labels_pooled": tuned["weak_labels_pooled"], "chosen": tuned["chosen"], "applied": apply,
            "holdout_classifiers": [f.get("holdout_classifier") for f in tuned["per_fold"]],
            "seg_test_before": metrics["seg_test"], "seg_test_after": _iou(seg_after, fg),
            "weak_over_supervised_pct_after": round(100 * seg_after["per_class"][fg]["iou"] /
                                                    sup["per_class"][fg]["iou"], 1),
            "tune_and_apply_seconds": round(time.time() - tt, 1)}
        wall = time.time() - t0
    write_result(name, args.profile, wall,
                 {"work": str(work.relative_to(ROOT)), "commands": [" ".join(["histowsss", *c]) for c in commands],
                  "note": "GlaS as a folder of labelled images through the own-data on-ramp; test ground truth read "
                          "only by the evaluation steps; no issue target, so no checks"},
                 metrics, [])
    print(json.dumps({k: v for k, v in metrics.items() if k != "glas_malignant_profile_results"}, indent=1))
    print(logs[0][-800:])


if __name__ == "__main__":
    main()
