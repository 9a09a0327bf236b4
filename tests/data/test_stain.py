"""Reinhard stain normalisation: typical images reach the reference statistics, flat ones keep their colour."""

from __future__ import annotations

import numpy as np

from histowsss.data.stain import DEFAULT_REFERENCE, lab_stats, reinhard


def test_an_h_and_e_like_image_reaches_the_reference_statistics():
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal((180, 110, 170), (25, 30, 20), (64, 64, 3)), 0, 255).astype(np.uint8)
    mean, std = lab_stats(reinhard(img))
    np.testing.assert_allclose(mean, DEFAULT_REFERENCE[0], atol=2.5)
    np.testing.assert_allclose(std, DEFAULT_REFERENCE[1], rtol=0.2)


def test_a_nearly_uniform_tile_is_not_stretched_into_garish_colours():
    """A pale tile with one pixel a level brighter: no pixel's colour may jump by more than the shift of the mean."""
    img = np.full((64, 64, 3), (200, 160, 190), np.uint8)
    img[5, 5] = (201, 160, 190)
    out = reinhard(img).astype(int)
    spread = np.abs(out - out[0, 0]).max()
    assert spread <= 20, spread
