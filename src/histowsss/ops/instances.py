"""Instance grouping from an IRN displacement field (reference ``step/make_ins_seg_labels.py``).

1. :func:`find_centroids`: every grid cell follows the displacement field (bilinear sampling, ``iterations``
   steps, clipped to the grid) to the centroid of its instance.
2. :func:`cluster_centroids`: cells with a weak displacement (``|D| < threshold``) form the candidate centroid
   regions (4-connected components); each cell gets the id of the region its centroid lands in (0 when it lands
   outside every region).
3. :func:`instances_from_clusters` (our combination with the semantic pseudo-labels, replacing the reference's
   per-instance random walk, which costs one walk per instance on the CPU): inside every connected component of
   a foreground class of the semantic map, each pixel takes its cluster; clusters covering less than
   ``min_cluster_fraction`` of the component, and unassigned pixels, are given to the nearest kept cluster; a
   component without a kept cluster is one instance. Instances smaller than ``min_area`` pixels are dropped (0).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["find_centroids", "cluster_centroids", "instances_from_clusters", "upsample_nearest"]


def find_centroids(dp: np.ndarray, iterations: int = 100) -> np.ndarray:
    """Integer centroid (y, x) reached by every cell of displacement field ``dp`` (2, H, W) in grid cells."""
    dp = np.asarray(dp, dtype=np.float32)
    _, h, w = dp.shape
    cy, cx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    for _ in range(iterations):
        y0 = np.floor(cy).astype(np.int64)
        x0 = np.floor(cx).astype(np.int64)
        y1 = np.minimum(y0 + 1, h - 1)
        x1 = np.minimum(x0 + 1, w - 1)
        fy, fx = cy - y0, cx - x0
        w00, w01, w10, w11 = (1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx
        step_y = dp[0][y0, x0] * w00 + dp[0][y0, x1] * w01 + dp[0][y1, x0] * w10 + dp[0][y1, x1] * w11
        step_x = dp[1][y0, x0] * w00 + dp[1][y0, x1] * w01 + dp[1][y1, x0] * w10 + dp[1][y1, x1] * w11
        cy = np.clip(cy + step_y, 0, h - 1)
        cx = np.clip(cx + step_x, 0, w - 1)
    return np.stack([np.round(cy).astype(np.int64), np.round(cx).astype(np.int64)])


def cluster_centroids(centroids: np.ndarray, dp: np.ndarray, threshold: float = 2.5) -> np.ndarray:
    """Cluster id (H, W) int32 of every cell: the weak-displacement region its centroid lands in (0: none)."""
    strength = np.sqrt(dp[0].astype(np.float32) ** 2 + dp[1].astype(np.float32) ** 2)
    regions, _ = ndimage.label(strength < threshold)  # 4-connectivity
    return regions[centroids[0], centroids[1]].astype(np.int32)


def upsample_nearest(grid: np.ndarray, stride: int, size: tuple[int, int]) -> np.ndarray:
    """Repeat every cell of a stride-``stride`` grid map ``stride`` times and crop to ``size``."""
    up = np.repeat(np.repeat(grid, stride, axis=0), stride, axis=1)
    return up[: size[0], : size[1]]


def instances_from_clusters(semantic: np.ndarray, clusters: np.ndarray, background: int | None, ignore: int = 255,
                            min_cluster_fraction: float = 0.1, min_area: int = 16) -> np.ndarray:
    """Instance ids (H, W) uint16 (0 = background) from semantic class ids and centroid clusters (same shape)."""
    out = np.zeros(semantic.shape, dtype=np.int64)
    next_id = 1
    for cls in np.unique(semantic):
        if cls == background or cls == ignore:
            continue
        comps, n = ndimage.label(semantic == cls)
        for sl, k in zip(ndimage.find_objects(comps), range(1, n + 1)):
            comp = comps[sl] == k
            area = int(comp.sum())
            ids, counts = np.unique(clusters[sl][comp], return_counts=True)
            keep = [int(i) for i, c in zip(ids, counts) if i != 0 and c >= min_cluster_fraction * area]
            target = out[sl]
            if len(keep) <= 1:
                target[comp] = next_id
                next_id += 1
                continue
            local = np.where(comp & np.isin(clusters[sl], keep), clusters[sl], 0)
            if (comp & (local == 0)).any():  # unassigned pixels -> nearest kept cluster pixel
                _, (iy, ix) = ndimage.distance_transform_edt(local == 0, return_indices=True)
                local = np.where(comp, local[iy, ix], 0)
            for c in keep:
                target[comp & (local == c)] = next_id
                next_id += 1
    if min_area > 1 and next_id > 1:
        sizes = np.bincount(out.ravel(), minlength=next_id)
        small = np.flatnonzero(sizes < min_area)
        small = small[small != 0]
        if small.size:
            out[np.isin(out, small)] = 0
    return _compact(out)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Relabel instance ids to 1..n in order (0 kept); uint16 (more than 65535 instances is an error)."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size > 65535:
        raise ValueError(f"{ids.size} instances do not fit a uint16 instance map")
    lut = np.zeros(int(labels.max()) + 1, dtype=np.uint16)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint16)
    return lut[labels]
