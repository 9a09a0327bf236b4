"""Confident IR labels from CAMs (threshold and background-channel rules) and the CRF wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from histowsss.ops.ir_labels import IGNORE, confident_labels


def test_threshold_rule_matches_irn():
    cam = np.array([[[0.9, 0.5, 0.2, 0.04]]], np.float32)  # one foreground class (id 1), background id 0
    lab = confident_labels(cam, np.array([True]), [1], 0, "threshold", conf_fg=0.3, conf_bg=0.05)
    assert lab.tolist() == [[1, 1, IGNORE, 0]]


def test_absent_classes_and_background_only_images():
    cam = np.ones((2, 2, 2), np.float32)
    lab = confident_labels(cam, np.array([False, False]), [1, 2], 0, "threshold", 0.3, 0.05)
    assert (lab == 0).all()
    cam = np.stack([np.full((1, 3), 0.2), np.array([[0.9, 0.6, 0.1]])]).astype(np.float32)
    lab = confident_labels(cam, np.array([False, True]), [1, 2], 0, "threshold", 0.3, 0.05)
    assert lab.tolist() == [[2, 2, IGNORE]]


def test_background_channel_rule():
    # channels: background (id 0), gland (id 1)
    bgc = np.array([[0.1, 0.5, 0.9, 0.8, 0.6]], np.float32)
    fgc = np.array([[0.9, 0.45, 0.3, 0.02, 0.55]], np.float32)
    lab = confident_labels(np.stack([bgc, fgc]), np.array([True, True]), [0, 1], 0, "offset",
                           conf_fg=0.3, conf_bg=0.05, margin=0.1)
    # fg strong and beating bg; both weak margins -> ignore; bg strong and winning; no fg evidence; too close
    assert lab.tolist() == [[1, IGNORE, 0, 0, IGNORE]]


def test_crf_missing_package_is_a_clear_error(monkeypatch):
    import builtins

    from histowsss.ops import crf

    real = builtins.__import__

    def no_crf(name, *a, **k):
        if name.startswith("pydensecrf"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_crf)
    with pytest.raises(crf.CrfUnavailable, match=r"histowsss\[crf\]"):
        crf.crf_refine_labels(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.int64), 2)


def test_crf_smooths_labels_along_the_image():
    pytest.importorskip("pydensecrf.densecrf")
    from histowsss.ops.crf import crf_refine_labels

    img = np.zeros((16, 16, 3), np.uint8)
    img[:, 8:] = 255
    labels = np.zeros((16, 16), np.int64)
    labels[:, 8:] = 1
    noisy = labels.copy()
    noisy[3, 12] = 0
    noisy[10, 2] = 1
    img.setflags(write=False)  # images decoded by PIL are read-only
    out = crf_refine_labels(img, noisy, 2, bilateral_sxy=5)
    assert (out == labels).mean() > 0.98


def test_argmax_rule_without_background_class():
    # three tissue classes (ids 0, 1, 2), none of them background; the image is labelled with classes 1 and 2
    c0 = np.array([[0.9, 0.9, 0.9, 0.9]], np.float32)
    c1 = np.array([[0.8, 0.5, 0.1, 0.0]], np.float32)
    c2 = np.array([[0.1, 0.45, 0.7, 0.0]], np.float32)
    cam, present = np.stack([c0, c1, c2]), np.array([False, True, True])
    lab = confident_labels(cam, present, [0, 1, 2], 0, "argmax", conf_fg=0.3, conf_bg=0.05)
    # class 0 is never given (not labelled); a pixel is confident when its best class beats the second by 0.3
    assert lab.tolist() == [[1, IGNORE, 2, IGNORE]]
    # one labelled class: that class everywhere, whatever its CAM; no label: nothing known
    assert (confident_labels(cam, np.array([False, True, False]), [0, 1, 2], 0, "argmax", 0.3, 0.05) == 1).all()
    assert (confident_labels(cam, np.zeros(3, bool), [0, 1, 2], 0, "argmax", 0.3, 0.05) == IGNORE).all()
