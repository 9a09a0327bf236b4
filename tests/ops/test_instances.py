"""Displacement field -> centroids -> clusters -> instances (IRN instance grouping)."""

from __future__ import annotations

import numpy as np

from histowsss.ops.instances import cluster_centroids, find_centroids, instances_from_clusters, upsample_nearest


def two_touching_blobs(h: int = 24, w: int = 40):
    """Two discs that touch (one connected semantic component) and the ideal displacement field."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    centres = [(12.0, 11.0), (12.0, 28.0)]
    dist = np.stack([np.hypot(ys - cy, xs - cx) for cy, cx in centres])
    inside = dist < 9.0
    sem = inside.any(0).astype(np.uint8)
    owner = np.where(inside.any(0), dist.argmin(0) + 1, 0)
    dp = np.zeros((2, h, w), np.float32)
    for k, (cy, cx) in enumerate(centres, start=1):
        m = owner == k
        dp[0][m] = (cy - ys)[m]
        dp[1][m] = (cx - xs)[m]
    return sem, owner, dp


def test_centroids_follow_the_field():
    _, owner, dp = two_touching_blobs()
    c = find_centroids(dp, iterations=50)
    assert tuple(c[:, 12, 5]) == (12, 11) and tuple(c[:, 10, 30]) == (12, 28)
    assert tuple(c[:, 0, 0]) == (0, 0)  # background does not move


def test_grouping_separates_two_touching_blobs():
    sem, owner, dp = two_touching_blobs()
    from scipy import ndimage

    assert ndimage.label(sem)[1] == 1  # connected components alone would merge them
    clusters = cluster_centroids(find_centroids(dp, 50), dp, threshold=2.5)
    inst = instances_from_clusters(sem, clusters, background=0, min_cluster_fraction=0.1, min_area=4)
    assert inst.dtype == np.uint16 and inst.max() == 2
    for k in (1, 2):
        ids, counts = np.unique(inst[owner == k], return_counts=True)
        assert counts.max() / counts.sum() > 0.95 and ids[counts.argmax()] != 0
    assert (inst[sem == 0] == 0).all()


def test_grouping_on_the_stride4_grid_upsampled():
    sem, owner, dp = two_touching_blobs()
    sem_full = upsample_nearest(sem, 4, (95, 160))
    clusters = upsample_nearest(cluster_centroids(find_centroids(dp, 50), dp), 4, (95, 160))
    inst = instances_from_clusters(sem_full, clusters, background=0)
    assert inst.shape == (95, 160) and inst.max() == 2


def test_component_without_centroid_cluster_is_one_instance_and_tiny_ones_are_dropped():
    sem = np.zeros((20, 20), np.uint8)
    sem[2:10, 2:10] = 1
    sem[15:17, 15:17] = 1  # 4 pixels
    inst = instances_from_clusters(sem, np.zeros_like(sem, dtype=np.int32), background=0, min_area=5)
    assert inst.max() == 1 and (inst[2:10, 2:10] == 1).all() and (inst[15:17, 15:17] == 0).all()
