"""GlaS challenge object-level metrics (Sirinukunwattana et al., MedIA 2017).

Inputs are integer instance maps of the same shape, 0 = background, any other value = one object
(labels need not be consecutive). Definitions follow the challenge's evaluation code:

* Matching: an object is matched to the object of the other set it overlaps most (ties -> smaller
  label); an object that overlaps nothing is unmatched.
* Object F1: a segmented object is a true positive when it covers more than 50% of the area of its
  matched ground-truth object; other segmented objects are false positives; FN = #gt - TP.
  A split gland therefore yields at most one TP (the piece covering > 50%), a merged blob covering
  several glands yields at most one TP and FNs for the others.
* Object Dice: 1/2 [sum_i w_i Dice(S_i, G*(S_i)) + sum_j w~_j Dice(G_j, S*(G_j))] with w_i = |S_i| / |S|,
  w~_j = |G_j| / |G|; an unmatched object contributes Dice 0.
* Object Hausdorff: same weighting with the (pixel-set) Hausdorff distance; an unmatched object is
  compared with the object of the other set that is nearest in Hausdorff distance.

Hausdorff distances are Euclidean, in pixels, over all object pixels, computed exactly with
distance transforms on cropped windows (an unmatched object's nearest partner is searched with
bounding-box pruning).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["object_f1", "object_dice", "object_hausdorff", "object_metrics"]

_LUT_MAX_LABEL = 1 << 22


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0..n (0 kept as background, order of labels preserved)."""
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(labels.shape, np.int32), 0
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0:
        raise ValueError(f"instance labels must be >= 0, got minimum {lo}")
    if hi == 0:
        return np.zeros(labels.shape, np.int32), 0
    if hi < _LUT_MAX_LABEL:
        flat = flat.astype(np.intp, copy=False)
        present = np.flatnonzero(np.bincount(flat, minlength=hi + 1))
        present = present[present != 0]
        lut = np.zeros(hi + 1, np.int32)
        lut[present] = np.arange(1, present.size + 1, dtype=np.int32)
        return lut[flat].reshape(labels.shape), int(present.size)
    uniq, inv = np.unique(flat, return_inverse=True)
    inv = inv.astype(np.int32)
    if uniq[0] != 0:
        inv += 1
    return inv.reshape(labels.shape), int(uniq.size - (uniq[0] == 0))


class _Pairing:
    """Compact labels, overlap table and best matches of one (gt, pred) pair."""

    def __init__(self, gt: np.ndarray, pred: np.ndarray):
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"gt and pred shapes differ: gt {gt.shape} vs pred {pred.shape}")
        for name, a in (("gt", gt), ("pred", pred)):
            if not (a.dtype == bool or np.issubdtype(a.dtype, np.integer)):
                raise TypeError(f"{name} must be an integer instance map, got dtype {a.dtype}")
        self.g, self.n_g = _compact(gt.astype(np.int64) if gt.dtype == bool else gt)
        self.s, self.n_s = _compact(pred.astype(np.int64) if pred.dtype == bool else pred)
        ng1, ns1 = self.n_g + 1, self.n_s + 1
        joint = self.g.ravel().astype(np.int64) * ns1 + self.s.ravel()
        # overlap[j, i] = #pixels with gt object j and pred object i (index 0 = background)
        self.overlap = np.bincount(joint, minlength=ng1 * ns1).reshape(ng1, ns1)
        self.area_g = self.overlap.sum(axis=1)
        self.area_s = self.overlap.sum(axis=0)
        ov = self.overlap[1:, 1:]
        # best gt (1-based) for each pred object, 0 when it overlaps no gt object; and vice versa
        if self.n_g and self.n_s:
            self.match_s = np.where(ov.max(axis=0) > 0, ov.argmax(axis=0) + 1, 0)
            self.match_g = np.where(ov.max(axis=1) > 0, ov.argmax(axis=1) + 1, 0)
        else:
            self.match_s = np.zeros(self.n_s, np.int64)
            self.match_g = np.zeros(self.n_g, np.int64)
        self._slices_g: list[Any] | None = None
        self._slices_s: list[Any] | None = None
        self._hd_cache: dict[tuple[int, int], float] = {}

    # ------------------------------------------------------------------ Hausdorff helpers
    def _slices(self) -> tuple[list[Any], list[Any]]:
        if self._slices_g is None:
            self._slices_g = ndimage.find_objects(self.g, max_label=self.n_g)
            self._slices_s = ndimage.find_objects(self.s, max_label=self.n_s)
        assert self._slices_s is not None
        return self._slices_g, self._slices_s

    def hausdorff(self, j: int, i: int) -> float:
        """Hausdorff distance between gt object j and pred object i (1-based compact labels)."""
        key = (j, i)
        if key not in self._hd_cache:
            sg, ss = self._slices()
            a, b = sg[j - 1], ss[i - 1]
            win = tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))
            gm = self.g[win] == j
            sm = self.s[win] == i
            d_to_g = ndimage.distance_transform_edt(~gm)
            d_to_s = ndimage.distance_transform_edt(~sm)
            self._hd_cache[key] = float(max(d_to_g[sm].max(), d_to_s[gm].max()))
        return self._hd_cache[key]

    def nearest_hausdorff(self, k: int, from_gt: bool) -> float:
        """Smallest Hausdorff distance between object k of one set and any object of the other set.

        Candidates are visited by increasing bounding-box lower bound (the Hausdorff distance is at
        least the largest offset between corresponding bounding-box sides) and pruned with it.
        """
        sg, ss = self._slices()
        own, others = (sg, ss) if from_gt else (ss, sg)
        box = np.array([[sl.start for sl in own[k - 1]] + [sl.stop for sl in own[k - 1]]])
        boxes = np.array([[sl.start for sl in o] + [sl.stop for sl in o] for o in others])
        lower = np.abs(boxes - box).max(axis=1)
        best = math.inf
        for m in np.argsort(lower, kind="stable"):
            if lower[m] >= best:
                break
            h = self.hausdorff(k, int(m) + 1) if from_gt else self.hausdorff(int(m) + 1, k)
            best = min(best, h)
        return best


