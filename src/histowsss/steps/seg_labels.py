"""The labels train_seg learns from: which source (IRN pseudo-masks, CAM labels, a folder of PNGs, ground truth)
and how the weak ones are filtered (boundary band, patch veto, clicks) before training.

Every function returns class-id maps (uint8, 255 = ignore) at the data.image_scale resolution, one per sample.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from histowsss.config import RunConfig
from histowsss.data.io import image_stem, resize
from histowsss.data.manifest import Sample
from histowsss.data.masks import IGNORE, load_class_mask
from histowsss.engine.atomic import read_npz
from histowsss.engine.run_dir import RunDir, StepError

CONSUMER = "train_seg"  # the step that reads these labels (named in the errors of missing inputs)


def train_splits(cfg: RunConfig) -> list[str]:
    """The splits train_seg trains on: train_seg.splits, else data.train_splits + data.val_splits."""
    d = cfg.data
    return list(cfg.train_seg.splits or dict.fromkeys(d.train_splits + d.val_splits))


def label_source(cfg: RunConfig, run: RunDir) -> str:
    """'ground_truth', 'pseudo', 'cam' or 'folder', checking that the producing step finished with this config."""
    ts = cfg.train_seg
    if ts.supervised:
        return "ground_truth"
    if ts.labels == "folder":
        return "folder"
    from histowsss.steps import eval_cam, eval_sem_seg, make_sem_seg_labels

    if ts.labels == "best_on_train" and run.is_done("eval_sem_seg", eval_sem_seg.config_hash(cfg)):
        # whichever of IRN pseudo-masks and CAM labels has the higher mIoU on the training images (metrics/sem_seg.json;
        # over several splits, e.g. train and val, each split's mIoU weighted by its images)
        m = json.loads((run.path / "metrics" / "sem_seg.json").read_text())
        if not m["splits"]:  # no training image has a mask: nothing to compare, IRN's pseudo-masks as pseudo_or_cam
            run.require("make_sem_seg_labels", make_sem_seg_labels.config_hash(cfg), CONSUMER)
            return "pseudo"
        weights = [max(int(e.get("images") or 1), 1) for e in m["splits"].values()]
        pseudo = [e["irn_pseudo"]["miou"] for e in m["splits"].values()]
        cam = [(e.get("cam") or {}).get("miou") for e in m["splits"].values()]
        if None in cam or float(np.average(pseudo, weights=weights)) >= float(np.average(cam, weights=weights)):
            return "pseudo"
        run.require("eval_cam", eval_cam.config_hash(cfg), CONSUMER)
        return "cam"
    if ts.labels in ("pseudo", "pseudo_or_cam", "best_on_train"):  # best_on_train without eval_sem_seg: as pseudo_or_cam
        h = make_sem_seg_labels.config_hash(cfg)
        if ts.labels == "pseudo" or run.is_done("make_sem_seg_labels", h):
            run.require("make_sem_seg_labels", h, CONSUMER)
            return "pseudo"
    run.require("eval_cam", eval_cam.config_hash(cfg), CONSUMER)
    return "cam"


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im)


def folder_label_path(cfg: RunConfig, sample: Sample) -> Path | None:
    """The label PNG of ``sample`` in train_seg.label_dir: ``<name>.png`` or ``<name>_labels.png`` (what
    ``histowsss predict`` writes), ``name`` being the manifest name or the image file's stem; None if absent."""
    d = Path(cfg.train_seg.label_dir or "")
    for stem in dict.fromkeys([sample.name, image_stem(sample.image), Path(sample.image).stem]):
        for p in (d / f"{stem}.png", d / f"{stem}_labels.png"):
            if p.exists():
                return p
    return None


def folder_fingerprint(cfg: RunConfig) -> str:
    """Hash of the label folder's PNG names, sizes and modification times (new labels = a new training run).
    Hidden files (an atomic write's temporary ``.<name>.partial.png``, macOS ``._<name>.png``) do not count."""
    d = Path(cfg.train_seg.label_dir or "")
    if not d.is_dir():
        return "missing:" + str(d)
    items = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in d.glob("*.png")
                   if not f.name.startswith("."))
    return hashlib.sha256(repr((str(d.resolve()), items)).encode()).hexdigest()[:12]


def folder_labels(cfg: RunConfig, samples: list[Sample]) -> list[np.ndarray]:
    """Class-id PNGs of ``samples`` from train_seg.label_dir, nearest-resized from level 0 to data.image_scale."""
    from PIL import Image

    d = Path(cfg.train_seg.label_dir or "")
    if not d.is_dir():
        raise StepError(f"{d}: train_seg.label_dir is not a folder; point it at the class-id PNGs "
                        "(e.g. the --out folder of `histowsss predict` run on the training images)")
    scale = cfg.data.image_scale
    out = []
    for s in samples:
        p = folder_label_path(cfg, s)
        if p is None:
            raise StepError(f"{d}: no label for training image {s.name} ({s.name}.png or {s.name}_labels.png); "
                            f"predict or export every image of the splits {train_splits(cfg)}, or set train_seg.splits")
        lab = _read_png(p)
        if lab.ndim != 2:
            raise StepError(f"{p}: labels must be single-channel class ids, got shape {lab.shape}")
        with Image.open(s.image) as im:
            w0, h0 = im.size
        if scale != 1.0 and lab.shape == (h0, w0):
            lab = resize(lab.astype(np.uint8), scale, nearest=True)
        out.append(lab.astype(np.uint8))
    return out


