"""Prototype (GlaS train only): a second IRN round from the weak network's own train predictions.

    histowsss predict <every train image> --run bench/work/cam_glas-gland.cpu \\
        --out bench/work/round2_predictions_glas-gland.cpu          (the weak network of bench/seg_glas.py)
    python bench/irn_round2.py --protocol glas-gland --profile cpu

Why: bench/irn_label_ceiling.py shows IRN's boundary network is what limits its gain, and it learns from the
confident labels, which cover the glands' cores (53 % of the cells at 90 % precision on glas-gland) but not their
edges. The weak segmentation network's predictions on its own training images are better than the pseudo-masks
it learnt from, so this prototype trains a second IRN on them and walks the **same CAMs** with its boundary map:

1. confident labels from the predicted probabilities at the stride-4 cell centres: class c where p_c >= t, ignore
   elsewhere; t is the smallest of ``--thresholds`` whose class-mean precision on the train masks is >= 90 %
   (cam_to_ir_label's rule);
2. an IRN whose backbone levels from ``--trainable-from`` on train with its heads (IRN keeps the backbone frozen; the
   frozen trunk is cached as in train_irn; BatchNorm statistics stay frozen), the run's train_irn settings
   otherwise (epochs, crops, radius, learning rate; ``--backbone-lr`` for the tail), seed 0;
3. the run's random walk of the CAMs with that boundary map at each of ``--exp-times``; the best on the train
   masks is written as class-id PNGs to ``bench/work/round2_<protocol>.<profile>/labels`` for
   ``train_seg.labels=folder`` (e.g. ``bench/seg_schedule.py --candidate
   "train_seg.labels=folder;train_seg.label_dir=bench/work/round2_<protocol>.<profile>/labels"``).

Reports the labels' train mIoU beside the CAM and the first-round pseudo-masks, and the boundary map's AUC for the
true outline cells. Every choice uses the train masks, as the pipeline's own thresholds do; test is never read.
This is a prototype of a pipeline option (the IRN-tail training lives here, not in histowsss), so no checks. It was
not adopted: networks trained on its labels pool to 71.87 against 72.76 in the 4-fold patient cross-validation of
GlaS train (``seg_crossval_round2_glas-gland.cpu.json``, docs/irn.md); from the 80-epoch network's predictions
(``--name irn_round2_e80_glas-gland``) they tie at 80 epochs, 75.86 against 76.19
(``seg_crossval_round2e80_glas-gland.cpu.json``).
Writes ``bench/results/irn_round2_<protocol>.<profile>.json`` (``--name`` for another name; ``--predictions`` for
another network's predictions).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, cam_and_boundary, write_result  # noqa: E402
from irn_error_anatomy import outline_grid  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--predictions", type=Path, default=None,
                    help="folder of `histowsss predict` outputs (<name>_prob.npz) for the train images")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9, 0.95, 0.98])
    ap.add_argument("--trainable-from", type=int, default=3, help="first backbone feature level trained with the heads")
    ap.add_argument("--backbone-lr", type=float, default=5e-4)
    ap.add_argument("--exp-times", type=int, nargs="+", default=[4, 5, 6])
    ap.add_argument("--name", default=None,
                    help="result name (default irn_round2_<protocol>); the labels go to bench/work/<name>.<profile>/labels")
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from rich.progress import track
    from sklearn.metrics import roc_auc_score

    from histowsss.config import load_config
    from histowsss.data.loading import load_image
    from histowsss.data.masks import load_class_mask
    from histowsss.data.transforms import Normalizer, dihedral
    from histowsss.engine.atomic import write_png
    from histowsss.engine.run_dir import RunDir
    from histowsss.evaluation.metrics import ConfusionMatrix
    from histowsss.models.irnet import IGNORE
    from histowsss.steps.cam_to_ir_label import grid_gt
    from histowsss.steps.common import samples_for
    from histowsss.steps.irn_common import (STRIDE, background_id, build_irn, cam_class_ids, cam_mode, grid_size,
                                            presence)
    from histowsss.steps.make_sem_seg_labels import background_value, gate_cams, walk_labels
    from histowsss.steps.train_irn import COPY_ORDER, optimise_step, pad_to_multiple

    src = ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}"
    pred = args.predictions or ROOT / "bench" / "work" / f"round2_predictions_{args.protocol}.{args.profile}"
    name = args.name or f"irn_round2_{args.protocol}"
    out = ROOT / "bench" / "work" / (f"{name}.{args.profile}" if args.name else f"round2_{args.protocol}.{args.profile}")
    if not (src / "pseudo").is_dir():
        raise SystemExit(f"{src}: run bench/irn_glas.py and bench/seg_glas.py --keep first")
    cfg = load_config(str(src / "config.yaml"), [f"backbone.frozen_stages={args.trainable_from}"])
    t = cfg.train_irn
    names = cfg.data.classes.names
    samples = samples_for(cfg, cfg.data.train_splits)
    missing = [s.name for s in samples if not (pred / f"{s.name}_prob.npz").exists()]
    if missing:
        raise SystemExit(f"{pred}: no predictions for {len(missing)} train images (e.g. {missing[0]}); run the "
                         "`histowsss predict` command of this file's docstring")
    t0 = time.time()

    # 1. confident labels from the predictions, threshold by cam_to_ir_label's precision rule
    probs, gts, grids = {}, {}, {}
    for s in samples:
        with np.load(pred / f"{s.name}_prob.npz") as z:
            p = z["probs"].astype(np.float32)
        gt = load_class_mask(s, cfg.data)
        grids[s.name] = grid_size(gt.shape)
        probs[s.name] = grid_gt(p, grids[s.name])
        gts[s.name] = grid_gt(gt, grids[s.name])
    sweep, chosen = [], None
    for th in args.thresholds:
        hit = np.zeros(len(names)); got = np.zeros(len(names)); cells = 0
        for k, p in probs.items():
            lab = np.where(p.max(0) >= th, p.argmax(0), IGNORE)
            for c in range(len(names)):
                hit[c] += np.sum((lab == c) & (gts[k] == c))
                got[c] += np.sum(lab == c)
            cells += lab.size
        prec = 100 * hit / np.maximum(got, 1)
        row = {"threshold": th, "class_precision": round(float(prec.mean()), 2),
               "per_class_precision": [round(float(x), 2) for x in prec], "coverage": round(100 * got.sum() / cells, 2)}
        sweep.append(row)
        if chosen is None and row["class_precision"] >= 90:
            chosen = th
    chosen = chosen if chosen is not None else args.thresholds[-1]
    labels = {k: np.where(p.max(0) >= chosen, p.argmax(0), IGNORE).astype(np.uint8) for k, p in probs.items()}

    # 2. IRN with a trainable backbone tail (trunk features cached once per image and dihedral copy)
    torch.manual_seed(t.seed)
    model = build_irn(cfg)
    bb = model.backbone
    tu = bb.trunk_units
    for m in bb.units[tu:]:
        m.requires_grad_(True)
    bb.eval()
    norm = Normalizer(bb.mean, bb.std)
    frozen = [i for i, f in enumerate(bb.features) if f.unit < tu]
    tail = [i for i, f in enumerate(bb.features) if f.unit >= tu]
    if not frozen or not tail:
        raise SystemExit(f"--trainable-from {args.trainable_from}: needs frozen and trainable levels "
                         f"(the backbone has {len(bb.features)})")
    trunk_red = max(bb.features[i].reduction for i in frozen)

    def pooled(f, i):
        return F.avg_pool2d(f, model.pool[i], ceil_mode=True) if model.pool[i] > 1 else f

    cache = []
    for s in track(samples, description="round 2: caching trunk features"):
        img = pad_to_multiple(load_image(s.image, cfg.data), STRIDE)
        per = []
        for k in COPY_ORDER[: t.copies]:
            x = norm(torch.from_numpy(dihedral(img, k))[None])
            with torch.no_grad():
                trunk, feats = bb(x, 0, tu, collect=tuple(frozen))
            per.append(([pooled(feats[i], i)[0].half() for i in frozen], trunk[0].half(),
                        torch.from_numpy(np.array(dihedral(labels[s.name], k), dtype=np.uint8))))
        cache.append(per)
    cells, align = t.crop_size // STRIDE, model.max_reduction // STRIDE

    def window(f, red, oy, ox):
        k = red // STRIDE
        n = cells // k
        win = f[:, oy // k : oy // k + n, ox // k : ox // k + n]
        return F.pad(win, (0, n - win.shape[2], 0, n - win.shape[1]))

    def crop(i, c, rng):
        fl, trunk, lab = cache[i][c]
        gh, gw = lab.shape
        oy = align * int(rng.integers(0, max(0, gh - cells) // align + 1))
        ox = align * int(rng.integers(0, max(0, gw - cells) // align + 1))
        lw = lab[oy : oy + cells, ox : ox + cells].long()
        lw = F.pad(lw, (0, cells - lw.shape[1], 0, cells - lw.shape[0]), value=IGNORE)
        return [window(f, model.reductions[li], oy, ox) for f, li in zip(fl, frozen)], window(trunk, trunk_red, oy, ox), lw

    bg = background_id(cfg)
    opt = torch.optim.AdamW([{"params": list(model.head.parameters()), "lr": t.lr},
                             {"params": [p for m in bb.units[tu:] for p in m.parameters()], "lr": args.backbone_lr}],
                            weight_decay=t.weight_decay)
    total = math.ceil(len(samples) * t.crops_per_image / t.batch_size) * t.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda st: (1 - min(st, total - 1) / total) ** 0.9)
    history = []
    for epoch in range(t.epochs):
        rng = np.random.default_rng([t.seed, epoch])
        te = time.time()
        order = [(i, int(rng.integers(t.copies))) for i in range(len(samples)) for _ in range(t.crops_per_image)]
        order = [order[j] for j in rng.permutation(len(order))]
        model.head.train()
        loss_sum, n = 0.0, 0
        for b in range(0, len(order), t.batch_size):
            crops = [crop(i, c, rng) for i, c in order[b : b + t.batch_size]]
            fl = [torch.stack([cr[0][j] for cr in crops]).float() for j in range(len(frozen))]
            trunk = torch.stack([cr[1] for cr in crops]).float()
            lab = torch.stack([cr[2] for cr in crops])
            _, tail_out = bb(trunk, tu, None, collect=tuple(tail))
            edge, dp = model.heads(fl + [pooled(tail_out[i], i) for i in tail], (cells, cells))
            losses = optimise_step(edge, dp, lab, t, bg, rng, opt, sched)
            loss_sum += float(losses["total"].detach())
            n += 1
        history.append({"epoch": epoch, "loss": round(loss_sum / n, 5), "seconds": round(time.time() - te, 1)})
        print(f"round 2 IRN epoch {epoch + 1}/{t.epochs}: loss {loss_sum / n:.4f} ({history[-1]['seconds']} s)")
    model.eval()
    train_s = time.time() - t0

    # 3. the same CAMs walked with the new boundary map; the walk length chosen on the train masks
    rd = RunDir(src, load_config(str(src / "config.yaml")))
    ss = rd.cfg.sem_seg
    value = background_value(rd.cfg, rd)
    mode, ids = cam_mode(rd.cfg), cam_class_ids(rd.cfg)
    present = presence(rd.cfg, samples)
    cms = {e: ConfusionMatrix(len(names)) for e in args.exp_times}
    cm_cam, cm_first, cm_pred = (ConfusionMatrix(len(names)) for _ in range(3))
    walked, aucs = {}, []
    with torch.no_grad():
        for i, s in enumerate(track(samples, description="round 2: boundary + walk")):
            cam_norm, size, _ = cam_and_boundary(src, s.name)
            x = norm(torch.from_numpy(pad_to_multiple(load_image(s.image, cfg.data), STRIDE))[None])
            boundary, _ = model.infer(x, flip=ss.flip)
            boundary = boundary.half().float()  # as make_sem_seg_labels stores it (irn/<name>.npz, float16)
            gt = load_class_mask(s, cfg.data)
            outline = outline_grid(gt, tuple(boundary.shape), len(names))
            if 0 < outline.mean() < 1:
                aucs.append(float(roc_auc_score(outline.ravel(), boundary.numpy().ravel())))
            cam_norm, pres, allowed = gate_cams(rd.cfg, s, cam_norm, present[i])
            cam = torch.from_numpy(cam_norm)
            for e in args.exp_times:
                lab, _ = walk_labels(cam, pres, ids, bg, mode, boundary, size, value, ss.radius, ss.beta, e,
                                     allowed)
                cms[e].update(gt, lab)
                walked[(s.name, e)] = lab
            with Image.open(src / "pseudo" / f"{s.name}.png") as im:
                cm_first.update(gt, np.asarray(im))
            with np.load(pred / f"{s.name}_prob.npz") as z:
                cm_pred.update(gt, z["probs"].astype(np.float32).argmax(0).astype(np.uint8))
    by_e = {e: cm.summary(names)["miou"] for e, cm in cms.items()}
    best = max(by_e, key=by_e.get)
    for s in samples:
        write_png(out / "labels" / f"{s.name}.png", walked[(s.name, best)])
    cam_train = json.loads((src / "metrics" / "sem_seg.json").read_text())["splits"]
    metrics = {
        "threshold_sweep": sweep, "chosen_threshold": chosen,
        "train_miou": {"cam": _stage(cam_train, "cam"), "first_round_pseudo": cm_first.summary(names)["miou"],
                       "network_predictions_argmax": cm_pred.summary(names)["miou"],
                       "round2_by_exp_times": {str(e): v for e, v in by_e.items()}, "round2_chosen": by_e[best]},
        "chosen_exp_times": best,
        "boundary_auc_vs_gt_outline_cells": {"mean": round(float(np.mean(aucs)), 3),
                                             "p10_p50_p90": [round(float(v), 3) for v in np.percentile(aucs, [10, 50, 90])]},
        "irn_history": history, "irn_seconds": round(train_s, 1), "labels": str((out / "labels").relative_to(ROOT)),
        "images": len(samples)}
    path = write_result(name, args.profile, time.time() - t0,
                        {"run": str(src.relative_to(ROOT)), "predictions": str(pred), "trainable_from": args.trainable_from,
                         "backbone_lr": args.backbone_lr, "thresholds": args.thresholds, "exp_times": args.exp_times,
                         "train_irn": t.model_dump(mode="json"),
                         "note": "GlaS train only; prototype of a second IRN round; every choice on the train masks; "
                                 "test never read; no target, so no checks"},
                        metrics, [])
    print(json.dumps({"result": str(path), **{k: v for k, v in metrics.items() if k != "threshold_sweep"}}, indent=1))


def _stage(splits: dict, key: str):
    """The mIoU of one stage (``cam``) of eval_sem_seg's train split record, or None."""
    rec = (splits.get("train") or {}).get(key) or {}
    return rec.get("miou")


if __name__ == "__main__":
    main()
