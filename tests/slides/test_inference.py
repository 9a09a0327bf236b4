"""Tiled slide inference: stitching equals inference on the whole picture, borders mirrored, resumable cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from histowsss.slides.grid import Tile, tissue_tiles
from histowsss.slides.inference import UNLABELLED, block_mean, predict_slide, read_tile
from histowsss.slides.reader import open_slide
from tests.conftest import tissue_slide_rgb


def dark_pixels(rgb: np.ndarray) -> np.ndarray:
    """A 'network' with no context: class 1 where the red channel is under 150 (the nuclei)."""
    p1 = (rgb[..., 0] < 150).astype(np.float32)
    return np.stack([1 - p1, p1])


def all_tiles(size: int, w: int, h: int) -> list[Tile]:
    return [Tile(x, y, size) for y in range(0, h, size) for x in range(0, w, size)]


def test_stitched_map_equals_the_whole_picture(slide_file: Path):
    rgb = tissue_slide_rgb()
    with open_slide(slide_file) as s:
        pred = predict_slide(s, all_tiles(64, 420, 300), dark_pixels, 2, downsample=1.0, margin=8, out_factor=4,
                             progress=False, log=lambda m: None)
    assert pred.probs.shape == (2, 75, 105) and pred.out_downsample == 4.0 and pred.tiles_total == 35
    want = np.clip(np.rint(block_mean(dark_pixels(rgb), 4) * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pred.probs, want)


def test_tiles_without_tissue_are_background(slide_file: Path):
    with open_slide(slide_file) as s:
        thumb, ds = s.thumbnail(105)
        from histowsss.slides.tissue import tissue_mask

        tiles = tissue_tiles(s.dimensions, 2.0, 32, tissue_mask(thumb), ds)
        assert 0 < len(tiles) < 35
        pred = predict_slide(s, tiles, lambda rgb: np.stack([np.zeros(rgb.shape[:2]), np.ones(rgb.shape[:2])]), 2,
                             downsample=2.0, margin=4, out_factor=2, fill_class=0, progress=False)
    lab = pred.labels()
    kept = np.zeros(lab.shape, bool)
    for t in tiles:
        kept[t.y // 2 : (t.y + 32) // 2, t.x // 2 : (t.x + 32) // 2] = True
    assert (lab[kept] == 1).all() and (lab[~kept] == 0).all()
    # a class map without a background class (tissue types): off-tissue pixels are unlabelled, not class 0
    with open_slide(slide_file) as s:
        pred = predict_slide(s, tiles, lambda rgb: np.stack([np.ones(rgb.shape[:2]), np.zeros(rgb.shape[:2])]), 2,
                             downsample=2.0, margin=4, out_factor=2, fill_class=None, progress=False)
    lab = pred.labels()
    assert (lab[kept] == 0).all() and (lab[~kept] == UNLABELLED).all()


def test_margins_outside_the_slide_are_mirrored(slide_file: Path):
    rgb = tissue_slide_rgb()
    with open_slide(slide_file) as s:
        t = read_tile(s, Tile(0, 0, 64), 1.0, 16, (420, 300))
    want = np.pad(rgb[:80, :80], ((16, 0), (16, 0), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(t, want)


def test_a_killed_slide_resumes_from_its_cached_tiles(slide_file: Path, tmp_path: Path):
    calls = {"n": 0}

    def flaky(rgb):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # killed after 5 finished tiles
        return dark_pixels(rgb)

    tiles = all_tiles(64, 420, 300)
    cache = tmp_path / "cache"
    params = {"downsample": 1.0, "tile": 64}
    with open_slide(slide_file) as s:
        with pytest.raises(KeyboardInterrupt):
            predict_slide(s, tiles, flaky, 2, 1.0, margin=8, cache_dir=cache, params=params, progress=False)
        assert len(list(cache.glob("r*_c*.npy"))) == 5
        calls["n"] = 100
        pred = predict_slide(s, tiles, flaky, 2, 1.0, margin=8, cache_dir=cache, params=params, progress=False)
        assert pred.tiles_reused == 5 and calls["n"] == 100 + 30
        fresh = predict_slide(s, tiles, dark_pixels, 2, 1.0, margin=8, progress=False)
        np.testing.assert_array_equal(pred.probs, fresh.probs)
        logs: list[str] = []  # other settings: the cache is cleared, nothing reused
        again = predict_slide(s, tiles, dark_pixels, 2, 1.0, margin=8, cache_dir=cache,
                              params={**params, "tile": 32}, progress=False, log=logs.append)
        assert again.tiles_reused == 0 and "other settings" in logs[0]


def test_bad_arguments(slide_file: Path):
    with open_slide(slide_file) as s:
        with pytest.raises(ValueError, match="no tissue tiles"):
            predict_slide(s, [], dark_pixels, 2, 1.0)
        with pytest.raises(ValueError, match="multiple of the output factor"):
            predict_slide(s, [Tile(0, 0, 30)], dark_pixels, 2, 1.0, out_factor=4)
        with pytest.raises(ValueError, match="returned shape"):
            predict_slide(s, [Tile(0, 0, 32)], lambda rgb: np.zeros((3, 5, 5)), 2, 1.0, progress=False)
        with pytest.raises(ValueError, match="margin must be 0 or more"):
            predict_slide(s, [Tile(0, 0, 32)], dark_pixels, 2, 1.0, margin=-8, progress=False)


def test_labels_areas_and_float16_probabilities_by_bands(monkeypatch):
    """The stitched map's conversions, a band of rows at a time, equal the whole-array ones."""
    from histowsss.slides import inference
    from histowsss.slides.inference import SlidePrediction
    from histowsss.slides.predict import cell_areas, level0_areas

    rng = np.random.default_rng(0)
    probs = rng.integers(0, 256, (3, 37, 23), dtype=np.uint8)
    probs[:, 5:9, 3:7] = 0  # nothing predicted there
    pred = SlidePrediction(probs, 4.0, 1, 0, 0.0)
    whole = (probs.argmax(0).astype(np.uint8), (probs.astype(np.float32) / 255.0).astype(np.float16))
    whole[0][probs.max(0) == 0] = UNLABELLED
    tissue = rng.random((37, 23)) > 0.5
    cell = cell_areas((37, 23), 4.0, 90, 146)  # the last row and column only partly inside the slide
    monkeypatch.setattr(inference, "BAND_PIXELS", 50)  # bands of 2 rows
    lab = pred.labels()
    assert np.array_equal(lab, whole[0]) and np.array_equal(pred.probs_float16(), whole[1])
    classes, tissue_px, analysed = level0_areas(lab, tissue, 4.0, 90, 146, 3, 0)
    assert classes == pytest.approx([float(cell[lab == k].sum()) for k in range(3)])
    assert tissue_px == pytest.approx(float(cell[tissue].sum()))
    assert analysed == pytest.approx(float(cell[tissue | (lab != 0)].sum()))


