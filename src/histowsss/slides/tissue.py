"""Tissue detection on a slide thumbnail: stained tissue is saturated, glass is white and grey.

The rule (the usual one in slide pipelines): HSV saturation above a threshold (Otsu's on the thumbnail, kept
within [0.05, 0.2] so an all-tissue or all-glass thumbnail is not split in two), excluding near-black pixels
(pen marks, scanner borders), then a closing, holes filled, and regions smaller than ``min_area_px`` removed.
"""

from __future__ import annotations

import numpy as np


def tissue_mask(rgb: np.ndarray, threshold: float | None = None, min_area_px: int = 16,
                close_radius: int = 2) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 thumbnail. ``threshold``: fixed saturation cut (None: Otsu, clipped)."""
    from scipy import ndimage
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"tissue_mask needs an RGB image (H, W, 3), got shape {rgb.shape}")
    hsv = rgb2hsv(rgb)
    sat, val = hsv[..., 1], hsv[..., 2]
    if threshold is None:
        threshold = float(threshold_otsu(sat)) if np.ptp(sat) > 0 else 0.05
        threshold = float(np.clip(threshold, 0.05, 0.2))
    mask = (sat > threshold) & (val > 0.15)
    if close_radius > 0:  # padded by the edge's own values: tissue cut by the slide's edge is not eroded there
        r = close_radius
        mask = ndimage.binary_closing(np.pad(mask, r, mode="edge"), structure=disk(r))[r:-r, r:-r]
    mask = ndimage.binary_fill_holes(mask)
    if min_area_px > 1:
        lab, n = ndimage.label(mask)
        if n:
            area = np.bincount(lab.ravel())
            keep = area >= min_area_px
            keep[0] = False
            mask = keep[lab]
    return mask
