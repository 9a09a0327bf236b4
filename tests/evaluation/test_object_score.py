"""Object metrics summed over images and splits; instances from a class map."""

from __future__ import annotations

import numpy as np

from histowsss.evaluation.object_score import ObjectScore, predicted_objects, semantic_components


def test_semantic_components_numbers_each_class_and_skips_background_and_ignore():
    sem = np.array([[1, 1, 0, 2],
                    [0, 0, 0, 2],
                    [1, 255, 0, 0]], np.uint8)
    inst = semantic_components(sem, background=0)
    assert inst[0, 0] == inst[0, 1] and inst[2, 0] != inst[0, 0]   # two separate regions of class 1
    assert inst[0, 3] == inst[1, 3] and inst[0, 3] not in (inst[0, 0], inst[2, 0])
    assert (inst[sem == 0] == 0).all() and inst[2, 1] == 0
    assert len(np.unique(inst[inst > 0])) == 3
    assert len(np.unique(semantic_components(sem, background=None))) == 4 + 1  # class 0 regions count too


def test_objects_in_unlabelled_ground_truth_are_not_scored():
    """Pixels the ground truth leaves unlabelled (255) count at the object level as at the pixel level: not at all."""
    gt = np.zeros((12, 12), np.uint8)
    gt[1:5, 1:5] = 1
    gt[7:11, 7:11] = 255  # an unannotated region
    pred = np.where(gt == 255, 1, gt).astype(np.uint8)  # perfect, and a region where nothing is annotated
    inst_gt = (gt == 1).astype(np.int64)
    score = ObjectScore()
    score.update(inst_gt, predicted_objects(pred, gt, background=0))
    s = score.summary()
    assert (s["tp"], s["fp"], s["fn"]) == (1, 0, 0) and s["dice_mean_per_image"] == 100.0
    assert len(np.unique(semantic_components(pred, background=0))) == 3  # unmasked, it would have been a false object


def test_merge_equals_scoring_every_image_in_one():
    gt = np.zeros((10, 10), np.int64)
    gt[1:4, 1:4], gt[6:9, 6:9] = 1, 2
    pred_good, pred_miss = gt.copy(), np.zeros_like(gt)
    pred_miss[1:4, 1:4] = 5
    a, b, both = ObjectScore(), ObjectScore(), ObjectScore()
    a.update(gt, pred_good)
    b.update(gt, pred_miss)
    b.update(gt, np.zeros_like(gt))  # nothing predicted: infinite Hausdorff, counted apart
    for p in (pred_good, pred_miss, np.zeros_like(gt)):
        both.update(gt, p)
    a.merge(b)
    assert a.summary() == both.summary()
    s = both.summary()
    assert (s["tp"], s["fp"], s["fn"]) == (3, 0, 3) and s["precision"] == 100.0 and s["recall"] == 50.0
    assert s["images"] == 3 and s["hausdorff_infinite_images"] == 1


def test_f1_is_zero_when_nothing_is_predicted_and_none_without_any_object():
    gt = np.zeros((6, 6), np.int64)
    gt[1:3, 1:3] = 1
    missed = ObjectScore()
    missed.update(gt, np.zeros_like(gt))
    assert missed.summary()["f1"] == 0.0 and missed.summary()["precision"] is None
    empty = ObjectScore()
    empty.update(np.zeros_like(gt), np.zeros_like(gt))
    assert empty.summary()["f1"] is None


def test_dice_and_hausdorff_pool_every_object_by_area_as_glas_defines_them():
    """GlaS weighs each object by its area over all objects of the test set: a large gland segmented well is not
    outvoted by a tiny one in another image, and images without glands add no object (per-image means beside)."""
    big = np.zeros((200, 200), np.int64)
    big[20:180, 20:180] = 1  # 25 600 px, segmented perfectly
    small = np.zeros((40, 40), np.int64)
    small[10:20, 10:20] = 1  # 100 px, half found
    half = small.copy()
    half[10:20, 15:20] = 0
    score = ObjectScore()
    score.update(big, big.copy())
    score.update(small, half)
    s = score.summary()
    # per object: the small gland's Dice is 2*50/150; pooled: (25600 * 1 + 100 * 2/3) / 25700 on the GT side, and
    # (25600 + 50 * 2/3) / 25650 on the segmented side
    expect = 0.5 * ((25600 + 100 * 2 / 3) / 25700 + (25600 + 50 * 2 / 3) / 25650)
    assert s["dice"] == round(100 * expect, 2) and s["dice_mean_per_image"] == round(100 * (1 + 2 / 3) / 2, 2)
    assert s["hausdorff"] < 0.1 < s["hausdorff_mean_per_image"]  # the tiny object weighs 100 / 25 700
    empty = np.zeros((40, 40), np.int64)
    score.update(empty, empty)  # an image without glands and nothing predicted: no object, nothing changes
    assert (score.summary()["dice"], score.summary()["hausdorff"]) == (s["dice"], s["hausdorff"])
    speck = empty.copy()
    speck[5:7, 5:7] = 3
    score.update(empty, speck)  # a false speck there: one more object with Dice 0 and no Hausdorff partner
    t = score.summary()
    assert t["dice"] < s["dice"] and t["hausdorff"] == s["hausdorff"] and t["hausdorff_unpaired_objects"] == 1
