"""Tests for histowsss.evaluation.metrics (confusion-matrix pixel metrics)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from histowsss.evaluation.metrics import (
    ConfusionMatrix,
    dice_from_confusion,
    format_table,
    iou_from_confusion,
)

GT = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)


def test_hand_computed_three_classes_with_ignore() -> None:
    cm = ConfusionMatrix(3)
    cm.update(GT, PRED)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    assert cm.matrix.dtype == np.int64
    s = cm.summary(["bg", "gland", "other"])
    # IoU = 1/2, 2/3, 1 ; Dice = 2/3, 4/5, 1 ; acc = 4/5 ; freq = 2/5, 2/5, 1/5
    assert s["miou"] == pytest.approx(72.22)
    assert s["mdice"] == pytest.approx(82.22)
    assert s["pixel_acc"] == pytest.approx(80.0)
    assert s["fwiou"] == pytest.approx(66.67)
    assert s["per_class"]["bg"] == {"iou": 50.0, "dice": 66.67, "precision": 100.0, "recall": 50.0, "support": 2}
    assert s["per_class"]["gland"] == {"iou": 66.67, "dice": 80.0, "precision": 66.67, "recall": 100.0, "support": 2}
    assert s["per_class"]["other"]["iou"] == 100.0
    json.dumps(s)  # JSON-serialisable
    assert all(type(s[k]) is float for k in ("miou", "fwiou", "mdice", "pixel_acc"))


def test_ignore_index_is_configurable() -> None:
    cm = ConfusionMatrix(2, ignore_index=0)
    cm.update(np.array([0, 1, 1, 0]), np.array([1, 1, 0, 1]))
    np.testing.assert_array_equal(cm.matrix, [[0, 0], [1, 1]])


def test_absent_class_is_none_and_excluded_from_means() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]))
    s = cm.summary()
    assert s["per_class"]["2"] == {"iou": None, "dice": None, "precision": None, "recall": None, "support": 0}
    assert s["miou"] == 100.0 and s["mdice"] == 100.0 and s["fwiou"] == 100.0
    json.dumps(s)


def test_predicted_but_not_in_gt_counts_as_zero() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]))
    s = cm.summary()
    assert s["per_class"]["2"] == {"iou": 0.0, "dice": 0.0, "precision": 0.0, "recall": 0.0, "support": 0}
    assert s["miou"] == pytest.approx(round((50 + 100 + 0) / 3, 2))


def test_perfect_prediction_is_100() -> None:
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, (17, 23))
    cm = ConfusionMatrix(3)
    cm.update(gt, gt)
    s = cm.summary()
    assert s["miou"] == s["fwiou"] == s["mdice"] == s["pixel_acc"] == 100.0
    for v in s["per_class"].values():
        assert v["iou"] == v["dice"] == v["precision"] == v["recall"] == 100.0


def test_merge_and_incremental_equal_one_shot() -> None:
    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 4, (9, 11)) for _ in range(4)]
    preds = [rng.integers(0, 4, (9, 11)) for _ in range(4)]
    for g in gts:
        g[rng.random(g.shape) < 0.1] = 255
    one_shot = ConfusionMatrix(4)
    one_shot.update(np.stack(gts), np.stack(preds))
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    for g, p in zip(gts[:2], preds[:2]):
        a.update(g, p)
    for g, p in zip(gts[2:], preds[2:]):
        b.update(g, p)
    a.merge(b)
    np.testing.assert_array_equal(a.matrix, one_shot.matrix)
    assert a.summary() == one_shot.summary()


def test_all_ignored_gives_none_means() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.full((3, 3), 255), np.zeros((3, 3), int))
    s = cm.summary()
    assert cm.matrix.sum() == 0
    assert s["miou"] is None and s["pixel_acc"] is None
    json.dumps(s)


def test_errors() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        cm.update(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="pred"):
        cm.update(np.zeros(4, int), np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="pred"):
        cm.update(np.zeros(4, int), np.array([0, -1, 0, 0]))
    with pytest.raises(ValueError, match="gt"):
        cm.update(np.array([0, 7, 0, 0]), np.zeros(4, int))
    with pytest.raises(ValueError):
        cm.merge(ConfusionMatrix(2))
    with pytest.raises(ValueError):
        cm.summary(["a", "b"])
    assert cm.matrix.sum() == 0  # failed updates leave the counts untouched


def test_matrix_is_a_copy() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    m = cm.matrix
    m[:] = 99
    np.testing.assert_array_equal(cm.matrix, np.eye(2))


def test_helpers() -> None:
    cm = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    iou = iou_from_confusion(cm)
    np.testing.assert_allclose(iou[:2], [0.5, 2 / 3])
    assert np.isnan(iou[2])
    np.testing.assert_allclose(dice_from_confusion(cm)[:2], [2 / 3, 0.8])
    with pytest.raises(ValueError):
        iou_from_confusion(np.zeros((2, 3)))


def test_format_table() -> None:
    table = format_table(
        [{"name": "a", "miou": 50.0, "n": 3}, {"name": "b", "miou": None}],
        ["name", "miou", "n"],
    )
    assert table.splitlines() == [
        "| name | miou | n |",
        "| --- | --- | --- |",
        "| a | 50.00 | 3 |",
        "| b | - |  |",
    ]
