"""Benchmark: sparse clicks on top of the weak labels: how much do a few points per image add?

Usage::

    python bench/points_glas.py --protocol glas-gland --profile cpu [--bg-clicks 3] [--radius 8] [--seed 0]
    python bench/points_glas.py --protocol glas-malignant --profile cpu

    python bench/points_glas.py --protocol glas-gland --profile cpu --placement errors [--error-clicks 8]

(glas-malignant: a gland click takes its image's grade, malignant or benign; background clicks are benign.)
``--placement errors`` simulates a correcting annotator instead: the middle of each of the ``--error-clicks``
largest wrongly labelled regions of the source run's own pseudo-masks, with the true class there (written to
``..._errors``).

Simulated annotator: on every GlaS **train** image, one click per gland (at the point of the gland's connected
component farthest from its outline, as a pathologist clicks a gland's middle; ``masks_cc``) and ``--bg-clicks``
clicks on background at random pixels at least 12 px from any gland (seeded). Clicks go to
``bench/work/points/<protocol>_clicks.csv`` (``points.file``). The CAM stage of ``bench/work/cam_<protocol>.<profile>``
is reused (clicks do not enter its hash): a new run folder ``bench/work/points_<protocol>.<profile>`` gets its
CAM-stage files (hard links, read only) and runs cam_to_ir_label ... eval_seg with the clicks (``points.use_in``:
all of ir_label, sem_seg, train_seg). Reported beside the same run without clicks: train CAM / IR-label / pseudo-mask
mIoU (the clicked pixels themselves are correct by construction, so their share is reported too) and the test mIoU
of the final network. ``points.radius`` is fixed a priori (8 level-0 px), not tuned; test is only reported.
Writes ``bench/results/points_<protocol>.<profile>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, write_result  # noqa: E402

CAM_FILES = ("status/train_cam.json", "status/make_cam.json", "status/eval_cam.json", "metrics/cam.json",
             "logs/train_cam.jsonl", "config.yaml", "versions.json")
STEPS = ("cam_to_ir_label", "train_irn", "make_sem_seg_labels", "make_ins_seg_labels", "eval_sem_seg", "train_seg",
         "eval_seg")


def simulate_clicks(samples, cfg, bg_clicks: int, seed: int, min_bg_dist: float = 12.0) -> list[dict]:
    """One click per gland instance (its most interior pixel) + ``bg_clicks`` background clicks per image."""
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    names = cfg.data.classes.names
    bg_name = cfg.data.classes.background
    rows = []
    for s in samples:
        cc_rel = s.extra.get("mask_cc")
        if not cc_rel:
            raise SystemExit(f"{s.name}: the manifest has no mask_cc (gland instances) column")
        inst = np.asarray(Image.open(Path(cfg.data.manifest).parent / cc_rel))
        fg_name = "gland" if "gland" in names else (s.labels[0] if s.labels and s.labels[0] != bg_name else bg_name)
        for i in np.unique(inst):
            if i == 0:
                continue
            dt = ndimage.distance_transform_edt(np.pad(inst == i, 1))[1:-1, 1:-1]  # the image edge is an outline too
            y, x = np.unravel_index(int(dt.argmax()), dt.shape)
            rows.append({"image": s.name, "x": float(x) + 0.5, "y": float(y) + 0.5, "class": fg_name})
        far = ndimage.distance_transform_edt(inst == 0) >= min_bg_dist
        ys, xs = np.nonzero(far)
        for j in rng.choice(len(ys), size=min(bg_clicks, len(ys)), replace=False) if len(ys) else []:
            rows.append({"image": s.name, "x": float(xs[j]) + 0.5, "y": float(ys[j]) + 0.5, "class": bg_name})
    return rows


def corrective_clicks(samples, cfg, run: Path, k: int, min_area: int = 20) -> list[dict]:
    """Clicks on the errors of ``run``'s pseudo-masks: the middle of each of the ``k`` largest wrongly labelled
    regions per image, with the ground-truth class there (an annotator correcting what the pipeline showed)."""
    from PIL import Image
    from scipy import ndimage

    from histowsss.data.masks import load_class_mask

    names = cfg.data.classes.names
    rows = []
    for s in samples:
        gt = load_class_mask(s, cfg.data)
        pseudo = np.asarray(Image.open(run / "pseudo" / f"{s.name}.png"))
        if pseudo.shape != gt.shape:
            raise SystemExit(f"{s.name}: pseudo-mask {pseudo.shape} vs mask {gt.shape}")
        wrong = (pseudo != gt) & (gt != 255)
        lab, n = ndimage.label(wrong, structure=np.ones((3, 3), bool))
        if not n:
            continue
        areas = np.bincount(lab.ravel())[1:]
        for i in np.argsort(-areas)[:k]:
            if areas[i] < min_area:
                break
            dt = ndimage.distance_transform_edt(np.pad(lab == i + 1, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(int(dt.argmax()), dt.shape)
            scale = cfg.data.image_scale  # masks are at image_scale; clicks are level-0 pixels
            rows.append({"image": s.name, "x": (float(x) + 0.5) / scale, "y": (float(y) + 0.5) / scale,
                         "class": names[int(gt[y, x])]})
    return rows


def link_cam_stage(src: Path, dst: Path) -> None:
    """A run folder holding the CAM stage of ``src``: large read-only files hard-linked, small ones copied."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for rel in CAM_FILES:
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    (dst / "checkpoints").mkdir()
    for f in (src / "checkpoints").glob("cam*"):
        if f.suffix in (".safetensors", ".json"):
            os.link(f, dst / "checkpoints" / f.name)
    (dst / "cams").mkdir()
    for f in (src / "cams").iterdir():
        os.link(f, dst / "cams" / f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", choices=["glas-gland", "glas-malignant"], default="glas-gland")
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--bg-clicks", type=int, default=3)
    ap.add_argument("--radius", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--placement", choices=["centre", "errors"], default="centre",
                    help="centre: every gland's middle + --bg-clicks; errors: the middle of the --error-clicks largest "
                    "errors of the run's own pseudo-masks (a correcting annotator)")
    ap.add_argument("--error-clicks", type=int, default=8)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()

    from histowsss.config import load_config
    from histowsss.data.manifest import write_manifest
    from histowsss.data.points import point_map, read_points_file
    from histowsss.data.io import image_size
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir
    from histowsss.steps.common import samples_for

    t0 = time.time()
    src = ROOT / "bench" / "work" / f"cam_{args.protocol}.{args.profile}"
    for rel in ("metrics/sem_seg.json", "metrics/seg.json"):
        if not (src / rel).exists():
            raise SystemExit(f"{src / rel} missing: run the protocol's CAM, IRN and weak segmentation benches first")
    base = load_config(str(src / "config.yaml"), ["train_seg.supervised=false"])
    train = samples_for(base, list(base.data.train_splits))
    tag = "" if args.placement == "centre" else "_errors"
    clicks = ROOT / "bench" / "work" / "points" / f"{args.protocol}{tag}_clicks.csv"
    clicks.parent.mkdir(parents=True, exist_ok=True)
    rows = (simulate_clicks(train, base, args.bg_clicks, args.seed) if args.placement == "centre"
            else corrective_clicks(train, base, src, args.error_clicks))
    write_manifest(clicks, [{k: str(v) for k, v in r.items()} for r in rows])
    dst = ROOT / "bench" / "work" / f"points_{args.protocol}{tag}.{args.profile}"
    link_cam_stage(src, dst)
    cfg = load_config(str(src / "config.yaml"), ["train_seg.supervised=false", f"points.file={clicks}",
                                                 f"points.radius={args.radius}"])
    rd = RunDir(dst, cfg).init()
    run_pipeline(cfg, rd, STEPS[0], STEPS[-1])
    # share of train pixels a click labels (correct by construction for the simulated annotator)
    by_image = read_points_file(clicks, cfg.data.classes)
    clicked = total = 0
    for s in train:
        h, w = image_size(s.image)
        hs, ws = round(h * cfg.data.image_scale), round(w * cfg.data.image_scale)
        pm = point_map(list(by_image.get(s.name, ())), (hs, ws), cfg.data.image_scale, cfg.points.radius)
        clicked += int((pm != 255).sum())
        total += hs * ws

    def stage_numbers(run: Path) -> dict:
        tr = json.loads((run / "metrics" / "sem_seg.json").read_text())["splits"]["train"]
        seg = json.loads((run / "metrics" / "seg.json").read_text())
        ir = tr["ir_labels"]
        return {"train_cam_miou": tr["cam"]["miou"], "train_ir_confident_miou": ir["confident_only"]["miou"],
                "train_ir_coverage": ir["coverage"], "train_pseudo_miou": tr["irn_pseudo"]["miou"],
                f"train_pseudo_iou_{fg}": tr["irn_pseudo"]["per_class"][fg]["iou"],
                "test_miou": seg["all"]["miou"], f"test_iou_{fg}": seg["all"]["per_class"][fg]["iou"],
                "test_per_split": {k: v["miou"] for k, v in seg["splits"].items()}}

    fg = next(c for c in cfg.data.classes.names if c != cfg.data.classes.background)

    with_clicks, without = stage_numbers(dst), stage_numbers(src)
    step_wall = {s: json.loads((dst / "status" / f"{s}.json").read_text())["wall_s"] for s in STEPS}
    n_fg = sum(1 for r in rows if r["class"] != cfg.data.classes.background)
    metrics = {"clicks": {"images": len(train), "gland_clicks": n_fg, "background_clicks": len(rows) - n_fg,
                          "per_image": round(len(rows) / len(train), 2),
                          "clicked_pixel_pct": round(100 * clicked / total, 3)},
               "with_clicks": with_clicks, "without_clicks": without,
               "gain": {k: round(with_clicks[k] - without[k], 2) for k in
                        ("train_cam_miou", "train_ir_confident_miou", "train_pseudo_miou", f"train_pseudo_iou_{fg}",
                         "test_miou", f"test_iou_{fg}")},
               "step_seconds": step_wall}
    config = {"source_run": str(src.relative_to(ROOT)), "run": str(dst.relative_to(ROOT)),
              "clicks_file": str(clicks.relative_to(ROOT)), "placement": args.placement,
              "bg_clicks": args.bg_clicks if args.placement == "centre" else None,
              "error_clicks": args.error_clicks if args.placement == "errors" else None, "seed": args.seed,
              "points": cfg.points.model_dump(mode="json"), "train_seg": cfg.train_seg.model_dump(mode="json"),
              "note": "radius fixed a priori; test ground truth only reported"}
    path = write_result(args.name or f"points_{args.protocol}{tag}", args.profile, time.time() - t0, config, metrics, [])
    print(json.dumps(metrics, indent=2), path)


if __name__ == "__main__":
    main()
