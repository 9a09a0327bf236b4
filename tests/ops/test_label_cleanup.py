"""Small objects and holes take the class around them; everything else stays."""

from __future__ import annotations

import numpy as np
import pytest

from histowsss.ops.label_cleanup import clean_labels


def _map() -> np.ndarray:
    lab = np.zeros((20, 20), np.uint8)
    lab[2:12, 2:12] = 1          # a gland (100 px) ...
    lab[5:7, 5:7] = 0            # ... with a 4 px hole
    lab[15, 15] = 1              # a 1 px speck
    lab[16:18, 2:4] = 2          # a 4 px region of another class
    lab[0, 18:20] = 0            # background touching the border stays background
    return lab


def test_off_by_default_and_returns_a_copy():
    lab = _map()
    out = clean_labels(lab, background=0)
    np.testing.assert_array_equal(out, lab)
    assert out is not lab


def test_small_objects_become_background_and_large_ones_stay():
    lab = _map()
    out = clean_labels(lab, background=0, min_object_area=5)
    assert out[15, 15] == 0 and (out[16:18, 2:4] == 0).all()
    assert (out[2:12, 2:12] == lab[2:12, 2:12]).all()       # the gland keeps its hole
    np.testing.assert_array_equal(clean_labels(lab, background=0, min_object_area=4), _expected_speck_only(lab))


def _expected_speck_only(lab: np.ndarray) -> np.ndarray:
    out = lab.copy()
    out[15, 15] = 0  # only regions strictly smaller than the area go
    return out


def test_holes_are_filled_but_border_background_is_not():
    lab = _map()
    out = clean_labels(lab, background=0, max_hole_area=5)
    assert (out[5:7, 5:7] == 1).all()
    assert (out[0, :] == 0).all() and out[15, 15] == 1       # the large outer background is untouched
    big_hole = clean_labels(lab, background=0, max_hole_area=4)
    assert (big_hole[5:7, 5:7] == 0).all()


def test_a_small_region_inside_another_class_takes_that_class_and_ignore_does_not_vote():
    lab = np.full((9, 9), 2, np.uint8)
    lab[4, 4] = 1
    lab[3, 4] = 255
    out = clean_labels(lab, background=0, min_object_area=2)
    assert out[4, 4] == 2 and out[3, 4] == 255
    alone = np.full((3, 3), 255, np.uint8)
    alone[1, 1] = 1                                           # only ignore around it: left as it is
    assert clean_labels(alone, background=0, min_object_area=2)[1, 1] == 1


def test_without_a_background_class_objects_are_cleaned_and_holes_are_not():
    lab = np.zeros((8, 8), np.uint8)
    lab[3, 3] = 1
    out = clean_labels(lab, background=None, min_object_area=2, max_hole_area=100)
    assert (out == 0).all()


def test_rejects_a_stack():
    with pytest.raises(ValueError, match="2-D class map"):
        clean_labels(np.zeros((2, 4, 4), np.uint8), background=0, min_object_area=3)


def _two_glands_and_a_neck() -> np.ndarray:
    yy, xx = np.mgrid[:60, :100]
    lab = np.zeros((60, 100), np.uint8)
    lab[(yy - 30) ** 2 + (xx - 25) ** 2 < 20**2] = 1
    lab[(yy - 30) ** 2 + (xx - 72) ** 2 < 22**2] = 1
    lab[27:33, 40:60] = 1      # a 6 px neck across the stroma
    return lab


def test_split_cuts_a_neck_with_a_background_line_and_leaves_round_objects_whole():
    from scipy import ndimage

    from histowsss.ops.label_cleanup import clean_objects, split_touching

    lab = _two_glands_and_a_neck()
    assert ndimage.label(lab == 1)[1] == 1
    out = split_touching(lab, background=0, h=5)
    parts, n = ndimage.label(out == 1)
    assert n == 2 and parts[30, 25] != parts[30, 72]
    changed = out != lab
    assert (out[changed] == 0).all() and 0 < changed.sum() <= 12
    assert changed[:, 40:60].sum() == changed.sum()          # the cut lies in the neck
    assert ndimage.label(split_touching(lab, 0, h=40) == 1)[1] == 1  # the smaller gland is not 40 px above the neck
    disc = np.zeros_like(lab)
    disc[(np.mgrid[:60, :100][0] - 30) ** 2 + (np.mgrid[:60, :100][1] - 50) ** 2 < 25**2] = 1
    np.testing.assert_array_equal(split_touching(disc, 0, h=1), disc)
    np.testing.assert_array_equal(clean_objects(lab, None, split_h=5), lab)  # no background class: no split
    np.testing.assert_array_equal(clean_objects(lab, 0, split_h=5), out)


@pytest.mark.parametrize("angle", [0, 20, 45, 70])
def test_split_parts_do_not_touch_even_diagonally(angle):
    from scipy import ndimage

    from histowsss.ops.label_cleanup import split_touching

    yy, xx = np.mgrid[:100, :140]
    t = np.deg2rad(angle)
    lab = ((yy - 50) ** 2 + (xx - 40) ** 2 < 20**2).astype(np.uint8)
    lab[(yy - 50 - 36 * np.sin(t)) ** 2 + (xx - 40 - 36 * np.cos(t)) ** 2 < 20**2] = 1   # two overlapping discs
    out = split_touching(lab, background=0, h=3)
    assert ndimage.label(out == 1, structure=np.ones((3, 3)))[1] == 2
    assert ((out != lab) <= (lab == 1)).all() and (out != lab).sum() < 80   # only a thin cut, inside the object


