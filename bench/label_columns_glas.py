"""Benchmark: labels written one 0/1 column per class train the CAM stage exactly as a label column does (GlaS).

Usage::

    python bench/label_columns_glas.py --profile cpu

GlaS's grades written two ways: the manifest's ``grade`` column (``data.label_column: grade``, the glas-malignant
protocol), and ``benign`` / ``malignant`` 0/1 columns with no label column (``data.label_columns``, as a one-hot
export from a spreadsheet). The one-hot manifest is written under ``bench/work/label_columns_glas/`` (image and mask
paths pointing at ../shared/data/glas), its config by ``histowsss init`` (which finds the columns), then both run
the CAM stage (train_cam, make_cam, eval_cam) of the glas-malignant profile in two folders (finished steps of an
earlier call are kept by their hash). Checks: the
same labels for every image, and the same CAM-stage scores (test AUC, malignant IoU, mIoU) and CAM files. Test
images are only scored. Writes ``bench/results/label_columns_glas.<profile>.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402

GLAS = ROOT.parent / "shared" / "data" / "glas"


def one_hot_manifest(out: Path) -> Path:
    """GlaS's manifest with the grade as benign / malignant 0/1 columns and no label column."""
    with open(GLAS / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for col in ("image", "mask", "mask_cc"):
            r[col] = str((GLAS / r[col]).resolve())
        r["benign"], r["malignant"] = str(int(r["grade"] == "benign")), str(int(r["grade"] == "malignant"))
        del r["grade"], r["label"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", choices=["cpu", "gpu"])
    args = ap.parse_args()

    from histowsss.config import load_config
    from histowsss.config_init import config_for_manifest
    from histowsss.data.manifest import read_manifest
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.run_dir import RunDir

    t0 = time.perf_counter()
    work = ROOT / "bench" / "work" / f"label_columns_glas.{args.profile}"  # (finished steps are kept by their hash)
    manifest = one_hot_manifest(work / "glas_one_hot.csv")
    made = config_for_manifest(manifest, background="benign", mask_mode="binary_image_label", mpp=0.62,
                               profile=args.profile)
    base = "glas-malignant" if args.profile == "cpu" else "glas-malignant-gpu"
    column = load_config(base, [f"data.manifest={(GLAS / 'manifest.csv').resolve()}"])
    # the protocol's own settings, with the one-hot manifest and the columns init found
    one_hot = load_config(base, [f"data.manifest={manifest}", "data.label_column=null",
                                 f"data.label_columns=[{','.join(made.config.data.label_columns)}]"])
    labels = {}
    for name, cfg in (("column", column), ("one_hot", one_hot)):
        labels[name] = [(s.name, s.split, s.labels) for s in read_manifest(cfg.data)]
    same_labels = labels["column"] == labels["one_hot"]
    scores, seconds = {}, {}
    for name, cfg in (("column", column), ("one_hot", one_hot)):
        run = RunDir(work / name, cfg).init()
        run_pipeline(cfg, run, stop="eval_cam", log=print)
        seconds[name] = {k: run.status(k)["wall_s"] for k in ("train_cam", "make_cam", "eval_cam")}  # as they ran
        m = json.loads((run.path / "metrics" / "cam.json").read_text())
        scores[name] = {sp: {"auc": e["classification"].get("auc"),
                             "malignant_iou": e["predicted_gating"]["per_class"]["malignant"]["iou"],
                             "miou": e["predicted_gating"]["miou"]}
                        for sp, e in m["splits"].items() if "predicted_gating" in e}
    def arrays(name: str, image: str) -> tuple[np.ndarray, np.ndarray]:
        with np.load(work / name / "cams" / f"{image}.npz") as z:
            return z["cam"], z["probs"]

    cams_same = all(all(np.array_equal(a, b) for a, b in zip(arrays("column", n), arrays("one_hot", n)))
                    for n, _, _ in labels["column"])
    metrics = {"init_found": made.config.data.label_columns, "init_notes": made.notes[:2],
               "images": len(labels["column"]),
               "labels_identical": same_labels, "cam_files_identical": cams_same, "scores": scores,
               "stage_seconds": seconds}
    checks = [check("labels_identical", same_labels, "every image: the same split and labels", same_labels),
              check("cam_scores_identical", scores["column"] == scores["one_hot"],
                    "the same CAM-stage scores on every split", scores["column"] == scores["one_hot"]),
              check("cam_files_identical", cams_same, "the same CAM arrays and class probabilities for every image",
                    cams_same)]
    config = {"protocol": base, "one_hot_manifest": str(manifest.relative_to(ROOT)),
              "label_columns": made.config.data.label_columns, "steps": "train_cam, make_cam, eval_cam",
              "note": "test images are only scored; nothing is chosen from them"}
    print(write_result("label_columns_glas", args.profile, time.perf_counter() - t0, config, metrics, checks))


if __name__ == "__main__":
    main()
