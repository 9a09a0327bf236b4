"""Tissue mask on a thumbnail and the tile grid over the tissue at the network's resolution."""

from __future__ import annotations

import numpy as np
import pytest

from histowsss.slides.grid import Tile, tissue_fraction, tissue_tiles, working_downsample, working_size
from histowsss.slides.tissue import tissue_mask
from tests.conftest import tissue_slide_rgb


def test_tissue_mask_finds_the_blobs_not_the_glass():
    rgb = tissue_slide_rgb()
    m = tissue_mask(rgb)
    yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    blobs = ((yy - 90) ** 2 + (xx - 110) ** 2 < 70**2) | ((yy - 190) ** 2 + (xx - 300) ** 2 < 90**2)
    assert (m == blobs).mean() > 0.99
    assert not tissue_mask(np.full((50, 60, 3), 240, np.uint8)).any()  # blank glass: nothing


def test_small_specks_are_dropped():
    rgb = np.full((80, 80, 3), 245, np.uint8)
    rgb[10:13, 10:13] = (200, 90, 160)  # 9 px of dust
    rgb[40:70, 40:70] = (200, 90, 160)
    m = tissue_mask(rgb, min_area_px=16)
    assert not m[10:13, 10:13].any() and m[40:70, 40:70].all()


def test_tiles_cover_exactly_the_tissue_cells():
    tissue = np.zeros((30, 40), bool)  # thumbnail at 10 level-0 px per px: the slide is 400 x 300
    tissue[0:5, 0:5] = True  # level-0 (0..50, 0..50): tile (0, 0) at downsample 2, size 32 (= 64 level-0 px)
    tissue[25:30, 35:40] = True  # level-0 (350..400, 250..300): across tile rows 3-4 and columns 5-6
    tiles = tissue_tiles((400, 300), 2.0, 32, tissue, 10.0)
    assert working_size((400, 300), 2.0) == (200, 150)
    assert [(t.row, t.col) for t in tiles] == [(0, 0), (3, 5), (3, 6), (4, 5), (4, 6)]
    assert tiles[-1].level0_box(2.0, margin=4) == (376.0, 248.0, 80.0, 80.0)
    assert tissue_fraction(Tile(0, 0, 32), 2.0, tissue, 10.0) == pytest.approx(25 / 49, abs=0.01)
    assert tissue_tiles((400, 300), 2.0, 32, tissue, 10.0, min_tissue=0.9) == []


def test_working_downsample_from_mpp_or_explicit():
    assert working_downsample("s", 0.25, 0.5, 1.0) == 2.0
    assert working_downsample("s", 0.25, 0.5, 0.5) == 4.0  # image_scale 0.5: the network saw 1 um/px
    assert working_downsample("s", None, None, 1.0, downsample=3.0) == 3.0
    with pytest.raises(ValueError, match="data.mpp.*--downsample"):
        working_downsample("s.svs", 0.25, None)
    with pytest.raises(ValueError, match="s.svs.*--slide-mpp"):
        working_downsample("s.svs", None, 0.5)
    for slide_mpp, train_mpp in ((0.0, 0.5), (-1.0, 0.5), (0.25, -0.5)):  # not a ZeroDivisionError / a 1x1 map
        with pytest.raises(ValueError, match="s.svs: .*must be positive"):
            working_downsample("s.svs", slide_mpp, train_mpp)


def test_tissue_at_the_slide_edge_is_kept():
    """The closing does not erode tissue that the slide's edge cuts (the outside is not glass)."""
    pink = np.zeros((40, 60, 3), np.uint8)
    pink[:] = (200, 100, 170)
    assert tissue_mask(pink, min_area_px=1).all()
    corner = np.full((40, 60, 3), 242, np.uint8)
    corner[-5:, -5:] = (200, 100, 170)
    m = tissue_mask(corner, min_area_px=1)
    assert m[-5:, -5:].all() and m.sum() == 25
