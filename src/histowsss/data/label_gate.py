"""Pixel-level class gates from patch-level training labels.

With patch labels (``data.patches.label_rule: mask_fraction``, the OEEM protocol on GlaS) a training image
carries more than its image label: a class absent from a patch's label covers at most ``min_fraction`` of that
patch. ``eval_cam.label_gating: patch`` turns this into a gate: a pixel may only take the classes present in the
label of **every** patch that covers it. Pixels inside a patch labelled with one class alone get that class; a
class absent from a patch cannot appear inside it. The gate is used wherever training labels gate CAMs (eval_cam's
label-gated labels, IR seeds, the random walk's pseudo-masks, CAM labels for train_seg); it is never used on
unlabelled (test) images.
"""

from __future__ import annotations

import numpy as np

from histowsss.config import DataConfig, RunConfig
from histowsss.data.manifest import Sample
from histowsss.data.masks import load_class_mask
from histowsss.data.patches import crop_padded, patch_labels_from_mask, tile_image


def uses_patch_gate(cfg: RunConfig) -> bool:
    """True when training labels gate CAM classes per pixel (eval_cam.label_gating == 'patch')."""
    return cfg.eval_cam.label_gating == "patch"


def patch_allowed(class_mask: np.ndarray, data: DataConfig, name: str = "image") -> np.ndarray:
    """(C, H, W) bool: classes each pixel may take given the labels of the patches covering it.

    Patches whose pixels are all ignore add no constraint. A pixel no labelled patch covers (the strips
    ``border: drop`` leaves) or left with no class (only possible with unusual patch settings) may take the classes
    of the image: those present anywhere in its mask, never every class (an all-background image stays background).
    """
    assert data.patches is not None
    h, w = class_mask.shape
    c = len(data.classes.names)
    allowed = np.ones((c, h, w), dtype=bool)
    covered = np.zeros((h, w), dtype=bool)
    for p in tile_image(h, w, data.patches, name=name):  # (name: the image, in the too-small error)
        covered[p.y : p.y + p.size, p.x : p.x + p.size] = True
        crop = crop_padded(class_mask, p)
        if not np.any(crop != 255):
            continue
        t = patch_labels_from_mask(crop, data.classes, data.patches.min_fraction)
        for k in np.flatnonzero(t < 0.5):
            allowed[k, p.y : p.y + p.size, p.x : p.x + p.size] = False
    image_classes = patch_labels_from_mask(class_mask, data.classes, 0.0) > 0.5
    if not image_classes.any():  # an all-ignore mask: nothing is known
        image_classes[:] = True
    loose = ~covered | ~allowed.any(axis=0)
    allowed[:, loose] = image_classes[:, None]
    return allowed


def mask_gate(sample: Sample, data: DataConfig) -> np.ndarray | None:
    """The (C, H, W) gate of a sample from the patch labels of its mask, at image resolution; None without a mask."""
    if sample.mask is None:
        return None
    return patch_allowed(load_class_mask(sample, data), data, name=str(sample.image))


def sample_gate(cfg: RunConfig, sample: Sample) -> np.ndarray | None:
    """The (C, H, W) gate of a training sample at image resolution, or None without patch gating / mask."""
    return mask_gate(sample, cfg.data) if uses_patch_gate(cfg) else None


def cell_centres(a: np.ndarray, grid: tuple[int, int], stride: int) -> np.ndarray:
    """An array (..., H, W) (a gate, a ground-truth map) sampled at the centres of the cells of a stride-``stride``
    grid: (..., h, w)."""
    ys = np.minimum(np.arange(grid[0]) * stride + stride // 2, a.shape[-2] - 1)
    xs = np.minimum(np.arange(grid[1]) * stride + stride // 2, a.shape[-1] - 1)
    return a[..., ys, :][..., xs]


def present_classes(allowed: np.ndarray, class_ids: list[int]) -> np.ndarray:
    """(K,) bool: the CAM channels (class ids ``class_ids``) allowed somewhere in the image."""
    return allowed[np.asarray(class_ids)].reshape(len(class_ids), -1).any(axis=1)


def veto(labels: np.ndarray, allowed: np.ndarray, ignore: int = 255) -> np.ndarray:
    """A copy of a hard label map (H, W) where pixels whose label is a class they may not take (or no class at
    all) become ``ignore``; nothing else changes."""
    out = labels.copy()
    valid = out != ignore
    known = valid & (out < allowed.shape[0])
    ok = np.take_along_axis(allowed, np.where(known, out, 0).astype(np.int64)[None], axis=0)[0]
    out[valid & ~(known & ok)] = ignore
    return out


def force_single(labels: np.ndarray, allowed: np.ndarray, ignore: int = 255) -> np.ndarray:
    """Apply a gate to a hard label map (H, W): pixels with exactly one allowed class get it, pixels whose
    label is a class they may not take become ``ignore``."""
    out = veto(labels, allowed, ignore)
    single = allowed.sum(axis=0) == 1
    out[single] = np.argmax(allowed[:, single], axis=0).astype(out.dtype)
    return out
