"""Prediction overlays: the image with each non-background class tinted and outlined in its colour."""

from __future__ import annotations

import numpy as np


def overlay(image: np.ndarray, labels: np.ndarray, colors: list[list[int]], background: int | None,
            alpha: float = 0.4) -> np.ndarray:
    """RGB image with each non-background class tinted (``alpha``) and its boundary drawn opaque."""
    from skimage.segmentation import find_boundaries

    out = image.astype(np.float32).copy()
    edges = find_boundaries(labels, mode="inner")
    for c, rgb in enumerate(colors):
        if c == background:
            continue
        m = labels == c
        if not m.any():
            continue
        col = np.array(rgb, np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * col
        out[m & edges] = col
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
