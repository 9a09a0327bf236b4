"""Step make_sem_seg_labels (IRN): semantic pseudo-masks by a boundary-guided random walk of the CAMs.

For every IRN image (train + val by default):

1. IRN inference on the image (boundary logits averaged over a horizontal flip, displacement from the image
   itself), saved as ``irn/<name>.npz`` (``boundary`` (h, w), ``dp`` (2, h, w), float16, stride-4 grid) for
   make_ins_seg_labels.
2. The per-class max-normalised CAMs of the classes the image is labelled with are propagated with the
   sparse random walk :func:`histowsss.ops.random_walk.random_walk` (radius 5, beta 10, 2**8 steps; memory
   linear in pixels, never the dense (HW)^2 matrix).
3. Post-processing as the reference ``step/make_sem_seg_labels.py``: bilinear x4 upsampling cropped to the
   image, division by the global maximum, a constant background score ``sem_seg.bg_threshold`` (0.25)
   prepended AFTER the walk (the reference walks the foreground CAMs only), argmax -> class ids.
   When background has its own CAM channel (``offset`` mode), that channel is walked with the others, each
   walked map is divided by its own maximum and the background map is shifted by ``sem_seg.bg_offset``
   (default: the offset eval_cam chose on train) before the argmax, i.e. eval_cam's rule on walked maps.
   With no background class at all (``argmax`` mode, e.g. tissue types) every labelled channel is walked, each
   divided by its own maximum, and the argmax over them is the label.
   With ``eval_cam.label_gating: patch`` the patch labels gate the CAMs before the walk and the argmax after
   it (:mod:`histowsss.data.label_gate`).

Writes ``pseudo/<name>.png`` (uint8 class ids). An image labelled with no foreground class, or whose walk
carries no foreground evidence at all (e.g. an all-zero CAM), becomes all background and is counted in the
status record (``no_foreground_label`` / ``no_confident_foreground``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
from rich.progress import track

from histowsss.config import RunConfig
from histowsss.data.label_gate import cell_centres, force_single, present_classes, sample_gate, uses_patch_gate
from histowsss.data.loading import load_image
from histowsss.data.manifest import Sample
from histowsss.data.points import apply_points, point_map, sample_points, uses_points
from histowsss.data.transforms import Normalizer
from histowsss.engine.atomic import write_npz, write_png
from histowsss.engine.run_dir import RunDir, StepError
from histowsss.evaluation.cam_labels import normalize_cams
from histowsss.ops.ir_labels import IGNORE
from histowsss.steps import train_irn
from histowsss.steps.irn_common import (STRIDE, background_id, cam_class_ids, cam_mode, fresh_dir, irn_samples,
                                        load_cam, load_irn, presence, read_png, require_cams, resuming)

if TYPE_CHECKING:
    import torch

STEP = "make_sem_seg_labels"
BASE_SECTIONS = ("data", "backbone", "train_cam", "make_cam", "ir_label", "points", "train_irn", "sem_seg")


def uses_eval_cam(cfg: RunConfig) -> bool:
    """True when the labels depend on eval_cam's section: its chosen offset, or its per-patch label gating."""
    return (cam_mode(cfg) == "offset" and cfg.sem_seg.bg_offset == "eval_cam") or uses_patch_gate(cfg)


def config_hash(cfg: RunConfig) -> str:
    """Hash of the config sections this step depends on (eval_cam too when its offset is used)."""
    return cfg.step_hash(*BASE_SECTIONS, *(("eval_cam",) if uses_eval_cam(cfg) else ()))


def requires(cfg: RunConfig) -> list[tuple[str, str]]:
    """The finished steps (status record, config hash) this step reads: checked before a run starts."""
    from histowsss.steps import eval_cam, make_cam

    need = [("train_irn", train_irn.config_hash(cfg)), ("make_cam", make_cam.config_hash(cfg))]
    if cam_mode(cfg) == "offset" and cfg.sem_seg.bg_offset == "eval_cam":
        need.append(("eval_cam", eval_cam.config_hash(cfg)))
    return need


def background_value(cfg: RunConfig, run: RunDir) -> float:
    """The constant background score (threshold mode) or background offset (offset mode); 0 in argmax mode."""
    if cam_mode(cfg) == "argmax":
        return 0.0
    if cam_mode(cfg) == "threshold":
        return cfg.sem_seg.bg_threshold
    if cfg.sem_seg.bg_offset != "eval_cam":
        return float(cfg.sem_seg.bg_offset)
    from histowsss.steps import eval_cam

    run.require("eval_cam", eval_cam.config_hash(cfg), STEP)
    path = run.path / "metrics" / "cam.json"
    try:
        return float(json.loads(path.read_text())["chosen_value"])
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise StepError(f"{path}: cannot read eval_cam's chosen offset ({e}); re-run eval_cam, "
                        "or set sem_seg.bg_offset to a number") from None