def cam_labels(cfg: RunConfig, run: RunDir, samples: list[Sample]) -> list[np.ndarray]:
    """eval_cam's label-gated CAM label maps (its chosen threshold / offset, its label_gating) at image
    resolution."""
    from histowsss.data.crops import image_targets
    from histowsss.data.label_gate import present_classes, sample_gate
    from histowsss.evaluation.cam_labels import cams_to_labels, normalize_cams, upsample_cam
    from histowsss.steps.common import check_cam_hash, output_classes
    from histowsss.steps.make_cam import STRIDE, cam_path
    from histowsss.steps.make_cam import config_hash as make_cam_hash

    metrics = json.loads((run.path / "metrics" / "cam.json").read_text())
    mode, value = metrics["mode"], float(metrics["chosen_value"])
    names = cfg.data.classes.names
    ids = [names.index(n) for n in output_classes(cfg)]
    bg = cfg.data.classes.background_index or 0
    present = image_targets(samples, cfg.data)[:, ids] > 0.5
    expected = make_cam_hash(cfg)
    out = []
    for s, pr in zip(samples, present):
        p = cam_path(run, s.name)
        if not p.exists():
            raise StepError(f"{p}: CAM missing; make_cam.splits must include the train_seg splits {train_splits(cfg)}")
        z = read_npz(p, "delete it and re-run make_cam with --overwrite")
        check_cam_hash(z, p, expected)
        cam, size = z["cam"].astype(np.float32), (int(z["size"][0]), int(z["size"][1]))
        allowed = sample_gate(cfg, s)
        if allowed is not None:
            pr = present_classes(allowed, ids)
        out.append(cams_to_labels(normalize_cams(upsample_cam(cam, size, STRIDE)), pr, ids, bg, mode, value,
                                  allowed))
    return out


def load_labels(cfg: RunConfig, run: RunDir, samples: list[Sample], source: str) -> list[np.ndarray]:
    """Class-id maps (uint8, 255 = ignore) of ``samples`` from ``source``."""
    if source == "ground_truth":
        missing = [s.name for s in samples if s.mask is None]
        if missing:
            raise StepError(f"train_seg.supervised needs a mask for every training image; {len(missing)} have none "
                            f"(e.g. {', '.join(missing[:3])}); fill the {cfg.data.mask_column!r} column or set "
                            "train_seg.splits to splits with masks")
        return [load_class_mask(s, cfg.data) for s in samples]
    if source == "cam":
        return weak_label_filters(cfg, samples, cam_labels(cfg, run, samples))
    if source == "folder":
        return weak_label_filters(cfg, samples, folder_labels(cfg, samples))
    out = []
    for s in samples:
        p = run.path / "pseudo" / f"{s.name}.png"
        if not p.exists():
            raise StepError(f"{p}: pseudo-mask missing; make_sem_seg_labels must cover the train_seg splits "
                            f"{train_splits(cfg)} (ir_label.splits), or set train_seg.labels=cam")
        lab = _read_png(p)
        if lab.ndim != 2:
            raise StepError(f"{p}: pseudo-mask must be single-channel class ids, got shape {lab.shape}")
        out.append(lab.astype(np.uint8))
    return weak_label_filters(cfg, samples, out)


def weak_label_filters(cfg: RunConfig, samples: list[Sample], labels: list[np.ndarray]) -> list[np.ndarray]:
    """The weak labels as train_seg learns them: the boundary band (``train_seg.boundary_ignore``), then the patch
    veto (``train_seg.patch_veto``), each turning pixels into ignore, then the clicks (:func:`click_labels`).
    Returns new arrays."""
    r = cfg.train_seg.boundary_ignore
    if r:
        from histowsss.ops.label_band import ignore_boundary_band

        labels = [ignore_boundary_band(lab, r, IGNORE) for lab in labels]
    return click_labels(cfg, samples, veto_labels(cfg, samples, labels))


def click_labels(cfg: RunConfig, samples: list[Sample], labels: list[np.ndarray]) -> list[np.ndarray]:
    """Clicks (``points``, with ``train_seg`` in ``points.use_in``) set their disks to their class in the weak
    labels, at the labels' own resolution. Returns new arrays."""
    from histowsss.data.points import apply_points, point_map, sample_points, uses_points

    if not uses_points(cfg, "train_seg"):
        return labels
    from histowsss.data.io import image_size

    out = []
    for s, lab in zip(samples, labels):
        clicks = sample_points(cfg, s)
        if not clicks:
            out.append(lab)
            continue
        scale = lab.shape[0] / image_size(s.image)[0]  # labels at the image's own or at data.image_scale size
        out.append(apply_points(lab, point_map(clicks, lab.shape, scale, cfg.points.radius)))
    return out


def veto_labels(cfg: RunConfig, samples: list[Sample], labels: list[np.ndarray]) -> list[np.ndarray]:
    """``train_seg.patch_veto``: weak-label pixels of a class that a covering patch's label refuses become ignore.

    The patch labels are the protocol's (``data.patches`` with ``label_rule: mask_fraction``, derived from the
    training masks as the crop labels are); a class missing from a patch's label covers at most ``min_fraction``
    of it. Unlike ``eval_cam.label_gating: patch`` no pixel is forced to a class. Images without a mask are kept
    as they are. Returns new arrays; the inputs are not changed.
    """
    if not cfg.train_seg.patch_veto:
        return labels
    from histowsss.data.label_gate import mask_gate, veto

    out = []
    for s, lab in zip(samples, labels):
        allowed = mask_gate(s, cfg.data)  # RunConfig has checked that data.patches derives patch labels from masks
        if allowed is None:
            out.append(lab)
            continue
        if allowed.shape[1:] != lab.shape:
            raise StepError(f"{s.name}: weak labels {lab.shape} and mask {allowed.shape[1:]} differ in size; "
                            "were the labels made at another data.image_scale?")
        out.append(veto(lab, allowed, IGNORE))
    return out