def _check_counts(p: _Pairing) -> str | None:
    if p.n_g == 0 and p.n_s == 0:
        return "both"
    if p.n_g == 0 or p.n_s == 0:
        return "one"
    return None


def _f1(p: _Pairing) -> dict[str, Any]:
    empty = _check_counts(p)
    if empty == "both":
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 0, "fp": 0, "fn": 0}
    if empty == "one":
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": p.n_s, "fn": p.n_g}
    i = np.flatnonzero(p.match_s) + 1  # matched pred objects (1-based)
    j = p.match_s[i - 1]
    hit = p.overlap[j, i] / p.area_g[j] > 0.5
    tp = int(hit.sum())
    fp, fn = p.n_s - tp, p.n_g - tp
    precision, recall = tp / p.n_s, tp / p.n_g
    f1 = 0.0 if tp == 0 else 2.0 * precision * recall / (precision + recall)
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1), "tp": tp, "fp": fp, "fn": fn}


def _dice_terms(p: _Pairing) -> tuple[float, float, float, float]:
    """(sum over segmented objects of area x Dice with their ground-truth partner, their total area, the same over
    ground-truth objects): the parts of the GlaS object Dice, which weighs each object by its area over all objects
    (an object without a partner scores 0)."""

    def side(match: np.ndarray, area_own: np.ndarray, area_other: np.ndarray, own_is_s: bool) -> tuple[float, float]:
        if match.size == 0:
            return 0.0, 0.0
        k = np.arange(1, match.size + 1)
        m = match
        inter = np.where(m > 0, p.overlap[k, m] if not own_is_s else p.overlap[m, k], 0)
        dice = 2.0 * inter / (area_own[k] + np.where(m > 0, area_other[m], 0))
        return float(np.sum(area_own[k] * dice)), float(area_own[1:].sum())

    return (*side(p.match_s, p.area_s, p.area_g, True), *side(p.match_g, p.area_g, p.area_s, False))


def _hausdorff_terms(p: _Pairing) -> tuple[float, float, float, float, int]:
    """(sum over segmented objects of area x Hausdorff to their partner (else the nearest ground-truth object),
    their total area, the same over ground-truth objects, objects with nothing on the other side of their image):
    the parts of the GlaS object Hausdorff. Objects of an image whose other side is empty have no distance; they
    are counted and left out of the sums."""
    if p.n_g == 0 or p.n_s == 0:
        return 0.0, 0.0, 0.0, 0.0, p.n_g + p.n_s
    t1 = 0.0
    for i in range(1, p.n_s + 1):
        j = int(p.match_s[i - 1])
        h = p.hausdorff(j, i) if j else p.nearest_hausdorff(i, from_gt=False)
        t1 += p.area_s[i] * h
    t2 = 0.0
    for j in range(1, p.n_g + 1):
        i = int(p.match_g[j - 1])
        h = p.hausdorff(j, i) if i else p.nearest_hausdorff(j, from_gt=True)
        t2 += p.area_g[j] * h
    return float(t1), float(p.area_s[1:].sum()), float(t2), float(p.area_g[1:].sum()), 0


def _dice(p: _Pairing) -> float:
    empty = _check_counts(p)
    if empty == "both":
        return 1.0
    if empty == "one":
        return 0.0
    s_num, s_den, g_num, g_den = _dice_terms(p)
    return 0.5 * (s_num / s_den + g_num / g_den)


def _hausdorff(p: _Pairing) -> float:
    empty = _check_counts(p)
    if empty == "both":
        return 0.0
    if empty == "one":
        return math.inf
    s_num, s_den, g_num, g_den, _ = _hausdorff_terms(p)
    return float(0.5 * (s_num / s_den + g_num / g_den))


def object_f1(gt: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """GlaS object-level detection: ``precision``, ``recall``, ``f1`` in [0, 1] plus ``tp``, ``fp``, ``fn`` counts.

    Both maps empty -> all 1.0; exactly one empty -> all 0.0.
    """
    return _f1(_Pairing(gt, pred))


def object_dice(gt: np.ndarray, pred: np.ndarray) -> float:
    """GlaS object-level Dice in [0, 1] (both empty -> 1.0, exactly one empty -> 0.0)."""
    return _dice(_Pairing(gt, pred))


def object_hausdorff(gt: np.ndarray, pred: np.ndarray) -> float:
    """GlaS object-level Hausdorff distance in pixels (both empty -> 0.0, exactly one empty -> inf)."""
    return _hausdorff(_Pairing(gt, pred))


def object_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """All GlaS object metrics of one image at once: ``f1``, ``precision``, ``recall``, ``tp``, ``fp``, ``fn``,
    ``dice`` (fractions / counts) and ``hausdorff`` (pixels; inf when exactly one map is empty), and ``terms``: the
    area-weighted sums a dataset's GlaS Dice and Hausdorff pool over every image's objects
    (:class:`histowsss.evaluation.object_score.ObjectScore`)."""
    p = _Pairing(gt, pred)
    out = _f1(p)
    out["dice"] = _dice(p)
    out["hausdorff"] = _hausdorff(p)
    out["terms"] = {"dice": _dice_terms(p), "hausdorff": _hausdorff_terms(p)}
    return out