@pytest.mark.parametrize("angle", [0, 10, 25, 30, 45, 65, 90, 115, 135, 155])
def test_one_elongated_gland_is_never_split_whatever_its_angle(angle):
    """A single ellipse has one distance-transform ridge; at 45 degrees its plateau pixels touch only at corners,
    which must still make one marker (4-connected markers cut it into about 20 parts), and at 25 degrees the ridge
    reaches its top at pixels apart with shallow dips between (skimage's h_maxima made each a marker: 9 parts)."""
    from scipy import ndimage
    from skimage.draw import ellipse

    from histowsss.ops.label_cleanup import split_touching

    lab = np.zeros((420, 420), np.uint8)
    rr, cc = ellipse(210, 210, 150, 50, rotation=np.deg2rad(angle))
    lab[rr, cc] = 1
    out = split_touching(lab, background=0, h=18)
    np.testing.assert_array_equal(out, lab)
    assert ndimage.label(out == 1)[1] == 1


def test_convex_shapes_have_no_neck_and_are_never_cut():
    """Random ellipses and rotated rectangles (one object each, no neck) stay whole at the configs' split_h."""
    from skimage.draw import ellipse, polygon

    from histowsss.ops.label_cleanup import split_touching

    rng = np.random.default_rng(0)
    for k in range(24):
        lab = np.zeros((200, 200), np.uint8)
        t = rng.uniform(0, np.pi)
        a, b = rng.uniform(25, 90), rng.uniform(10, 40)
        if k % 2:
            rr, cc = ellipse(100, 100, a, b, rotation=t, shape=lab.shape)
        else:
            corners = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]) @ np.array([[np.cos(t), np.sin(t)],
                                                                                  [-np.sin(t), np.cos(t)]])
            rr, cc = polygon(corners[:, 0] + 100, corners[:, 1] + 100, lab.shape)
        lab[rr, cc] = 1
        for h in (12, 18, 24):
            np.testing.assert_array_equal(split_touching(lab, background=0, h=h), lab, err_msg=f"shape {k}, h {h}")


def _whole_map_split(labels: np.ndarray, background: int, h: float) -> np.ndarray:
    """split_touching as it was computed before stop 41: every class on the whole map at once (the reference)."""
    from scipy import ndimage
    from skimage.morphology import local_maxima, reconstruction
    from skimage.segmentation import watershed

    out = labels.copy()
    for c in np.unique(labels).tolist():
        if c in (background, 255):
            continue
        mask = labels == c
        dist = ndimage.distance_transform_edt(mask)
        peaks = local_maxima(reconstruction(np.maximum(dist - h, 0.0), dist), connectivity=2, allow_borders=True)
        markers, n = ndimage.label(peaks & mask, structure=np.ones((3, 3)))
        if n >= 2:
            ws = watershed(-dist, markers, mask=mask)
            out[mask & (ndimage.maximum_filter(ws, size=3) > ws)] = background
    return out


def test_split_object_by_object_cuts_as_the_whole_map_did():
    """Random maps of several classes, objects at the edges, ignore pixels: the same objects as the whole-map
    computation; cut lines may sit one pixel apart where the watershed meets a tie (skimage breaks ties among its
    seeds by its heap's layout, which depends on the whole map)."""
    from scipy import ndimage

    from histowsss.ops.label_cleanup import split_touching

    rng = np.random.default_rng(1)
    moved = cut = 0
    for t in range(24):
        shape = tuple(rng.integers(60, 300, 2))
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(3, 12))
        lab = (noise > rng.uniform(-0.02, 0.05)).astype(np.uint8)
        if t % 3 == 0:
            lab[noise > 0.08] = 2
        if t % 4 == 0:
            lab[rng.random(shape) < 0.01] = 255
        for h in (1, 3, 6):
            ref, got = _whole_map_split(lab, 0, h), split_touching(lab, 0, h)
            assert ((got != lab) <= (lab != 0)).all() and (got[got != lab] == 0).all()
            for c in (1, 2):
                eight = np.ones((3, 3))
                assert ndimage.label(got == c, eight)[1] == ndimage.label(ref == c, eight)[1], (t, h, c)
            moved += int((ref != got).sum())
            cut += int((ref != lab).sum())
    assert cut > 500 and moved <= 0.02 * cut


def test_split_memory_is_bounded_by_the_largest_object_not_the_map():
    """A 2000 x 2000 map of small necked pairs: no float64 copy of the map (32 MB) is ever made."""
    import tracemalloc

    from histowsss.ops.label_cleanup import split_touching

    pair = _two_glands_and_a_neck()
    lab = np.zeros((2000, 2000), np.uint8)
    for y in range(0, 1940, 70):
        for x in range(0, 1900, 110):
            lab[y : y + 60, x : x + 100] = pair
    tracemalloc.start()
    try:
        out = split_touching(lab, background=0, h=5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (out != lab).any()
    assert peak < 28e6, f"peak {peak / 1e6:.1f} MB"  # the int32 object map (16 MB), the mask and the output copy


@pytest.mark.glas
def test_split_object_by_object_matches_the_whole_map_on_glas_glands(glas_dir):
    """Real gland outlines (GlaS train masks, touching glands among them): the same cuts to the pixel."""
    from PIL import Image

    from histowsss.ops.label_cleanup import split_touching

    cut = 0
    for i in range(1, 9):
        lab = (np.asarray(Image.open(glas_dir / "masks" / f"train_{i}.png")) > 0).astype(np.uint8)
        for h in (4, 12):
            ref = _whole_map_split(lab, 0, h)
            np.testing.assert_array_equal(split_touching(lab, 0, h), ref, err_msg=f"train_{i}, h {h}")
            cut += int((ref != lab).sum())
    assert cut > 0
