"""Uncertain bands along the class boundaries of a weak label map."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def ignore_boundary_band(labels: np.ndarray, radius: int, ignore: int = 255) -> np.ndarray:
    """A copy of ``labels`` (H, W class ids) where every pixel with another class within ``radius`` pixels
    (a (2 radius + 1)^2 square window) becomes ``ignore``. Ignore pixels neither make nor stop a band; radius 0
    returns an unchanged copy."""
    out = labels.copy()
    if radius <= 0:
        return out
    size = 2 * radius + 1
    valid = labels != ignore
    lab = labels.astype(np.int16)
    hi = ndimage.maximum_filter(np.where(valid, lab, -1), size=size, mode="nearest")
    lo = ndimage.minimum_filter(np.where(valid, lab, np.iinfo(np.int16).max), size=size, mode="nearest")
    out[valid & (hi != lo)] = ignore
    return out
