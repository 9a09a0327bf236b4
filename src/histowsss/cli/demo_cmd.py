"""`histowsss demo`: the pipeline end to end on embedded synthetic H&E data, then the measured table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from histowsss.cli.common import clear_errors, log_line


def demo(run_dir: Path = typer.Option(Path("runs/demo"), "--run", "-r", help="run folder"),
         seed: int = typer.Option(0, help="synthetic data seed"),
         overwrite: bool = typer.Option(False, help="redo finished steps (and regenerate the data for another --seed)"),
         set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="config override")) -> None:
    """Generate synthetic H&E data, run every step on it, print the per-stage quality table."""
    from histowsss.config import load_config
    from histowsss.data.synthetic import generate_synthetic_dataset
    from histowsss.engine.pipeline import run_pipeline
    from histowsss.engine.standing import metrics_standing
    from histowsss.engine.run_dir import RunDir, run_lock

    t0 = time.time()
    with clear_errors(), run_lock(run_dir, "histowsss demo"):  # (refused while another command works there)
        manifest = generate_synthetic_dataset(run_dir / "data", seed=seed, overwrite=overwrite)
        cfg = load_config("demo", [f"data.manifest={manifest}", f"seed={seed}"] + list(set_ or []))
        rd = RunDir(run_dir, cfg).init()
        run_pipeline(cfg, rd, overwrite=overwrite, log=log_line)
    from histowsss.evaluation.report import write_report

    print(stage_table(rd.path, metrics_standing(cfg, rd.path)))
    report = write_report(rd.path, None)
    log_line(f"demo finished in {time.time() - t0:.0f} s; run folder: {rd.path}")
    log_line(f"report: {report}")


def stage_table(run_path: Path, stale: dict[str, str] | None = None) -> str:
    """Markdown table of the measured per-stage quality found in a run folder's metrics/. ``stale``: the metrics
    files that do not follow from the settings of now and why (:func:`~histowsss.engine.standing.metrics_standing`):
    their rows are marked, and why is said under the table."""
    from histowsss.evaluation.metrics import format_table

    stale = stale or {}
    rows = []
    cam = run_path / "metrics" / "cam.json"
    if cam.exists():
        m = json.loads(cam.read_text())
        for split, e in m["splits"].items():
            for gating in ("label_gating", "predicted_gating", "image_level_baseline"):
                if gating not in e:
                    continue
                s = e[gating]
                row = {"stage": "CAM" if gating != "image_level_baseline" else "image-level baseline",
                       "split": split, "classes from": gating.replace("_gating", "").replace("image_level_baseline", "classifier"),
                       "mIoU": s["miou"]}
                for c, d in s["per_class"].items():
                    row[f"IoU {c}"] = d["iou"]
                row["AUC"] = e["classification"]["auc"]
                rows.append(row)
        for split, e in m["splits"].items():  # scored without masks too: the classifier's image-level numbers
            if not any(g in e for g in ("label_gating", "predicted_gating")) and e.get("classification"):
                rows.append({"stage": "classifier (image labels)", "split": split, "classes from": "labels",
                             "AUC": e["classification"].get("auc"), "accuracy": e["classification"].get("accuracy")})
    source = {id(r): "cam" for r in rows}  # the metrics file of each row
    sem = run_path / "metrics" / "sem_seg.json"
    if sem.exists():
        m = json.loads(sem.read_text())
        for split, e in m["splits"].items():
            for stage, key in (("IR labels (ignore = background)", "ir_labels"), ("IRN pseudo-masks", "irn_pseudo")):
                s = e[key] if key != "ir_labels" else e[key].get("ignore_as_background", e[key]["confident_only"])
                if key == "ir_labels" and "ignore_as_background" not in e[key]:  # no background class
                    stage = "IR labels (confident pixels)"
                row = {"stage": stage, "split": split, "classes from": "labels", "mIoU": s["miou"]}
                row.update({f"IoU {c}": d["iou"] for c, d in s["per_class"].items()})
                rows.append(row)
                source[id(row)] = "sem_seg"
    for tag, stage in (("seg", "segmentation network"), ("seg_supervised", "supervised upper bound")):
        p = run_path / "metrics" / f"{tag}.json"
        if p.exists():
            a = json.loads(p.read_text())["all"]
            row = {"stage": stage, "split": "test", "classes from": "network", "mIoU": a["miou"]}
            row.update({f"IoU {c}": d["iou"] for c, d in a["per_class"].items()})
            rows.append(row)
            source[id(row)] = tag
    if not rows:
        return "(no metrics yet)"
    shown = [tag for tag in dict.fromkeys(source.values()) if tag in stale]
    for r in rows:
        if source[id(r)] in stale:
            r["stale"] = "yes (below)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    notes = [f"stale (metrics/{tag}.json does not follow from the settings and files of now): {stale[tag]}"
             for tag in shown]
    return format_table(rows, cols) + "".join(f"\n{n}" for n in notes)
