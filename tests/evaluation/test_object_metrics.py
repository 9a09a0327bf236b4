"""Tests for histowsss.evaluation.object_metrics (GlaS object F1 / Dice / Hausdorff)."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from histowsss.evaluation.object_metrics import object_dice, object_f1, object_hausdorff, object_metrics


def _square(shape: tuple[int, int], r0: int, c0: int, h: int, w: int, label: int = 1, out=None) -> np.ndarray:
    out = np.zeros(shape, np.int32) if out is None else out
    out[r0 : r0 + h, c0 : c0 + w] = label
    return out


# ---------------------------------------------------------------- brute-force reference (challenge code)
def _ref_hd(a: np.ndarray, b: np.ndarray) -> float:
    d = cdist(np.argwhere(a), np.argwhere(b))
    return float(max(d.min(axis=1).max(), d.min(axis=0).max()))


def _ref_best(own: np.ndarray, other: np.ndarray) -> int:
    inter = other[own]
    inter = inter[inter != 0]
    return 0 if inter.size == 0 else int(np.bincount(inter).argmax())


def _ref(g: np.ndarray, s: np.ndarray) -> tuple[float, float, float]:
    ls, lg = [v for v in np.unique(s) if v], [v for v in np.unique(g) if v]
    tp = 0
    for i in ls:
        j = _ref_best(s == i, g)
        if j and np.sum((s == i) & (g == j)) / np.sum(g == j) > 0.5:
            tp += 1
    p, r = tp / len(ls), tp / len(lg)
    f1 = 0.0 if tp == 0 else 2 * p * r / (p + r)
    dice = hd = 0.0
    for own, other, lo, lt in ((s, g, ls, lg), (g, s, lg, ls)):
        total = np.sum(own > 0)
        for k in lo:
            a = own == k
            m = _ref_best(a, other)
            b = other == m
            dice += 0.5 * a.sum() / total * (2 * np.sum(a & b) / (a.sum() + b.sum()) if m else 0.0)
            h = _ref_hd(a, b) if m else min(_ref_hd(a, other == t) for t in lt)
            hd += 0.5 * a.sum() / total * h
    return f1, dice, hd


def _random_instances(rng: np.random.Generator, shape=(28, 30), n=5) -> np.ndarray:
    out = np.zeros(shape, np.int32)
    for k in range(n):
        r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        out[r : r + rng.integers(2, 9), c : c + rng.integers(2, 9)] = rng.integers(1, 50)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_bruteforce_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = _random_instances(rng)
    s = np.roll(g, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))  # perturbed copy ...
    s[s == s.max()] = 0  # ... missing one object ...
    extra = _random_instances(rng, n=3)  # ... with stray / overwriting objects
    s = np.where(extra > 0, extra + 100, s)
    f1, dice, hd = _ref(g, s)
    m = object_metrics(g, s)
    assert m["f1"] == pytest.approx(f1)
    assert m["dice"] == pytest.approx(dice)
    assert m["hausdorff"] == pytest.approx(hd)


# ---------------------------------------------------------------- hand-computed cases
def test_perfect_prediction_with_other_labels() -> None:
    g = _square((40, 50), 2, 2, 10, 8, 1)
    _square((40, 50), 20, 30, 12, 15, 7, out=g)
    _square((40, 50), 25, 3, 5, 5, 3, out=g)
    s = np.choose(g, np.arange(8) * 1000).astype(np.int64)  # relabelled 1000, 3000, 7000
    m = object_metrics(g, s)
    assert m.pop("terms")["dice"] == (285.0, 285.0, 285.0, 285.0)  # area x Dice, area: segmented, ground truth
    assert m == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 3, "fp": 0, "fn": 0, "dice": 1.0, "hausdorff": 0.0}
    assert object_f1(g, g)["f1"] == 1.0 and object_dice(g, g) == 1.0 and object_hausdorff(g, g) == 0.0


def test_shifted_object() -> None:
    g = _square((40, 40), 10, 10, 10, 10)
    s = _square((40, 40), 13, 14, 10, 10)  # shifted by (3, 4)
    assert object_hausdorff(g, s) == pytest.approx(5.0)
    assert object_dice(g, s) == pytest.approx(2 * 42 / 200)  # overlap 7 x 6
    f = object_f1(g, s)  # overlap 42 % of the gt object: not a TP
    assert (f["tp"], f["fp"], f["fn"], f["f1"]) == (0, 1, 1, 0.0)


def test_split_object() -> None:
    g = _square((20, 20), 5, 5, 10, 10)
    s = _square((20, 20), 5, 5, 10, 6, 1)
    _square((20, 20), 5, 11, 10, 4, 2, out=s)  # 60 % / 40 % of the gland
    f = object_f1(g, s)
    assert (f["tp"], f["fp"], f["fn"]) == (1, 1, 0)
    assert f["precision"] == 0.5 and f["recall"] == 1.0 and f["f1"] == pytest.approx(2 / 3)
    d_s = 0.6 * (2 * 60 / 160) + 0.4 * (2 * 40 / 140)
    assert object_dice(g, s) == pytest.approx(0.5 * (d_s + 2 * 60 / 160))
    # a 50 / 50 split: no piece covers more than half of the gland
    s2 = _square((20, 20), 5, 5, 10, 5, 1)
    _square((20, 20), 5, 10, 10, 5, 2, out=s2)
    f2 = object_f1(g, s2)
    assert (f2["tp"], f2["fp"], f2["fn"], f2["f1"]) == (0, 2, 1, 0.0)


def test_merged_objects() -> None:
    g = _square((20, 30), 5, 2, 10, 10, 1)  # area 100
    _square((20, 30), 6, 15, 8, 8, 2, out=g)  # area 64
    s = _square((20, 30), 5, 2, 10, 22, 5)  # one blob over both glands and the gap
    f = object_f1(g, s)
    assert (f["tp"], f["fp"], f["fn"]) == (1, 0, 1)
    assert f["precision"] == 1.0 and f["recall"] == 0.5 and f["f1"] == pytest.approx(2 / 3)
    dice_s = 2 * 100 / (220 + 100)  # blob matched to the larger-overlap gland
    dice_g = 100 / 164 * (2 * 100 / 320) + 64 / 164 * (2 * 64 / 284)
    assert object_dice(g, s) == pytest.approx(0.5 * (dice_s + dice_g))


def test_unmatched_object_uses_hausdorff_nearest() -> None:
    shape = (12, 40)
    g = np.zeros(shape, np.int32)
    g[0, 0:30] = 1  # long bar: closest by minimum distance to the stray pixel, but H = 26
    g[10, 20] = 2  # single pixel: H = 15 to the stray pixel
    s = g.copy()
    s[10, 5] = 9  # false positive, overlaps nothing
    hd = object_hausdorff(g, s)
    assert hd == pytest.approx(0.5 * 15 / 32)
    f = object_f1(g, s)
    assert (f["tp"], f["fp"], f["fn"]) == (2, 1, 0)
    assert object_dice(g, s) == pytest.approx(0.5 * (31 / 32 + 1.0))


def test_missed_object_hausdorff() -> None:
    g = _square((20, 40), 0, 0, 10, 10, 1)
    g[0, 30] = 2  # missed gt pixel object
    s = _square((20, 40), 0, 0, 10, 10, 4)
    # G side: 1/101 * H(pixel, square) = sqrt(9^2 + 30^2); S side: 0
    assert object_hausdorff(g, s) == pytest.approx(0.5 * math.sqrt(981) / 101)
    assert object_f1(g, s)["fn"] == 1


def test_empty_maps() -> None:
    z = np.zeros((8, 8), np.int32)
    g = _square((8, 8), 1, 1, 3, 3)
    assert {k: v for k, v in object_metrics(z, z).items() if k != "terms"} == {
        "precision": 1.0, "recall": 1.0, "f1": 1.0, "tp": 0, "fp": 0, "fn": 0, "dice": 1.0, "hausdorff": 0.0
    }
    for a, b in ((g, z), (z, g)):
        m = object_metrics(a, b)
        assert m["f1"] == 0.0 and m["dice"] == 0.0 and math.isinf(m["hausdorff"])


def test_input_validation() -> None:
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        object_f1(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(TypeError):
        object_dice(np.zeros((4, 4)), np.zeros((4, 4), int))
    with pytest.raises(ValueError):
        object_hausdorff(np.full((4, 4), -1), np.zeros((4, 4), int))


def test_huge_labels_same_result() -> None:
    rng = np.random.default_rng(3)
    g, s = _random_instances(rng), _random_instances(rng)
    big = np.where(s > 0, s.astype(np.int64) * 10**9, 0)
    assert object_metrics(g, big) == object_metrics(g, s)


def test_glas_sized_image_is_fast() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:522, :775]
    g = np.zeros((522, 775), np.int32)
    for k in range(1, 21):
        r, c, rad = rng.integers(40, 482), rng.integers(40, 735), rng.integers(15, 45)
        g[(yy - r) ** 2 + (xx - c) ** 2 < rad**2] = k
    s = np.roll(g, 3, axis=1)
    s[s % 3 == 0] = 0  # missed glands
    s[s == 4] = np.where(xx[s == 4] % 2 == 0, 4, 50)  # a fragmented gland
    blobs, _ = ndimage.label(rng.random((522, 775)) > 0.9995)  # scattered false positives
    s = np.where((s == 0) & (g == 0) & (blobs > 0), blobs + 100, s)
    t = time.perf_counter()
    m = object_metrics(g, s)
    assert time.perf_counter() - t < 1.0
    assert 0 < m["f1"] < 1 and 0 < m["dice"] < 1 and m["hausdorff"] > 0
