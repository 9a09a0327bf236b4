"""Tests for what a manifest says about itself (read for `histowsss init`)."""

from __future__ import annotations

import pytest

from histowsss.config import ConfigError
from histowsss.data.manifest_facts import background_class, class_name_twins, label_separator_of, split_role


@pytest.mark.parametrize("cells, sep", [(["TE,NEC", "NEC,STR"], ","), (["TE", "STR", "TE,NEC"], ","),
                                        (["TE|NEC", "NEC|STR", "TE|STR"], "|"),
                                        (["adenoma, low grade", "adenoma, high grade", "normal"], ";")])
def test_separator_found_from_few_cells(cells, sep):
    assert label_separator_of([{"label": c} for c in cells], "label") == sep


def test_split_roles_follow_the_split_names():
    assert [split_role(n) for n in ("train", "Training", "val", "valid2", "dev", "testA", "holdout")] == [
        "train_splits", "train_splits", "val_splits", "val_splits", "val_splits", "test_splits", None]


def test_class_names_that_differ_only_in_case_or_spaces_are_twins():
    assert class_name_twins(["TE", "Te", "stroma ", "stroma", "NEC"]) == [["TE", "Te"], ["stroma ", "stroma"]]
    assert class_name_twins(["TE", "NEC"]) == []


def test_the_background_class_is_found_given_or_refused():
    assert background_class(["malignant", "Normal mucosa"], None) == "Normal mucosa"
    assert background_class(["tumour", "not normal", "benign"], None) == "benign"
    assert background_class(["TE", "NEC"], "none") is None
    with pytest.raises(ConfigError, match="cannot tell which class is background"):
        background_class(["TE", "NEC"], None)
    with pytest.raises(ConfigError, match="is not one of the manifest's classes"):
        background_class(["TE", "NEC"], "STR")


def test_16_bit_masks_of_0_and_65535_are_binary(tmp_path):
    import numpy as np
    from PIL import Image

    from histowsss.data.manifest_facts import mask_mode_of

    m = np.zeros((16, 16), np.uint16)
    m[4:12, 4:12] = 65535
    Image.fromarray(m).save(tmp_path / "m.png")
    mode, note = mask_mode_of(tmp_path, ["m.png"], ["benign", "malignant"], "benign", [])
    assert mode == {"mask_mode": "binary_image_label"} and "[0, 65535]" in note
    with pytest.raises(ConfigError, match="no background class, and without one 65535 is no class"):
        mask_mode_of(tmp_path, ["m.png"], ["TE", "NEC"], None, [])


def test_masks_drawn_in_their_alpha_channel_are_named_by_init(tmp_path):
    import numpy as np
    from PIL import Image

    from histowsss.data.manifest_facts import mask_mode_of

    m = np.zeros((16, 16, 2), np.uint8)
    m[4:12, 4:12, 1] = 255  # grey 0 everywhere, the drawing in the alpha channel
    Image.fromarray(m, "LA").save(tmp_path / "m.png")
    with pytest.raises(ConfigError, match="drawn in its alpha"):
        mask_mode_of(tmp_path, ["m.png"], ["benign", "malignant"], "benign", [])


def test_opaque_rgba_colour_masks_still_get_their_colours_listed(tmp_path):
    """Only masks drawn in the alpha channel are refused early: an opaque RGBA colour mask (as GIMP saves one) is a
    colour mask, whose colours init lists with --mask-colors."""
    import numpy as np
    from PIL import Image

    from histowsss.data.manifest_facts import mask_mode_of

    m = np.zeros((16, 16, 4), np.uint8)
    m[..., 3] = 255
    m[:8, :, 0] = 255
    m[8:, :, 1] = 255
    Image.fromarray(m, "RGBA").save(tmp_path / "m.png")
    with pytest.raises(ConfigError, match=r"colour images \(colours #00ff00, #ff0000|colour images \(colours #ff0000"):
        mask_mode_of(tmp_path, ["m.png"], ["benign", "malignant"], "benign", [])
