"""Step cam_to_ir_label (IRN): confident foreground / background / ignore maps on the stride-4 CAM grid.

Reads ``cams/<name>.npz`` of the IRN images (train + val by default), writes ``ir_labels/<name>.png`` (uint8
class ids, 255 = ignore; with ``ir_label.crf`` also ``ir_labels_crf/<name>.png``) and ``metrics/ir_label.json``:
a sweep of (conf_fg, conf_bg) pairs scored against the train masks (precision of the confident pixels and
coverage, on the stride-4 grid with the ground truth sampled at cell centres) and the pair used.
The labelling rules are in :mod:`histowsss.ops.ir_labels`; with ``eval_cam.label_gating: patch`` the labels
are then gated by the patch labels (:mod:`histowsss.data.label_gate`); clicks (``points``, with ``ir_label`` in
``points.use_in``) then set their disks to their class (:mod:`histowsss.data.points`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from rich.progress import track

from histowsss.config import RunConfig
from histowsss.data.label_gate import cell_centres, force_single, present_classes
from histowsss.data.loading import load_image
from histowsss.data.manifest import Sample
from histowsss.data.masks import load_class_mask
from histowsss.data.points import apply_points, point_map, sample_points, uses_points
from histowsss.engine.atomic import write_json, write_png
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.evaluation.cam_labels import normalize_cams
from histowsss.ops.ir_labels import IGNORE, combine, confident_maps
from histowsss.steps.irn_common import (STRIDE, background_id, cam_class_ids, cam_mode, fresh_dir, gate_on_grid,
                                        gate_sections, grid_size, irn_samples, load_cam, presence, read_png,
                                        require_cams, resuming)

STEP = "cam_to_ir_label"


def config_hash(cfg: RunConfig) -> str:
    """Hash of the config sections this step depends on."""
    return cfg.step_hash("data", "backbone", "train_cam", "make_cam", "ir_label", "points", *gate_sections(cfg))


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps (status record, config hash) this step reads: checked before a run starts."""
    from histowsss.steps import make_cam

    return [("make_cam", make_cam.config_hash(cfg))]


def label_dir_name(cfg: RunConfig) -> str:
    """Folder of the labels the next steps train on (the CRF ones when the CRF is enabled)."""
    return "ir_labels_crf" if cfg.ir_label.crf else "ir_labels"


