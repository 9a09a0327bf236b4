"""Object clean-up of a class map: regions too small to be objects take the class that surrounds them.

A segmentation network's argmax leaves specks (a few pixels called gland in the stroma) and pin-holes (a few
background pixels inside a gland). Pixel metrics barely notice them; object metrics (GlaS object F1, a count of
glands in QuPath) count every speck as an object. :func:`clean_labels` relabels

* every connected region (4-connected) of a non-background class smaller than ``min_object_area`` pixels, and
* every background region smaller than ``max_hole_area`` pixels that does not touch the image border (a hole),

with the most frequent class on the region's outer ring (its 4-neighbours outside it; ignore pixels do not vote).
Classes are processed in ascending id, then holes. Areas are in pixels of the map given.

:func:`split_touching` separates objects joined by a narrow neck (two glands bridged across the thin stroma between
them): per foreground class, a watershed of the negated Euclidean distance transform from the markers of its
h-maxima (maxima that stand at least ``h`` pixels above the saddle joining them); the pixels of one part that touch
(8-connected) a part of higher id become background, so the connected components of the map, 4- or 8-connected,
are the split objects.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

IGNORE = 255

__all__ = ["clean_labels", "split_touching", "clean_objects"]


def _surrounding_class(out: np.ndarray, lab: np.ndarray, k: int, sl: tuple[slice, slice], ignore: int) -> int | None:
    """Most frequent class on the outer ring of region ``k`` of ``lab`` (None when the ring is empty)."""
    y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, lab.shape[0])
    x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, lab.shape[1])
    region = lab[y0:y1, x0:x1] == k
    ring = ndimage.binary_dilation(region) & ~region
    votes = out[y0:y1, x0:x1][ring]
    votes = votes[votes != ignore]
    if votes.size == 0:
        return None
    return int(np.bincount(votes).argmax())


def _relabel_small(out: np.ndarray, mask: np.ndarray, max_area: int, ignore: int, skip_border: bool) -> None:
    """Give every region of ``mask`` smaller than ``max_area`` its surrounding class, in place."""
    lab, n = ndimage.label(mask)
    if n == 0:
        return
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    small = set((np.flatnonzero(sizes[1:] < max_area) + 1).tolist())
    if skip_border and small:
        edge = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
        small -= set(np.unique(edge).tolist())
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if k not in small or sl is None:
            continue
        c = _surrounding_class(out, lab, k, sl, ignore)
        if c is not None:
            out[sl][lab[sl] == k] = c


def clean_labels(labels: np.ndarray, background: int | None, min_object_area: int = 0, max_hole_area: int = 0,
                 ignore: int = IGNORE) -> np.ndarray:
    """A copy of the (H, W) class map ``labels`` with small objects and small holes relabelled (see the module)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D class map, got shape {labels.shape}")
    out = labels.copy()
    if min_object_area > 0:
        for c in np.unique(labels).tolist():
            if c == background or c == ignore:
                continue
            _relabel_small(out, out == c, min_object_area, ignore, skip_border=False)
    if max_hole_area > 0 and background is not None:
        _relabel_small(out, out == background, max_hole_area, ignore, skip_border=True)
    return out


def split_touching(labels: np.ndarray, background: int, h: float, ignore: int = IGNORE) -> np.ndarray:
    """A copy of ``labels`` whose foreground regions are cut along watershed boundaries (set to ``background``)
    where the distance transform has more than one h-maximum of height ``h`` pixels (see the module).

    Each 8-connected object is processed in its own bounding box (one pixel wider where that is not the map's
    edge), which gives the cuts of the whole map at once (an object's distance transform, reconstruction and
    watershed never reach past the background around it) in memory bounded by the largest object, not the map: a
    slide's label map is never copied as float64 whole. One rule of the whole-map computation is kept so that the
    results stay the same: pixels the 4-connected watershed does not reach (joined to their object at a corner only)
    become background next to a part once the class has two h-maxima anywhere, also in an object with one."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D class map, got shape {labels.shape}")
    out = labels.copy()
    if h <= 0:
        return out
    eight = np.ones((3, 3), bool)
    for c in np.unique(labels).tolist():
        if c == background or c == ignore:
            continue
        objects, _ = ndimage.label(labels == c, structure=eight)
        maxima, single = 0, []  # h-maxima of the class so far; cuts of one-maximum objects, made if maxima >= 2
        for k, sl in enumerate(ndimage.find_objects(objects), start=1):
            if sl is None or _max_distance_bound(sl, labels.shape) <= h:
                continue  # no pixel of it lies more than h from its outline: no h-maximum above zero
            box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, size)) for s, size in zip(sl, labels.shape))
            n, cut = _split_one(objects[box] == k, h)
            maxima += n
            if n >= 2:
                out[box][cut] = background
            elif n == 1 and cut.any():
                single.append((box, cut))
        if maxima >= 2:
            for box, cut in single:
                out[box][cut] = background
    return out


def _max_distance_bound(sl: tuple[slice, ...], shape: tuple[int, ...]) -> float:
    """An upper bound of the distance transform inside an object with bounding box ``sl``: across a side of n pixels
    the pixels just outside it are other pixels, at most (n + 1) / 2 away, or n where the map's edge (no pixel)
    bounds one end."""
    bound = np.inf
    for s, size in zip(sl, shape):
        edges = (s.start == 0) + (s.stop == size)
        n = s.stop - s.start
        bound = min(bound, (n + 1) / 2 if edges == 0 else n if edges == 1 else np.inf)
    return bound


def _split_one(mask: np.ndarray, h: float) -> tuple[int, np.ndarray]:
    """(number of h-maxima, pixels that the split turns to background) of the one object ``mask``."""
    from skimage.morphology import local_maxima, reconstruction
    from skimage.segmentation import watershed

    dist = ndimage.distance_transform_edt(mask)  # distance to the nearest other pixel: the image edge is none
    if dist.max() <= h:
        return 0, mask & False
    # the h-maxima as regional maxima of the reconstruction of dist - h under dist: one plateau per peak that
    # stands h above every path to a higher one. (skimage's h_maxima marks the pixels where dist - reconstruction
    # >= h instead: along an elongated gland's ridge the distance reaches its top at several pixels apart, with
    # shallow dips between, and each became a marker that cut one gland into many parts.) 8-connected: the
    # ridge of an object lying at 45 degrees touches only at corners
    rec = reconstruction(np.maximum(dist - h, 0.0), dist, method="dilation")
    peaks = local_maxima(rec, connectivity=2, allow_borders=True) & mask
    markers, n = ndimage.label(peaks, structure=np.ones((3, 3)))
    ws = watershed(-dist, markers, mask=mask)
    # cut so that the parts do not touch even diagonally (QuPath's regions are 8-connected): a pixel with a
    # neighbour of a higher part becomes background, which leaves no pair of parts 8-adjacent
    return n, mask & (ndimage.maximum_filter(ws, size=3) > ws)


def clean_objects(labels: np.ndarray, background: int | None, min_object_area: int = 0, max_hole_area: int = 0,
                  split_h: float = 0.0, ignore: int = IGNORE) -> np.ndarray:
    """The whole clean-up in its order: small objects, then holes (:func:`clean_labels`), then the split of touching
    objects (:func:`split_touching`, only with a background class)."""
    out = clean_labels(labels, background, min_object_area, max_hole_area, ignore)
    if split_h > 0 and background is not None:
        out = split_touching(out, background, split_h, ignore)
    return out
