"""Dataset-level accumulation of the GlaS object metrics, and instances from a semantic map.

:class:`ObjectScore` sums TP / FP / FN over images (object F1 from the sums) and pools object Dice and Hausdorff
over every object of every image, each weighted by its area over the total area of all objects, as the GlaS
challenge defines them (the sets of all ground-truth and all segmented objects of the test set). Objects whose image
has nothing on the other side have no Hausdorff distance: they are counted (``hausdorff_unpaired_objects``) and left
out. The means over images of the per-image values
(:func:`histowsss.evaluation.object_metrics.object_metrics`) are reported beside them (``*_mean_per_image``, as
many papers' code computes them; images whose Hausdorff is infinite are counted and left out of that mean; an image
with no object on either side, a benign image where only malignant glands are objects, scores Dice 1 and Hausdorff 0
there, so these means rise with the share of such images while the pooled values do not).
:func:`semantic_components` turns a class map into instance ids (connected components of each foreground class),
the way a semantic network's output is scored at object level.
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
    """Sums TP/FP/FN and pools object Dice / Hausdorff over all objects (GlaS); per-image means beside them."""

    def __init__(self):
        self.tp = self.fp = self.fn = 0
        self.dice: list[float] = []
        self.hd: list[float] = []
        self.hd_inf = 0
        self.dice_terms = np.zeros(4)  # area x Dice and area, of segmented then of ground-truth objects
        self.hd_terms = np.zeros(4)
        self.unpaired = 0

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Score one image: ``gt`` and ``pred`` are instance maps (0 = background)."""
        self.add(object_metrics(gt, pred))

    def add(self, m: dict) -> None:
        """Add one image's :func:`histowsss.evaluation.object_metrics.object_metrics` (computed elsewhere, e.g. in a
        worker process)."""
        self.tp += m["tp"]
        self.fp += m["fp"]
        self.fn += m["fn"]
        self.dice.append(m["dice"])
        if math.isinf(m["hausdorff"]):
            self.hd_inf += 1
        else:
            self.hd.append(m["hausdorff"])
        self.dice_terms += m["terms"]["dice"]
        *hd, unpaired = m["terms"]["hausdorff"]
        self.hd_terms += hd
        self.unpaired += unpaired

    def merge(self, other: "ObjectScore") -> None:
        """Add another score's images (e.g. a split's into the overall one)."""
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.dice += other.dice
        self.hd += other.hd
        self.hd_inf += other.hd_inf
        self.dice_terms += other.dice_terms
        self.hd_terms += other.hd_terms
        self.unpaired += other.unpaired

    def pooled(self) -> tuple[float | None, float | None]:
        """(object Dice in [0, 1], object Hausdorff in pixels) over all objects, as the GlaS challenge defines them;
        None where there is no object to weigh."""
        s_num, s_den, g_num, g_den = self.dice_terms
        dice = None if s_den + g_den == 0 else 0.5 * ((s_num / s_den if s_den else 0.0) + (g_num / g_den if g_den
                                                                                           else 0.0))
        s_num, s_den, g_num, g_den = self.hd_terms
        hd = None if s_den == 0 or g_den == 0 else 0.5 * (s_num / s_den + g_num / g_den)
        return dice, hd

    def summary(self) -> dict:
        """F1 / precision / recall (percent, from the summed counts); object Dice (percent) and Hausdorff (px) pooled
        over all objects (GlaS), and their means over images (``*_mean_per_image``)."""
        p = self.tp / (self.tp + self.fp) if self.tp + self.fp else None
        r = self.tp / (self.tp + self.fn) if self.tp + self.fn else None
        # no true positive while some object exists on either side: F1 0 (as the GlaS code); None with no object at all
        f1 = 2 * p * r / (p + r) if p and r else (0.0 if self.fp + self.fn else None)
        pct = lambda x: None if x is None else round(100 * x, 2)  # noqa: E731
        dice, hd = self.pooled()
        return {"f1": pct(f1), "precision": pct(p), "recall": pct(r), "tp": self.tp, "fp": self.fp, "fn": self.fn,
                "dice": pct(dice), "hausdorff": None if hd is None else round(hd, 2),
                "hausdorff_unpaired_objects": self.unpaired,
                "dice_mean_per_image": pct(float(np.mean(self.dice)) if self.dice else None),
                "hausdorff_mean_per_image": round(float(np.mean(self.hd)), 2) if self.hd else None,
                "hausdorff_infinite_images": self.hd_inf, "images": len(self.dice)}
