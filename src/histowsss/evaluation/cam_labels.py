"""From CAMs to label maps: per-class max normalisation, class gating, background score."""

from __future__ import annotations

import numpy as np


def upsample_cam(cam: np.ndarray, size: tuple[int, int], stride: int = 4) -> np.ndarray:
    """Bilinear upsampling of a stride-``stride`` CAM (K, h, w) to image size (K, H, W)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.asarray(cam, dtype=np.float32))[None]
    up = F.interpolate(t, size=(cam.shape[1] * stride, cam.shape[2] * stride), mode="bilinear", align_corners=False)
    return up[0, :, : size[0], : size[1]].numpy()


def normalize_cams(cam: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """ReLU then divide each class map by its maximum (IRN's normalisation)."""
    cam = np.maximum(cam, 0)
    return cam / (cam.reshape(cam.shape[0], -1).max(axis=1)[:, None, None] + eps)


def cams_to_labels(cam_norm: np.ndarray, present: np.ndarray, class_ids: list[int], background: int,
                   mode: str, value: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """Label map (H, W) of class ids from normalised CAMs (K, H, W).

    ``present`` (K,) gates classes (absent classes get score -inf); ``class_ids`` maps CAM index -> class id.
    ``allowed`` (C, H, W), indexed by class id, gates classes per pixel as well (patch labels,
    data/label_gate.py); background included.
    mode 'threshold': background score is ``value`` (the CAMs have no background channel);
    mode 'offset': the background class has its own CAM channel, shifted by ``value`` before the argmax (a pixel
    where no class has a score, e.g. none present, is background whatever the order of ``class_ids``);
    mode 'argmax': no background class (``background`` and ``value`` unused): the best present class; an image
    with no class present takes the best of all.
    """
    if mode == "argmax" and not np.any(present):
        present = np.ones(len(class_ids), bool)
    scores = np.where(present[:, None, None], cam_norm, -np.inf).astype(np.float32)
    ids = np.asarray(class_ids)
    if mode == "threshold":
        bg = np.full((1,) + cam_norm.shape[1:], value, dtype=np.float32)
        scores = np.concatenate([bg, scores])
        ids = np.concatenate([[background], ids])
    elif mode == "offset":
        b = class_ids.index(background)
        if np.isfinite(scores[b]).all():
            scores[b] = scores[b] + value
    if allowed is not None:
        scores = np.where(allowed[ids], scores, -np.inf)
        # a pixel whose allowed classes all lack a score keeps the ungated decision
        none = ~np.isfinite(scores).any(axis=0)
        if none.any():
            fallback = cams_to_labels(cam_norm, present, class_ids, background, mode, value)
            out = ids[np.argmax(scores, axis=0)].astype(np.uint8)
            out[none] = fallback[none]
            return out
    out = ids[np.argmax(scores, axis=0)].astype(np.uint8)
    if mode == "offset":  # argmax of all -inf is index 0, which need not be the background channel
        out[~np.isfinite(scores).any(axis=0)] = background
    return out
