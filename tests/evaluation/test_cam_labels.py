"""CAM -> label map: class gating by image labels and, per pixel, by patch labels."""

from __future__ import annotations

import numpy as np

from histowsss.evaluation.cam_labels import cams_to_labels


def test_threshold_mode_with_pixel_gate():
    cam = np.zeros((1, 4, 4), np.float32)
    cam[0, :, 2:] = 0.9  # foreground evidence on the right half only
    present = np.array([True])
    plain = cams_to_labels(cam, present, [1], 0, "threshold", 0.5)
    assert (plain[:, 2:] == 1).all() and (plain[:, :2] == 0).all()
    allowed = np.ones((2, 4, 4), bool)
    allowed[1, :, 3] = False  # a patch without foreground
    allowed[0, 0, 0] = False  # a patch of foreground only
    gated = cams_to_labels(cam, present, [1], 0, "threshold", 0.5, allowed)
    assert (gated[:, 3] == 0).all() and gated[0, 0] == 1
    assert (gated[:, 2] == 1).all() and (gated[1:, :2] == 0).all()


def test_offset_mode_with_pixel_gate_and_absent_classes():
    cam = np.stack([np.full((2, 2), 0.6, np.float32), np.full((2, 2), 0.4, np.float32)])  # background, gland
    present = np.array([True, True])
    assert (cams_to_labels(cam, present, [0, 1], 0, "offset", 0.0) == 0).all()
    allowed = np.ones((2, 2, 2), bool)
    allowed[0, 1] = False
    out = cams_to_labels(cam, present, [0, 1], 0, "offset", 0.0, allowed)
    assert (out[0] == 0).all() and (out[1] == 1).all()
    # gland absent from the image labels and background refused: the ungated decision stays
    out2 = cams_to_labels(cam, np.array([True, False]), [0, 1], 0, "offset", 0.0, allowed)
    assert (out2 == 0).all()


def test_offset_mode_with_no_class_present_is_background_in_any_channel_order():
    cam = np.stack([np.full((2, 2), 0.6, np.float32), np.full((2, 2), 0.4, np.float32)])
    none = np.array([False, False])
    assert (cams_to_labels(cam, none, [0, 1], 0, "offset", 0.0) == 0).all()
    assert (cams_to_labels(cam[::-1].copy(), none, [1, 0], 0, "offset", 0.0) == 0).all()  # background listed last
    assert (cams_to_labels(cam[::-1].copy(), none, [1, 0], 0, "offset", 0.0, np.ones((2, 2, 2), bool)) == 0).all()


def test_argmax_mode_has_no_background():
    cam = np.stack([np.full((2, 2), 0.9, np.float32), np.array([[0.8, 0.1], [0.0, 0.0]], np.float32),
                    np.array([[0.1, 0.2], [0.0, 0.3]], np.float32)])
    # class 0 is not labelled: weak pixels take the best labelled class, never class 0 as a stand-in background
    out = cams_to_labels(cam, np.array([False, True, True]), [0, 1, 2], 0, "argmax", 0.25)
    assert out.tolist() == [[1, 2], [1, 2]]  # a tie at 0 goes to the first labelled class
    # nothing predicted present (a test image under the classifier gate): the best of all classes
    assert (cams_to_labels(cam, np.zeros(3, bool), [0, 1, 2], 0, "argmax", 0.0) == 0).all()