def test_reading_ahead_on_threads_gives_the_same_map(slide_file: Path):
    tiles = all_tiles(64, 420, 300)
    with open_slide(slide_file) as s:
        one = predict_slide(s, tiles, dark_pixels, 2, 1.0, margin=8, progress=False, read_threads=0)
        three = predict_slide(s, tiles, dark_pixels, 2, 1.0, margin=8, progress=False, read_threads=3)
    assert three.timings["read_threads"] == 3 and three.timings["network_mpx"] == pytest.approx(35 * 80 * 80 / 1e6, rel=0.3)
    np.testing.assert_array_equal(one.probs, three.probs)


def test_edge_tiles_are_cut_to_the_slide(slide_file: Path):
    shapes = []

    def record(rgb):
        shapes.append(rgb.shape[:2])
        return dark_pixels(rgb)

    with open_slide(slide_file) as s:  # 420 x 300: the last column holds 36 px, the last row 44 px
        predict_slide(s, [Tile(384, 0, 64), Tile(0, 256, 64), Tile(384, 256, 64)], record, 2, 1.0, margin=8,
                      progress=False)
    assert shapes == [(80, 52), (60, 80), (60, 52)]


def test_block_mean_averages_only_what_an_edge_block_holds():
    a = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    got = block_mean(a, 2)
    assert got.shape == (2, 3, 4) and got.dtype == np.float32
    for c in range(2):
        for i in range(3):
            for j in range(4):
                assert got[c, i, j] == pytest.approx(a[c, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean())
    assert np.array_equal(block_mean(a[:, :4, :6], 2), a[:, :4, :6].reshape(2, 2, 2, 3, 2).mean(axis=(2, 4)))
