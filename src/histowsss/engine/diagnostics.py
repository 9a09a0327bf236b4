"""Training diagnostics: say clearly when a classifier is not learning, instead of failing silently."""

from __future__ import annotations

import math

import numpy as np


class TrainingFailure(RuntimeError):
    """Training stopped because it is not learning; the message gives the diagnosis and what to try."""


def chance_bce(targets: np.ndarray) -> float:
    """Mean BCE of the best constant predictor (class priors): the loss of a net that learned nothing."""
    p = np.clip(targets.mean(axis=0), 1e-6, 1 - 1e-6)
    return float(np.mean(-(p * np.log(p) + (1 - p) * np.log(1 - p))))


def macro_auc(targets: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean ROC-AUC over the classes that have both positives and negatives (None if none has)."""
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(targets[:, k], probs[:, k]) for k in range(targets.shape[1])
            if 0 < targets[:, k].sum() < len(targets)]
    return float(np.mean(aucs)) if aucs else None


def accuracy(targets: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    """Mean per-class accuracy at ``threshold``."""
    return float(((probs >= threshold) == (targets >= 0.5)).mean())


def check_epoch(epoch: int, loss: float, chance: float, auc: float | None, probs: np.ndarray,
                min_epochs: int, history: list[dict]) -> None:
    """Raise TrainingFailure with a diagnosis if the loss is NaN, stuck at chance, or predictions collapsed
    (``epoch`` counts from 0; messages count from 1, as the epoch lines)."""
    if not math.isfinite(loss):
        raise TrainingFailure(
            f"epoch {epoch + 1}: loss is {loss}. Training diverged: lower train_cam.lr (e.g. by 10x), check that images "
            "are not blank/corrupt (`histowsss data check`), keep class_balance on for rare classes."
        )
    if epoch + 1 < min_epochs:
        return
    stuck = loss > 0.97 * chance and (auc is None or auc < 0.6)
    collapsed = probs.shape[0] > 10 and bool(np.all(probs.std(axis=0) < 1e-3))
    if collapsed:
        raise TrainingFailure(
            f"epoch {epoch + 1}: predictions collapsed to one constant per class (std < 1e-3); the classifier ignores "
            "its input. Check the labels per class (`histowsss data stats`), lower train_cam.lr, and enable "
            "train_cam.class_balance."
        )
    if stuck:
        raise TrainingFailure(
            f"epoch {epoch + 1}: loss {loss:.4f} (unweighted; the epoch line shows the class-balanced one) is still at "
            f"chance level ({chance:.4f}) and AUC is "
            f"{'n/a' if auc is None else f'{auc:.3f}'}: the classifier is not learning. Likely causes: labels that "
            "do not match the images (see `histowsss data stats`), a learning rate too low or too high, "
            "too many frozen stages for this data (backbone.frozen_stages), or weights=none with too few epochs."
        )
