"""Patient-grouped K-fold cross-validation of train_seg candidates and inference choices on GlaS train.

    python bench/seg_crossval.py --protocol glas-malignant --profile cpu --folds 4 \\
        --candidate "train_seg.epochs=15;train_seg.members=1" --gate-cuts 0.5 0.3 0.2 0.1 0.05 --holdout-classifier

bench/seg_schedule.py validates on one held-out fifth of GlaS train (18 images, 6 patients); several of its choices
did not carry over to test, where a single split of that size is a noisy guide. This script scores every train
image once instead: the train patients are dealt into ``--folds`` grade-stratified folds (seed 0,
``data.split.grouped_stratified_split``); for each fold every candidate trains on the other folds' weak labels (the
labels ``train_seg.labels`` picks in the source run folder, as in seg_schedule) and predicts the fold's images with
eval_seg's inference. Scores are pooled over the folds into one confusion matrix per variant (and given per fold).

``--gate-cuts`` also scores eval_seg's image gate (``eval_seg.image_gate``) at these class-presence cuts, besides the
network alone. With ``--holdout-classifier`` the gate of each fold comes from a CAM stage trained without that
fold's patients (``histowsss run SOURCE/config.yaml --to eval_cam`` on a copy of the manifest in which the fold's
images form a ``holdout`` split), so the classifier judges images of patients it has never seen, as on test;
without it the source run's classifier, trained on every train image, is used (optimistic). Test images are never
read. Writes bench/results/<name>.<profile>.json (default name ``seg_crossval_<protocol>``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402
from seg_schedule import scratch_run  # noqa: E402


def fold_manifest(src_manifest: Path, names: set[str], out: Path) -> None:
    """A copy of ``src_manifest`` with absolute file paths and the rows named in ``names`` moved to split
    ``holdout``."""
    with src_manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    base = src_manifest.parent.resolve()
    for r in rows:
        for col in ("image", "mask", "mask_cc"):
            if r.get(col):
                r[col] = str((base / r[col]).resolve())
        name = r.get("name") or Path(r["image"]).stem
        if name in names:
            r["split"] = "holdout"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def holdout_cam_run(src: Path, manifest: Path, run: Path) -> Path:
    """The source run's CAM stage trained on the manifest's train split only; make_cam covers train + holdout."""
    cmd = [sys.executable, "-m", "histowsss.cli.app", "run", str(src / "config.yaml"), "--run", str(run),
           "--set", f"data.manifest={manifest}", "--set", "data.test_splits=[holdout]", "--set", "upper_bound=false",
           "--to", "eval_cam"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--candidate", action="append", required=True,
                    help="config overrides separated by ';' (give train_seg.members=1 when the config trains several)")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--run", type=Path, default=None, help="source run folder (default bench/work/cam_<protocol>.<profile>)")
    ap.add_argument("--gate-cuts", type=float, nargs="+", default=None)
    ap.add_argument("--holdout-classifier", action="store_true")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    if args.folds < 2:
        ap.error("--folds must be at least 2")

    import numpy as np

    from histowsss.config import load_config
    from histowsss.data.loading import load_image
    from histowsss.data.masks import load_class_mask
    from histowsss.data.split import grouped_stratified_split
    from histowsss.engine.distributed import init_distributed
    from histowsss.engine.run_dir import RunDir
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.models.fuse import inference_model
    from histowsss.steps import train_seg
    from histowsss.steps.common import samples_for
    from histowsss.steps.eval_seg import predict_probs
    from histowsss.steps.image_gate import apply_gate, stored_absent

    t0 = time.time()
    src = (args.run or ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}").resolve()
    weak = ["train_seg.supervised=false"]
    base = load_config(str(src / "config.yaml"), weak)
    samples = samples_for(base, train_seg.train_splits(base))
    patients = [s.patient or s.name for s in samples]
    grades = [s.extra.get("grade") or "+".join(s.labels) for s in samples]
    folds = [f"fold{k}" for k in range(args.folds)]
    assign = grouped_stratified_split(patients, grades, {f: 1 / args.folds for f in folds})
    names = base.data.classes.names
    bg = base.data.classes.background_index or 0
    fg = "gland" if args.protocol == "glas-gland" else "malignant"
    criterion = "miou" if args.protocol == "glas-gland" else f"iou_{fg}"
    src_rd = RunDir(src, base)
    source = train_seg.label_source(base, src_rd)
    if source == "ground_truth":
        raise SystemExit("the weak run's train_seg would train on ground truth; fix train_seg.labels")
    name = args.name or f"seg_crossval_{args.protocol}"
    work = ROOT / "bench" / "work" / f"{name}.{args.profile}"

    def summary(cm: ConfusionMatrix) -> dict:
        sm = cm.summary(names)
        return {"miou": sm["miou"], f"iou_{fg}": sm["per_class"][fg]["iou"]}

    pooled: dict[tuple[int, str], ConfusionMatrix] = {}  # (candidate, variant) -> confusion matrix over all folds
    pooled_labels = ConfusionMatrix(len(names))
    fold_records = []
    for f in folds:
        val_s = [s for s, p in zip(samples, patients) if assign[p] == f]
        fit_s = [s for s, p in zip(samples, patients) if assign[p] != f]
        gt = [load_class_mask(s, base.data) for s in val_s]
        imgs = [load_image(s.image, base.data) for s in val_s]
        rec = {"fold": f, "val_patients": sorted({p for p in patients if assign[p] == f}, key=str),
               "val_images": len(val_s), "fit_images": len(fit_s), "candidates": []}
        cm = ConfusionMatrix(len(names))
        for g, lab in zip(gt, train_seg.load_labels(base, src_rd, val_s, source)):
            cm.update(g, lab)
            pooled_labels.update(g, lab)
        rec["weak_labels"] = summary(cm)
        gates: dict[str, list] = {}
        if args.gate_cuts:
            gate_run = src
            if args.holdout_classifier:
                tc = time.time()
                man = work / f"{f}_manifest.csv"
                fold_manifest(Path(base.data.manifest), {s.name for s in val_s}, man)
                gate_run = holdout_cam_run(src, man, work / f"{f}_cam")
                rec["holdout_cam_seconds"] = round(time.time() - tc, 1)
                cam_m = json.loads((gate_run / "metrics" / "cam.json").read_text())
                rec["holdout_classifier"] = {"chosen_gate": cam_m["chosen_gate"],
                                             "holdout": cam_m["splits"]["test"]["classification"]}
            for cut in args.gate_cuts:
                gates[f"image_gate@{cut:g}"] = [stored_absent(gate_run, s.name, names, cut) for s in val_s]
            rec["images_with_class_removed"] = {k: sum(bool(a) for a in v) for k, v in gates.items()}
        for ci, cand in enumerate(args.candidate):
            overrides = [o.strip() for o in cand.split(";") if o.strip()]
            cfg = load_config(str(src / "config.yaml"), weak + overrides)
            rd_path = work / f"{f}_candidate_{ci}"
            scratch_run(src, rd_path)
            rd = RunDir(rd_path, cfg).init()
            ctx = init_distributed(cfg.device)
            tc = time.time()
            try:
                meta, model = train_seg.fit(cfg, rd, ctx, train_seg.config_hash(cfg), True, {}, samples=fit_s)
            finally:
                ctx.close()
            train_s = time.time() - tc
            model = inference_model(model.eval(), ctx.device)
            probs = [predict_probs(model, img, cfg, ctx.device) for img in imgs]
            variants = {"network": [p.argmax(0).astype(np.uint8) for p in probs]}
            for gk, absent in gates.items():
                variants[gk] = [apply_gate(p, a, bg).argmax(0).astype(np.uint8) for p, a in zip(probs, absent)]
            crec = {"candidate": ci, "train_seconds": round(train_s, 1), "final_epoch": meta["final"]}
            for vk, preds in variants.items():
                cm = ConfusionMatrix(len(names))
                tot = pooled.setdefault((ci, vk), ConfusionMatrix(len(names)))
                for g, p in zip(gt, preds):
                    cm.update(g, p)
                    tot.update(g, p)
                crec[vk] = summary(cm)
            rec["candidates"].append(crec)
            print(json.dumps({"fold": f, **crec}), flush=True)
            shutil.rmtree(rd_path, ignore_errors=True)
        fold_records.append(rec)

    pooled_rec = []
    for ci, cand in enumerate(args.candidate):
        row = {"candidate": ci, "overrides": cand}
        for (cj, vk), cm in pooled.items():
            if cj == ci:
                sm = summary(cm)
                row[vk] = {**sm, "fold_mean_" + criterion: round(float(np.mean(
                    [r["candidates"][ci][vk][criterion] for r in fold_records])), 2)}
        pooled_rec.append(row)
    best_c, best_v = max(((r["candidate"], vk) for r in pooled_rec for vk in r if isinstance(r[vk], dict)),
                         key=lambda cv: pooled_rec[cv[0]][cv[1]][criterion])
    metrics = {"folds": args.folds, "label_source": source, "weak_labels_pooled": summary(pooled_labels),
               "criterion": criterion, "pooled": pooled_rec, "per_fold": fold_records,
               "chosen": {"candidate": args.candidate[best_c], "variant": best_v,
                          criterion: pooled_rec[best_c][best_v][criterion]},
               "notes": ["every GlaS train image is scored once, by a network (and, with --holdout-classifier, a "
                         "CAM classifier) that never saw its patient; test ground truth is never read"]}
    checks = [check(f"chosen_by_crossvalidation_{criterion}", pooled_rec[best_c][best_v][criterion],
                    "reported (model selection on patient folds of GlaS train; test never read)", True)]
    path = write_result(name, args.profile, time.time() - t0,
                        {"run": str(src.relative_to(ROOT)), "folds": args.folds, "split_seed": 0,
                         "candidates": args.candidate, "gate_cuts": args.gate_cuts,
                         "holdout_classifier": args.holdout_classifier,
                         "eval_seg": base.eval_seg.model_dump(mode="json")}, metrics, checks)
    print(json.dumps({"result": str(path), "chosen": metrics["chosen"], "pooled": pooled_rec}, indent=2))


if __name__ == "__main__":
    main()
