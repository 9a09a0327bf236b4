"""Ablation: plain CAM vs RPNet CAM (same config, budget and seed), and each after IRN where available.

    python bench/rpnet_ablation.py --protocol glas-gland --profile cpu

Reads the runs of bench/cam_glas.py (--network cam and --network rpnet) and, if present, of bench/irn_glas.py;
writes bench/results/rpnet_<protocol>.<profile>.json and a figure bench/results/rpnet_<protocol>.<profile>.png:
the test images where RPNet helps most and hurts most (image | ground truth | CAM labels | RPNet labels).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, RESULTS, check, write_result  # noqa: E402


def per_image_labels(run_path: Path, split_names: list[str]):
    """(name, gt, pred) for every test image, CAM labels with the run's chosen parameter and predicted gating."""
    from histowsss.config import load_config
    from histowsss.engine.run_dir import RunDir
    from histowsss.evaluation.cam_labels import cams_to_labels
    from histowsss.steps.common import output_classes
    from histowsss.steps.eval_cam import load_split, presence

    cfg = load_config(str(run_path / "config.yaml"))
    m = json.loads((run_path / "metrics" / "cam.json").read_text())
    names = cfg.data.classes.names
    ids = [names.index(n) for n in output_classes(cfg)]
    bg = cfg.data.classes.background_index or 0
    out = []
    for it in load_split(cfg, RunDir(run_path, cfg), split_names):
        pred = cams_to_labels(it["cam"], presence(it, "predicted", m.get("chosen_gate", 0.5)), ids, bg,
                              m["mode"], m["chosen_value"])
        out.append((it["name"], it["gt"], pred))
    return cfg, out


def image_miou(gt: np.ndarray, pred: np.ndarray, k: int) -> float:
    ious = []
    for c in range(k):
        g, p = gt == c, pred == c
        if g.sum() + p.sum() == 0:
            continue
        ious.append((g & p).sum() / (g | p).sum())
    return float(np.mean(ious))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], required=True)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    args = ap.parse_args()
    t0 = time.time()
    runs = {n: ROOT / "bench" / "work" / f"cam_{args.protocol}{'' if n == 'cam' else '_' + n}.{args.profile}"
            for n in ("cam", "rpnet")}
    res = {n: json.loads((RESULTS / f"cam_{args.protocol}{'' if n == 'cam' else '_' + n}.{args.profile}.json").read_text())
           for n in runs}
    irn = {}
    for n in runs:
        p = RESULTS / f"irn_{args.protocol}{'' if n == 'cam' else '_' + n}.{args.profile}.json"
        if p.exists():
            irn[n] = json.loads(p.read_text())["metrics"]["train_stages"]
    fg = "gland" if args.protocol == "glas-gland" else "malignant"
    table = []
    for n in runs:
        m = res[n]["metrics"]
        epochs = m["train_epochs"]
        row = {"network": n, "test_cam_miou": m["test_cam"]["miou"],
               f"test_cam_iou_{fg}": m["test_cam"]["per_class"][fg]["iou"],
               "train_cam_miou_label_gated": m["train_cam_label_gated"]["miou"],
               "test_auc": m["test_classification"]["auc"],
               "train_cam_seconds": m["step_seconds"]["train_cam"],
               "seconds_per_epoch": round(float(np.mean([e["seconds"] for e in epochs])), 2)}
        if n in irn:
            row["train_irn_pseudo_miou"] = irn[n][-1]["miou"]
        table.append(row)
    cam_row, rp_row = table
    gain = round(rp_row["test_cam_miou"] - cam_row["test_cam_miou"], 2)
    gain_fg = round(rp_row[f"test_cam_iou_{fg}"] - cam_row[f"test_cam_iou_{fg}"], 2)
    # where it helps / hurts
    cfg, a = per_image_labels(runs["cam"], None or __import__("histowsss.config", fromlist=["x"]).load_config(
        str(runs["cam"] / "config.yaml")).data.test_splits)
    _, b = per_image_labels(runs["rpnet"], cfg.data.test_splits)
    k = len(cfg.data.classes.names)
    diffs = sorted(((image_miou(g, pb, k) - image_miou(g, pa, k), name, g, pa, pb)
                    for (name, g, pa), (_, _, pb) in zip(a, b)), key=lambda x: x[0])
    picks = diffs[:2] + diffs[-2:]
    from PIL import Image

    from histowsss.data.loading import load_image
    from histowsss.data.manifest import read_manifest

    samples = {s.name: s for s in read_manifest(cfg.data, cfg.data.test_splits)}
    palette = np.array([[40, 40, 40], [230, 60, 60], [60, 180, 75], [67, 99, 216]], dtype=np.uint8)
    rows = []
    for d, name, g, pa, pb in picks:
        img = load_image(samples[name].image, cfg.data)
        tiles = [img] + [palette[np.minimum(x, 3)] for x in (g, pa, pb)]
        row = np.concatenate([np.asarray(Image.fromarray(t).resize((256, round(256 * t.shape[0] / t.shape[1]))))
                              for t in tiles], axis=1)
        rows.append(row)
    h = min(r.shape[0] for r in rows)
    fig = np.concatenate([r[:h] for r in rows], axis=0)
    fig_path = RESULTS / f"rpnet_{args.protocol}.{args.profile}.png"
    Image.fromarray(fig).save(fig_path, optimize=True)
    metrics = {"table": table, "test_miou_gain": gain, f"test_iou_{fg}_gain": gain_fg,
               "per_image_miou_gain": {"mean": round(100 * float(np.mean([d[0] for d in diffs])), 2),
                                       "helped_images": int(sum(d[0] > 0.01 for d in diffs)),
                                       "hurt_images": int(sum(d[0] < -0.01 for d in diffs)),
                                       "most_hurt": [(d[1], round(100 * d[0], 1)) for d in diffs[:2]],
                                       "most_helped": [(d[1], round(100 * d[0], 1)) for d in diffs[-2:]]},
               "figure": str(fig_path.relative_to(ROOT)),
               "figure_rows": "most hurt x2, most helped x2; columns: image | ground truth | CAM | RPNet CAM",
               "epoch_time_ratio_rpnet_vs_cam": round(rp_row["seconds_per_epoch"] / max(cam_row["seconds_per_epoch"], 1e-9), 2)}
    if args.protocol == "glas-gland":
        checks = [check("rpnet_test_cam_miou_gain", gain, ">= +3 mIoU over plain CAM (glas-gland test)", gain >= 3)]
    else:
        checks = [check("rpnet_test_malignant_iou_gain", gain_fg, "> 0 (raises malignant IoU)", gain_fg > 0)]
    path = write_result(f"rpnet_{args.protocol}", args.profile, time.time() - t0,
                        {"runs": {n: str(p.relative_to(ROOT)) for n, p in runs.items()}}, metrics, checks)
    print(json.dumps({"result": str(path), "table": table, "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
