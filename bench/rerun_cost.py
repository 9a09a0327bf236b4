"""Benchmark: what `histowsss run` makes again after the manifest is edited, and what it costs, on the demo.

    python bench/rerun_cost.py --profile cpu

A fresh `histowsss demo` run folder, then, one after the other, each followed by `histowsss run RUN/config.yaml
--run RUN` (timed, the steps it made again read from its log):

1. ``test_label_fixed``: one test image's class changed in the manifest (eval_cam's choices are made on the
   training splits: only the test evaluations should be made again);
2. ``test_images_added``: four test images added (copies under new names): make_cam for their CAMs alone, and the
   test evaluations;
3. ``test_image_replaced``: one test image re-written mirrored under its name: that CAM and the evaluations;
4. ``reference_from_make_cam``: ``--from make_cam --overwrite``, what scenario 2 or 3 made again before the run
   folder compared contents (every CAM, and every step after make_cam).

Test ground truth is only read by the evaluations, as in every run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, check, write_result  # noqa: E402

TRAINING_STEPS = ["train_cam", "cam_to_ir_label", "train_irn", "make_sem_seg_labels", "make_ins_seg_labels",
                  "eval_sem_seg", "train_seg"]


def cli(*args: str) -> tuple[float, str]:
    """Run the histowsss CLI; (wall seconds, its output: the step lines are on stderr). A failure stops the
    benchmark with its output."""
    exe = Path(sys.executable).with_name("histowsss")
    t0 = time.time()
    proc = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"histowsss {' '.join(args)} failed with exit code {proc.returncode}")
    return time.time() - t0, proc.stdout + proc.stderr


def made(log: str) -> list[str]:
    """The steps a run made (its ``[redo]`` / ``[run ]`` lines)."""
    return re.findall(r"^\[(?:redo|run )\] (\w+)", log, flags=re.M)


def edit_manifest(path: Path, fn) -> None:
    """Rewrite the manifest's rows through ``fn(rows) -> rows`` (dicts), columns kept."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(fn(rows))
    path.write_text(out.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--profile", choices=["cpu", "gpu"], default="cpu")
    args = ap.parse_args()
    run = ROOT / "bench" / "work" / f"rerun_cost.{args.profile}"
    shutil.rmtree(run, ignore_errors=True)
    t_start = time.time()
    full_s, _ = cli("demo", "--run", str(run))
    data = run / "data"
    manifest = data / "manifest.csv"
    config = str(run / "config.yaml")
    scenarios: dict[str, dict] = {}

    def rerun(name: str, *extra: str) -> None:
        wall, log = cli("run", config, "--run", str(run), *extra)
        cams = json.loads((run / "status" / "make_cam.json").read_text())
        scenarios[name] = {"wall_s": round(wall, 1), "made": made(log),
                           "make_cam_computed": cams.get("computed"), "make_cam_reused": cams.get("reused")}
        print(name, json.dumps(scenarios[name]), flush=True)

    def fix_label(rows: list[dict]) -> list[dict]:
        row = next(r for r in rows if r["split"] == "test")
        row["grade"], row["label"] = ("malignant", "1") if row["grade"] == "benign" else ("benign", "0")
        return rows

    edit_manifest(manifest, fix_label)
    rerun("test_label_fixed")

    added: list[dict] = []

    def add_images(rows: list[dict]) -> list[dict]:
        for row in [r for r in rows if r["split"] == "test"][:4]:
            new = {k: v.replace(row["name"], row["name"] + "_copy") for k, v in row.items()}
            for col in ("image", "mask", "mask_cc"):
                if row.get(col):
                    shutil.copy(data / row[col], data / new[col])
            added.append(new)
        return rows + added

    edit_manifest(manifest, add_images)
    rerun("test_images_added")

    with open(manifest, newline="") as f:
        test_image = data / next(r for r in csv.DictReader(f) if r["split"] == "test")["image"]
    with Image.open(test_image) as im:
        mirrored = Image.fromarray(np.asarray(im.convert("RGB"))[:, ::-1].copy())
    mirrored.save(test_image)
    rerun("test_image_replaced")
    rerun("reference_from_make_cam", "--from", "make_cam", "--overwrite")

    wall = time.time() - t_start
    images = sum(1 for _ in open(manifest)) - 1
    checks = []
    for name in ("test_label_fixed", "test_images_added", "test_image_replaced"):
        s = scenarios[name]
        training = [m for m in s["made"] if m in TRAINING_STEPS]
        checks.append(check(f"{name}_training_steps_made_again", training, "none (test rows only changed)",
                            not training))
    for name, expect in (("test_images_added", len(added)), ("test_image_replaced", 1)):
        s = scenarios[name]
        checks.append(check(f"{name}_cams_computed", s["make_cam_computed"], f"== {expect} (of {images})",
                            s["make_cam_computed"] == expect))
    metrics = {"full_demo_wall_s": round(full_s, 1), "images_after": images, "scenarios": scenarios,
               "notes": ["wall_s: the whole `histowsss run` command (process start, planning, the steps made again)",
                         "reference_from_make_cam: what a test image added or replaced cost before make_cam kept "
                         "the CAM files that still hold and the training steps read the training images' part"]}
    path = write_result("rerun_cost", args.profile, wall, {"command": "python bench/rerun_cost.py --profile "
                                                                      f"{args.profile}", "config": "demo"},
                        metrics, checks)
    print(json.dumps({"result": str(path), "checks": checks}, indent=2))


if __name__ == "__main__":
    main()
