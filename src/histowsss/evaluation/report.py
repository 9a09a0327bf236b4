"""One self-contained HTML report of a run folder: data, training curves, per-stage quality, examples, timings.

Everything is inline: CSS in a ``<style>`` block, images as base64 PNG ``data:`` URIs, charts as SVG
(``report_parts``). No external URL is referenced, so the file can be mailed or archived as is. Missing stages are
shown as "not run"; every section degrades to a short note when its inputs are absent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from histowsss.evaluation.report_parts import (CSS, colorize, esc, fmt, line_chart, png_data_uri, read_json,
                                            table)

SECTIONS = ("Run", "Dataset", "Per-stage quality", "Model selection", "Training curves", "Examples", "Timings")
_SCORE_WORDS = ("acc", "auc", "prob", "iou", "dice", "f1", "precision", "recall")  # charted on [0, 1]
_SKIP_KEYS = {"epoch", "seconds", "examples", "crops", "crops_per_s", "examples_per_s", "lr", "world_size"}


# ---------------------------------------------------------------------------------------------------- sections
def _load_cfg(run_path: Path):
    from histowsss.config import load_config

    p = run_path / "config.yaml"
    if not p.exists():
        return None, f"{p} not found"
    try:
        return load_config(p), None
    except Exception as e:  # a report should still be written
        return None, f"config.yaml cannot be read: {e}"


def _invocation_facts(run_path: Path) -> list[tuple[str, str]]:
    """The last `histowsss run` of the folder (invocation.json): its command line and the folder it started in."""
    import shlex

    from histowsss.engine.run_paths import INVOCATION

    rec = read_json(run_path / INVOCATION)
    argv = rec.get("argv") if isinstance(rec, dict) else None
    if not isinstance(argv, list) or not argv:
        return []
    argv = [Path(str(argv[0])).name, *map(str, argv[1:])]
    return [("last command", shlex.join(argv)), ("started in", str(rec.get("working_folder", "")))]


def section_run(run_path: Path, cfg, cfg_err: str | None) -> str:
    parts = []
    if cfg is not None:
        c = cfg.data.classes
        facts = [("run", cfg.name), ("classes", ", ".join(c.names) + (f" (background: {c.background})" if c.background
                                                                        else "")),
                 ("image scale", cfg.data.image_scale), ("train / val / test splits",
                                                         f"{cfg.data.train_splits} / {cfg.data.val_splits} / "
                                                         f"{cfg.data.test_splits}"),
                 ("CAM", f"{cfg.train_cam.network} on {cfg.backbone.name} ({cfg.backbone.weights})"),
                 ("segmentation", f"{cfg.train_seg.architecture} on {cfg.train_seg.encoder} "
                                  f"({cfg.train_seg.encoder_weights}), labels {cfg.train_seg.labels}, "
                                  f"loss {cfg.train_seg.loss}"
                                  + (f", ensemble of {cfg.train_seg.members} seeds" if cfg.train_seg.members > 1
                                     else ""))]
        facts += _invocation_facts(run_path)
        parts.append(table([{"key": k, "value": v} for k, v in facts], ["key", "value"], left=("key", "value")))
    else:
        parts.append(f'<p class="note">{esc(cfg_err)}</p>')
    versions = read_json(run_path / "versions.json")
    if versions:
        parts.append('<p class="sub">' + esc(", ".join(f"{k} {v}" for k, v in versions.items())) + "</p>")
    cfg_text = (run_path / "config.yaml").read_text() if (run_path / "config.yaml").exists() else ""
    if cfg_text:
        parts.append(f"<details><summary>resolved configuration (config.yaml)</summary><pre>{esc(cfg_text)}</pre>"
                     "</details>")
    by_config = steps_by_config(run_path)
    if len(by_config) > 1:
        parts.append('<p class="note">The steps ran with ' + str(len(by_config)) + " configurations (config.yaml "
                     "holds the last invocation's): " + esc("; ".join(f"{', '.join(steps)}: {name}"
                                                                       for name, steps in by_config.items())) + "</p>")
    return "".join(parts)


def steps_by_config(run_path: Path) -> dict[str, list[str]]:
    """Finished steps grouped by the config file they ran with (``status/<step>.json`` -> ``run_config``)."""
    out: dict[str, list[str]] = {}
    for f in sorted((run_path / "status").glob("*.json")):
        st = read_json(f) or {}
        if st.get("state") == "done" and st.get("run_config"):
            out.setdefault(st["run_config"], []).append(st.get("step", f.stem))
    return out


def section_dataset(cfg, run_path: Path | None = None) -> str:
    """Images and patients per split and class. A relative manifest path is read from the current folder, else
    from where the run was likely started (:func:`with_reachable_manifest`)."""
    if cfg is None:
        return '<p class="note">not available (no readable config.yaml)</p>'
    if run_path is not None:
        cfg = with_reachable_manifest(cfg, run_path)
    from histowsss.data.manifest import read_manifest
    from histowsss.data.stats import split_class_table

    data = cfg.data
    try:
        samples = read_manifest(data)
    except Exception as e:
        return f'<p class="note">manifest not readable from here: {esc(e)}</p>'
    note = ""
    if not cfg.data.has_labels:
        samples, note = _labels_from_masks(samples, data)
    rows = split_class_table(samples, cfg.data.classes.names)
    cols = list(rows[0].keys()) if rows else ["split"]
    return table(rows, cols, left=("split",)) + note


def _labels_from_masks(samples: list, data) -> tuple[list, str]:
    """Without an image-label column: each image's classes from its mask (:func:`histowsss.data.stats.
    labels_from_masks`), and the table's note."""
    from histowsss.data.stats import labels_from_masks

    out, note = labels_from_masks(samples, data)
    return out, f'<p class="note">{esc(note)}</p>'


def stage_rows(run_path: Path, class_names: list[str], stale: dict[str, str] | None = None) -> list[dict]:
    """The per-stage quality rows (mIoU, mDice, per-class IoU); stages without metrics are 'not run'. ``stale``:
    the metrics files that do not follow from the run's config.yaml and why
    (:func:`~histowsss.engine.standing.metrics_standing`): their rows say 'stale' and why."""
    stale = stale or {}
    cam = read_json(run_path / "metrics" / "cam.json")
    sem = read_json(run_path / "metrics" / "sem_seg.json")
    seg = read_json(run_path / "metrics" / "seg.json")
    sup = read_json(run_path / "metrics" / "seg_supervised.json")
    rows: list[dict] = []
    current = "cam"  # the metrics file the rows added next come from

    def add(stage: str, split: str | None, summ: dict | None, note: str = "", ran: bool = False) -> None:
        why = stale.get(current) if ran or summ else None
        if why:
            note = f"does not follow from config.yaml and the folder's files ({why})" + (f"; {note}" if note else "")
        if not summ:  # a step that ran on images without masks has nothing to score
            rows.append({"stage": stage, "split": split or "-", "status": ("stale, " if why else "") + (
                "done, no masks to score" if ran else "not run"), "note": note})
            return
        r = {"stage": stage, "split": split, "status": "stale" if why else "done", "mIoU": summ.get("miou"),
             "mDice": summ.get("mdice"), "note": note}
        for c in class_names:
            r[f"IoU {c}"] = (summ.get("per_class", {}).get(c) or {}).get("iou")
        rows.append(r)

    cs = (cam or {}).get("splits", {})
    ran_cam = cam is not None
    chosen = f"{(cam or {}).get('mode', '')} {(cam or {}).get('chosen_value', '')}".strip()
    if (cam or {}).get("mode") == "argmax":
        chosen = "argmax over the classes (no background)"
    if ran_cam and not cam.get("chosen_on") and cam.get("mode") != "argmax":  # argmax has nothing to choose
        chosen += " (default: no training masks to choose it on)"
    add("Image-level baseline (whole image = classifier's class)", "test",
        (cs.get("test") or {}).get("image_level_baseline"), "every method must beat this", ran_cam)
    add("CAM, classes from the classifier", "test", (cs.get("test") or {}).get("predicted_gating"), chosen, ran_cam)
    # the first training split scored (masks on val only, as LUAD-HistoSeg / BCSS-WSSS ship them: val)
    candidates = [s for s in cs if s not in ("test",)]
    train_split = next((s for s in candidates if ((cs.get(s) or {}).get("label_gating") or {}).get("miou")
                        is not None), candidates[0] if candidates else None)
    patch_gated = (cam or {}).get("label_gating") == "patch"
    add("CAM, classes from patch labels" if patch_gated else "CAM, classes from image labels", train_split,
        (cs.get(train_split) or {}).get("label_gating"),
        "pseudo-label setting (training images" + ("; a pixel takes only classes of every labelled patch over it)"
                                                   if patch_gated else ")"), ran_cam)
    current = "sem_seg"
    ss = (sem or {}).get("splits", {})
    sem_split = next(iter(ss), None)
    se = ss.get(sem_split) or {}
    ir = (se.get("ir_labels") or {})
    add("IR labels (confident pixels only)", sem_split, ir.get("confident_only"),
        f"coverage {ir.get('coverage')}%" if ir.get("coverage") is not None else "", sem is not None)
    add("IRN pseudo-masks (random walk)", sem_split, se.get("irn_pseudo"), "training images", sem is not None)
    for current, name, m in (("seg", "Segmentation network (weak labels)", seg),
                             ("seg_supervised", "Supervised upper bound (ground truth)", sup)):
        if not m:
            add(name, None, None)
            continue
        splits = m.get("splits", {})
        note = f"labels: {m.get('label_source')}, loss: {m.get('loss')}"
        inf = m.get("inference") or {}
        if inf.get("min_object_area") or inf.get("max_hole_area") or inf.get("split_h"):
            note += (f"; clean-up: objects < {inf.get('min_object_area')} px, holes < {inf.get('max_hole_area')} px, "
                     f"split_h {inf.get('split_h')}")
        add(name, "+".join(m.get("all", {}).get("splits", [])) or "test",
            m.get("all") if (m.get("all") or {}).get("miou") is not None else None, note, True)
        if len(splits) > 1:
            for sp, sm in splits.items():
                add(f"  {name}: {sp}", sp, sm, "")
    return rows


def classification_rows(run_path: Path) -> list[dict]:
    """One row per split that eval_cam scored the classifier on: images, AUC and accuracy (percent)."""
    cam = read_json(run_path / "metrics" / "cam.json") or {}
    rows = []
    for split, e in (cam.get("splits") or {}).items():
        c = (e or {}).get("classification")
        if c:
            rows.append({"split": split, "images": c.get("images"), "AUC": c.get("auc"), "accuracy": c.get("accuracy")})
    return rows


def object_rows(run_path: Path) -> list[dict]:
    """GlaS object-level rows (F1, object Dice, object Hausdorff): IRN instances and segmentation networks."""
    rows: list[dict] = []

    def add(stage: str, split: str, o: dict | None) -> None:
        if o:
            pooled = "dice" in o  # (metrics written before stop 34 hold the means over images only)
            rows.append({"stage": stage, "split": split, "images": o.get("images"), "object F1": o.get("f1"),
                         "precision": o.get("precision"), "recall": o.get("recall"),
                         "object Dice": o.get("dice") if pooled else o.get("dice_mean_per_image"),
                         "object Hausdorff (px)": o.get("hausdorff") if pooled else o.get("hausdorff_mean_per_image"),
                         "Dice / Hausdorff": "GlaS: over all objects" if pooled else "mean over images",
                         "objects without a Hausdorff partner": o.get("hausdorff_unpaired_objects"),
                         "images with infinite Hausdorff": o.get("hausdorff_infinite_images")})

    sem = read_json(run_path / "metrics" / "sem_seg.json") or {}
    for sp, e in (sem.get("splits") or {}).items():
        objs = (e or {}).get("objects") or {}
        add("IRN instances (displacement field)", sp, objs.get("irn_instances"))
        add("IRN pseudo-masks, connected components", sp, objs.get("pseudo_connected_components"))
    for name, file in (("Segmentation network (weak labels)", "seg.json"),
                       ("Supervised upper bound (ground truth)", "seg_supervised.json")):
        objs = (read_json(run_path / "metrics" / file) or {}).get("objects") or {}
        splits = objs.get("splits") or {}
        add(name, "+".join(splits) or "test", objs.get("all"))
        if len(splits) > 1:
            for sp, o in splits.items():
                add(f"  {name}: {sp}", sp, o)
    return rows


def _stale_note(stale: dict[str, str], tags: list[str]) -> str:
    """A warning above a table whose numbers come (partly) from metrics files that do not follow from config.yaml."""
    why = [f"metrics/{t}.json ({stale[t]})" for t in tags if t in stale]
    return (f'<p class="note stale">Stale (does not follow from config.yaml and the folder\'s files): '
            f'{esc("; ".join(why))}.</p>' if why else "")


def section_quality(run_path: Path, class_names: list[str], stale: dict[str, str] | None = None) -> str:
    rows = stage_rows(run_path, class_names, stale)
    cols = ["stage", "split", "status", "mIoU", "mDice"] + [f"IoU {c}" for c in class_names] + ["note"]
    html = (table(rows, cols, left=("stage", "split", "status", "note"),
                  row_class=lambda r: "nr" if r["status"] == "not run" else "stale" if "stale" in r["status"]
                  else "") +
            '<p class="note">Percent. Each number comes from one dataset-level confusion matrix over the split(s). '
            "Pseudo-label stages are measured on the training images they label (on the validation images where only "
            "those have masks: the split column says which); CAM, baseline and segmentation on the test "
            "split(s).</p>")
    stale = stale or {}
    cls = classification_rows(run_path)
    if cls:
        html += ("<h3>Image classification (the CAM classifier)</h3>" + _stale_note(stale, ["cam"])
                 + table(cls, ["split", "images", "AUC", "accuracy"], left=("split",)) +
                 '<p class="note">Percent, from eval_cam: the classifier\'s image-level scores against the '
                 "manifest's image labels (no masks needed): AUC macro-averaged over the classes, accuracy the share "
                 "of images whose every class is called present or absent rightly at the chosen class-presence cut "
                 "(with several labels per image, an exact match of the whole label set). Training and validation "
                 "splits hold images the classifier was trained or tuned on: only the test split's numbers say how "
                 "it does on new images.</p>")
    objs = object_rows(run_path)
    if objs:
        cols = ["stage", "split", "images", "object F1", "precision", "recall", "object Dice", "object Hausdorff (px)",
                "objects without a Hausdorff partner"]
        if any(r["Dice / Hausdorff"] != "GlaS: over all objects" for r in objs):  # metrics written before stop 34
            cols += ["Dice / Hausdorff", "images with infinite Hausdorff"]
        html += ("<h3>Objects (GlaS challenge metrics)</h3>" + _stale_note(stale, ["sem_seg", "seg", "seg_supervised"])
                 + table(objs, cols, left=("stage", "split")) +
                 '<p class="note">Against the manifest\'s instance masks (<code>mask_cc</code>). A network\'s objects '
                 "are the connected components of its prediction. F1, precision and recall (percent) come from "
                 "matches summed over the images. Object Dice (percent) and Hausdorff (pixels) are the GlaS "
                 "challenge's: pooled over every object of the split, each weighted by its area over the area of all "
                 "objects (segmented and ground truth alike), so large glands count more than small ones and an image "
                 "without objects adds nothing. An object without a partner scores Dice 0 and takes the Hausdorff "
                 "distance to the nearest object of the other side; objects of an image where the other side has no "
                 "object at all have no distance: the Hausdorff leaves them out and the last column counts them, so "
                 "a network that predicts nothing on hard images cannot look better. The means over images are in "
                 "<code>metrics/*.json</code> (<code>*_mean_per_image</code>).</p>")
    return html


def with_reachable_manifest(cfg, run_path: Path):
    """``cfg`` with a relative manifest path that does not resolve from here resolved against the folders a run is
    usually started from: the run folder's parent, its grandparent (``runs/<name>`` below the project), the run folder
    itself; unchanged when none holds it."""
    if cfg is None:
        return None
    man = Path(cfg.data.manifest)
    if man.is_absolute() or man.exists():
        return cfg
    for base in (run_path.parent, run_path.parent.parent, run_path):
        if (base / man).exists():
            return cfg.model_copy(update={"data": cfg.data.model_copy(update={"manifest": base / man})})
    return cfg


def section_tuning(run_path: Path) -> str:
    """The cross-validations of ``histowsss tune`` kept in RUN/tuning/*.json: pooled scores and the choice."""
    files = sorted((run_path / "tuning").glob("*.json")) if (run_path / "tuning").is_dir() else []
    parts = []
    for path in files:
        res = read_json(path)
        if not isinstance(res, dict) or "pooled" not in res:
            continue
        crit = res.get("criterion", "miou")
        chosen = res.get("chosen", {})
        rows = []
        for row in res["pooled"]:
            for vk, v in row.items():
                if isinstance(v, dict):
                    mark = vk == chosen.get("variant") and (row.get("candidate") == chosen["index"] if "index" in chosen
                                                            else row.get("overrides") == chosen.get("candidate"))
                    rows.append({"candidate": (row.get("overrides") or "(run config)") + (" (chosen)" if mark else ""),
                                 "variant": vk, f"{crit} pooled": v.get(crit), f"{crit} fold mean":
                                 v.get(f"fold_mean_{crit}"), "mIoU pooled": v.get("miou")})
        weak = (res.get("weak_labels_pooled") or {}).get(crit)
        gate = (" Image gate from a CAM stage trained without each fold's patients." if res.get("holdout_classifier")
                else (" Image gate from the run's own classifier (it saw every image: optimistic)."
                      if res.get("gate_cuts") else ""))
        parts.append(f"<h3>{esc(path.stem)}: {esc(res.get('folds'))}-fold patient cross-validation</h3>" +
                     table(rows, ["candidate", "variant", f"{crit} pooled", f"{crit} fold mean", "mIoU pooled"],
                           left=("candidate", "variant")) +
                     f'<p class="note">{esc(res.get("scored_images", res.get("training_images")))} training images of '
                     f'{esc(res.get("training_patients"))} patients, each scored once by a network that never saw its '
                     f"patient; the weak labels themselves: {esc(fmt(weak))}.{esc(gate)} Chosen overrides: "
                     f'<code>{esc(" ".join(chosen.get("overrides") or []) or "none")}</code>. Test images are never '
                     "read.</p>")
    return "".join(parts) or ('<p class="note">no cross-validation in this run folder (<code>histowsss tune RUN'
                              "</code> chooses settings on the training patients)</p>")


def section_curves(run_path: Path, standing: dict[str, str | None] | None = None) -> str:
    """One chart per training log; a log whose step's outputs do not follow from config.yaml (``standing``, from
    :func:`~histowsss.engine.standing.steps_standing`: a stopped run of other settings rewrote it, say) says so."""
    import re

    logs = sorted((run_path / "logs").glob("*.jsonl")) if (run_path / "logs").exists() else []
    if not logs:
        return '<p class="note">no training logs (logs/*.jsonl)</p>'
    blocks = []
    for p in logs:
        recs = []
        for line in p.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                continue
        if not recs:
            continue
        xs = [r.get("epoch", i) + 1 for i, r in enumerate(recs)]
        keys = [k for k in dict.fromkeys(k for r in recs for k in r)
                if k not in _SKIP_KEYS and any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool)
                                               for r in recs)]
        unit_keys = [k for k in keys if any(t in k for t in _SCORE_WORDS) and all(
            r.get(k) is None or (isinstance(r.get(k), (int, float)) and 0 <= r[k] <= 1) for r in recs)]
        loss_keys = [k for k in keys if k not in unit_keys]
        series = lambda ks: {k: [(x, r.get(k)) for x, r in zip(xs, recs)  # noqa: E731
                                 if isinstance(r.get(k), (int, float))] for k in ks}
        charts = []
        if loss_keys:
            charts.append(line_chart(series(loss_keys), f"{p.stem}: loss terms"))
        if unit_keys:
            charts.append(line_chart(series(unit_keys), f"{p.stem}: scores (0-1)", y_range=(0.0, 1.0)))
        secs = sum(float(r.get("seconds") or 0) for r in recs)
        charts_html = "".join(f'<div class="chart">{c}</div>' for c in charts if c)
        step = re.sub(r"_m\d+$", "", p.stem)  # (an ensemble member's log: its step's)
        why = (standing or {}).get(step)
        note = f'<p class="note stale">Stale ({esc(step)}: {esc(why)}).</p>' if why else ""
        blocks.append(f"<h3>{esc(p.stem)}</h3>{note}<p class='sub'>{len(recs)} epochs, {secs:.0f} s</p>"
                      f'<div class="charts">{charts_html}</div>')
    return "".join(blocks) or '<p class="note">training logs are empty</p>'


def section_examples(run_path: Path, cfg, per_side: int = 3, stale: dict[str, str] | None = None) -> str:
    if cfg is None:
        return '<p class="note">not available (no readable config.yaml)</p>'
    from histowsss.data.loading import load_image
    from histowsss.data.manifest import read_manifest
    from histowsss.data.masks import load_class_mask

    blocks = []
    colors = [cfg.data.classes.color(n) for n in cfg.data.classes.names]
    legend = "".join(f'<span><i class="sw" style="background:{esc(c)}"></i>{esc(n)}</span>'
                     for n, c in zip(cfg.data.classes.names, colors))
    for tag, pdir, title in (("seg", "pred", "Segmentation network (weak labels)"),
                             ("seg_supervised", "pred_supervised", "Supervised upper bound")):
        m = read_json(run_path / "metrics" / f"{tag}.json")
        if not m:
            if tag == "seg":
                blocks.append(f'<h3>{title}</h3><p class="note">not run (no metrics/seg.json)</p>')
            continue
        items = [r for r in m.get("per_image", []) if r.get("miou") is not None]
        if not items:
            blocks.append(f'<h3>{title}</h3><p class="note">no per-image scores</p>')
            continue
        try:
            by_name = {s.name: s for s in read_manifest(cfg.data)}
        except Exception as e:
            blocks.append(f'<h3>{title}</h3><p class="note">manifest not readable from here: {esc(e)}</p>')
            continue
        ranked = sorted(items, key=lambda r: r["miou"], reverse=True)
        best = ranked[:per_side]
        worst = [r for r in ranked[::-1][:per_side] if r not in best]
        rows_html = []
        for label, group in (("best", best), ("worst", worst)):
            for r in group:
                s = by_name.get(r["name"])
                pred_p = run_path / pdir / f"{r['name']}.png"
                if s is None or not pred_p.exists():
                    continue
                try:
                    img = load_image(s.image, cfg.data)
                    gt = load_class_mask(s, cfg.data)
                    from PIL import Image

                    with Image.open(pred_p) as im:
                        pred = np.asarray(im)
                except Exception as e:
                    rows_html.append(f'<div class="h">{esc(r["name"])}</div><div class="note" '
                                     f'style="grid-column:span 3">unreadable: {esc(e)}</div>')
                    continue
                cells = [png_data_uri(img), png_data_uri(colorize(pred, colors)), png_data_uri(colorize(gt, colors))]
                rows_html.append(f'<div><b>{label}</b><br>{esc(r["name"])}<br><span class="sub">{esc(r["split"])}, '
                                 f'mIoU {r["miou"]:.1f}</span></div>' +
                                 "".join(f'<img src="{c}" alt="{esc(r["name"])}">' for c in cells))
        head = ('<div class="h"></div><div class="h">image</div><div class="h">prediction</div>'
                '<div class="h">ground truth</div>')
        blocks.append(f'<h3>{title}</h3>{_stale_note(stale or {}, [tag])}<p class="legend">{legend}'
                      '<span><i class="sw" style="background:#fff"></i>'
                      f'ignore</span></p><div class="grid">{head}{"".join(rows_html)}</div>'
                      f'<p class="note">Ranked by per-image mIoU over {len(items)} test image(s).</p>')
    return "".join(blocks)


def section_timings(run_path: Path) -> str:
    from histowsss.steps.registry import PIPELINE

    sdir = run_path / "status"
    recs = {p.stem: read_json(p) for p in sorted(sdir.glob("*.json"))} if sdir.exists() else {}
    if not recs:
        return '<p class="note">no status records</p>'
    order = [s for s in PIPELINE if s in recs] + [s for s in recs if s not in PIPELINE]
    rows, total, lower_bound = [], 0.0, False
    for s in order:
        r = recs[s] or {}
        wall = r.get("wall_s")
        if not s.endswith("_supervised"):  # the upper bound is a reference, not part of the weak pipeline
            total += float(wall or 0)
            lower_bound = lower_bound or bool(r.get("wall_s_incomplete"))
        shown = wall
        if wall is not None and int(r.get("sessions", 1)) > 1:  # taken up again after a failed or killed session
            shown = (f"≥ {wall}" if r.get("wall_s_incomplete") else f"{wall}") + f" ({r['sessions']} sessions)"
        rows.append({"step": s, "state": r.get("state"), "wall time (s)": shown,
                     "started": r.get("first_started") or r.get("started"),  # (its first session's start)
                     "finished": r.get("finished"), "config hash": r.get("config_hash")})
    rows.append({"step": "total (weak pipeline)",
                 "wall time (s)": f"≥ {round(total, 2)}" if lower_bound else round(total, 2)})
    missing = [s for s in PIPELINE if s not in recs]
    note = f'<p class="note">not run: {esc(", ".join(missing))}</p>' if missing else ""
    return table(rows, ["step", "state", "wall time (s)", "started", "finished", "config hash"],
                 left=("step", "state", "started", "finished", "config hash")) + note


def build_report(run_path: Path | str) -> str:
    """The report's HTML text."""
    from histowsss.engine.standing import metrics_standing, steps_standing_or_none

    run_path = Path(run_path)
    cfg, err = _load_cfg(run_path)
    standing = steps_standing_or_none(cfg, run_path)  # (before the manifest path is resolved: one of the settings)
    stale = metrics_standing(cfg, run_path, standing)
    cfg = with_reachable_manifest(cfg, run_path)  # the Dataset and Examples sections read the same manifest
    names = list(cfg.data.classes.names) if cfg is not None else []
    if not names:
        for p in ("seg.json", "seg_supervised.json"):
            m = read_json(run_path / "metrics" / p)
            if m and m.get("all", {}).get("per_class"):
                names = list(m["all"]["per_class"])
                break
    body = {
        "Run": section_run(run_path, cfg, err),
        "Dataset": section_dataset(cfg),  # cfg's manifest already resolved above
        "Per-stage quality": section_quality(run_path, names, stale),
        "Model selection": section_tuning(run_path),
        "Training curves": section_curves(run_path, standing),
        "Examples": section_examples(run_path, cfg, stale=stale),
        "Timings": section_timings(run_path),
    }
    anchor = lambda s: s.lower().replace(" ", "-")  # noqa: E731
    nav = "".join(f'<a href="#{anchor(s)}">{esc(s)}</a>' for s in SECTIONS)
    title = f"histowsss report: {cfg.name if cfg is not None else run_path.name}"
    secs = "".join(f'<section id="{anchor(s)}"><h2>{esc(s)}</h2>{body[s]}</section>' for s in SECTIONS)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
            f'<p class="sub">{esc(run_path.resolve())} &middot; generated {esc(time.strftime("%Y-%m-%d %H:%M"))}</p>'
            f"<nav>{nav}</nav>{secs}</body></html>")


def is_report(path: Path) -> bool:
    """True when ``path`` holds a report this module wrote (its opening bytes)."""
    try:
        with open(path, "rb") as f:
            return b"<title>histowsss report: " in f.read(200)
    except OSError:
        return False


def write_report(run_path: Path | str, out: Path | str | None = None, overwrite: bool = False) -> Path:
    """Write ``report.html`` (or ``out``) atomically; returns its path. An earlier report is replaced; any other
    existing file only with ``overwrite``."""
    from histowsss.engine.atomic import remove_partial_files_of, write_text

    run_path = Path(run_path)
    if run_path.is_file():
        raise NotADirectoryError(f"{run_path}: a file (a config?), not a run folder: give the folder `histowsss run` "
                                 "wrote (runs/<name> unless --run said another)")
    if not run_path.is_dir():
        raise FileNotFoundError(f"{run_path}: run folder not found")
    from histowsss.export.model_bundle import MODEL_CARD

    if (run_path / MODEL_CARD).is_file():  # an export holds the network, not the run's data, curves and scores
        raise ValueError(f"{run_path}: an exported model (histowsss export), not a run folder: its MODEL.md is its "
                         "card (classes, resolution, training and test scores); `histowsss report` the run folder "
                         "it was exported from")
    out_path = Path(out) if out is not None else run_path / "report.html"
    if out_path.is_dir():
        raise FileExistsError(f"{out_path} is a folder; give a file name for the report (e.g. {out_path / 'report.html'})")
    if out_path.exists() and not overwrite and not is_report(out_path):
        raise FileExistsError(f"{out_path} exists and is not a histowsss report; choose another --out, or pass "
                              "--overwrite to replace it")
    remove_partial_files_of(out_path)  # (a report killed while it was written left its temporary file)
    write_text(out_path, build_report(run_path))
    return out_path
