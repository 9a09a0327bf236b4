"""Confident foreground / background / ignore labels from CAMs (IRN ``step/cam_to_ir_label.py``).

Scores are per-class max-normalised CAMs (:func:`histowsss.evaluation.cam_labels.normalize_cams`) of the
classes an image is labelled with (others are ignored). Two label maps are made, as in the reference:

* ``strict`` (the reference's "fg_conf"): a foreground class only where the evidence is strong;
* ``loose`` (the reference's "bg_conf"): background only where the evidence for any foreground is weak;

and combined (:func:`combine`): foreground where ``strict`` says so, background where ``loose`` says so,
ignore (255) in between. An optional dense CRF (:mod:`histowsss.ops.crf`) smooths each map before combining.

Rules, with ``m`` the largest normalised foreground score of a pixel and ``k`` its class:

* ``threshold`` mode (no background CAM channel; IRN): strict fg ``k`` where ``m >= conf_fg``; loose bg where
  ``m < conf_bg`` (reference 0.30 / 0.05).
* ``offset`` mode (the background class has its own CAM channel ``s_bg``, e.g. ``glas-gland``): the background
  channel replaces the constant. Strict fg ``k`` where ``m >= conf_fg`` and ``m - s_bg >= margin`` (strong and
  beating background); bg where ``m < conf_bg`` (no foreground evidence) or where ``s_bg >= conf_fg`` and
  ``s_bg - m >= margin`` (background strong and beating every foreground class).
* ``argmax`` mode (no background class, e.g. tissue types where every pixel is one of the labelled classes):
  class ``k`` where it beats the second-best labelled class by ``conf_fg`` (``m - m2 >= conf_fg``), ignore
  elsewhere; ``conf_bg`` is unused. An image labelled with one class is that class everywhere.

An image with no foreground label is all background (as in the reference).
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

__all__ = ["IGNORE", "confident_maps", "combine", "confident_labels"]


def confident_maps(cam_norm: np.ndarray, present: np.ndarray, class_ids: list[int], background: int, mode: str,
                   conf_fg: float, conf_bg: float, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(strict, loose)`` class-id maps (uint8) from normalised CAMs (K, h, w); see the module docstring."""
    cam = np.asarray(cam_norm, dtype=np.float32)
    present = np.asarray(present, dtype=bool)
    ids = np.asarray(class_ids, dtype=np.int64)
    shape = cam.shape[1:]
    if mode == "argmax":
        return _argmax_maps(cam, present, ids, conf_fg)
    if mode == "offset":
        b = list(class_ids).index(background)
        s_bg = cam[b] if present[b] else np.full(shape, -np.inf, np.float32)
        fg = [i for i in range(len(class_ids)) if i != b]
    elif mode == "threshold":
        s_bg = None
        fg = list(range(len(class_ids)))
    else:
        raise ValueError(f"mode must be 'threshold', 'offset' or 'argmax', got {mode!r}")
    fg = [i for i in fg if present[i]]
    if not fg:
        full = np.full(shape, background, np.uint8)
        return full, full.copy()
    scores = cam[fg]
    m = scores.max(axis=0)
    k = ids[np.asarray(fg)][scores.argmax(axis=0)]
    with np.errstate(invalid="ignore"):
        if s_bg is None:
            strict_fg = m >= conf_fg
            bg_conf = m < conf_bg
        else:
            strict_fg = (m >= conf_fg) & (m - s_bg >= margin)
            bg_conf = (m < conf_bg) | ((s_bg >= conf_fg) & (s_bg - m >= margin))
    strict = np.where(strict_fg, k, background).astype(np.uint8)
    loose = np.where(bg_conf, background, k).astype(np.uint8)
    return strict, loose


def _argmax_maps(cam: np.ndarray, present: np.ndarray, ids: np.ndarray, conf_margin: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Argmax mode: the best labelled class where it beats the second by ``conf_margin``, IGNORE elsewhere (the
    same map twice, so :func:`combine` passes it through)."""
    shape = cam.shape[1:]
    idx = [i for i in range(len(ids)) if present[i]]
    if not idx:  # no label at all: nothing is known
        full = np.full(shape, IGNORE, np.uint8)
        return full, full.copy()
    if len(idx) == 1:
        full = np.full(shape, ids[idx[0]], np.uint8)
        return full, full.copy()
    scores = cam[idx]
    top2 = -np.partition(-scores, 1, axis=0)[:2]  # best and second-best score per pixel
    k = ids[np.asarray(idx)][scores.argmax(axis=0)]
    out = np.where(top2[0] - top2[1] >= conf_margin, k, IGNORE).astype(np.uint8)
    return out, out.copy()


def combine(strict: np.ndarray, loose: np.ndarray, background: int) -> np.ndarray:
    """Foreground of ``strict``, background where ``loose`` is background, ignore (255) elsewhere (an argmax-mode
    pair, identical maps holding IGNORE, comes back unchanged)."""
    out = np.full(strict.shape, IGNORE, np.uint8)
    out[(strict == background) & (loose == background)] = background
    fg = strict != background
    out[fg] = strict[fg]
    return out


def confident_labels(cam_norm: np.ndarray, present: np.ndarray, class_ids: list[int], background: int, mode: str,
                     conf_fg: float, conf_bg: float, margin: float = 0.0) -> np.ndarray:
    """Confident label map (uint8 class ids, 255 = ignore) without CRF."""
    return combine(*confident_maps(cam_norm, present, class_ids, background, mode, conf_fg, conf_bg, margin),
                   background)
