"""Pixel-level segmentation metrics from a dataset-level confusion matrix (numpy only)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["ConfusionMatrix", "iou_from_confusion", "dice_from_confusion", "format_table"]


def _as_int_array(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool:
        return a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{what} must be an integer array, got dtype {a.dtype}")
    return a


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise num / den with NaN where den == 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def iou_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU in [0, 1] from a (C, C) confusion matrix; NaN for a class with no gt and no pred pixels."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    tp = np.diag(cm)
    return _safe_div(tp, cm.sum(axis=1) + cm.sum(axis=0) - tp)


def dice_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Per-class Dice in [0, 1] from a (C, C) confusion matrix; NaN for a class with no gt and no pred pixels."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    return _safe_div(2.0 * np.diag(cm), cm.sum(axis=1) + cm.sum(axis=0))


def _pct(x: float) -> float | None:
    """Fraction -> percent rounded to 2 decimals; NaN -> None."""
    return None if np.isnan(x) else round(float(x) * 100.0, 2)


class ConfusionMatrix:
    """Dataset-level confusion matrix accumulated image by image (rows = ground truth, cols = prediction)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self._cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Zero the accumulated counts."""
        self._cm[:] = 0

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image (or batch): same-shape integer arrays; gt == ignore_index pixels are skipped.

        Raises ValueError on a shape mismatch, on any ``pred`` value outside [0, C), or on a
        non-ignored ``gt`` value outside [0, C).
        """
        gt = _as_int_array(gt, "gt")
        pred = _as_int_array(pred, "pred")
        if gt.shape != pred.shape:
            raise ValueError(f"gt and pred shapes differ: gt {gt.shape} vs pred {pred.shape}")
        c = self.num_classes
        gt = gt.ravel()
        pred = pred.ravel()
        if pred.size and (pred.min() < 0 or pred.max() >= c):
            raise ValueError(
                f"pred values must lie in [0, {c}), got range [{pred.min()}, {pred.max()}]"
            )
        valid = gt != self.ignore_index
        if not valid.all():
            gt = gt[valid]
            pred = pred[valid]
        if gt.size == 0:
            return
        if gt.min() < 0 or gt.max() >= c:
            raise ValueError(
                f"gt values must lie in [0, {c}) or equal ignore_index={self.ignore_index}, "
                f"got range [{gt.min()}, {gt.max()}]"
            )
        idx = gt.astype(np.int64) * c + pred.astype(np.int64)
        self._cm += np.bincount(idx, minlength=c * c).reshape(c, c)

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add the counts of another matrix with the same number of classes."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"num_classes differ: {self.num_classes} vs {other.num_classes}")
        self._cm += other._cm

    @classmethod
    def from_matrix(cls, counts: Any, ignore_index: int = 255) -> "ConfusionMatrix":
        """A matrix holding the given (C, C) counts (rows = gt, cols = pred), e.g. one saved with ``matrix.tolist()``."""
        arr = np.asarray(counts, dtype=np.int64)
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or (arr < 0).any():
            raise ValueError(f"counts must be a square matrix of non-negative integers, got shape {arr.shape}")
        cm = cls(arr.shape[0], ignore_index)
        cm._cm[:] = arr
        return cm

    @property
    def matrix(self) -> np.ndarray:
        """A copy of the int64 (C, C) counts (rows = gt, cols = pred)."""
        return self._cm.copy()

    def summary(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-serialisable metrics in percent (0-100, 2 decimals).

        Keys: ``miou``, ``fwiou``, ``mdice``, ``pixel_acc`` and ``per_class`` mapping each class name
        to ``iou``, ``dice``, ``precision``, ``recall`` (percent) and ``support`` (gt pixel count, int).
        A class with no gt and no pred pixels gets None for its four ratios and is excluded from the
        means; otherwise an undefined ratio (e.g. precision of a never-predicted class) is 0.
        Means and pixel_acc are None when nothing was counted.
        """
        c = self.num_classes
        if class_names is None:
            names = [str(i) for i in range(c)]
        else:
            names = [str(n) for n in class_names]
            if len(names) != c:
                raise ValueError(f"expected {c} class names, got {len(names)}")
            if len(set(names)) != c:
                raise ValueError(f"class names must be unique, got {names}")
        cm = self._cm.astype(np.float64)
        tp = np.diag(cm)
        support = cm.sum(axis=1)
        predicted = cm.sum(axis=0)
        total = cm.sum()
        present = (support + predicted) > 0

        iou = iou_from_confusion(cm)
        dice = dice_from_confusion(cm)
        precision = np.where(present, np.nan_to_num(_safe_div(tp, predicted)), np.nan)
        recall = np.where(present, np.nan_to_num(_safe_div(tp, support)), np.nan)

        per_class: dict[str, dict[str, float | int | None]] = {}
        for k, name in enumerate(names):
            per_class[name] = {
                "iou": _pct(iou[k]),
                "dice": _pct(dice[k]),
                "precision": _pct(precision[k]),
                "recall": _pct(recall[k]),
                "support": int(self._cm[k].sum()),
            }
        if present.any():
            miou = _pct(float(np.mean(iou[present])))
            mdice = _pct(float(np.mean(dice[present])))
            freq = support / total
            fwiou = _pct(float(np.sum(freq[present] * iou[present])))
            pixel_acc = _pct(float(tp.sum() / total))
        else:
            miou = mdice = fwiou = pixel_acc = None
        return {
            "miou": miou,
            "fwiou": fwiou,
            "mdice": mdice,
            "pixel_acc": pixel_acc,
            "per_class": per_class,
        }

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, pixels={int(self._cm.sum())})"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (float, np.floating)):
        return "nan" if np.isnan(v) else f"{float(v):.2f}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Markdown table of ``rows`` restricted to ``columns``; floats get 2 decimals, None -> '-', missing -> ''."""
    if not columns:
        raise ValueError("columns must not be empty")
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join("" if c not in row else _cell(row[c]) for c in columns) + " |")
    return "\n".join(lines)