def grid_gt(gt: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Ground truth sampled at the centres of the stride-4 cells."""
    return cell_centres(gt, grid, STRIDE)


class LabelScore:
    """Confusion of confident labels against ground truth; predicted column ``C`` = ignore."""

    def __init__(self, n_classes: int):
        self.c = n_classes
        self.cm = np.zeros((n_classes, n_classes + 1), np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        valid = gt != IGNORE
        g = gt[valid].astype(np.int64)
        p = pred[valid].astype(np.int64)
        p = np.where(p == IGNORE, self.c, p)
        self.cm += np.bincount(g * (self.c + 1) + p, minlength=self.c * (self.c + 1)).reshape(self.c, self.c + 1)

    def summary(self, names: list[str], background: int | None) -> dict:
        """Precision and coverage of the confident pixels, overall and per class; ``fg_coverage`` over the classes
        but ``background`` (None: every class)."""
        cm = self.cm.astype(np.float64)
        total = cm.sum()
        conf = cm[:, : self.c]
        n_conf = conf.sum()
        tp = np.diag(conf)
        pred = conf.sum(axis=0)
        support = cm.sum(axis=1)
        per_class = {}
        precs = []
        for k, n in enumerate(names):
            prec = tp[k] / pred[k] if pred[k] else None
            if prec is not None:
                precs.append(prec)
            per_class[n] = {"precision": _pct(prec), "coverage": _pct(tp[k] / support[k] if support[k] else None),
                            "confident_pixels": int(pred[k]), "support": int(support[k])}
        fg = [k for k in range(self.c) if k != background]
        fg_support = support[fg].sum()
        return {"precision": _pct(tp.sum() / n_conf if n_conf else None),
                "class_precision": _pct(float(np.mean(precs)) if precs else None),
                "coverage": _pct(n_conf / total if total else None),
                "fg_coverage": _pct(tp[fg].sum() / fg_support if fg_support else None),
                "per_class": per_class}


def _pct(x) -> float | None:
    return None if x is None else round(100 * float(x), 2)


def _labels(cfg: RunConfig, cam_norm: np.ndarray, present: np.ndarray, conf_fg: float, conf_bg: float):
    return confident_maps(cam_norm, present, cam_class_ids(cfg), background_id(cfg), cam_mode(cfg), conf_fg,
                          conf_bg, cfg.ir_label.margin)


def _crf(cfg: RunConfig, sample: Sample, maps: tuple[np.ndarray, np.ndarray], grid: tuple[int, int]) -> np.ndarray:
    """CRF-refined confident map: both maps are refined on the grid-sized image, then combined."""
    from histowsss.ops.crf import crf_refine_labels

    img = load_image(sample.image, cfg.data)
    small = np.asarray(Image.fromarray(img).resize((grid[1], grid[0]), Image.BOX))
    bg = background_id(cfg)
    ids = sorted({bg} | set(np.unique(maps[0]).tolist()) | set(np.unique(maps[1]).tolist()))
    lut = np.zeros(256, np.int64)
    lut[ids] = np.arange(len(ids))
    out = []
    for m in maps:
        r = crf_refine_labels(small, lut[m], len(ids), iterations=cfg.ir_label.crf_iterations,
                              gt_prob=cfg.ir_label.crf_gt_prob)
        out.append(np.asarray(ids, np.uint8)[r])
    return combine(out[0], out[1], bg)


def _process_image(cfg: RunConfig, run: RunDir, sample: Sample, present: np.ndarray, cam_hash: str,
                   conf_fg: float, conf_bg: float) -> dict[str, np.ndarray]:
    """Compute and write the label map(s) of one image; returns them ({'ir_labels': ..., 'ir_labels_crf': ...})."""
    cam, _, size = load_cam(run, sample.name, cam_hash)
    gate = gate_on_grid(cfg, sample, cam.shape[1:])
    if gate is not None:
        present = present_classes(gate, cam_class_ids(cfg))
    maps = _labels(cfg, normalize_cams(cam), present, conf_fg, conf_bg)
    out = {"ir_labels": combine(maps[0], maps[1], background_id(cfg))}
    if cfg.ir_label.crf:
        out["ir_labels_crf"] = _crf(cfg, sample, maps, grid_size(size))
    if gate is not None:
        out = {k: force_single(v, gate, IGNORE) for k, v in out.items()}
    if uses_points(cfg, "ir_label"):  # clicks are confident labels whatever the CAM says
        pm = point_map(sample_points(cfg, sample), cam.shape[1:], cfg.data.image_scale / STRIDE, cfg.points.radius)
        out = {k: apply_points(v, pm) for k, v in out.items()}
    for folder, lab in out.items():
        write_png(run.path / folder / f"{sample.name}.png", lab)
    return out


def _sweep(cfg: RunConfig, run: RunDir, items: list[tuple[Sample, np.ndarray]], cam_hash: str,
           pairs: list[tuple[float, float]]) -> list[dict]:
    names = cfg.data.classes.names
    bg = background_id(cfg)
    scores = [LabelScore(len(names)) for _ in pairs]
    for s, present in track(items, description="ir_label sweep"):
        cam, _, size = load_cam(run, s.name, cam_hash)
        cam_norm = normalize_cams(cam)
        gt = grid_gt(load_class_mask(s, cfg.data), cam.shape[1:])
        gate = gate_on_grid(cfg, s, cam.shape[1:])
        if gate is not None:
            present = present_classes(gate, cam_class_ids(cfg))
        for sc, (fg, bgt) in zip(scores, pairs):
            lab = combine(*_labels(cfg, cam_norm, present, fg, bgt), bg)
            sc.update(gt, lab if gate is None else force_single(lab, gate, IGNORE))
    argmax = cam_mode(cfg) == "argmax"  # conf_bg unused there
    return [{"conf_fg": fg, "conf_bg": None if argmax else bgt,
             **sc.summary(names, cfg.data.classes.background_index)} for (fg, bgt), sc in zip(pairs, scores)]


def choose_pair(sweep: list[dict], min_precision: float) -> dict:
    """Largest coverage among pairs with class-mean precision >= min_precision, else the most precise pair."""
    ok = [r for r in sweep if r["class_precision"] is not None and r["class_precision"] >= 100 * min_precision]
    if ok:
        return max(ok, key=lambda r: (r["coverage"] or 0, r["class_precision"]))
    return max(sweep, key=lambda r: (r["class_precision"] or -1, r["coverage"] or 0))


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Write ir_labels/ (and ir_labels_crf/) and metrics/ir_label.json."""
    il = cfg.ir_label
    h = config_hash(cfg)
    resume = resuming(run, STEP, h, overwrite)
    with run.step(STEP, h, overwrite=overwrite) as info:
        samples = irn_samples(cfg)
        cam_hash = require_cams(cfg, run, samples, STEP)
        argmax = cam_mode(cfg) == "argmax"
        if il.crf and argmax:
            raise StepError("ir_label.crf needs a background class: with data.classes.background null the confident "
                            "maps hold ignore pixels that the CRF cannot take as a label; set ir_label.crf=false")
        if il.crf:
            from histowsss.ops.crf import require_crf

            require_crf()
        pres = presence(cfg, samples)
        names = cfg.data.classes.names
        bg = background_id(cfg)
        train = [(s, p) for s, p in zip(samples, pres) if s.split in cfg.data.train_splits and s.mask is not None]
        pairs = list(dict.fromkeys([tuple(p) for p in il.sweep] + [(il.conf_fg, il.conf_bg)]))
        if argmax:  # conf_bg is unused: one row per conf_fg (the margin)
            pairs = [(fg, il.conf_bg) for fg in dict.fromkeys(fg for fg, _ in pairs)]
        sweep = _sweep(cfg, run, train, cam_hash, pairs) if train else []
        if il.select == "sweep" and sweep:
            best = choose_pair(sweep, il.min_precision)
            conf_fg, conf_bg = best["conf_fg"], best["conf_bg"]
            how = (f"sweep: largest coverage with class-mean precision >= {100 * il.min_precision:g}% on "
                   f"{len(train)} train masks (else the most precise pair)")
        else:
            conf_fg, conf_bg = il.conf_fg, il.conf_bg
            how = "fixed (ir_label.conf_fg / conf_bg)" + ("" if sweep else "; no train masks to sweep on")
        folders = ["ir_labels"] + (["ir_labels_crf"] if il.crf else [])
        for f in folders:
            fresh_dir(run, f, keep=resume)
        scores = {f: LabelScore(len(names)) for f in folders}
        computed = reused = 0
        no_fg: list[str] = []
        bg_only = 0
        for s, present in track(list(zip(samples, pres)), description=STEP):
            paths = {f: run.path / f / f"{s.name}.png" for f in folders}
            if resume and all(p.exists() for p in paths.values()):
                labs = {f: read_png(p) for f, p in paths.items()}
                reused += 1
            else:
                labs = _process_image(cfg, run, s, present, cam_hash, conf_fg, conf_bg)
                computed += 1
            has_fg_label = any(present[i] for i, c in enumerate(cam_class_ids(cfg)) if argmax or c != bg)
            final = labs[folders[-1]]
            if not has_fg_label:
                bg_only += 1
            elif not np.any(((final != bg) | argmax) & (final != IGNORE)):  # argmax: no confident pixel at all
                no_fg.append(s.name)
            if s.split in cfg.data.train_splits and s.mask is not None:
                gt = grid_gt(load_class_mask(s, cfg.data), final.shape)
                for f in folders:
                    scores[f].update(gt, labs[f])
        result = {"mode": cam_mode(cfg), "select": how,
                  "chosen": {"conf_fg": conf_fg, "conf_bg": None if argmax else conf_bg,
                             "margin": il.margin if cam_mode(cfg) == "offset" else None},
                  **({"note": "argmax mode (no background class): conf_fg is the margin by which the best labelled "
                              "class beats the second"} if argmax else {}),
                  "resolution": "stride-4 grid, ground truth sampled at cell centres; train images only",
                  "train_images": len(train), "sweep": sweep,
                  "chosen_metrics": {f: scores[f].summary(names, cfg.data.classes.background_index)
                                     for f in folders} if train else {},
                  "images": len(samples), "background_only_images": bg_only,
                  "no_confident_foreground": {"count": len(no_fg), "images": no_fg[:50]}}
        write_json(run.sub("metrics") / "ir_label.json", result)
        info.update(outputs=[f + "/" for f in folders] + ["metrics/ir_label.json"], images=len(samples),
                    computed=computed, reused=reused, conf_fg=conf_fg, conf_bg=None if argmax else conf_bg,
                    no_confident_foreground=len(no_fg), background_only_images=bg_only)
        return result