def walk_scores(cam_norm: torch.Tensor, present: np.ndarray, class_ids: list[int], background: int, mode: str,
                boundary: torch.Tensor, size: tuple[int, int], radius: int = 5, beta: float = 10.0,
                exp_times: int = 8, propagate: bool = True) -> tuple[torch.Tensor, np.ndarray] | None:
    """Walked, upsampled, normalised class scores (C, H, W) and their class ids, before the background value.

    ``propagate=False`` skips the walk (the CAMs themselves, same post-processing: a baseline for sweeps).

    ``None`` when the image has no foreground label or its walk carries no foreground evidence.
    Threshold mode: foreground channels only, divided by their global maximum. Offset mode: every labelled
    channel (background included), each divided by its own maximum. Argmax mode (no background class): every
    labelled channel, each divided by its own maximum.
    """
    import torch.nn.functional as F

    from histowsss.ops.random_walk import random_walk

    ids = np.asarray(class_ids)
    fg_present = [i for i in range(len(class_ids)) if present[i] and (mode == "argmax" or class_ids[i] != background)]
    if not fg_present:
        return None
    chans = fg_present if mode in ("threshold", "argmax") else [i for i in range(len(class_ids)) if present[i]]
    rw = (random_walk(cam_norm[chans].contiguous(), boundary, radius=radius, beta=beta, exp_times=exp_times)
          if propagate else cam_norm[chans].float())
    up = F.interpolate(rw[None], scale_factor=STRIDE, mode="bilinear", align_corners=False)[0, :, : size[0], : size[1]]
    keys = ids[chans]
    if mode == "threshold":
        mx = float(up.max())
        if not np.isfinite(mx) or mx <= 1e-8:
            return None
        return up / mx, keys
    mx = up.flatten(1).amax(1).clamp_min(1e-8)[:, None, None]
    fg_rows = [j for j, k in enumerate(keys) if mode == "argmax" or k != background]
    if float(up[fg_rows].max()) <= 1e-8:
        return None
    return up / mx, keys


