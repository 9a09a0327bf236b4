"""The classifier stops with a diagnosis instead of failing silently."""

import numpy as np
import pytest

from histowsss.engine.diagnostics import TrainingFailure, chance_bce, check_epoch, macro_auc


def test_nan_loss_is_diagnosed():
    with pytest.raises(TrainingFailure, match="diverged"):
        check_epoch(0, float("nan"), 0.69, None, np.random.rand(20, 1), 3, [])


def test_loss_stuck_at_chance_is_diagnosed_after_min_epochs():
    t = (np.arange(40) % 2).reshape(-1, 1).astype(float)
    p = np.random.default_rng(0).random((40, 1))
    ch = chance_bce(t)
    check_epoch(0, ch, ch, 0.5, p, 3, [])  # too early to judge
    with pytest.raises(TrainingFailure, match="not learning"):
        check_epoch(2, ch, ch, macro_auc(t, p), p, 3, [])


def test_collapse_to_one_class_is_diagnosed():
    p = np.full((40, 2), 0.3)
    with pytest.raises(TrainingFailure, match="collapsed"):
        check_epoch(5, 0.2, 0.69, 0.9, p, 3, [])


def test_learning_run_passes():
    t = (np.arange(40) % 2).reshape(-1, 1).astype(float)
    p = np.clip(t * 0.8 + 0.1 + np.random.default_rng(0).normal(0, 0.05, t.shape), 0, 1)
    check_epoch(5, 0.2, chance_bce(t), macro_auc(t, p), p, 3, [])
    assert chance_bce(t) == pytest.approx(np.log(2), rel=1e-3)
