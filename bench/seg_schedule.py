"""Model selection for train_seg on a patient-held-out part of GlaS train (no test image is read).

    python bench/seg_schedule.py --protocol glas-gland --profile cpu
    python bench/seg_schedule.py --protocol glas-gland --profile cpu --candidate train_seg.epochs=5 \\
        --candidate "train_seg.epochs=10;train_seg.loss=gce"
    python bench/seg_schedule.py --protocol glas-gland --profile cpu --candidate train_seg.epochs=15 --self-train 1

Needs the weak run folder of bench/irn_glas.py (bench/work/cam_<protocol>.<profile>): the same weak labels that
train_seg would use there (``train_seg.labels``, e.g. best_on_train). GlaS train is split by patient (grade-
stratified, seed 0) into a fit part (80 %) and a validation part (20 %). Every candidate (a list of config
overrides) trains the segmentation network on the fit images' weak labels, in a scratch run folder, and is scored
on the validation images' ground-truth masks with eval_seg's inference (sliding window, TTA). The weak labels of
the validation images are scored too (what the network is learning from). The chosen candidate is the one with
the best validation score (mIoU; IoU of the malignant class on glas-malignant, the number its target is about).
``--self-train N`` adds N self-training rounds to every candidate: the network predicts the fit images, a fresh
network of the same candidate trains on those predictions (``train_seg.labels=folder``), and each round is scored
on the validation images like the first.
``--also-tta dihedral`` and ``--bg-offsets ...`` score every trained network a second way at no training cost
(paired: the same network on the same validation images): with another test-time augmentation, and with an
offset added to the background probability before the argmax; ``--also-scales 0.75,1,1.25`` with multi-scale
inference (eval_seg.scales). The candidate itself is still chosen on the default inference; the variants are
reported under ``val_inference_variants`` (each with its inference seconds). ``--ensemble 0,1`` also scores the
average of candidates 0 and 1's class probabilities (every inference variant; under ``ensembles``).
``--image-gate`` also scores every variant after removing the classes the CAM classifier calls absent from an
image (its probability in cams/<name>.npz under eval_cam's chosen gate); the classifier was trained on these images,
so that number is an optimistic bound of what the image-level decision can add; ``--gate-run RUN`` takes the
classifier of another run folder instead (one whose CAM stage never saw the validation patients).
Writes bench/results/seg_schedule_<protocol>.<profile>.json (or ``--name``). Test ground truth is never read.
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

from histowsss.tuning.scratch import fit_on, scratch_run  # noqa: E402

DEFAULT_CANDIDATES = ["train_seg.epochs=5", "train_seg.epochs=10", "train_seg.epochs=15"]


def offset_argmax(probs, background: int, offset: float):
    """Class ids from probabilities (C, H, W) with ``offset`` added to the background probability."""
    import numpy as np

    p = probs.copy()
    p[background] += offset
    return p.argmax(0).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--candidate", action="append", default=None,
                    help="';'-separated config overrides of one candidate (repeat; default: epochs 5, 10, 15)")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--run", type=Path, default=None)
    ap.add_argument("--self-train", type=int, default=0, help="self-training rounds after each candidate")
    ap.add_argument("--name", default=None, help="result name (default: seg_schedule_<protocol>)")
    ap.add_argument("--bg-offsets", type=float, nargs="+", default=None,
                    help="also score each network with these offsets added to the background probability before "
                         "the argmax (paired: same network, same probabilities)")
    ap.add_argument("--also-tta", nargs="+", default=[], choices=["none", "flip", "dihedral"],
                    help="also score each network with these test-time augmentations (paired)")
    ap.add_argument("--also-scales", nargs="+", default=[], metavar="S1,S2,...",
                    help="also score each network with multi-scale inference at these comma-separated scale sets "
                         "(eval_seg.scales; with the config's TTA and every --also-tta), e.g. 0.75,1,1.25 (paired)")
    ap.add_argument("--scales-tta", nargs="+", default=None, choices=["none", "flip", "dihedral"],
                    help="the TTAs combined with --also-scales (default: the config's and every --also-tta)")
    ap.add_argument("--ensemble", nargs="+", default=[], metavar="I,J,...",
                    help="also score ensembles: comma-separated candidate indices (0-based, first round) whose "
                         "class probabilities are averaged, with the default inference and every variant (paired)")
    ap.add_argument("--image-gate", action="store_true",
                    help="also score every inference variant with the CAM classifier's image-level decision: classes "
                         "it calls absent (probability < eval_cam's chosen gate, cams/<name>.npz) are removed before "
                         "the argmax. The val images trained that classifier, so this is optimistic (paired)")
    ap.add_argument("--gate-run", type=Path, default=None,
                    help="with --image-gate: the run folder whose CAM classifier gates (cams/, metrics/cam.json), e.g. "
                         "one trained without the validation patients, so that the gate is measured honestly")
    ap.add_argument("--gate-cuts", type=float, nargs="+", default=None,
                    help="with --image-gate: also score these class-presence cuts (default: eval_cam's chosen one only)")
    args = ap.parse_args()
    ensembles = [[int(v) for v in e.split(",")] for e in args.ensemble]
    n_cand = len(args.candidate or DEFAULT_CANDIDATES)
    if any(i < 0 or i >= n_cand for e in ensembles for i in e):
        ap.error(f"--ensemble indices must lie in 0..{n_cand - 1} (one per --candidate)")

    import numpy as np

    from histowsss.config import load_config
    from histowsss.data.loading import load_image
    from histowsss.data.masks import load_class_mask
    from histowsss.data.split import grouped_stratified_split
    from histowsss.engine.atomic import write_png
    from histowsss.engine.run_dir import RunDir
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.steps import seg_labels
    from histowsss.steps.common import samples_for
    from histowsss.steps.eval_seg import predict_probs
    from histowsss.steps.image_gate import apply_gate, stored_absent

    t0 = time.time()
    src = (args.run or ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}").resolve()
    weak = ["train_seg.supervised=false"]  # the folder's config.yaml may hold the last (supervised) report run's
    base = load_config(str(src / "config.yaml"), weak)
    samples = samples_for(base, seg_labels.train_splits(base))
    patients = [s.patient or s.name for s in samples]
    # stratify by GlaS grade (benign / malignant) when the manifest has it, else by the image's class labels
    grades = [s.extra.get("grade") or "+".join(s.labels) for s in samples]
    assign = grouped_stratified_split(patients, grades, {"fit": 1 - args.val_fraction, "val": args.val_fraction})
    fit_s = [s for s, p in zip(samples, patients) if assign[p] == "fit"]
    val_s = [s for s, p in zip(samples, patients) if assign[p] == "val"]
    names = base.data.classes.names
    fg = "gland" if args.protocol == "glas-gland" else "malignant"
    criterion = "miou" if args.protocol == "glas-gland" else f"iou_{fg}"
    val_imgs = [load_image(s.image, base.data) for s in val_s]
    val_gt = [load_class_mask(s, base.data) for s in val_s]

    def score(preds) -> dict:
        cm = ConfusionMatrix(len(names))
        for g, p in zip(val_gt, preds):
            cm.update(g, p)
        sm = cm.summary(names)
        return {"miou": sm["miou"], f"iou_{fg}": sm["per_class"][fg]["iou"]}

    gate_sets: dict[str, list] = {}  # gate name -> per val image: class indices the CAM classifier calls absent
    if args.image_gate:
        gsrc = (args.gate_run or src).resolve()
        chosen = json.loads((gsrc / "metrics" / "cam.json").read_text())["chosen_gate"]
        for cut in [chosen, *[c for c in args.gate_cuts or [] if c != chosen]]:
            key = "image_gate" if cut == chosen else f"image_gate@{cut:g}"
            gate_sets[key] = [stored_absent(gsrc, s_.name, names, cut) for s_ in val_s]
        print(f"image gate from {gsrc} (chosen cut {chosen}): val images with a class removed: "
              f"{ {k: sum(bool(a) for a in v) for k, v in gate_sets.items()} }", flush=True)

    def gated(probs_list, absent) -> list:  # eval_seg's gate (steps/image_gate.py), then the argmax
        bg = base.data.classes.background_index
        return [apply_gate(p, gone, bg).argmax(0).astype(np.uint8) for p, gone in zip(probs_list, absent)]

    src_rd = RunDir(src, base)
    source = seg_labels.label_source(base, src_rd)
    if source == "ground_truth":
        raise SystemExit("the weak run's train_seg would train on ground truth; fix train_seg.labels")
    weak_val = score(seg_labels.load_labels(base, src_rd, val_s, source))
    print(f"fit {len(fit_s)} images / val {len(val_s)} images ({len(set(assign.values()))} parts); labels {source}; "
          f"weak labels on val: {weak_val}", flush=True)

    name = args.name or f"seg_schedule_{args.protocol}"
    work = ROOT / "bench" / "work" / f"{name}.{args.profile}"

    def train_and_score(cfg, rd_path: Path):
        meta, model, device, train_s = fit_on(cfg, rd_path, fit_s)
        ti = time.time()
        probs = [predict_probs(model, img, cfg, device) for img in val_imgs]
        extra = {"default_inference_seconds": round(time.time() - ti, 1)}
        kept = {"default": probs}  # the probabilities an --ensemble averages
        bg = base.data.classes.background_index or 0
        for off in args.bg_offsets or []:
            extra[f"bg_offset={off:g}"] = score([offset_argmax(p, bg, off) for p in probs])
        # paired variants of the inference: another TTA, and multi-scale sets (with --scales-tta or every TTA)
        variants = [(f"tta={t}", {"tta": t}) for t in args.also_tta]
        for sc in args.also_scales:
            for t in args.scales_tta or dict.fromkeys([cfg.eval_seg.tta, *args.also_tta]):
                variants.append((f"tta={t};scales={sc}", {"tta": t, "scales": [float(v) for v in sc.split(",")]}))
        for key, upd in variants:
            tcfg = cfg.model_copy(update={"eval_seg": cfg.eval_seg.model_copy(update=upd)})
            ti = time.time()
            tprobs = [predict_probs(model, img, tcfg, device) for img in val_imgs]
            extra[key] = {**score([p.argmax(0).astype(np.uint8) for p in tprobs]),
                          "inference_seconds": round(time.time() - ti, 1)}
            kept[key] = tprobs
            for off in args.bg_offsets or []:
                extra[f"{key};bg_offset={off:g}"] = score([offset_argmax(p, bg, off) for p in tprobs])
        for gk, absent in gate_sets.items():
            for key, kp in kept.items():
                extra[gk if key == "default" else f"{key};{gk}"] = score(gated(kp, absent))
        return meta, model, device, train_s, score([p.argmax(0).astype(np.uint8) for p in probs]), extra, kept

    results = []
    member_probs: dict[int, dict] = {}  # candidate index -> inference variant -> probabilities (ensemble members)
    cand_overrides: dict[int, list[str]] = {}
    for i, cand in enumerate(args.candidate or DEFAULT_CANDIDATES):
        overrides = [o.strip() for o in cand.split(";") if o.strip()]
        cfg = load_config(str(src / "config.yaml"), weak + overrides)
        cand_overrides[i] = overrides
        rd_path = work / f"candidate_{i}"
        scratch_run(src, rd_path)
        for r in range(args.self_train + 1):
            meta, model, dev, train_s, sc, extra, kept = train_and_score(
                cfg, rd_path if r == 0 else rd_path / f"self_{r}")
            if r == 0 and any(i in e for e in ensembles):
                member_probs[i] = kept
            rec = {"overrides": overrides, "self_train_round": r, "label_source": meta["label_source"], "val": sc,
                   "train_seconds": round(train_s, 1), "final_epoch": meta["final"]}
            if extra:  # paired inference variants of this network (the candidate is still chosen on "val")
                rec["val_inference_variants"] = extra
            results.append(rec)
            print(json.dumps(rec), flush=True)
            if r < args.self_train:  # the next round's labels: this network's predictions on the fit images
                label_dir = rd_path / f"labels_{r + 1}"
                for s_ in fit_s:
                    img = load_image(s_.image, base.data)
                    write_png(label_dir / f"{s_.name}.png", predict_probs(model, img, cfg, dev).argmax(0).astype(np.uint8))
                cfg = load_config(str(src / "config.yaml"), weak + overrides +
                                  ["train_seg.labels=folder", f"train_seg.label_dir={label_dir}"])
        shutil.rmtree(rd_path, ignore_errors=True)
    ens_results = []
    for e in ensembles:  # the same networks, their probabilities averaged per inference variant
        rec = {"members": e, "member_overrides": [cand_overrides[i] for i in e]}
        for key in member_probs[e[0]]:
            avg = [sum(member_probs[i][key][k] for i in e) / len(e) for k in range(len(val_imgs))]
            rec[key] = score([p.argmax(0).astype(np.uint8) for p in avg])
            for gk, absent in gate_sets.items():
                rec[gk if key == "default" else f"{key};{gk}"] = score(gated(avg, absent))
        ens_results.append(rec)
        print(json.dumps({"ensemble": rec}), flush=True)
    best = max(results, key=lambda r: r["val"][criterion])
    metrics = {"fit_images": len(fit_s), "val_images": len(val_s),
               "val_patients": sorted({p for p in patients if assign[p] == "val"}),
               "label_source": source, "weak_labels_on_val": weak_val, "candidates": results,
               "criterion": criterion, "chosen": best["overrides"], "chosen_self_train_round": best["self_train_round"]}
    if ens_results:
        metrics["ensembles"] = ens_results
    checks = [check("chosen_on_validation_" + criterion, best["val"][criterion],
                    "reported (model selection on held-out GlaS train patients; test never read)", True)]
    path = write_result(name, args.profile, time.time() - t0,
                        {"run": str(src.relative_to(ROOT)), "val_fraction": args.val_fraction, "split_seed": 0,
                         "candidates": args.candidate or DEFAULT_CANDIDATES, "self_train": args.self_train,
                         "bg_offsets": args.bg_offsets, "also_tta": args.also_tta, "also_scales": args.also_scales,
                         "scales_tta": args.scales_tta, "ensemble": args.ensemble, "image_gate": args.image_gate,
                         "gate_run": str(args.gate_run) if args.gate_run else None, "gate_cuts": args.gate_cuts,
                         "eval_seg": base.eval_seg.model_dump(mode="json")}, metrics, checks)
    print(json.dumps({"result": str(path), "chosen": best}, indent=2))


if __name__ == "__main__":
    main()