def labels_from_scores(scores: torch.Tensor, keys: np.ndarray, background: int, mode: str,
                       bg_value: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """(H, W) uint8 class ids: argmax after the constant background score (threshold) or offset (offset mode).

    ``allowed`` (C, H, W), by class id: the patch-label gate; classes a pixel may not take are left out of its
    argmax, and pixels with a single allowed class get it.
    """
    import torch

    if mode == "threshold":
        scores = torch.cat([torch.full_like(scores[:1], bg_value), scores])
        keys = np.concatenate([[background], keys])
    elif mode == "offset":
        b = [j for j, k in enumerate(keys) if k == background]
        if b:
            scores = scores.clone()
            scores[b[0]] += bg_value
    # argmax mode (no background class): the scores of the labelled classes as they are
    lab = keys[scores.argmax(0).cpu().numpy()].astype(np.uint8)
    if allowed is None:
        return lab
    gate = torch.from_numpy(allowed[keys]).to(scores.device)
    gated = force_single(keys[scores.masked_fill(~gate, float("-inf")).argmax(0).cpu().numpy()].astype(np.uint8),
                         allowed)
    return np.where(gated == 255, lab, gated).astype(np.uint8)  # no allowed class scored: the ungated label


def walk_labels(cam_norm: torch.Tensor, present: np.ndarray, class_ids: list[int], background: int, mode: str,
                boundary: torch.Tensor, size: tuple[int, int], bg_value: float, radius: int = 5, beta: float = 10.0,
                exp_times: int = 8, allowed: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Pseudo-label map (H, W) uint8 and whether it has foreground, from normalised CAMs (K, h, w).

    ``allowed``: the patch-label gate at image resolution (see :func:`labels_from_scores`); the caller also
    zeroes each CAM channel where its class is not allowed, so the walk does not spread it from there.
    """
    got = walk_scores(cam_norm, present, class_ids, background, mode, boundary, size, radius, beta, exp_times)
    if got is None:  # no evidence to walk: background, or with no background class ignore (nothing is known, as
        # cam_to_ir_label marks it; train_seg skips ignore pixels)
        fill = IGNORE if mode == "argmax" else background
        lab = np.full(size, fill, np.uint8)
        if allowed is not None:
            lab = np.where((forced := force_single(lab, allowed)) == 255, lab, forced).astype(np.uint8)
        return lab, bool(np.any(lab != (IGNORE if mode == "argmax" else background)))  # as a resumed image counts
    lab = labels_from_scores(got[0], got[1], background, mode, bg_value, allowed)
    return lab, mode == "argmax" or bool(np.any(lab != background))


def gate_cams(cfg: RunConfig, sample: Sample, cam_norm: np.ndarray, present: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """With patch-label gating: each normalised CAM channel (K, h, w) zeroed where its class is refused, the
    channels allowed somewhere, and the gate at image resolution (for the argmax); unchanged otherwise."""
    allowed = sample_gate(cfg, sample)
    if allowed is None:
        return cam_norm, present, None
    ids = cam_class_ids(cfg)
    return cam_norm * cell_centres(allowed, cam_norm.shape[1:], STRIDE)[ids], present_classes(allowed, ids), allowed


def seed_cams(cam_norm: np.ndarray, present: np.ndarray, class_ids: list[int], clicks: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Clicks as random-walk seeds: on a click's cells (``clicks``, class ids on the CAM grid, 255 elsewhere) the
    normalised CAM (K, h, w) of the click's class is 1 and every other channel 0 (a background click in
    absence mode zeroes all channels: background by the threshold); a clicked class becomes present."""
    out = cam_norm.copy()
    on = clicks != 255
    present = present.copy()
    for ch, cid in enumerate(class_ids):
        out[ch][on] = 0.0
        mine = clicks == cid
        out[ch][mine] = 1.0
        present[ch] = present[ch] or bool(mine.any())
    return out, present


def _process_image(cfg: RunConfig, run: RunDir, model, norm: Normalizer, device: torch.device, sample: Sample,
                   present: np.ndarray, cam_hash: str, bg_value: float) -> bool:
    """IRN inference + random walk for one image; writes irn/<name>.npz and pseudo/<name>.png; returns has_fg."""
    import torch

    ss = cfg.sem_seg
    cam, _, size = load_cam(run, sample.name, cam_hash)
    img = train_irn.pad_to_multiple(load_image(sample.image, cfg.data), STRIDE)
    x = norm(torch.from_numpy(np.require(img, requirements="W"))[None].to(device))  # (a read-only image)
    boundary, dp = model.infer(x, flip=ss.flip)
    if tuple(boundary.shape) != cam.shape[1:]:
        raise StepError(f"{sample.name}: IRN grid {tuple(boundary.shape)} != CAM grid {cam.shape[1:]}")
    write_npz(run.path / "irn" / f"{sample.name}.npz", boundary=boundary.cpu().numpy().astype(np.float16),
              dp=dp.cpu().numpy().astype(np.float16))
    cam_norm, present, allowed = gate_cams(cfg, sample, normalize_cams(cam), present)
    clicks = sample_points(cfg, sample) if uses_points(cfg, "sem_seg") else []
    if clicks:
        cam_norm, present = seed_cams(cam_norm, present, cam_class_ids(cfg),
                                      point_map(clicks, cam_norm.shape[1:], cfg.data.image_scale / STRIDE,
                                                cfg.points.radius))
    lab, has_fg = walk_labels(torch.from_numpy(cam_norm).to(device), present, cam_class_ids(cfg),
                              background_id(cfg), cam_mode(cfg), boundary.float(), size, bg_value, ss.radius,
                              ss.beta, ss.exp_times, allowed)
    if clicks:
        lab = apply_points(lab, point_map(clicks, lab.shape, cfg.data.image_scale, cfg.points.radius))
        argmax = cam_mode(cfg) == "argmax"  # no background class: any known pixel counts
        has_fg = has_fg or bool(np.any((lab != IGNORE) & ((lab != background_id(cfg)) | argmax)))
    write_png(run.path / "pseudo" / f"{sample.name}.png", lab)
    return has_fg


def run(cfg: RunConfig, run: RunDir, overwrite: bool = False) -> dict:
    """Write irn/<name>.npz and pseudo/<name>.png for every IRN image."""
    from histowsss.engine.device import resolve_device

    h = config_hash(cfg)
    resume = resuming(run, STEP, h, overwrite)
    with run.step(STEP, h, overwrite=overwrite) as info:
        run.require("train_irn", train_irn.config_hash(cfg), STEP)
        samples = irn_samples(cfg)
        cam_hash = require_cams(cfg, run, samples, STEP)
        bg_value = background_value(cfg, run)
        device = resolve_device(cfg.device)
        model = load_irn(cfg, run, device)
        norm = Normalizer(model.backbone.mean, model.backbone.std)
        pres = presence(cfg, samples)
        bg = background_id(cfg)
        fresh_dir(run, "pseudo", keep=resume)
        fresh_dir(run, "irn", keep=resume)
        computed = reused = 0
        no_label: list[str] = []
        no_fg: list[str] = []
        for s, present in track(list(zip(samples, pres)), description=STEP):
            p_png, p_npz = run.path / "pseudo" / f"{s.name}.png", run.path / "irn" / f"{s.name}.npz"
            argmax = cam_mode(cfg) == "argmax"
            if resume and p_png.exists() and p_npz.exists():
                # as a fresh image counts: argmax mode has foreground unless the map is all ignore
                has_fg = bool(np.any(read_png(p_png) != (IGNORE if argmax else bg)))
                reused += 1
            else:
                has_fg = _process_image(cfg, run, model, norm, device, s, present, cam_hash, bg_value)
                computed += 1
            if not any(present[i] for i, c in enumerate(cam_class_ids(cfg)) if argmax or c != bg):
                no_label.append(s.name)
            elif not has_fg:
                no_fg.append(s.name)
        info.update(outputs=["pseudo/", "irn/"], images=len(samples), computed=computed, reused=reused,
                    background_value=bg_value, no_foreground_label=len(no_label),
                    no_confident_foreground=len(no_fg), no_confident_foreground_images=no_fg[:50])
        return {"images": len(samples), "computed": computed, "reused": reused,
                "no_foreground_label": len(no_label), "no_confident_foreground": len(no_fg)}
