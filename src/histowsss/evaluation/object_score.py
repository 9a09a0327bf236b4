"""Dataset-level accumulation of the GlaS object metrics, and instances from a semantic map.

:class:`ObjectScore` sums TP / FP / FN over images (object F1 from the sums) and averages object Dice and
Hausdorff over images (:func:`histowsss.evaluation.object_metrics.object_metrics`); images whose Hausdorff is
infinite (exactly one side empty) are counted and left out of the mean. :func:`semantic_components` turns a
class map into instance ids (connected components of each foreground class), the way a semantic network's
output is scored at object level.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from histowsss.evaluation.object_metrics import object_metrics

IGNORE = 255

__all__ = ["ObjectScore", "predicted_objects", "semantic_components"]


def semantic_components(sem: np.ndarray, background: int | None) -> np.ndarray:
    """Connected components (4-connected) of every foreground class of a class map, as instance ids (0 = none)."""
    out = np.zeros(sem.shape, np.int64)
    n = 0
    for c in np.unique(sem):
        if c == background or c == IGNORE:
            continue
        lab, k = ndimage.label(sem == c)
        out[lab > 0] = lab[lab > 0] + n
        n += k
    return out


def predicted_objects(pred: np.ndarray, gt_class: np.ndarray, background: int | None) -> np.ndarray:
    """The objects of a predicted class map that are scored against ``gt_class``: its connected components, cut to
    the pixels the ground truth labels (its ignore pixels, 255, count at the object level no more than at the pixel
    level)."""
    return semantic_components(np.where(gt_class == IGNORE, IGNORE, pred), background)


class ObjectScore:
    """Sums TP/FP/FN and averages object Dice / Hausdorff over images."""

    def __init__(self):
        self.tp = self.fp = self.fn = 0
        self.dice: list[float] = []
        self.hd: list[float] = []
        self.hd_inf = 0

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Score one image: ``gt`` and ``pred`` are instance maps (0 = background)."""
        m = object_metrics(gt, pred)
        self.tp += m["tp"]
        self.fp += m["fp"]
        self.fn += m["fn"]
        self.dice.append(m["dice"])
        if math.isinf(m["hausdorff"]):
            self.hd_inf += 1
        else:
            self.hd.append(m["hausdorff"])

    def merge(self, other: "ObjectScore") -> None:
        """Add another score's images (e.g. a split's into the overall one)."""
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.dice += other.dice
        self.hd += other.hd
        self.hd_inf += other.hd_inf

    def summary(self) -> dict:
        """F1 / precision / recall (percent, from the summed counts), mean object Dice (percent), mean Hausdorff (px)."""
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else None
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else None
        # no true positive while some object exists on either side: F1 0 (as the GlaS code); None with no object at all
        f1 = 2 * p * r / (p + r) if p and r else (0.0 if self.fp + self.fn else None)
        pct = lambda x: None if x is None else round(100 * x, 2)  # noqa: E731
        return {"f1": pct(f1), "precision": pct(p), "recall": pct(r), "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "dice_mean_per_image": pct(float(np.mean(self.dice)) if self.dice else None),
                "hausdorff_mean_per_image": round(float(np.mean(self.hd)), 2) if self.hd else None,
                "hausdorff_infinite_images": self.hd_inf, "images": len(self.dice)}
