"""make_sem_seg_labels' label rules on their own (no network): what an image without walkable evidence becomes."""

from __future__ import annotations

import numpy as np
import torch

from histowsss.steps.make_sem_seg_labels import walk_labels


def _walk(mode: str, present: list[bool], background: int = 0):
    cams = torch.zeros((3, 4, 4))  # no evidence anywhere
    return walk_labels(cams, np.array(present), [0, 1, 2], background, mode, torch.zeros((4, 4)), (16, 16), 0.0,
                       exp_times=1)


def test_no_evidence_without_a_background_class_is_ignore_not_a_tissue_class():
    """Argmax mode (tissue types, no background): class 0 is a real class, so an image whose labelled classes carry
    no evidence, or that has no label, is ignore (255) as cam_to_ir_label marks it, never filled with a class."""
    for present in ([False, False, False], [False, True, True]):
        lab, has_fg = _walk("argmax", present)
        assert (lab == 255).all() and not has_fg


def test_no_evidence_with_a_background_class_is_background():
    lab, has_fg = _walk("threshold", [False, True, False])
    assert (lab == 0).all() and not has_fg
